"""Fault injection: every kind, every trigger, as a client sees it over a real socket."""

from __future__ import annotations

import io
import time

import httpx
import imagehash
import pytest
from PIL import Image


def _plan(api, *rules, seed=None):
    return api.emulator.faults({"seed": seed, "rules": list(rules)})


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


# -- request-level kinds -----------------------------------------------------------------------------


def test_rate_limit_with_retry_after_sends_the_header(api):
    _plan(api, {"endpoint": "create_run", "fault": "rate_limit", "retry_after": 2, "count": 1})
    response = api.create_run()
    assert response.status_code == 429
    assert response.json()["code"] == "RATE_LIMITED"
    assert response.headers["retry-after"] == "2"
    assert api.create_run().status_code == 201


def test_rate_limit_without_retry_after_sends_no_header(api):
    _plan(api, {"endpoint": "create_run", "fault": "rate_limit", "count": 1})
    response = api.create_run()
    assert response.status_code == 429
    assert "retry-after" not in response.headers


@pytest.mark.parametrize(("status", "code"), [(500, "INTERNAL"), (502, "INTERNAL"), (503, "MODEL_UNAVAILABLE")])
def test_server_errors_answer_the_envelope(api, status, code):
    _plan(api, {"endpoint": "create_run", "fault": "server_error", "status": status, "count": 1})
    response = api.create_run()
    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.headers["x-request-id"].startswith("req_")
    assert api.emulator.stats()["runs_created"] == 0  # phase "before": nothing happened


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"status": 400}, 400, "BAD_REQUEST"),
        ({"status": 408}, 408, "REQUEST_TIMEOUT"),
        ({"status": 403, "code": "EMAIL_NOT_VERIFIED", "message": "verify your e-mail"}, 403, "EMAIL_NOT_VERIFIED"),
        ({"status": 504}, 504, "INTERNAL"),
        ({"status": 418}, 418, "HTTP_418"),
    ],
)
def test_http_error_answers_any_status_with_the_envelope(api, params, status, code):
    _plan(api, {"endpoint": "create_run", "fault": "http_error", "count": 1, **params})
    response = api.create_run()
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code
    assert body["message"] == params.get("message", body["message"])
    assert api.emulator.stats()["runs_created"] == 0


def test_http_error_can_carry_retry_after(api):
    _plan(api, {"endpoint": "get_run", "fault": "http_error", "status": 503, "retry_after": 0.5, "count": 1})
    response = api.client.get("/v1/runs/run_x")
    assert (response.status_code, response.headers["retry-after"]) == (503, "0.5")


def test_drop_closes_the_connection_mid_response(api):
    _plan(api, {"endpoint": "create_run", "fault": "drop", "count": 1})
    with pytest.raises(httpx.RemoteProtocolError):
        api.create_run()
    assert api.create_run().status_code == 201  # the client's pool recovers
    assert api.emulator.stats()["runs_created"] == 1


@pytest.mark.timeout(30)
def test_stall_outlasts_the_client_timeout(api):
    _plan(api, {"endpoint": "get_run", "fault": "stall", "seconds": 5, "count": 1})
    run_id = api.create_run().json()["id"]
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        api.client.get(f"/v1/runs/{run_id}", timeout=0.3)
    assert time.monotonic() - started < 2
    assert api.get_run(run_id)["id"] == run_id


@pytest.mark.timeout(30)
def test_short_stall_then_before_phase_answers_503_unprocessed(api):
    _plan(api, {"endpoint": "create_run", "fault": "stall", "seconds": 0.2, "count": 1})
    started = time.monotonic()
    response = api.create_run()
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 503
    assert api.emulator.stats()["runs_created"] == 0


@pytest.mark.timeout(30)
def test_stall_after_creates_the_run_the_client_never_sees(api):
    _plan(api, {"endpoint": "create_run", "fault": "stall", "seconds": 5, "phase": "after", "count": 1})
    body = {"input": {"prompt": "lost in a stall"}}
    with pytest.raises(httpx.ReadTimeout):
        api.client.post(f"{api.model_path()}/runs", json=body, headers={"Idempotency-Key": "stalled"}, timeout=0.3)
    assert api.emulator.stats()["runs_created"] == 1
    retry = api.create_run("lost in a stall", key="stalled")
    assert retry.status_code == 201
    api.wait(retry.json()["id"])
    assert [e["idempotency_key"] for e in api.emulator.ledger()["entries"]] == ["stalled"]


def test_phase_after_bills_the_run_although_the_client_saw_an_error(api):
    _plan(api, {"endpoint": "create_run", "fault": "server_error", "status": 502, "phase": "after", "count": 1})
    assert api.create_run("billed anyway", key="after-1").status_code == 502
    time.sleep(0.2)
    (entry,) = api.emulator.ledger()["entries"]
    assert entry["idempotency_key"] == "after-1"
    replay = api.create_run("billed anyway", key="after-1")
    assert replay.status_code == 201
    assert replay.json()["id"] == entry["run_id"]


def test_drop_after_creates_the_run(api):
    _plan(api, {"endpoint": "create_run", "fault": "drop", "phase": "after", "count": 1})
    with pytest.raises(httpx.RemoteProtocolError):
        api.create_run("dropped answer", key="after-2")
    replay = api.create_run("dropped answer", key="after-2")
    assert replay.status_code == 201
    api.wait(replay.json()["id"])
    assert api.emulator.stats()["runs_created"] == 1
    assert [e["run_id"] for e in api.emulator.ledger()["entries"]] == [replay.json()["id"]]


def test_wildcard_endpoint_applies_to_health_and_polls(api):
    run_id = api.create_run().json()["id"]
    _plan(api, {"endpoint": "*", "fault": "server_error", "status": 503, "count": 2})
    assert api.client.get("/v1/health").status_code == 503
    assert api.client.get(f"/v1/runs/{run_id}").status_code == 503
    assert api.client.get("/v1/health").status_code == 200


# -- triggers ----------------------------------------------------------------------------------------


def test_scripted_sequence_is_consumed_one_element_per_request(api):
    _plan(
        api,
        {
            "endpoint": "create_run",
            "sequence": [
                {"fault": "rate_limit", "retry_after": 1},
                {"fault": "server_error", "status": 503},
                "drop",
                "ok",
            ],
        },
    )
    first = api.create_run()
    assert (first.status_code, first.headers.get("retry-after")) == (429, "1")
    assert api.create_run().status_code == 503
    with pytest.raises(httpx.TransportError):
        api.create_run()
    assert api.create_run().status_code == 201
    assert api.create_run().status_code == 201  # the sequence is spent


def test_count_fires_after_skipping(api):
    _plan(api, {"endpoint": "create_run", "fault": "server_error", "count": 2, "after": 1})
    assert [api.create_run().status_code for _ in range(4)] == [201, 500, 500, 201]


def test_probability_is_reproducible_with_the_plan_seed(api):
    rule = {"endpoint": "health", "fault": "server_error", "probability": 0.5}

    def pattern():
        _plan(api, rule, seed=42)
        return [api.client.get("/v1/health").status_code for _ in range(30)]

    first, second = pattern(), pattern()
    assert first == second
    assert 5 < first.count(500) < 25


def test_match_prompt_contains_selects_requests(api):
    _plan(api, {"endpoint": "create_run", "fault": "server_error", "match": {"prompt_contains": "Boom"}})
    assert api.create_run("a calm lake").status_code == 201
    assert api.create_run("a BOOM in the sky").status_code == 500


def test_first_firing_rule_wins(api):
    _plan(
        api,
        {"endpoint": "create_run", "fault": "rate_limit", "count": 1},
        {"endpoint": "create_run", "fault": "server_error", "count": 1},
    )
    # The second rule does not see the request the first one took.
    assert [api.create_run().status_code for _ in range(3)] == [429, 500, 201]


def test_fired_faults_are_recorded_in_stats(api):
    _plan(api, {"endpoint": "create_run", "fault": "rate_limit", "retry_after": 3, "count": 1})
    api.create_run()
    (fired,) = api.emulator.stats()["faults_fired"]
    assert fired["endpoint"] == "create_run"
    assert fired["fault"] == "rate_limit"
    assert fired["retry_after"] == 3
    assert fired["at"].endswith("Z")


def test_plan_is_shown_replaced_and_cleared(api):
    _plan(api, {"endpoint": "health", "fault": "server_error", "count": 5})
    api.client.get("/v1/health")
    shown = api.client.get("/_emulator/faults").json()
    assert shown["rules"][0]["fault"] == "server_error"
    assert shown["seen"] == [1]
    api.emulator.clear_faults()
    assert api.client.get("/v1/health").status_code == 200
    assert api.client.get("/_emulator/faults").json()["rules"] == []


@pytest.mark.parametrize(
    "rule",
    [
        {"endpoint": "create_run", "fault": "meteor"},
        {"endpoint": "create_run", "fault": "server_error", "status": 418},
        {"endpoint": "get_run", "fault": "run_failure"},
        {"endpoint": "create_run", "fault": "url_expired"},
        {"endpoint": "create_run", "fault": "drop", "count": 1, "probability": 0.5},
        {"endpoint": "create_run", "fault": "rate_limit", "retry_afterr": 1},
        {"endpoint": "nowhere", "fault": "drop"},
    ],
)
def test_invalid_plans_are_refused_with_422(api, rule):
    response = api.client.post("/_emulator/faults", json={"rules": [rule]})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert body["errors"][0]["loc"][:3] == ["faults", "rules", 0]


# -- run-level kinds ---------------------------------------------------------------------------------


def test_run_failure_fails_the_run_unbilled(api):
    _plan(api, {"endpoint": "create_run", "fault": "run_failure", "count": 1})
    run = api.run("will fail")
    assert run["status_code"] == "failed"
    assert run["failure_code"] == "INTERNAL_ERROR"
    assert run["failure_stage_code"] == "GENERATION"
    assert run["cost"] == "0"
    assert api.emulator.ledger()["entries"] == []
    assert api.run("will succeed")["status_code"] == "succeeded"


def test_run_failure_with_a_custom_code(api):
    _plan(api, {"endpoint": "create_run", "fault": "run_failure", "code": "INPUT_VALIDATION_FAILED", "count": 1})
    assert api.run("x")["failure_code"] == "INPUT_VALIDATION_FAILED"


def test_moderation_fault_fails_content_moderated(api):
    _plan(api, {"endpoint": "create_run", "fault": "moderation", "count": 1})
    run = api.run("an innocent kitten")
    assert (run["status_code"], run["failure_code"]) == ("failed", "CONTENT_MODERATED")


def test_nsfw_fault_succeeds_flagged_with_a_black_image(api):
    _plan(api, {"endpoint": "create_run", "fault": "nsfw", "count": 1})
    run = api.run("an innocent kitten")
    assert run["output"]["has_nsfw_concepts"] == [True]
    assert all(high <= 3 for _, high in _image(api.download(run).content).getextrema())


def test_blank_image_fault_gives_one_uniform_colour(api):
    _plan(api, {"endpoint": "create_run", "fault": "blank_image", "count": 1})
    run = api.run("a busy market", output_format="png")
    image = _image(api.download(run).content)
    assert all(high == low for low, high in image.getextrema())
    assert image.getpixel((0, 0)) != (0, 0, 0)


def test_duplicate_image_copies_the_previous_run(api):
    original = api.run("a red barn in a wheat field", seed=9)
    _plan(api, {"endpoint": "create_run", "fault": "duplicate_image", "count": 1})
    duplicate = api.run("a blue boat on a lake", seed=10)
    a, b = api.download(original).content, api.download(duplicate).content
    assert a != b
    assert imagehash.phash(_image(a)) - imagehash.phash(_image(b)) <= 8
    assert duplicate["output"]["prompt"].startswith("a blue boat")  # the run itself is unchanged


def test_duplicate_image_of_a_named_prompt(api):
    original = api.run("a lighthouse", seed=4)
    api.run("something in between", seed=5)
    _plan(api, {"endpoint": "create_run", "fault": "duplicate_image", "of_prompt": "a lighthouse", "count": 1})
    duplicate = api.run("a windmill", seed=6)
    distance = imagehash.phash(_image(api.download(original).content)) - imagehash.phash(
        _image(api.download(duplicate).content)
    )
    assert distance <= 8


def test_low_score_fault_sets_the_sentinel_score(api):
    _plan(api, {"endpoint": "create_run", "fault": "low_score", "score": 0.05, "count": 1})
    assert api.run("meh")["current_evaluation_summary"]["score"] == 0.05
    assert api.run("fine")["current_evaluation_summary"]["score"] > 0.5


# -- download-level kinds ----------------------------------------------------------------------------


def test_url_expired_fault_refuses_a_fresh_url_once(api):
    run = api.run("expire me early")
    _plan(api, {"endpoint": "download", "fault": "url_expired", "count": 1})
    refused = api.download(run)
    assert refused.status_code == 403
    assert refused.json()["code"] == "URL_EXPIRED"
    assert api.download(run).status_code == 200


def test_slow_download_trickles_the_bytes(api):
    run = api.run("slowly", image_size="square")
    fast = api.download(run).content
    _plan(api, {"endpoint": "download", "fault": "slow_download", "bytes_per_second": len(fast) * 2, "count": 1})
    started = time.monotonic()
    slow = api.download(run)
    elapsed = time.monotonic() - started
    assert slow.content == fast
    assert int(slow.headers["content-length"]) == len(fast)
    assert 0.35 < elapsed < 3


def test_download_drop_server_error_and_stall(api):
    run = api.run("fragile download")
    _plan(
        api,
        {
            "endpoint": "download",
            "sequence": ["drop", {"fault": "server_error", "status": 503}, {"fault": "stall", "seconds": 5}],
        },
    )
    with pytest.raises(httpx.RemoteProtocolError):
        api.download(run)
    assert api.download(run).status_code == 503
    with pytest.raises(httpx.ReadTimeout):
        api.download(run, timeout=0.3)
    assert api.download(run).status_code == 200


def test_download_drop_after_cuts_the_image_mid_body(api):
    run = api.run("cut short")
    _plan(api, {"endpoint": "download", "fault": "drop", "phase": "after", "count": 1})
    with httpx.Client(trust_env=False) as client, client.stream("GET", run["output"]["outputs"][0]["url"]) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
