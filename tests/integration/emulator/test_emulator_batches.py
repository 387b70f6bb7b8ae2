"""Batches: one request, many real runs; partial success; the 422 that sends clients to single runs."""

from __future__ import annotations

import io
import uuid

import imagehash
import pytest
from PIL import Image


def _items(*prompts: str) -> list[dict]:
    return [{"prompt": prompt, "client_ref": f"ref-{i}", "seed": i} for i, prompt in enumerate(prompts)]


def test_batch_is_created_with_one_queued_item_per_input(api):
    response = api.create_batch(_items("one", "two", "three"), metadata={"dag_id": "d"})
    assert response.status_code == 201
    batch = response.json()
    assert uuid.UUID(batch["id"])
    assert batch["status_code"] == "queued"
    assert (batch["items_total"], batch["items_succeeded"], batch["items_failed"]) == (3, 0, 0)
    assert [item["sequence_index"] for item in batch["items"]] == [0, 1, 2]
    assert [item["client_ref"] for item in batch["items"]] == ["ref-0", "ref-1", "ref-2"]
    assert all(item["status_code"] == "queued" and uuid.UUID(item["run_id"]) for item in batch["items"])
    assert len({item["id"] for item in batch["items"]}) == 3
    assert response.headers["x-request-id"].startswith("req_")


def test_batch_items_are_real_runs_billed_and_pollable(api):
    batch = api.create_batch(_items("one", "two", "three"), key="b-1").json()
    done = api.wait_batch(batch["id"])
    assert done["status_code"] == "succeeded"
    assert (done["items_succeeded"], done["items_failed"]) == (3, 0)
    for item in done["items"]:
        run = api.get_run(item["run_id"])
        assert run["status_code"] == "succeeded"
        assert run["batch_id"] == batch["id"]
        assert run["client_ref"] == item["client_ref"]
        assert api.download(run).status_code == 200
    entries = api.emulator.ledger()["entries"]
    assert sorted(e["client_ref"] for e in entries) == ["ref-0", "ref-1", "ref-2"]
    assert {(e["batch_id"], e["idempotency_key"]) for e in entries} == {(batch["id"], "b-1")}
    stats = api.emulator.stats()
    assert (stats["batches_created"], stats["runs_created"]) == (1, 3)


def test_batch_items_endpoint_lists_full_runs_in_order(api):
    batch = api.create_batch(_items("alpha", "beta")).json()
    api.wait_batch(batch["id"])
    page = api.client.get(f"/v1/batches/{batch['id']}/items").json()
    items = page["items"]
    assert page["next_pq"] is None and page["prev_pq"] is None  # one page
    assert [item["sequence_index"] for item in items] == [0, 1]
    assert [item["run_id"] for item in items] == [i["run_id"] for i in batch["items"]]
    for item, lean in zip(items, batch["items"], strict=True):
        assert item["id"] == lean["id"] != item["run_id"]  # the item's own id, not the run's
        assert item["batch_id"] == batch["id"] and item["error"] is None
        assert item["status_code"] == "succeeded"
        assert item["output"]["outputs"][0]["url"]
        assert item["cost"] == "0.030"
        assert item["run"]["id"] == item["run_id"] and item["run"]["cost"] == "0.030"


def test_batch_items_are_cursor_paginated_as_documented(api):
    """``limit`` and ``pq`` in, ``items``/``next_pq``/``prev_pq`` out; pages hold at most 5 items here."""
    batch = api.create_batch(_items(*(f"p{i}" for i in range(12)))).json()
    first = api.client.get(f"/v1/batches/{batch['id']}/items", params={"limit": 500}).json()
    assert len(first["items"]) == 5 and first["next_pq"] and first["prev_pq"] is None  # fewer than asked
    second = api.client.get(f"/v1/batches/{batch['id']}/items", params={"pq": first["next_pq"]}).json()
    assert [i["sequence_index"] for i in second["items"]] == [5, 6, 7, 8, 9] and second["prev_pq"]
    third = api.client.get(f"/v1/batches/{batch['id']}/items", params={"pq": second["next_pq"]}).json()
    assert [i["sequence_index"] for i in third["items"]] == [10, 11] and third["next_pq"] is None
    small = api.client.get(f"/v1/batches/{batch['id']}/items", params={"limit": 2}).json()
    assert len(small["items"]) == 2
    bad = api.client.get(f"/v1/batches/{batch['id']}/items", params={"limit": 501})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["query", "limit"]
    assert api.client.get(f"/v1/batches/{batch['id']}/items", params={"pq": "nonsense"}).status_code == 422


def test_partial_success_when_some_items_fail(api):
    api.emulator.faults(
        {"rules": [{"endpoint": "create_batch", "fault": "run_failure", "match": {"prompt_contains": "broken"}}]}
    )
    batch = api.create_batch(_items("fine", "broken one", "also fine")).json()
    done = api.wait_batch(batch["id"])
    assert done["status_code"] == "partial_succeeded"
    assert (done["items_succeeded"], done["items_failed"]) == (2, 1)
    assert [item["status_code"] for item in done["items"]] == ["succeeded", "failed", "succeeded"]
    assert len(api.emulator.ledger()["entries"]) == 2


def test_all_items_failing_fails_the_batch(api):
    api.emulator.faults({"rules": [{"endpoint": "create_batch", "fault": "moderation"}]})
    done = api.wait_batch(api.create_batch(_items("a", "b")).json()["id"])
    assert done["status_code"] == "failed"
    assert api.emulator.ledger()["entries"] == []


def test_count_selects_the_first_items(api):
    api.emulator.faults({"rules": [{"endpoint": "create_batch", "fault": "low_score", "score": 0.2, "count": 1}]})
    batch = api.create_batch(_items("a", "b")).json()
    api.wait_batch(batch["id"])
    scores = [api.get_run(i["run_id"])["current_evaluation_summary"]["score"] for i in batch["items"]]
    assert scores[0] == 0.2 and scores[1] > 0.5


def test_duplicate_image_in_a_batch_copies_the_previous_item(api):
    api.emulator.faults({"rules": [{"endpoint": "create_batch", "fault": "duplicate_image", "count": 1, "after": 1}]})
    batch = api.create_batch(_items("first image", "second image")).json()
    api.wait_batch(batch["id"])
    first, second = (api.download(api.get_run(i["run_id"])).content for i in batch["items"])
    distance = imagehash.phash(Image.open(io.BytesIO(first))) - imagehash.phash(Image.open(io.BytesIO(second)))
    assert distance <= 8


def test_request_level_fault_on_batches_creates_nothing(api):
    api.emulator.faults({"rules": [{"endpoint": "create_batch", "fault": "server_error", "count": 1}]})
    assert api.create_batch(_items("a")).status_code == 500
    assert api.emulator.stats()["runs_created"] == 0


@pytest.mark.parametrize("count", [0, 101])
def test_batch_size_outside_1_to_100_is_422(api, count):
    response = api.create_batch([{"prompt": f"p{i}"} for i in range(count)])
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["input"]


def test_batch_of_100_is_accepted(api):
    response = api.create_batch([{"prompt": f"p{i}", "image_size": "square"} for i in range(100)])
    assert response.status_code == 201
    assert response.json()["items_total"] == 100


def test_invalid_item_is_422_naming_the_item_and_field(api):
    response = api.create_batch([{"prompt": "ok"}, {"prompt": "bad", "image_size": {"width": 5000, "height": 64}}])
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert errors[0]["loc"] == ["input", 1, "image_size", "width"]
    assert api.emulator.stats()["runs_created"] == 0


def test_item_client_ref_over_255_is_422(api):
    response = api.create_batch([{"prompt": "ok", "client_ref": "x" * 256}])
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["input", 0, "client_ref"]


def test_model_without_batch_support_answers_422_and_single_runs_still_work(api):
    api.emulator.configure(batch_unsupported_models=["flux-2-flex"])
    response = api.create_batch(_items("a", "b"), variant="flex")
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert body["errors"][0]["loc"] == ["model"]  # not an item: the client falls back to single runs
    assert api.create_run("a", variant="flex").status_code == 201
    assert api.create_batch(_items("a"), variant="pro").status_code == 201


def test_batch_over_the_credit_is_402(api):
    api.emulator.configure(credit_usd="0.05")
    response = api.create_batch(_items("a", "b"))
    assert response.status_code == 402
    assert response.json()["code"] == "INSUFFICIENT_CREDIT"
    assert api.emulator.stats()["runs_created"] == 0


def test_batch_status_runs_while_items_are_in_flight(api):
    api.emulator.configure(latency={"queued": 0.0, "dispatching": 0.0, "running": 1.0})
    batch = api.create_batch(_items("a", "b")).json()
    assert api.client.get(f"/v1/batches/{batch['id']}").json()["status_code"] == "running"
