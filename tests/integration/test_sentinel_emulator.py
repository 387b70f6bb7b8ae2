"""The emulator's Sentinel on a real socket: the documented shapes, deterministic verdicts, idempotency,
the ledger (kind "evaluation"), the price from the job classes, faults, validation and credit."""

from __future__ import annotations

import base64
import io
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from PIL import Image


def png_uri(kind: str = "gradient", seed: int = 0) -> str:
    image = Image.new("RGB", (96, 64), (120, 120, 120))
    if kind == "gradient":
        image = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
        image.putpixel((seed % 96, 3), (255, 0, 0))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def client(emulator):
    with httpx.Client(
        base_url=emulator.base_url, headers={"Authorization": f"Bearer {emulator.api_key}"}, timeout=10
    ) as c:
        yield c


def submit(client: httpx.Client, key: str | None = None, **fields: Any) -> httpx.Response:
    body = {"generated_image_url": png_uri(), "task_type": "product", **fields}
    return client.post("/v1/evaluations", json=body, headers={"Idempotency-Key": key} if key else {})


def wait(client: httpx.Client, evaluation_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/evaluations/{evaluation_id}").json()
        if body["status_code"] in ("completed", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def test_the_job_classes_list_the_configured_price(emulator, client):
    answer = client.get("/v1/evaluations/job-classes")
    assert answer.status_code == 200
    assert answer.json()["items"][0] == {
        "code": "standard",
        "name": "Standard",
        "description": "Several judges; a verdict in tens of seconds",
        "price": "0.010",
        "currency_code": "USD",
        "is_active": True,
    }
    emulator.configure(evaluation_price_usd="0.0125")
    assert client.get("/v1/evaluations/job-classes").json()["items"][0]["price"] == "0.0125"
    assert {s["code"] for s in client.get("/v1/evaluations/statuses").json()["items"]} == {
        "pending",
        "running",
        "completed",
        "failed",
    }


def test_a_submission_is_accepted_pending_then_completed_with_a_verdict_and_billed_once(emulator, client):
    created = submit(client, key="k-1", generation_prompt="a white sneaker", client_ref="job-1")
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["status_code"] == "pending" and body["job_class_code"] == "standard" and body["client_ref"] == "job-1"
    assert body["cost"] is None and body["overall_passed"] is None
    assert body["generated_image_url"].startswith("runflow://assets/")  # a data: image is kept as an asset
    done = wait(client, body["id"])
    assert done["status_code"] == "completed" and done["overall_passed"] is True
    assert 0.70 <= done["weighted_pass_rate"] <= 0.97 and done["top_strengths"]
    assert done["cost"] == "0.010" and done["completed_at"] and done["eval_duration_ms"] is not None
    again = submit(client, key="k-1", generation_prompt="a white sneaker", client_ref="job-1")
    assert again.status_code == 202 and again.json()["id"] == body["id"]  # a replay, not a second evaluation
    ledger = emulator.ledger()
    assert ledger["entries"] == [
        {
            "kind": "evaluation",
            "evaluation_id": body["id"],
            "idempotency_key": "k-1",
            "client_ref": "job-1",
            "job_class": "standard",
            "cost": "0.010",
            "billed_at": done["completed_at"],
        }
    ]
    assert ledger["total_cost"] == "0.010"
    assert emulator.stats()["evaluations_created"] == 1


def test_the_same_key_with_another_body_is_a_conflict(client):
    assert submit(client, key="k-2", task_description="one").status_code == 202
    conflict = submit(client, key="k-2", task_description="two")
    assert conflict.status_code == 409 and conflict.json()["code"] == "CONFLICT"


def test_the_verdict_is_deterministic_and_the_marker_and_a_blank_image_fail(client):
    first = wait(client, submit(client, generation_prompt="a red kettle").json()["id"])
    second = wait(client, submit(client, generation_prompt="a red kettle").json()["id"])
    assert first["weighted_pass_rate"] == second["weighted_pass_rate"] and first["overall_passed"]
    marked = wait(client, submit(client, task_description="catalogue shot SENTINEL_FAIL").json()["id"])
    assert marked["overall_passed"] is False and "SENTINEL_FAIL" in marked["top_issues"][0]
    assert marked["cost"] == "0.010"  # a failing verdict is still a completed, billed evaluation
    blank = wait(client, submit(client, generated_image_url=png_uri("blank")).json()["id"])
    assert blank["overall_passed"] is False and blank["top_issues"][0] == "blank or near-uniform image"


def test_the_once_marker_fails_the_first_image_and_passes_a_different_one(client):
    prompt = "a blue teapot SENTINEL_FAIL_ONCE"
    first = wait(client, submit(client, generation_prompt=prompt, generated_image_url=png_uri(seed=1)).json()["id"])
    again = wait(client, submit(client, generation_prompt=prompt, generated_image_url=png_uri(seed=1)).json()["id"])
    other = wait(client, submit(client, generation_prompt=prompt, generated_image_url=png_uri(seed=2)).json()["id"])
    assert (first["overall_passed"], again["overall_passed"], other["overall_passed"]) == (False, False, True)


def test_a_loopback_image_url_is_fetched_and_judged(emulator, client):
    run = client.post("/v1/models/black-forest-labs/flux-2-pro/runs", json={"input": {"prompt": "x", "seed": 1}})
    run_id = run.json()["id"]
    deadline = time.monotonic() + 10
    while (body := client.get(f"/v1/runs/{run_id}").json())["status_code"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    url = body["output"]["outputs"][0]["url"]
    done = wait(client, submit(client, generated_image_url=url, run_id=run_id).json()["id"])
    assert done["status_code"] == "completed" and done["run_id"] == run_id and done["generated_image_url"] == url
    missing = url.replace(run_id, "00000000-0000-4000-8000-000000000000")
    failed = wait(client, submit(client, generated_image_url=missing).json()["id"])
    assert failed["status_code"] == "failed" and failed["failure_code"] == "IMAGE_UNREADABLE" and failed["cost"] is None
    assert [e["kind"] for e in emulator.ledger()["entries"]] == ["run", "evaluation"]  # the failed one is free


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"generated_image_url": "s3://bucket/a.png"}, ["generated_image_url"]),
        ({"generated_image_url": "/data/a.png"}, ["generated_image_url"]),
        ({"task_type": ""}, ["task_type"]),
        ({"reference_images": [{"url": "https://x.example/r.png"}] * 5}, ["reference_images"]),
        ({"reference_images": [{"url": "file:///r.png"}]}, ["reference_images", 0, "url"]),
        ({"run_id": "not-a-uuid"}, ["run_id"]),
        ({"job_class": "premium"}, ["job_class"]),
    ],
)
def test_a_request_the_api_cannot_take_is_a_422_naming_the_field(emulator, client, fields, loc):
    answer = submit(client, **fields)
    assert answer.status_code == 422 and answer.json()["errors"][0]["loc"] == loc
    assert emulator.stats()["evaluations_created"] == 0


def test_faults_apply_to_the_evaluation_endpoints(emulator, client):
    emulator.faults(
        {
            "rules": [
                {"endpoint": "create_evaluation", "fault": "server_error", "count": 1},
                {"endpoint": "get_evaluation", "fault": "rate_limit", "retry_after": 0, "count": 1},
                {"endpoint": "create_evaluation", "fault": "run_failure", "code": "JUDGE_UNAVAILABLE", "count": 1},
                {"endpoint": "create_evaluation", "fault": "low_score", "score": 0.2, "count": 1},
            ]
        }
    )
    assert submit(client, key="f-1").status_code == 500
    created = submit(client, key="f-1")
    assert created.status_code == 202
    assert client.get(f"/v1/evaluations/{created.json()['id']}").status_code == 429
    failed = wait(client, created.json()["id"])
    assert failed["status_code"] == "failed" and failed["failure_code"] == "JUDGE_UNAVAILABLE"
    low = wait(client, submit(client, key="f-2").json()["id"])
    assert low["overall_passed"] is False and low["weighted_pass_rate"] == 0.2
    fired = [(f["endpoint"], f["fault"]) for f in emulator.stats()["faults_fired"]]
    assert fired == [
        ("create_evaluation", "server_error"),
        ("create_evaluation", "run_failure"),
        ("get_evaluation", "rate_limit"),
        ("create_evaluation", "low_score"),
    ]
    with pytest.raises(ValueError, match="do not apply to evaluations"):
        emulator.faults({"rules": [{"endpoint": "create_evaluation", "fault": "nsfw"}]})


def test_the_balance_is_preflighted_and_counts_evaluations(emulator, client):
    emulator.configure(credit_usd="0.015")
    assert submit(client).status_code == 202
    refused = submit(client)
    assert refused.status_code == 402 and refused.json()["code"] == "INSUFFICIENT_CREDIT"
    assert Decimal(client.get("/v1/billing/balance").json()["balance"]) == Decimal("0.005")


def test_unknown_and_malformed_ids(client):
    assert client.get("/v1/evaluations/3c90c3cc-0d44-4b50-8888-8dd25736052a").status_code == 404
    assert client.get("/v1/evaluations/nope").status_code == 422
    assert httpx.get(f"{client.base_url}/v1/evaluations/job-classes").status_code == 401
