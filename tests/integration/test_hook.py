"""FluxHook against the emulator over a real socket: retries, idempotency, errors, downloads."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import pytest

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import (
    FluxAPIError,
    FluxAuthError,
    FluxConflictError,
    FluxConnectionError,
    FluxInsufficientCreditError,
    FluxModerationError,
    FluxNotFoundError,
    FluxRateLimitError,
    FluxServerError,
    FluxTimeoutError,
    FluxValidationError,
)
from airflow_provider_flux2.hooks.flux import BatchEntry, FluxHook
from airflow_provider_flux2.models import FluxInput, build_input

FAST = {"retry_base_delay": 0.02, "retry_max_delay": 0.2, "timeout": 5}


def make_hook(emulator, **extra):
    return FluxHook(api_key=emulator.api_key, base_url=emulator.base_url, extra={**FAST, **extra})


@pytest.fixture(autouse=True)
def no_key_in_logs(caplog, emulator_server):
    """Every log record of every test here is checked for the API key."""
    caplog.set_level(logging.DEBUG)
    yield
    key = emulator_server.api_key
    leaked = [r.getMessage() for r in caplog.records if key in r.getMessage() or key in str(r.exc_text or "")]
    assert not leaked, f"API key found in log records: {leaked[:3]}"


def create_run_requests(emulator):
    return emulator.stats()["requests"].get("create_run", 0)


def test_generate_returns_verified_image_and_bills_once(emulator):
    hook = make_hook(emulator)
    run, image = hook.generate("a red bicycle", image_size="1920x1080", seed=7, poll_interval=0.02)
    assert (image.width, image.height, image.format) == (1920, 1080, "jpeg")
    assert run.output.seed == 7
    assert run.cost == hook.estimate([("pro", build_input("pro", prompt="x", image_size="1920x1080"))]).total
    ledger = emulator.ledger()
    assert [e["run_id"] for e in ledger["entries"]] == [run.id]
    assert ledger["total_cost"] == "0.045"


def test_scripted_429_503_drop_then_success_gives_one_run_and_one_ledger_entry(emulator):
    emulator.faults(
        {
            "rules": [
                {
                    "endpoint": "create_run",
                    "sequence": [
                        {"fault": "rate_limit", "retry_after": None},
                        {"fault": "server_error", "status": 503},
                        {"fault": "drop"},
                        "ok",
                    ],
                }
            ]
        }
    )
    hook = make_hook(emulator)
    _, image = hook.generate("a green kite", image_size="square", poll_interval=0.02)
    assert image.width == 512
    assert create_run_requests(emulator) == 4
    assert len(emulator.ledger()["entries"]) == 1


def test_lost_response_after_the_run_was_created_is_replayed_not_billed_twice(emulator):
    emulator.faults({"rules": [{"endpoint": "create_run", "fault": "drop", "phase": "after", "count": 2}]})
    hook = make_hook(emulator)
    run, _ = hook.generate("a blue teapot", image_size="square", poll_interval=0.02)
    entries = emulator.ledger()["entries"]
    assert len(entries) == 1 and entries[0]["run_id"] == run.id
    assert emulator.stats()["runs_created"] == 1


def test_retry_honours_retry_after_seconds(emulator):
    emulator.faults({"rules": [{"endpoint": "get_run", "fault": "rate_limit", "retry_after": 1, "count": 1}]})
    hook = make_hook(emulator)
    run = hook.submit(build_input("pro", prompt="p", image_size="square"))
    started = time.monotonic()
    hook.get_run(run.id)
    assert time.monotonic() - started >= 1.0


def test_retries_stop_after_max_attempts(emulator):
    emulator.faults({"rules": [{"endpoint": "get_run", "fault": "server_error", "status": 502, "count": 10}]})
    hook = make_hook(emulator, max_attempts=3)
    with pytest.raises(FluxServerError) as info:
        hook.get_run("whatever")
    assert "HTTP 502" in str(info.value)
    assert emulator.stats()["requests"]["get_run"] == 3


def test_stall_longer_than_the_timeout_is_retried(emulator):
    emulator.faults({"rules": [{"endpoint": "get_run", "fault": "stall", "seconds": 5, "count": 1}]})
    hook = make_hook(emulator, timeout=0.5)
    run = hook.submit(build_input("pro", prompt="p", image_size="square"))
    assert hook.get_run(run.id).id == run.id
    assert emulator.stats()["requests"]["get_run"] == 2


def test_unreachable_api_raises_connection_error_after_attempts():
    hook = FluxHook(api_key="k", base_url="http://127.0.0.1:9", extra={**FAST, "max_attempts": 2})
    with pytest.raises(FluxConnectionError) as info:
        hook.health()
    assert info.value.attempts == 2


def test_401_fails_at_once_naming_the_connection_not_the_key(emulator, monkeypatch):
    conn = json.loads(emulator.connection_json())
    conn["password"] = "rf_live_wrong_key_0000"
    conn["extra"] = {**conn.get("extra", {}), **FAST}
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_BAD", json.dumps(conn))
    hook = FluxHook("flux2_bad")
    with pytest.raises(FluxAuthError) as info:
        hook.submit(build_input("pro", prompt="p"))
    text = str(info.value)
    assert "HTTP 401" in text and "'flux2_bad'" in text
    assert "rf_live_wrong_key_0000" not in text
    assert create_run_requests(emulator) == 1


def no_retry_cases():
    return [
        ("402", {"credit_usd": "0"}, FluxInsufficientCreditError),
        ("403", {"disabled_models": ["black-forest-labs/flux-2-pro"]}, FluxAuthError),
    ]


@pytest.mark.parametrize(("status", "config", "kind"), no_retry_cases())
def test_no_retry_on_client_errors(emulator, status, config, kind):
    emulator.configure(**config)
    hook = make_hook(emulator)
    with pytest.raises(kind) as info:
        hook.submit(build_input("pro", prompt="p"))
    assert f"HTTP {status}" in str(info.value)
    assert create_run_requests(emulator) == 1


def test_no_retry_on_404(emulator):
    hook = make_hook(emulator)
    missing = str(uuid.uuid4())
    with pytest.raises(FluxNotFoundError, match=missing):
        hook.get_run(missing)
    assert emulator.stats()["requests"]["get_run"] == 1


def test_a_409_that_persists_is_a_key_reused_with_another_body_named_in_the_error(emulator):
    """A 409 may be a race (sent again under the same key, a few times); one that persists is a key
    reused with a different body: a typed error naming the key and the job, never a second run."""
    hook = make_hook(emulator)
    hook.submit(build_input("pro", prompt="first"), idempotency_key="same-key", client_ref="job-7")
    with pytest.raises(FluxConflictError, match=r"same-key \(job job-7\).*different request body") as caught:
        hook.submit(build_input("pro", prompt="second"), idempotency_key="same-key", client_ref="job-7")
    assert caught.value.request_id
    assert create_run_requests(emulator) == 1 + protocol.CONFLICT_ATTEMPTS
    assert emulator.stats()["runs_created"] == 1


def test_no_retry_on_api_422(emulator):
    hook = make_hook(emulator)
    # Skip our own validation to see the API's: a size the API refuses.
    bad = FluxInput.model_construct(prompt="p", image_size={"width": 10, "height": 10})
    with pytest.raises(FluxValidationError) as info:
        hook.submit(bad)
    assert info.value.status_code == 422
    assert info.value.field.startswith("image_size")
    assert create_run_requests(emulator) == 1


def test_no_retry_on_400(emulator):
    emulator.faults(
        {"rules": [{"endpoint": "create_run", "fault": "http_error", "status": 400, "code": "BAD_REQUEST"}]}
    )
    hook = make_hook(emulator)
    with pytest.raises(FluxAPIError) as info:
        hook.submit(build_input("pro", prompt="p"))
    assert info.value.status_code == 400
    assert create_run_requests(emulator) == 1


def test_idempotent_resubmission_is_one_ledger_entry(emulator):
    hook = make_hook(emulator)
    request = build_input("pro", prompt="same image", image_size="square")
    first = hook.submit(request, idempotency_key="k-1")
    second = hook.submit(request, idempotency_key="k-1")
    assert first.id == second.id
    hook.wait(first.id, poll_interval=0.02)
    assert len(emulator.ledger()["entries"]) == 1


def test_expired_url_is_refreshed_by_reading_the_run_again(emulator):
    emulator.faults({"rules": [{"endpoint": "download", "fault": "url_expired", "count": 1}]})
    hook = make_hook(emulator)
    _, image = hook.generate("a yellow lamp", image_size="square", poll_interval=0.02)
    assert image.width == 512
    assert emulator.stats()["requests"]["get_run"] >= 2


def test_url_past_its_ttl_is_refreshed(emulator):
    emulator.configure(url_ttl=0.3)
    hook = make_hook(emulator)
    request = build_input("pro", prompt="a teal chair", image_size="square")
    run = hook.wait(hook.submit(request).id, poll_interval=0.02)
    time.sleep(0.5)
    image = hook.download(run, width=512, height=512, output_format="jpeg")
    assert image.size_bytes > 0


def test_sync_mode_data_uri_is_decoded(emulator):
    hook = make_hook(emulator)
    run, image = hook.generate("inline", image_size="square", sync_mode=True, output_format="png", poll_interval=0.02)
    assert run.output.images[0].url.startswith("data:image/png")
    assert image.format == "png"


def test_moderation_is_its_own_exception(emulator):
    emulator.configure(moderation_mode="fail")
    hook = make_hook(emulator)
    with pytest.raises(FluxModerationError) as info:
        hook.generate("NSFW_TEST scene", image_size="square", poll_interval=0.02)
    assert info.value.failure_code == "CONTENT_MODERATED"
    assert emulator.ledger()["entries"] == []


def test_batch_submit_uses_one_request_and_falls_back_to_single_runs_on_422(emulator):
    hook = make_hook(emulator)
    entries = [
        BatchEntry(build_input("pro", prompt=f"p{i}", image_size="square"), f"ref-{i}", f"key-{i}") for i in range(3)
    ]
    submission = hook.submit_batch(entries, batch_key="batch-key-1")
    assert submission.batch_id and len(submission.run_ids) == 3
    assert emulator.stats()["requests"].get("create_batch") == 1

    emulator.reset()
    emulator.configure(batch_unsupported_models=["pro"])
    submission = hook.submit_batch(entries, batch_key="batch-key-2")
    assert submission.batch_id is None and len(submission.run_ids) == 3
    assert create_run_requests(emulator) == 3


def test_test_connection_checks_health_and_the_key(emulator):
    assert make_hook(emulator).test_connection()[0] is True
    ok, message = FluxHook(api_key="rf_live_nope", base_url=emulator.base_url, extra=FAST).test_connection()
    assert ok is False and "401" in message and "rf_live_nope" not in message


def test_async_client_reads_runs_and_batches(emulator):
    hook = make_hook(emulator)
    run = hook.submit(build_input("pro", prompt="p", image_size="square"))

    async def read():
        try:
            return await hook.aget_run(run.id)
        finally:
            await hook.aclose()

    assert asyncio.run(read()).id == run.id


def test_rate_limit_without_retry_after_still_backs_off_and_succeeds(emulator):
    emulator.faults({"rules": [{"endpoint": "get_run", "fault": "rate_limit", "count": 2}]})
    hook = make_hook(emulator)
    run = hook.submit(build_input("pro", prompt="p", image_size="square"))
    assert hook.get_run(run.id).id == run.id
    assert emulator.stats()["requests"]["get_run"] == 3


def test_rate_limit_error_type_when_attempts_run_out(emulator):
    emulator.faults({"rules": [{"endpoint": "get_run", "fault": "rate_limit", "count": 5}]})
    with pytest.raises(FluxRateLimitError):
        make_hook(emulator, max_attempts=2).get_run("x")


def test_stall_on_every_attempt_is_a_timeout_error_naming_the_attempts(emulator):
    emulator.faults({"rules": [{"endpoint": "get_run", "fault": "stall", "seconds": 3, "count": 2}]})
    hook = make_hook(emulator, timeout=0.3, max_attempts=2)
    with pytest.raises(FluxTimeoutError) as info:
        hook.get_run("run_x")
    assert isinstance(info.value, FluxConnectionError) and info.value.attempts == 2
    assert "did not answer in time" in str(info.value)


def test_moderation_flag_on_a_succeeded_run_is_a_moderation_error_unless_allowed(emulator):
    emulator.configure(moderation_mode="flag")
    hook = make_hook(emulator)
    with pytest.raises(FluxModerationError) as info:
        hook.generate("NSFW_TEST scene", image_size="square", poll_interval=0.02)
    assert info.value.failure_code == "NSFW_FLAGGED" and info.value.run_id
    run, image = hook.generate("NSFW_TEST scene", image_size="square", poll_interval=0.02, allow_nsfw=True)
    assert run.output.nsfw and image.width == 512
    assert len(emulator.ledger()["entries"]) == 2  # a flagged image is billed


def test_submit_takes_parameters_and_download_reads_the_size_from_the_run(emulator):
    hook = make_hook(emulator)
    first = hook.submit("a green kettle", image_size="1920x1080", output_format="png", seed=5)
    second = hook.submit({"prompt": "a green kettle", "image_size": "square", "model": "flex"})
    assert _model_of(emulator, hook, second.id) == "black-forest-labs/flux-2-flex"
    run = hook.wait(first, poll_interval=0.02)  # a Run or its id
    image = hook.download(run)
    assert (image.width, image.height, image.format) == (1920, 1080, "png")
    assert hook.download(hook.wait(second.id, poll_interval=0.02).id).width == 512
    assert run.request_id  # the X-Request-Id of the response that reported the run
    with pytest.raises(FluxValidationError):
        hook.submit("a kettle", image_size="tiny")
    assert create_run_requests(emulator) == 2


def test_submit_batch_takes_plain_inputs_with_keys_derived_from_the_batch_key(emulator):
    hook = make_hook(emulator)
    inputs = ["a red cup", {"prompt": "a blue cup", "image_size": "square"}, build_input("pro", prompt="a cup")]
    first = hook.submit_batch(inputs, batch_key="nightly-42")
    again = hook.submit_batch(inputs, batch_key="nightly-42")  # a resubmission is the same batch
    assert first.run_ids == again.run_ids and len(first.run_ids) == 3
    assert all(hook.wait(r, poll_interval=0.02).status_code == "succeeded" for r in first.run_ids)
    assert len(emulator.ledger()["entries"]) == 3


def test_connection_extras_tolerate_empty_form_fields_aliases_and_json_text(caplog):
    from airflow_provider_flux2.hooks.flux import FluxConnectionConfig

    config = FluxConnectionConfig.build(
        api_key="k",
        base_url=None,
        conn_id="c",
        extra={
            "timeout": None,
            "organization_id": "",
            "max_retries": "2",
            "price_overrides": '{"pro": "0.04"}',
            "colour": "blue",
        },
    )
    assert config.timeout == 30.0 and config.organization_id is None
    assert config.retry.max_attempts == 3
    assert str(config.prices.price("pro").first_mp) == "0.04"
    assert "ignoring unknown extra(s) ['colour']" in caplog.text
    with pytest.raises(FluxValidationError, match="prices"):
        FluxConnectionConfig.build(api_key="k", base_url=None, conn_id="c", extra={"prices": "{not json"})


def test_an_input_built_for_one_variant_is_not_sent_to_another(emulator):
    hook = make_hook(emulator)
    flex = build_input("flex", prompt="a lamp", num_inference_steps=8)
    with pytest.raises(FluxValidationError, match="flux-2-flex, the variant this input was built for"):
        hook.submit(flex, model="pro")
    own = hook.submit(flex)  # its own variant when none is named
    assert _model_of(emulator, hook, own.id) == "black-forest-labs/flux-2-flex"
    # A mapping's own "model" key is not a generation parameter; the model argument wins over it.
    named = hook.submit({"prompt": "a lamp", "model": "pro"}, model="max")
    assert _model_of(emulator, hook, named.id) == "black-forest-labs/flux-2-max"


def _model_of(emulator, hook, run_id: str) -> str:
    """The model a run was sent to, from the emulator's ledger (the API's run shows a model UUID)."""
    hook.wait(run_id, poll_interval=0.02)
    return next(e["model"] for e in emulator.ledger()["entries"] if e["run_id"] == run_id)
    assert create_run_requests(emulator) == 2
