"""An API that stops answering mid-batch: the wait rides it out until the task's deadline, on the
triggerer and in the worker, spends no try, and pays for nothing twice."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import pytest
from airflow.sdk import DAG

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

#: The wait's poll endpoints answer 503 this many times in a row (the API down while the batch runs):
#: with the test connection's five attempts per poll that is eight failed polls, well over the five
#: that used to end a wait. Collection, after the outage, meets an API that answers again.
OUTAGE = 40


def generate_dag(output: Path, deferrable: bool, **kwargs) -> DAG:
    """Six square images, polled fast, with no retry: a spent try would fail the run."""
    settings = {"prompts": [f"a teapot, view {i}" for i in range(6)], "max_in_flight": 6, "batch_size": 3, **kwargs}
    with DAG(f"t_outage_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            image_size="square",
            output_uri=output.as_uri(),
            poll_interval=0.02,
            progress_interval=0,
            deferrable=deferrable,
            retries=0,
            **settings,
        )
    return dag


@pytest.mark.parametrize("deferrable", [True, False])
def test_an_api_that_stops_answering_mid_batch_is_ridden_out(
    emulator, run_dag, xcom, task_states, tmp_path, capsys, deferrable
):
    rules = [
        {"endpoint": endpoint, "fault": "server_error", "status": 503, "count": OUTAGE}
        for endpoint in ("get_batch", "get_run")
    ]
    emulator.faults({"rules": rules})
    dr = run_dag(generate_dag(tmp_path, deferrable))
    assert task_states(dr) == {"generate": "success"}
    records = xcom(dr, "generate")
    assert [r["status"] for r in records] == ["succeeded"] * 6
    fired = [f for f in emulator.stats().get("faults_fired", []) if f.get("fault") == "server_error"]
    assert len(fired) >= OUTAGE  # the outage did happen
    ledger = emulator.ledger()["entries"]
    assert len(ledger) == 6 and len({e["run_id"] for e in ledger}) == 6  # nothing paid twice
    out = capsys.readouterr()
    assert "times in a row" not in out.out + out.err


@pytest.mark.parametrize("deferrable", [True, False])
def test_a_night_that_ends_on_its_deadline_still_writes_its_manifest_with_its_spend(
    emulator, run_dag, xcom, task_states, tmp_path, deferrable
):
    """A failed night is accounted for: the stored images with what they cost and the runs still at the
    API, in a manifest written before the task fails (the nightly template writes none of its own)."""
    import json

    from airflow_provider_flux2.operators.flux import XCOM_MANIFEST

    # Two runs at a time, two seconds each: of four, two finish and two are still running at 3 s.
    emulator.configure(fleet_size=2, latency={"queued": 0.05, "dispatching": 0.05, "running": 2.0})
    dag = generate_dag(
        tmp_path,
        deferrable,
        prompts=[f"a teapot {i}" for i in range(4)],
        max_in_flight=4,
        batch_size=None,
        use_batches=False,
        timeout=3,
        write_manifest=False,
    )
    dr = run_dag(dag)
    assert task_states(dr) == {"generate": "failed"}
    manifest_uri = xcom(dr, "generate", key=XCOM_MANIFEST)
    assert manifest_uri and manifest_uri.startswith("file://")
    manifest = json.loads(Path(manifest_uri[7:]).read_text())
    rows = manifest["images"]
    assert manifest["summary"]["total_cost_usd"] == "0.060"  # what was billed: the two stored images
    assert sorted(r["status"] for r in rows) == ["pending", "pending", "succeeded", "succeeded"]
    running = [r for r in rows if r["status"] == "pending"]
    assert all(r["failure_code"] == "STILL_RUNNING" and r["run_id"] for r in running)
    stored = [r for r in rows if r["status"] == "succeeded"]
    assert all(r["uri"] and r["cost_usd"] == "0.030" for r in stored)


def failed_manifest(dr, xcom) -> dict:
    import json

    from airflow_provider_flux2.operators.flux import XCOM_MANIFEST

    uri = xcom(dr, "generate", key=XCOM_MANIFEST)
    assert uri and uri.startswith("file://"), "a failed night writes its manifest"
    return json.loads(Path(uri[7:]).read_text())


def billed(emulator):
    from decimal import Decimal

    return sum((Decimal(e["cost"]) for e in emulator.ledger()["entries"]), Decimal(0))


def test_a_night_stopped_by_its_running_budget_writes_its_manifest_with_its_spend(
    emulator, run_dag, xcom, task_states, tmp_path
):
    from decimal import Decimal

    emulator.configure(prices={"pro": {"first_mp": "0.05", "extra_mp": "0.02"}})  # the API bills more than the table
    dag = generate_dag(
        tmp_path,
        False,
        max_in_flight=2,
        batch_size=None,
        use_batches=False,
        budget_usd="0.18",
        write_manifest=False,
    )
    dr = run_dag(dag)
    assert task_states(dr) == {"generate": "failed"}
    manifest = failed_manifest(dr, xcom)
    rows = manifest["images"]
    assert Decimal(manifest["summary"]["total_cost_usd"]) == billed(emulator) > 0
    stopped = [r for r in rows if r["status"] == "pending"]
    assert stopped and all(r["failure_code"] == "BUDGET_STOPPED" and not r["run_id"] for r in stopped)
    assert len([r for r in rows if r["status"] == "succeeded"]) == len(emulator.ledger()["entries"])


def test_a_night_the_api_refuses_midway_writes_its_manifest_with_its_spend(
    emulator, run_dag, xcom, task_states, tmp_path
):
    from decimal import Decimal

    # The first two single-run creates go through; every later one is refused for credit (402).
    emulator.faults(
        {
            "rules": [
                {
                    "endpoint": "create_run",
                    "fault": "http_error",
                    "status": 402,
                    "code": "INSUFFICIENT_CREDIT",
                    "after": 2,
                }
            ]
        }
    )
    dag = generate_dag(tmp_path, True, max_in_flight=2, batch_size=None, use_batches=False, write_manifest=False)
    dr = run_dag(dag)
    assert task_states(dr) == {"generate": "failed"}
    manifest = failed_manifest(dr, xcom)
    rows = manifest["images"]
    assert Decimal(manifest["summary"]["total_cost_usd"]) == billed(emulator) == Decimal("0.060")
    # The runs already at the API were waited for and collected, not left behind.
    assert [r["status"] for r in rows].count("succeeded") == 2
    # The refused creates made nothing (REFUSED); the ones behind them were never sent (NOT_SENT).
    codes = [r["failure_code"] for r in rows if r["status"] == "pending"]
    assert len(codes) == 4 and "REFUSED" in codes and set(codes) <= {"REFUSED", "NOT_SENT"}
    assert all(not r["run_id"] for r in rows if r["status"] == "pending")


def test_a_night_whose_runs_fail_writes_its_manifest_even_with_write_manifest_off(
    emulator, run_dag, xcom, task_states, tmp_path
):
    from decimal import Decimal

    emulator.faults(
        {
            "rules": [
                {
                    "endpoint": "create_batch",
                    "fault": "run_failure",
                    "code": "INTERNAL_ERROR",
                    "match": {"prompt_contains": "view 4"},
                }
            ]
        }
    )
    dag = generate_dag(tmp_path, True, resubmit_failed=0, write_manifest=False)
    dr = run_dag(dag)
    assert task_states(dr) == {"generate": "failed"}
    manifest = failed_manifest(dr, xcom)
    rows = manifest["images"]
    assert [r["status"] for r in rows].count("failed") == 1
    assert Decimal(manifest["summary"]["total_cost_usd"]) == billed(emulator) == Decimal("0.150")
