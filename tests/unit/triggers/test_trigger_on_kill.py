"""Killing a task: Runflow has no public cancel, so what was sent finishes and bills; the trigger (and the
in-worker window) name every run left at the API and the jobs never sent, and never raise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal

from test_generation_trigger import plan_of, trigger_for

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.window import JobSpec, Window, log_kill

SLOW = {"queued": 0.05, "dispatching": 0.05, "running": 1.5}


def _known_at_api(trigger) -> list[str]:
    window = trigger._live
    states = window.states.values() if window is not None else []
    return [s.run_id for s in states if s.phase in ("in_flight", "read") and s.run_id]


def test_a_killed_trigger_names_the_runs_that_will_still_bill(emulator, capfd):
    emulator.configure(latency=SLOW)
    trigger = trigger_for(plan_of(6, chunk=2), max_in_flight=4)

    async def kill_mid_window() -> None:
        task = asyncio.ensure_future(anext(trigger.run()))
        deadline = time.time() + 30
        # Kill once the window knows 4 runs at the API by id (the API making them is not enough: on a busy
        # machine the answer that tells the window can come after the kill).
        while len(_known_at_api(trigger)) < 4 and time.time() < deadline:
            await asyncio.sleep(0.02)
        task.cancel()  # what the triggerer does on mark-failed, before it calls on_kill
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await trigger.on_kill()

    asyncio.run(kill_mid_window())
    out = capfd.readouterr()
    line = next(part for part in (out.out + out.err).splitlines() if "Killed with" in part)
    line = line[line.index("Killed with") :]
    assert line.startswith("Killed with 4 run(s) still at the API: Runflow has no public cancel")
    assert "(about $0.12)" in line and "2 job(s) never sent" in line and "batches: " in line
    # What the line says is what happens: the runs it names finish at the API and are billed.
    deadline = time.time() + 10
    while len(emulator.ledger()["entries"]) < 4 and time.time() < deadline:
        time.sleep(0.05)
    billed = [entry["run_id"] for entry in emulator.ledger()["entries"]]
    assert len(billed) == 4 and all(run_id in line for run_id in billed)


def test_a_trigger_killed_before_it_ran_still_logs_and_never_raises(capfd):
    trigger = trigger_for(plan_of(3))
    asyncio.run(trigger.on_kill())
    out = capfd.readouterr()
    assert "Killed with no run at the API; 3 job(s) never sent: nothing more is billed" in out.out + out.err


def test_the_operator_on_kill_names_the_runs_of_its_in_worker_window(capfd):
    spec = JobSpec(index=0, model="m", key="k0", ref="r0", input={"prompt": "p"}, cost=Decimal("0.03"))
    window = Window(jobs=[spec], max_in_flight=1, chunk_size=1, end_time=time.time() + 60)
    (submit,) = window.submissions(time.time())
    window.submitted(submit, ["run-a"], None, time.time())
    op = FluxGenerateImageOperator(task_id="generate", prompt="p")
    op.on_kill()  # before the window ran: nothing to say, nothing raised
    op._live = window
    op.on_kill()
    out = capfd.readouterr()
    assert "Killed with 1 run(s) still at the API" in out.out + out.err and "run ids: run-a" in out.out + out.err


def test_on_kill_never_raises_even_when_the_window_cannot_be_read(caplog):
    class Broken:
        def kill_line(self) -> str:
            raise RuntimeError("state lost")

    with caplog.at_level(logging.WARNING):
        log_kill(Broken(), logging.getLogger("t"))  # type: ignore[arg-type]
    assert "could not list the runs left at the API: state lost" in caplog.text


def test_a_task_killed_in_the_worker_writes_the_manifest_of_what_it_paid_for(emulator, run_dag, tmp_path, capfd):
    """SIGTERM makes Airflow call on_kill while the window runs: the try's spend is on record at once."""
    import threading
    import uuid
    from datetime import datetime

    from airflow.sdk import DAG

    emulator.configure(latency={"queued": 0.05, "dispatching": 0.05, "running": 1.0})

    class KilledMidWindow(FluxGenerateImageOperator):
        def execute(self, context):
            threading.Timer(0.6, self.on_kill).start()  # what the task runner does on SIGTERM
            return super().execute(context)

    with DAG(f"t_killed_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        KilledMidWindow(
            task_id="generate",
            prompts=[f"killed {i}" for i in range(4)],
            image_size="square",
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
            progress_interval=0,
            deferrable=False,
        )
    run_dag(dag)
    out = capfd.readouterr()
    text = out.out + out.err
    assert "Killed with 4 run(s) still at the API" in text
    assert "The failed try's manifest: " in text and "4 run(s) still at the API)" in text
