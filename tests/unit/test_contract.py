"""Contract tests: Runflow's documented JSON examples parsed, and documented request shapes built.

The response bodies below are the API reference's examples (docs.runflow.io: api-reference/models/
create-and-dispatch-a-singleton-model-run, create-and-dispatch-a-batch, batches/get-batch-detail,
batches/list-batch-items-with-live-execution-state, account/get-organization-credit-balance,
concepts/errors, concepts/requests), copied field for field. Where the page shows a type placeholder
(``"<string>"`` for a status or a decimal-string cost, ``123``) a value of that type is put in its place,
so each test reads the documented *shape*; nothing the emulator alone sends is relied on.
"""

from __future__ import annotations

import copy
import logging
from decimal import Decimal

import pytest

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import FluxConflictError, FluxInsufficientCreditError, FluxRateLimitError
from airflow_provider_flux2.models import Batch, RunStatus, Variant, build_input, for_route, target_model, wire_for

UUID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
RUN_ID = "0b1f7e1e-5c7a-4d0e-9f57-6a8f1c2d3e4f"
ITEM_ID = "7d2c1a90-3b4e-4f6a-8c1d-2e3f4a5b6c7d"

#: api-reference/models/create-and-dispatch-a-singleton-model-run, response (status and cost typed).
RUN = {
    "id": RUN_ID,
    "flow_id": UUID,
    "model_id": UUID,
    "comfyui_workflow_id": UUID,
    "target_type": "model",
    "target_version": "<string>",
    "org_id": UUID,
    "status_code": "queued",
    "source_code": "playground",
    "input": {},
    "output": {},
    "context": {},
    "duration_ms": 123,
    "cost": None,
    "cost_breakdown": {},
    "nodes_total": 123,
    "nodes_completed": 123,
    "resolved_template_id": UUID,
    "batch_id": UUID,
    "client_ref": "<string>",
    "jurisdiction_code": "<string>",
    "flow_version_id": UUID,
    "request_id": "<string>",
    "created_by": UUID,
    "created_at": "2023-11-07T05:31:56Z",
    "started_at": "2023-11-07T05:31:56Z",
    "completed_at": "2023-11-07T05:31:56Z",
    "callback_url": "<string>",
    "metadata": {},
    "has_logs": True,
    "has_node_runs": True,
    "links": {},
    "failure_code": "<string>",
    "failure_message": "<string>",
    "failure_stage_code": "dispatch",
    "node_runs": [{"id": UUID, "run_id": RUN_ID, "node_id": UUID, "state_code": "<string>", "cost": "<string>"}],
}
#: The lean item of a batch (create response, get-batch-detail).
LEAN_ITEM = {"id": ITEM_ID, "sequence_index": 0, "run_id": RUN_ID, "status_code": "<string>", "client_ref": "a"}
#: api-reference/models/create-and-dispatch-a-batch, response.
BATCH_CREATED = {
    "id": UUID,
    "target_type": "<string>",
    "target_id": UUID,
    "status_code": "<string>",
    "items_total": 123,
    "items_succeeded": 123,
    "items_failed": 123,
    "items_cancelled": 123,
    "items": [LEAN_ITEM],
    "created_at": "2023-11-07T05:31:56Z",
    "output": {},
    "cost": "<string>",
    "metadata": {},
    "callback_url": "<string>",
    "started_at": "2023-11-07T05:31:56Z",
    "completed_at": "2023-11-07T05:31:56Z",
}
#: api-reference/batches/list-batch-items-with-live-execution-state: one item of ``items``.
FULL_ITEM = {
    "id": ITEM_ID,
    "batch_id": UUID,
    "sequence_index": 123,
    "run_id": RUN_ID,
    "created_at": "2023-11-07T05:31:56Z",
    "client_ref": "<string>",
    "status_code": "<string>",
    "input": {},
    "cost": "<string>",
    "output": {},
    "error": {},
    "started_at": "2023-11-07T05:31:56Z",
    "completed_at": "2023-11-07T05:31:56Z",
    "run": RUN,
}
#: api-reference/account/get-organization-credit-balance.
BALANCE = {
    "id": UUID,
    "org_id": UUID,
    "balance": "<string>",
    "low_balance_threshold": "<string>",
    "low_balance_notified_at": "2023-11-07T05:31:56Z",
    "created_at": "2023-11-07T05:31:56Z",
    "updated_at": "2023-11-07T05:31:56Z",
}


def typed(body: dict, **values: object) -> dict:
    """The example with its placeholders replaced by values of their documented types."""
    out = copy.deepcopy(body)
    out.update(values)
    return out


def test_the_documented_run_object_parses_ignoring_what_we_do_not_use():
    run = protocol.parse_run(typed(RUN, status_code="succeeded", cost="0.045"))
    assert (run.id, run.status_code, run.cost, run.batch_id) == (RUN_ID, RunStatus.SUCCEEDED, Decimal("0.045"), UUID)
    assert run.failure_stage_code == "dispatch" and run.terminal
    assert run.output is None  # ``output: {}``: nothing to read yet


@pytest.mark.parametrize("cost", ["0.045", 0.045, "0.0450"])
def test_a_cost_is_read_exactly_as_a_decimal_string_or_a_json_number(cost):
    assert protocol.parse_run(typed(RUN, status_code="succeeded", cost=cost)).cost == Decimal("0.045")


def test_the_errors_page_spelling_of_a_failed_run_is_read_too():
    # concepts/errors: {"id", "status", "failure_code", "failure_stage", "failure_message"}.
    failed = {"id": RUN_ID, "status_code": "failed", "failure_code": "INPUT_VALIDATION_FAILED"}
    run = protocol.parse_run({**failed, "failure_stage": "preprocess", "failure_message": "too big"})
    assert run.failure_stage_code == "preprocess" and protocol.failure_of(run) is not None


@pytest.mark.parametrize("spelling", ["canceled", "cancelled", "CANCELLED"])
def test_canceled_and_cancelled_both_end_a_run(spelling):
    run = protocol.parse_run(typed(RUN, status_code=spelling))
    assert run.status_code is RunStatus.CANCELED and run.terminal


def test_an_undocumented_status_is_not_finished_and_logged_once(caplog):
    caplog.set_level(logging.WARNING)
    first = protocol.parse_run(typed(RUN, status_code="awaiting_gpu_zz"))
    second = protocol.parse_run(typed(RUN, status_code="awaiting_gpu_zz"))
    assert first.status_code is second.status_code is RunStatus.UNKNOWN and not first.terminal
    assert caplog.text.count("awaiting_gpu_zz") == 1


def test_missing_optional_fields_never_fail_a_parse():
    run = protocol.parse_run({"id": RUN_ID})
    assert run.status_code is RunStatus.UNKNOWN and run.cost is None and not run.terminal
    odd = protocol.parse_run({"id": RUN_ID, "status_code": "running", "duration_ms": "n/a", "metadata": []})
    assert odd.duration_ms is None and odd.metadata is None


def test_the_documented_batch_create_answer_gives_run_ids_and_an_open_status():
    batch = protocol.parse_batch(typed(BATCH_CREATED, status_code="processing_v2", items=[LEAN_ITEM]))
    assert batch.status_code == "processing_v2"  # an open string: informative only
    assert [i.run_id for i in batch.items] == [RUN_ID] and batch.items[0].id == ITEM_ID != RUN_ID
    assert not batch.terminal  # the item's "<string>" status is not a documented one: not finished


def test_a_batch_is_done_when_its_items_are_whatever_its_own_status_says():
    items = [dict(LEAN_ITEM, status_code="succeeded"), dict(LEAN_ITEM, sequence_index=1, status_code="cancelled")]
    assert Batch.model_validate(typed(BATCH_CREATED, status_code="running", items=items)).terminal
    assert not Batch.model_validate(typed(BATCH_CREATED, status_code="succeeded", items=[])).terminal


def test_a_page_of_items_reads_the_nested_run_and_the_next_cursor():
    item = typed(FULL_ITEM, status_code="succeeded", cost="0.030")
    item["run"] = typed(RUN, status_code="succeeded", cost="0.030")
    page = protocol.parse_batch_items({"items": [item], "next_pq": "cursor-2", "prev_pq": None})
    (run,) = page.runs
    assert run.id == RUN_ID != ITEM_ID and run.cost == Decimal("0.030") and page.next == "cursor-2"
    assert protocol.next_items_request(UUID, page, set()).path.endswith("pq=cursor-2")


def test_an_item_without_its_nested_run_is_read_from_its_own_fields_and_error_object():
    item = typed(FULL_ITEM, status_code="failed", cost=None, error={"code": "GENERATION_FAILED", "message": "oom"})
    del item["run"]
    (run,) = protocol.parse_batch_items({"items": [item]}).runs
    assert run.id == RUN_ID and run.status_code is RunStatus.FAILED
    assert (run.failure_code, run.failure_message) == ("GENERATION_FAILED", "oom")
    assert protocol.parse_batch_items({"items": [typed(FULL_ITEM, run_id=None, run=None)]}).runs == []


@pytest.mark.parametrize(
    ("body", "cursor"),
    [
        ({"items": [], "next_pq": "abc"}, "abc"),
        ({"items": [], "next": "/v1/batches/x/items?limit=500&pq=def"}, "def"),
        ({"items": [], "next_pq": None}, None),
        ({"items": [], "next_pq": "abc", "has_more": False}, None),
        ([], None),
    ],
)
def test_every_spelling_of_the_next_page_is_followed(body, cursor):
    assert protocol.parse_batch_items(body).next == cursor


def test_a_repeated_cursor_ends_the_paging():
    page = protocol.ItemsPage(runs=[], next="same")
    seen: set[str] = set()
    assert protocol.next_items_request(UUID, page, seen) is not None
    assert protocol.next_items_request(UUID, page, seen) is None


def test_the_documented_balance_is_a_decimal_string():
    assert protocol.parse_balance(typed(BALANCE, balance="12.340000")) == Decimal("12.34")
    assert protocol.parse_balance(typed(BALANCE, balance="-1")) is None
    assert protocol.parse_balance(BALANCE) is None  # "<string>": not a figure
    assert protocol.get_balance().path == "/v1/billing/balance"


@pytest.mark.parametrize(
    ("body", "ok"),
    [({"status": "ok"}, True), ({"ok": True}, True), ({}, True), (None, True), ({"status": "degraded"}, False)],
)
def test_the_health_body_is_read_tolerantly(body, ok):
    assert protocol.health_ok(body) is ok


def test_a_replay_is_recognised_by_its_created_at_not_a_header():
    sent = protocol.parse_instant("2026-12-06T12:00:00Z")
    assert protocol.was_replayed({"created_at": "2026-12-06T11:00:00Z"}, sent)
    assert not protocol.was_replayed({"created_at": "2026-12-06T11:59:59Z"}, sent)
    assert not protocol.was_replayed({"id": RUN_ID}, sent)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (409, "CONFLICT", FluxConflictError),
        (402, "INSUFFICIENT_CREDIT", FluxInsufficientCreditError),
        (429, "RATE_LIMITED", FluxRateLimitError),
    ],
)
def test_the_documented_error_envelope_names_code_and_request_id(status, code, kind):
    body = b'{"code": "%s", "message": "see the docs", "errors": null}' % code.encode()
    error = protocol.error_from_response(status, {"X-Request-Id": "req-9"}, body)
    assert isinstance(error, kind) and error.code == code and error.request_id == "req-9"


# -- requests, as documented -------------------------------------------------------------------------


def test_a_run_is_created_with_the_documented_body():
    request = build_input("pro", prompt="a mug", image_size="1920x1080", seed=1)
    built = protocol.create_run("pro", request, idempotency_key="k", client_ref="c", metadata={"dag_id": "d"})
    assert built.path == "/v1/models/black-forest-labs/flux-2-pro/runs"
    assert set(built.json) == {"input", "metadata", "client_ref"} and built.headers == {"Idempotency-Key": "k"}
    assert built.json["input"]["image_size"] == {"width": 1920, "height": 1080}


def test_a_batch_is_created_with_flat_items_carrying_their_client_ref():
    items = [(build_input("pro", prompt=f"p{i}"), f"ref-{i}") for i in range(2)]
    built = protocol.create_batch("pro", items, idempotency_key="bk")
    assert built.path == "/v1/models/black-forest-labs/flux-2-pro/batches"
    assert [item["client_ref"] for item in built.json["input"]] == ["ref-0", "ref-1"]
    assert all("input" not in item and item["prompt"] for item in built.json["input"])


def test_references_go_to_the_edit_model_where_runflow_documents_one():
    assert target_model(Variant.KLEIN_4B, True) == ("black-forest-labs/flux-2-klein-4b/edit", True)
    assert target_model(Variant.KLEIN_9B, True) == ("black-forest-labs/flux-2-klein-9b/edit", True)
    assert target_model(Variant.PRO, True) == ("black-forest-labs/flux-2-pro", False)  # unverified
    assert target_model(Variant.PRO, False) == ("black-forest-labs/flux-2-pro", True)
    recorded = {"pro": "black-forest-labs/flux-2-pro/edit"}
    assert target_model(Variant.PRO, True, recorded) == ("black-forest-labs/flux-2-pro/edit", True)


def test_the_klein_4b_edit_model_gets_only_its_documented_fields():
    target = "black-forest-labs/flux-2-klein-4b/edit"
    request = for_route(
        target, build_input("klein-4b", prompt="restyle", image_urls=["https://x/a.png"], seed=3, num_inference_steps=6)
    )
    assert (request.width, request.height, request.output_format) == (1024, 1024, "jpeg")
    built = protocol.create_run(target, request, idempotency_key="k")
    assert built.path == f"/v1/models/{target}/runs"
    assert built.json["input"] == {"prompt": "restyle", "image_urls": ["https://x/a.png"], "seed": 3, "steps": 6}
    assert wire_for("black-forest-labs/flux-2-pro", {"prompt": "p", "image_size": "square"})["image_size"] == "square"


def test_a_size_the_klein_4b_edit_model_cannot_answer_is_refused_naming_the_field():
    from airflow_provider_flux2.exceptions import FluxValidationError

    asked = build_input("klein-4b", prompt="p", image_urls=["https://x/a.png"], image_size="1920x1080")
    with pytest.raises(FluxValidationError, match=r"image_size.*1024x1024"):
        for_route("black-forest-labs/flux-2-klein-4b/edit", asked)
