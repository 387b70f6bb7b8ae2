"""The emulator's memory with a hand-driven clock: outcomes, billing, credit, batch status, JSON shapes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_flux2.emulator.config import parse_config
from airflow_provider_flux2.emulator.faults import FaultPlan
from airflow_provider_flux2.emulator.state import (
    EmulatorState,
    InsufficientCreditError,
    RunSpec,
    decide_outcome,
    evaluation_score,
    upsample,
)
from airflow_provider_flux2.emulator.wire import (
    batch_object,
    callback_payload,
    check_presigned,
    presign,
    run_object,
    sign_callback,
)
from airflow_provider_flux2.models import Variant, build_input

PINNED = {"latency": {"queued": 1, "dispatching": 1, "running": 1}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> EmulatorState:
    return EmulatorState(parse_config(PINNED), clock=clock)


def _spec(prompt: str = "a cat", variant: Variant = Variant.PRO, **fields) -> RunSpec:
    return RunSpec(variant=variant, request=build_input(variant, prompt=prompt, **fields), base_url="http://e/")


# -- outcomes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "checker", "mode", "expected"),
    [
        ("a cat", True, "flag", (None, False, "normal")),
        ("a cat NSFW_TEST", True, "flag", (None, True, "black")),
        ("a cat nsfw_test", False, "flag", ("CONTENT_MODERATED", False, "normal")),
        ("a cat NSFW_TEST", True, "fail", ("CONTENT_MODERATED", False, "normal")),
        ("a cat", False, "fail", (None, False, "normal")),
    ],
)
def test_moderation_rule(prompt, checker, mode, expected):
    config = parse_config({"moderation_mode": mode})
    request = build_input(Variant.PRO, prompt=prompt, enable_safety_checker=checker)
    outcome = decide_outcome(config, request, 1, None, None)
    assert (outcome.failure_code, outcome.nsfw, outcome.style) == expected


def test_upsampling_by_variant():
    assert upsample(Variant.FLEX, "a cat") == "a cat"
    for variant in (Variant.PRO, Variant.MAX, Variant.TURBO):
        assert upsample(variant, "a cat.").startswith("a cat, rendered in ")
    assert upsample(Variant.PRO, "a cat") != upsample(Variant.PRO, "a dog")


def test_evaluation_score_is_stable_and_bounded():
    scores = {evaluation_score(f"p{i}", i) for i in range(200)}
    assert all(0.62 <= s <= 0.98 for s in scores) and len(scores) > 100
    assert evaluation_score("x", 1) == evaluation_score("x", 1)


# -- lifecycle and billing ---------------------------------------------------------------------------


def test_status_and_billing_follow_the_clock(state, clock):
    run = state.create_run(_spec())
    assert [run.status(clock.now + t).value for t in (0, 1, 2, 3)] == ["queued", "dispatching", "running", "succeeded"]
    assert state.ledger()["entries"] == []
    clock.now += 3
    ledger = state.ledger()
    assert [e["run_id"] for e in ledger["entries"]] == [run.id]
    assert ledger["total_cost"] == "0.030"


def test_failed_runs_are_never_billed(state, clock):
    state.plan = FaultPlan.parse({"rules": [{"fault": "run_failure"}]})
    run = state.create_run(_spec())
    clock.now += 10
    assert run.status(clock.now).value == "failed"
    assert state.ledger()["entries"] == []
    body = run_object(run, clock.now)
    assert (body["cost"], body["failure_code"], body["output"]) == ("0", "INTERNAL_ERROR", None)


def test_credit_counts_runs_that_will_succeed(clock):
    state = EmulatorState(parse_config({**PINNED, "credit_usd": "0.07"}), clock=clock)
    spec = _spec()
    state.check_credit(state.price_of(spec))
    state.create_run(spec)
    state.create_run(spec)  # committed although not finished: $0.060 of $0.07
    with pytest.raises(InsufficientCreditError) as caught:
        state.check_credit(state.price_of(spec))
    assert caught.value.remaining == Decimal("0.010")


def test_random_seed_makes_seeds_reproducible(clock):
    seeds = [EmulatorState(parse_config({"random_seed": 5}), clock=clock).create_run(_spec()).seed for _ in range(2)]
    assert seeds[0] == seeds[1]


def test_batch_status_derivation(state, clock):
    state.plan = FaultPlan.parse({"rules": [{"fault": "run_failure", "match": {"prompt_contains": "bad"}}]})
    batch = state.create_batch(
        Variant.PRO, [_spec("good"), _spec("bad")], metadata=None, callback_url=None, idempotency_key="k"
    )
    assert state.batch_status(batch, clock.now)[0].value == "queued"
    assert state.batch_status(batch, clock.now + 1.5)[0].value == "running"
    status, succeeded, failed = state.batch_status(batch, clock.now + 3)
    assert (status.value, succeeded, failed) == ("partial_succeeded", 1, 1)
    body = batch_object(state, batch, clock.now + 3)
    assert [i["sequence_index"] for i in body["items"]] == [0, 1]
    assert body["items_total"] == 2


def test_stats_peak_of_runs_in_flight(state, clock):
    state.create_run(_spec())
    clock.now += 1
    state.create_run(_spec())
    clock.now += 5
    state.create_run(_spec())
    stats = state.stats()
    assert stats["max_concurrent_runs"] == 2
    assert stats["runs_created"] == 3


def test_reset_restores_the_startup_config(state):
    state.configure({"url_ttl": 1})
    state.create_run(_spec())
    state.reset()
    assert state.config.url_ttl == 600 and state.runs == {}


# -- wire shapes -------------------------------------------------------------------------------------


def test_presigned_urls_verify_and_expire():
    secret = b"s" * 32
    url = presign(secret, "http://host:1/", "/_files/run_1/output-0.jpg", 100.0)
    path, _, query = url.removeprefix("http://host:1").partition("?")
    params = dict(pair.split("=") for pair in query.split("&"))
    assert check_presigned(secret, path, params, 99.0) is None
    assert check_presigned(secret, path, params, 100.5) == "URL_EXPIRED"
    assert check_presigned(secret, "/_files/run_2/output-0.jpg", params, 99.0) == "URL_INVALID"
    assert check_presigned(b"t" * 32, path, params, 99.0) == "URL_INVALID"
    assert check_presigned(secret, path, {**params, "expires": "200.000"}, 99.0) == "URL_INVALID"
    assert url != presign(secret, "http://host:1/", "/_files/run_1/output-0.jpg", 100.0)


def test_callback_payload_and_signature(state, clock):
    run = state.create_run(_spec())
    payload = callback_payload(run, clock.now + 3, "http://e/file")
    assert payload["event"] == "run.completed"
    assert payload["output"]["outputs"][0]["url"] == "http://e/file"
    # Known answer of HMAC-SHA256(key "k", body "{}").
    assert sign_callback("k", b"{}") == "add853b103fbcc936a194f9eb15e29c4ff08af6e47d5d1bca4f20218e31e4fff"
