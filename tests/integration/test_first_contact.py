"""First contact with the real API's documented shapes, over real sockets: the balance as a budget,
a 409 race, pages of batch items, routing of references to edit models, ids as UUIDs."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from airflow.sdk import DAG

from airflow_provider_flux2.hooks import flux as hook_module
from airflow_provider_flux2.hooks.flux import BatchEntry, FluxHook
from airflow_provider_flux2.models import Variant, build_input
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

FAST = {"retry_base_delay": 0.02, "retry_max_delay": 0.2, "timeout": 5}


def hook_for(emulator) -> FluxHook:
    return FluxHook(api_key=emulator.api_key, base_url=emulator.base_url, extra=FAST)


def generate_dag(name: str, output: Path, **kwargs) -> DAG:
    with DAG(f"t_contact_{name}_{uuid.uuid4().hex[:6]}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        FluxGenerateImageOperator(
            task_id="generate", output_uri=output.as_uri(), poll_interval=0.02, progress_interval=0, **kwargs
        )
    return dag


# -- the balance is a budget ---------------------------------------------------------------------------


def test_the_balance_is_read_as_a_decimal(emulator):
    emulator.configure(credit_usd="1.25")
    assert hook_for(emulator).get_balance() == Decimal("1.250")


def test_a_missing_balance_endpoint_is_said_once_and_the_plan_goes_on(emulator, capsys):
    hook_module._SAID.clear()
    hook = hook_for(emulator)
    assert hook.get_balance() is None and hook.get_balance() is None  # no credit_usd: a 404 here
    out = capsys.readouterr()
    assert (out.out + out.err).count("credit balance cannot be read") == 1


@pytest.mark.parametrize("deferrable", [True, False])
def test_a_plan_above_the_balance_never_starts(emulator, run_dag, task_states, tmp_path, capsys, deferrable):
    emulator.configure(credit_usd="0.10")
    prompts = [f"a ceramic mug, view {i}" for i in range(5)]  # 5 × $0.030 = $0.150 > $0.10
    dr = run_dag(generate_dag("over", tmp_path, prompts=prompts, image_size="square", deferrable=deferrable))
    assert task_states(dr)["generate"] == "failed"
    out = capsys.readouterr()
    assert "credit balance of $0.100" in out.out + out.err and "$0.150" in out.out + out.err
    stats = emulator.stats()["requests"]
    assert stats.get("create_batch", 0) == stats.get("create_run", 0) == 0  # nothing was submitted


def test_the_plan_line_shows_the_balance_and_warn_goes_on(emulator, run_dag, tmp_path, capsys):
    emulator.configure(credit_usd="0.07")
    prompts = [f"a ceramic mug, view {i}" for i in range(3)]  # $0.090 > $0.07
    dag = generate_dag(
        "warn",
        tmp_path,
        prompts=prompts,
        image_size="square",
        deferrable=False,
        insufficient_balance_action="warn",
        on_run_failure="record",
    )
    run_dag(dag)
    out = capsys.readouterr()
    assert "balance $0.07" in out.out + out.err  # the plan line
    assert "going on: insufficient_balance_action='warn'" in out.out + out.err
    assert emulator.stats()["requests"].get("create_batch", 0) + emulator.stats()["requests"].get("create_run", 0)


def test_an_estimated_price_is_budgeted_at_its_highest_published_figure(emulator, run_dag, task_states, tmp_path):
    # klein 4B: $0.005/MP on its page, $0.014 in llms.txt. 10 images: $0.05 estimated, $0.14 budgeted.
    prompts = [f"a lamp {i}" for i in range(10)]
    dag = generate_dag("klein", tmp_path, prompts=prompts, model="klein-4b", image_size="square", budget_usd="0.10")
    dr = run_dag(dag)
    assert task_states(dr)["generate"] == "failed"
    assert emulator.stats()["requests"].get("create_batch", 0) == 0


# -- 409: a race is sent again, never billed twice ----------------------------------------------------


def test_a_create_racing_another_under_the_same_key_is_replayed_not_billed_twice(emulator):
    emulator.configure(create_delay=0.3)  # the first create holds its key for 0.3 s
    request = build_input("pro", prompt="a paper boat", image_size="square", seed=4)
    results: list[str] = []
    hooks = [
        FluxHook(api_key=emulator.api_key, base_url=emulator.base_url, extra={**FAST, "retry_base_delay": 0.2})
        for _ in range(2)
    ]
    start = threading.Barrier(2)

    def submit(hook: FluxHook) -> None:
        start.wait()
        results.append(hook.submit(request, idempotency_key="race-key").id)

    threads = [threading.Thread(target=submit, args=(hook,)) for hook in hooks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and results[0] == results[1]
    stats = emulator.stats()
    assert stats["runs_created"] == 1 and stats["requests"]["create_run"] >= 3  # one 409, sent again


# -- pages of batch items --------------------------------------------------------------------------------


def test_a_batch_of_twelve_is_read_back_across_pages_sync_and_async(emulator):
    hook = hook_for(emulator)
    entries = [
        BatchEntry(build_input("pro", prompt=f"shoe {i}", image_size="square"), f"ref-{i}", f"k-page-{i}")
        for i in range(12)
    ]
    submission = hook.create_batch(entries, model=Variant.PRO, batch_key="page-batch", metadata=None)
    for run_id in submission.run_ids:
        hook.wait(run_id, poll_interval=0.02)
    runs = hook.get_batch_items(submission.batch_id)
    assert [r.id for r in runs] == submission.run_ids  # three pages of at most 5, in order
    assert all(r.cost == Decimal("0.030") for r in runs)

    async def read() -> list:
        ahook = hook_for(emulator)
        try:
            return await ahook.aget_batch_items(submission.batch_id)
        finally:
            await ahook.aclose()

    assert [r.id for r in asyncio.run(read())] == submission.run_ids
    assert emulator.stats()["requests"]["get_batch_items"] == 6


def test_a_task_of_twenty_in_batches_of_eight_collects_every_image(emulator, run_dag, xcom, tmp_path):
    """Batches larger than a page: collection and the running budget follow next_pq."""
    prompts = [f"product {i}" for i in range(20)]
    dag = generate_dag(
        "pages", tmp_path, prompts=prompts, image_size="square", max_in_flight=16, batch_size=8, budget_usd="5"
    )
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "generate")
    assert [r["status"] for r in records] == ["succeeded"] * 20
    assert all(r["api_cost_usd"] == "0.030" for r in records)


# -- references go where the API takes them ------------------------------------------------------------


def test_klein_references_go_to_the_edit_model_priced_per_image(emulator, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (1600, 1200), (30, 90, 160)).save(photo)
    hook = hook_for(emulator)
    estimate = hook.estimate([("klein-4b", build_input("klein-4b", prompt="restyle", image_urls=[str(photo)]))])
    (item,) = estimate.items
    assert item.model == "black-forest-labs/flux-2-klein-4b/edit" and item.cost == Decimal("0.005")
    _run, image = hook.generate(
        "restyle it as a watercolour", model="klein-4b", image_urls=[str(photo)], poll_interval=0.02
    )
    assert (image.width, image.height, image.format) == (1024, 1024, "jpeg")
    (entry,) = emulator.ledger()["entries"]
    assert entry["model"] == "black-forest-labs/flux-2-klein-4b/edit" and entry["cost"] == "0.005"


def test_the_doctors_record_routes_references(emulator):
    """``edit_models`` (what flux2 doctor recorded) wins over the table: here back to the text-to-image model."""
    extra = {**FAST, "edit_models": {"klein-9b": "black-forest-labs/flux-2-klein-9b/edit"}}
    hook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url, extra=extra)
    plan = hook.estimate([("klein-9b", build_input("klein-9b", prompt="p", image_urls=["https://x.test/a.png"]))])
    assert plan.items[0].model == "black-forest-labs/flux-2-klein-9b/edit"
    assert plan.items[0].cost == Decimal("0.011") * 2  # 1 MP out + 1 MP reference, input and output billed
    assert not plan.unverified_routes
