"""The API forgets an Idempotency-Key (Runflow documents no retention): a retried or cleared task still pays
for nothing twice. It waits for the runs an earlier try recorded — a batch's by its ``/items``, a single
run by its id — instead of sending them again under keys the API no longer knows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from airflow.sdk import DAG

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator


class CrashAfterStoring(FluxGenerateImageOperator):
    """Dies on its first try after every image was stored, before the report."""

    def _finish(self, context, plan, records, *args):
        if context["ti"].try_number == 1:
            raise RuntimeError("simulated crash before the report")
        return super()._finish(context, plan, records, *args)


def billed(emulator) -> Decimal:
    return sum((Decimal(e["cost"]) for e in emulator.ledger()["entries"]), Decimal(0))


def dag_of(operator, tmp_path, **kwargs) -> DAG:
    with DAG(f"t_forgotten_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        operator(
            task_id="generate",
            image_size="square",
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
            progress_interval=0,
            retries=1,
            retry_delay=timedelta(seconds=0),
            **kwargs,
        )
    return dag


@pytest.mark.parametrize("use_batches", [True, False])
def test_a_retry_after_the_keys_are_forgotten_re_attaches_and_pays_nothing_again(
    emulator, run_dag, xcom, tmp_path, use_batches, capfd
):
    emulator.configure(key_retention=0.01)  # every key is forgotten by the time the retry sends again
    prompts = [f"forgotten {i}" for i in range(8)]
    dag = dag_of(
        CrashAfterStoring, tmp_path, prompts=prompts, max_in_flight=8, use_batches=use_batches, deferrable=True
    )
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "generate")
    assert [r["status"] for r in records] == ["succeeded"] * 8
    assert emulator.stats()["runs_created"] == 8  # not 16: nothing was sent again
    ledger = emulator.ledger()["entries"]
    assert len(ledger) == len({e["run_id"] for e in ledger}) == 8
    assert sum(Decimal(r["cost_usd"]) for r in records) == billed(emulator) == Decimal("0.240")
    out = capfd.readouterr()
    assert "Re-attaching to 8 run(s) an earlier try sent" in out.out + out.err


@pytest.mark.parametrize("deferrable", [True, False])
def test_runs_still_running_when_a_try_ended_are_waited_for_by_id_on_the_retry(
    emulator, run_dag, xcom, tmp_path, deferrable
):
    # Two at a time, two seconds each: at the 3 s deadline two are stored and two are still running.
    emulator.configure(key_retention=0.01, fleet_size=2, latency={"queued": 0.05, "dispatching": 0.05, "running": 2.0})
    prompts = [f"slow {i}" for i in range(4)]
    dag = dag_of(
        FluxGenerateImageOperator,
        tmp_path,
        prompts=prompts,
        max_in_flight=4,
        use_batches=False,
        timeout=3,
        deferrable=deferrable,
    )
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "generate")
    assert [r["status"] for r in records] == ["succeeded"] * 4
    assert emulator.stats()["runs_created"] == 4
    assert billed(emulator) == sum(Decimal(r["cost_usd"]) for r in records) == Decimal("0.120")
