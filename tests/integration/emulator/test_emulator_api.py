"""The emulator's /v1 endpoints and error codes, over a real socket with plain httpx."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime

import httpx
import pytest

PRO = "/v1/models/black-forest-labs/flux-2-pro"
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _envelope(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "errors"}
    assert body["code"] == code
    assert body["message"]
    assert response.headers["x-request-id"].startswith("req_")
    return body


def test_health_answers_without_a_key(emulator):
    response = httpx.get(f"{emulator.base_url}/v1/health", trust_env=False)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"].startswith("req_")


def test_request_ids_are_unique_per_response(api):
    ids = {api.client.get("/v1/health").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_missing_bearer_token_is_401(emulator):
    response = httpx.post(f"{emulator.base_url}{PRO}/runs", json={"input": {"prompt": "x"}}, trust_env=False)
    _envelope(response, 401, "UNAUTHORIZED")


@pytest.mark.parametrize("header", ["Bearer wrong-key", "Basic abc", "Bearer"])
def test_bad_authorization_is_401(emulator, header):
    response = httpx.get(f"{emulator.base_url}/v1/runs/run_x", headers={"Authorization": header}, trust_env=False)
    _envelope(response, 401, "UNAUTHORIZED")


def test_unknown_model_is_404_model_not_found(api):
    response = api.client.post("/v1/models/black-forest-labs/flux-3-ultra/runs", json={"input": {"prompt": "x"}})
    body = _envelope(response, 404, "MODEL_NOT_FOUND")
    assert "black-forest-labs/flux-2-pro" in body["message"]


def test_malformed_json_is_400_bad_request(api):
    response = api.client.post(
        f"{PRO}/runs", content=b'{"input": {"prompt": ', headers={"Content-Type": "application/json"}
    )
    _envelope(response, 400, "BAD_REQUEST")


@pytest.mark.parametrize(
    ("fields", "loc", "value"),
    [
        ({"image_size": {"width": 10, "height": 512}}, ["input", "image_size", "width"], 10),
        ({"image_size": "huge"}, ["input", "image_size"], "huge"),
        ({"output_format": "gif"}, ["input", "output_format"], "gif"),
        ({"safety_tolerance": "9"}, ["input", "safety_tolerance"], "9"),
        ({"num_inference_steps": 20}, ["input", "num_inference_steps"], 20),
        ({"colour": "red"}, ["input", "colour"], "red"),
        # typed JSON: the API refuses rather than coerces
        ({"seed": "42"}, ["input", "seed"], "42"),
        ({"seed": True}, ["input", "seed"], True),
        ({"enable_safety_checker": "yes"}, ["input", "enable_safety_checker"], "yes"),
        ({"enable_safety_checker": 0}, ["input", "enable_safety_checker"], 0),
        ({"sync_mode": "true"}, ["input", "sync_mode"], "true"),
        ({"safety_tolerance": 2}, ["input", "safety_tolerance"], 2),
    ],
)
def test_invalid_input_is_422_naming_the_field(api, fields, loc, value):
    body = _envelope(api.create_run("a cat", **fields), 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == loc
    assert body["errors"][0]["input"] == value
    assert body["errors"][0]["msg"]


def test_flex_steps_must_be_a_json_integer(api):
    flex = "/v1/models/black-forest-labs/flux-2-flex/runs"
    response = api.client.post(flex, json={"input": {"prompt": "a cat", "num_inference_steps": "5"}})
    body = _envelope(response, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["input", "num_inference_steps"]
    assert "integer" in body["errors"][0]["msg"]


def test_missing_prompt_is_422(api):
    response = api.client.post(f"{PRO}/runs", json={"input": {"image_size": "square"}})
    body = _envelope(response, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["input", "prompt"]


def test_body_without_input_object_is_422(api):
    body = _envelope(api.client.post(f"{PRO}/runs", json={"prompt": "x"}), 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["input"]


def test_client_ref_longer_than_255_is_422(api):
    body = _envelope(api.create_run("a cat", client_ref="r" * 256), 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["client_ref"]
    assert api.create_run("a cat", client_ref="r" * 255).status_code == 201


def test_disabled_model_is_403_permission_denied(api):
    api.emulator.configure(disabled_models=["max"])
    _envelope(api.create_run("a cat", variant="max"), 403, "PERMISSION_DENIED")
    assert api.create_run("a cat", variant="pro").status_code == 201


def test_exhausted_credit_is_402_insufficient_credit(api):
    api.emulator.configure(credit_usd="0.05")
    assert api.create_run("first", seed=1).status_code == 201  # $0.030 of $0.05
    body = _envelope(api.create_run("second", seed=1), 402, "INSUFFICIENT_CREDIT")
    assert "0.020" in body["message"]
    assert api.emulator.stats()["runs_created"] == 1


def test_unknown_run_is_404_run_not_found(api):
    _envelope(api.client.get(f"/v1/runs/{uuid.uuid4()}"), 404, "RUN_NOT_FOUND")
    # Ids are UUIDs (string<uuid> path parameters): a malformed one is a 422 naming the path parameter.
    bad = _envelope(api.client.get("/v1/runs/run_does_not_exist"), 422, "VALIDATION_ERROR")
    assert bad["errors"][0]["loc"] == ["path", "run_id"]


def test_unknown_batch_is_404(api):
    _envelope(api.client.get(f"/v1/batches/{uuid.uuid4()}"), 404, "BATCH_NOT_FOUND")
    _envelope(api.client.get("/v1/batches/batch_nope"), 422, "VALIDATION_ERROR")
    _envelope(api.client.get(f"/v1/batches/{uuid.uuid4()}/items"), 404, "BATCH_NOT_FOUND")


def test_unknown_path_and_wrong_method_answer_the_envelope(api):
    _envelope(api.client.get("/v1/nothing-here"), 404, "NOT_FOUND")
    _envelope(api.client.delete("/v1/health"), 405, "METHOD_NOT_ALLOWED")


def test_create_answers_201_with_a_queued_run(api):
    response = api.create_run("a lighthouse at dusk", seed=3, client_ref="ref-1", metadata={"dag_id": "d"})
    assert response.status_code == 201
    run = response.json()
    assert uuid.UUID(run["id"])  # ids are UUIDs
    assert "object" not in run and "model" not in run  # nothing the real API does not send
    assert run["status_code"] == "queued"
    assert run["output"] is None
    assert run["client_ref"] == "ref-1"
    assert run["metadata"] == {"dag_id": "d"}
    assert run["input"]["prompt"] == "a lighthouse at dusk"
    assert response.headers["x-request-id"].startswith("req_")


def test_run_moves_through_every_phase_in_order(api):
    api.emulator.configure(latency={"queued": 0.15, "dispatching": 0.15, "running": 0.15})
    run_id = api.create_run("phases").json()["id"]
    seen = []
    deadline = time.monotonic() + 5
    while not seen or seen[-1] != "succeeded":
        status = api.get_run(run_id)["status_code"]
        if not seen or seen[-1] != status:
            seen.append(status)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert seen == ["queued", "dispatching", "running", "succeeded"]


def test_succeeded_run_carries_the_protocol_fields(api):
    run = api.run("a bowl of ramen, top view", seed=42, image_size="square_hd", output_format="png")
    assert run["status_code"] == "succeeded"
    output = run["output"]
    assert output["seed"] == 42
    assert output["has_nsfw_concepts"] == [False]
    assert output["prompt"].startswith("a bowl of ramen, top view")
    (image,) = output["outputs"]
    assert image["type"] == "image"
    assert image["content_type"] == "image/png"
    assert (image["width"], image["height"]) == (1024, 1024)
    assert "expires=" in image["url"] and "sig=" in image["url"]
    assert run["cost"] == "0.030"
    assert run["cost_breakdown"]["total"] == "0.030"
    for name in ("created_at", "started_at", "completed_at"):
        assert ISO_UTC.match(run[name]), run[name]
    created, started, completed = (
        datetime.fromisoformat(run[n].replace("Z", "+00:00")) for n in ("created_at", "started_at", "completed_at")
    )
    assert created <= started <= completed
    assert run["duration_ms"] == pytest.approx((completed - started).total_seconds() * 1000, abs=2)
    assert 0 <= run["current_evaluation_summary"]["score"] <= 1
    assert set(run["current_evaluation_summary"]) == {"passed", "status_code", "score"}
    assert run["failure_code"] is None and run["failure_message"] is None and run["failure_stage_code"] is None


@pytest.mark.parametrize(
    ("variant", "size", "cost"),
    [
        ("pro", {"width": 1024, "height": 1024}, "0.030"),
        ("pro", {"width": 1920, "height": 1080}, "0.045"),
        ("pro", {"width": 2048, "height": 2048}, "0.075"),
        ("pro", {"width": 4096, "height": 4096}, "0.255"),
        ("flex", {"width": 1920, "height": 1080}, "0.100"),
        ("max", "square", "0.070"),
        ("turbo", "landscape_16_9", "0.008"),
    ],
)
def test_cost_comes_from_the_price_table(api, variant, size, cost):
    run = api.run("priced", variant=variant, image_size=size)
    assert run["status_code"] == "succeeded"
    assert run["cost"] == cost
    assert api.emulator.ledger()["entries"][0]["cost"] == cost


def test_price_overrides_from_config(api):
    api.emulator.configure(prices={"pro": {"first_mp": "0.04", "extra_mp": "0.02"}})
    assert api.run("priced", image_size={"width": 1920, "height": 1080})["cost"] == "0.060"


def test_reference_images_are_billed(api):
    run = api.run("with references", image_urls=["https://example.com/a.png", "https://example.com/b.png"])
    assert run["cost"] == "0.060"  # 1 MP output + 2 × 1 MP references at $0.015
    assert api.emulator.ledger()["entries"][0]["reference_mp"] == 2


def test_a_seed_not_given_is_chosen_and_reported(api):
    first, second = api.run("unseeded"), api.run("unseeded")
    assert isinstance(first["output"]["seed"], int)
    assert first["output"]["seed"] != second["output"]["seed"]


def test_pro_upsamples_the_prompt_and_flex_keeps_it(api):
    pro = api.run("a red bicycle", variant="pro")["output"]["prompt"]
    flex = api.run("a red bicycle", variant="flex", guidance_scale=3.5, num_inference_steps=28)["output"]["prompt"]
    assert pro.startswith("a red bicycle") and len(pro) > len("a red bicycle") + 20
    assert pro == api.run("a red bicycle", variant="max")["output"]["prompt"]  # deterministic rewording
    assert flex == "a red bicycle"


def test_json_prompts_are_accepted(api):
    run = api.run({"scene": "a harbour", "style": "watercolour"})
    assert run["status_code"] == "succeeded"
    assert run["input"]["prompt"] == '{"scene":"a harbour","style":"watercolour"}'


def test_config_reads_updates_partially_and_refuses_unknown_keys(api):
    config = api.client.get("/_emulator/config").json()
    assert config["url_ttl"] == 600.0 and config["moderation_marker"] == "NSFW_TEST"
    updated = api.client.post("/_emulator/config", json={"url_ttl": 5}).json()
    assert updated["url_ttl"] == 5 and updated["moderation_marker"] == "NSFW_TEST"
    body = _envelope(api.client.post("/_emulator/config", json={"no_such_key": 1}), 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["config", "no_such_key"]
    _envelope(api.client.post("/_emulator/config", json={"fleet_size": 0}), 422, "VALIDATION_ERROR")
    assert api.client.get("/_emulator/config").json()["url_ttl"] == 5


def test_reset_forgets_runs_ledger_and_config(api):
    api.emulator.configure(url_ttl=3)
    run = api.run("to be forgotten")
    assert api.emulator.ledger()["entries"]
    api.emulator.reset()
    assert api.emulator.ledger() == {
        "entries": [],
        "total_cost": "0.000",
        "credit_usd": None,
        "remaining_credit_usd": None,
    }
    assert api.emulator.stats()["runs_created"] == 0
    assert api.emulator.get_config()["url_ttl"] == 600.0
    assert api.client.get(f"/v1/runs/{run['id']}").status_code == 404


def test_stats_count_requests_per_endpoint(api):
    run = api.run("counted")
    api.download(run)
    stats = api.emulator.stats()
    assert stats["requests"]["create_run"] == 1
    assert stats["requests"]["get_run"] >= 1
    assert stats["requests"]["download"] == 1
    assert stats["runs_created"] == 1
    assert stats["runs_by_status"] == {"succeeded": 1}


@pytest.mark.parametrize(("variant", "cost"), [("klein-4b", "0.005"), ("klein-9b", "0.006")])
def test_klein_runs_are_billed_from_the_price_table(api, variant, cost):
    run = api.run("a bowl of ramen", variant=variant, image_size="square_hd", num_inference_steps=4)
    assert run["status_code"] == "succeeded"
    assert run["cost"] == cost
    assert run["output"]["prompt"] == "a bowl of ramen"  # klein does not upsample


def test_klein_safety_tolerance_is_422_naming_the_field(api):
    response = api.create_run("x", variant="klein-4b", safety_tolerance="2")
    body = _envelope(response, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["input", "safety_tolerance"]


@pytest.mark.parametrize("reference", ["s3://bucket/photo.jpg", "file:///tmp/photo.jpg", "/tmp/photo.jpg"])
def test_unresolved_storage_references_are_422_on_the_wire(api, reference):
    response = api.create_run("x", image_urls=["https://example.com/a.png", reference])
    body = _envelope(response, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["input", "image_urls", 1]


def test_loopback_references_are_fetched_and_measured(api, emulator):
    # An earlier run's output (a loopback URL, 1024x1024 → 1 MP) and a 2048x1024 one (2 MP) as references.
    small = api.run("small", image_size="square_hd")["output"]["outputs"][0]["url"]
    large = api.run("large", image_size={"width": 2048, "height": 1024})["output"]["outputs"][0]["url"]
    run = api.run("with both", image_size="square_hd", image_urls=[small, large])
    assert run["cost"] == "0.075"  # $0.030 + 3 MP of references × $0.015
    assert emulator.ledger()["entries"][-1]["reference_mp"] == 3


def test_loopback_reference_that_cannot_be_fetched_is_422(api, emulator):
    response = api.create_run("x", image_urls=[f"{emulator.base_url}/_files/run_nope/0.jpg?sig=x"])
    body = _envelope(response, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["input", "image_urls", 0]
    assert "HTTP 403" in body["errors"][0]["msg"]
    assert "sig=" not in response.text
