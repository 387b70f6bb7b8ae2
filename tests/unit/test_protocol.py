from __future__ import annotations

import random

import httpx
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
    FluxRequestTimeoutError,
    FluxRunFailedError,
    FluxServerError,
    FluxValidationError,
)
from airflow_provider_flux2.models import RunStatus, build_input

REQ = {"X-Request-Id": "req_abc123"}


def _envelope(code, message, errors=None):
    import json

    return json.dumps({"code": code, "message": message, "errors": errors}).encode()


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "BAD_REQUEST", FluxAPIError),
        (401, "UNAUTHORIZED", FluxAuthError),
        (402, "INSUFFICIENT_CREDIT", FluxInsufficientCreditError),
        (403, "PERMISSION_DENIED", FluxAuthError),
        (404, "RUN_NOT_FOUND", FluxNotFoundError),
        (409, "CONFLICT", FluxConflictError),
        (429, "RATE_LIMITED", FluxRateLimitError),
        (500, "INTERNAL", FluxServerError),
        (503, "MODEL_UNAVAILABLE", FluxServerError),
    ],
)
def test_error_envelope_maps_to_typed_error_naming_status_code_ids_and_message(status, code, kind):
    error = protocol.error_from_response(status, REQ, _envelope(code, "the api says no"), run_id="run_9")
    assert type(error) is kind
    text = str(error)
    assert f"HTTP {status}" in text and code in text and "req_abc123" in text
    assert "run_9" in text and "the api says no" in text


def test_422_becomes_validation_error_naming_the_field():
    body = _envelope(
        "VALIDATION_ERROR", "invalid input", [{"loc": ["input", "image_size"], "msg": "bad size", "input": "x"}]
    )
    error = protocol.error_from_response(422, REQ, body)
    assert isinstance(error, FluxValidationError)
    assert error.field == "image_size"
    assert "HTTP 422" in str(error) and "req_abc123" in str(error) and "bad size" in str(error)


def test_422_without_field_errors_reads_as_the_api_message():
    error = protocol.error_from_response(422, REQ, _envelope("VALIDATION_ERROR", "prompt rejected by policy", None))
    assert isinstance(error, FluxValidationError) and error.status_code == 422
    assert str(error) == "HTTP 422 VALIDATION_ERROR: prompt rejected by policy [request id req_abc123]"


def test_non_json_error_body_is_kept_readable():
    error = protocol.error_from_response(502, {}, b"<html>Bad gateway</html>")
    assert isinstance(error, FluxServerError)
    assert "Bad gateway" in str(error)
    assert "request id unknown" in str(error)


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (FluxRateLimitError(status_code=429, code="RATE_LIMITED", message=""), True),
        (FluxServerError(status_code=503, code="MODEL_UNAVAILABLE", message=""), True),
        (FluxAPIError(status_code=408, code="TIMEOUT", message=""), True),
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("dropped"), True),
        (FluxAPIError(status_code=400, code="BAD_REQUEST", message=""), False),
        (FluxAuthError(status_code=401, code="UNAUTHORIZED", message=""), False),
        (FluxInsufficientCreditError(status_code=402, code="INSUFFICIENT_CREDIT", message=""), False),
        (FluxNotFoundError(status_code=404, code="RUN_NOT_FOUND", message=""), False),
        (FluxConflictError(status_code=409, code="CONFLICT", message=""), False),
        (FluxValidationError(field="f", value=1, allowed="x", status_code=422), False),
        # The hook's wrapped network errors, as the window and collection see them after its retries.
        (FluxConnectionError("could not reach", attempts=5, url="https://api.runflow.io/v1/runs"), True),
        (FluxRequestTimeoutError("no answer", attempts=5, url="https://api.runflow.io/v1/runs"), True),
        (FluxRunFailedError(run_id="r", status="failed", failure_code="X", failure_message=""), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_429_408_5xx_and_network_errors_are_transient(error, retry):
    """The one rule for "try again later": the hook's retries, the window's polls, collection's fetches."""
    assert protocol.is_transient(error) is retry


@pytest.mark.parametrize(
    ("details", "unsupported"),
    [
        (None, True),  # a 422 about the batch itself: the model has no batch endpoint
        ([{"field": "input", "value": None, "allowed": "batches are not supported"}], True),
        ([{"field": "3.image_size", "value": "huge", "allowed": "a preset"}], False),  # item 3's input is wrong
    ],
)
def test_a_batch_422_naming_no_item_means_the_model_has_no_batches(details, unsupported):
    error = FluxValidationError(field="input", value=None, allowed="x", details=details, status_code=422)
    assert protocol.batch_unsupported(error) is unsupported
    assert protocol.batch_unsupported(FluxServerError(status_code=500, code="INTERNAL", message="")) is False


def test_backoff_doubles_to_the_cap_with_jitter():
    policy = protocol.RetryPolicy(base=1.0, cap=32.0)
    rng = random.Random(1)
    error = FluxServerError(status_code=500, code="INTERNAL", message="")
    for attempt, backoff in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 32), (9, 32)]:
        delays = [policy.delay(attempt, error, rng) for _ in range(50)]
        assert all(backoff <= d <= backoff * (1 + protocol.JITTER) for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_retry_after_wins_over_backoff():
    error = protocol.error_from_response(429, {"Retry-After": "7"}, _envelope("RATE_LIMITED", "slow down"))
    assert error.retry_after == 7.0
    assert protocol.RetryPolicy().delay(1, error) == 7.0


def test_retry_after_as_http_date():
    assert protocol.parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert protocol.parse_retry_after("soon") is None
    assert protocol.parse_retry_after(None) is None


@pytest.mark.parametrize(
    "output",
    [
        {"outputs": [{"type": "image", "url": "https://a/1.jpg", "content_type": "image/jpeg", "width": 8}]},
        {"images": [{"url": "https://a/1.jpg", "width": 8, "height": 8, "content_type": "image/jpeg"}]},
        {"image_urls": ["https://a/1.jpg"]},
    ],
)
def test_three_output_shapes_parse_to_one(output):
    run = protocol.parse_run({"id": "r1", "status_code": "succeeded", "output": {**output, "seed": 42}})
    assert run.output.images[0].url == "https://a/1.jpg"
    assert run.output.seed == 42


def test_nsfw_flag_and_upsampled_prompt_are_read():
    run = protocol.parse_run(
        {
            "id": "r1",
            "status_code": "succeeded",
            "output": {"image_urls": ["u"], "has_nsfw_concepts": [True], "prompt": "richer"},
            "current_evaluation_summary": {"score": 0.82},
        }
    )
    assert run.output.nsfw
    assert run.output.prompt == "richer"
    assert run.quality_score == 0.82


def test_failed_run_maps_to_run_failed_and_moderation_to_its_own_error():
    failed = protocol.parse_run({"id": "r1", "status_code": "failed", "failure_code": "INTERNAL_ERROR"})
    moderated = protocol.parse_run(
        {"id": "r2", "status_code": "failed", "failure_code": "CONTENT_MODERATED", "failure_message": "no"}
    )
    assert type(protocol.failure_of(failed)) is FluxRunFailedError
    assert isinstance(protocol.failure_of(moderated), FluxModerationError)
    assert "r2" in str(protocol.failure_of(moderated))
    assert protocol.failure_of(protocol.parse_run({"id": "r3", "status_code": "running"})) is None
    assert RunStatus.PARTIAL_SUCCEEDED.terminal


def test_create_run_request_carries_key_ref_and_wire_input():
    request = build_input("pro", prompt="a cat", image_size="1920x1080", seed=3)
    call = protocol.create_run("pro", request, idempotency_key="k1", client_ref="ref", metadata={"dag_id": "d"})
    assert call.method == "POST"
    assert call.path == "/v1/models/black-forest-labs/flux-2-pro/runs"
    assert call.headers == {"Idempotency-Key": "k1"}
    assert call.json["input"]["image_size"] == {"width": 1920, "height": 1080}
    assert call.json["client_ref"] == "ref"
    assert "Authorization" not in call.headers  # the key is added by the client, in one place


def test_batch_request_puts_client_ref_on_each_item_and_caps_at_100():
    request = build_input("pro", prompt="p")
    call = protocol.create_batch("pro", [(request, "a"), (request, "b")], idempotency_key="k")
    assert [item["client_ref"] for item in call.json["input"]] == ["a", "b"]
    with pytest.raises(FluxValidationError, match=r"1\.\.100"):
        protocol.create_batch("pro", [(request, "x")] * 101, idempotency_key="k")


def test_idempotency_key_is_stable_per_identity_and_request():
    identity = {"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": -1, "item": 3}
    req = protocol.request_hash("pro", build_input("pro", prompt="p"))
    other = protocol.request_hash("pro", build_input("pro", prompt="q"))
    key = protocol.idempotency_key(identity, req)
    assert key == protocol.idempotency_key(dict(identity), req)
    assert key != protocol.idempotency_key({**identity, "item": 4}, req)
    assert key != protocol.idempotency_key({**identity, "map_index": 0}, req)
    assert key != protocol.idempotency_key(identity, other)
    assert len(protocol.client_ref({**identity, "dag_id": "d" * 400}, req)) == 255
