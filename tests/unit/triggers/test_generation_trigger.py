"""FluxGenerationTrigger against the emulator over HTTP: it runs the window, replays when rebuilt, fires once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from decimal import Decimal

import pytest
from airflow.sdk.module_loading import import_string

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.jobs import Plan, new_job
from airflow_provider_flux2.models import Variant, build_input
from airflow_provider_flux2.pricing import estimate
from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger, finished_runs
from airflow_provider_flux2.window import pack_specs, rows_of

IDENTITY = {"dag_id": "catalogue", "task_id": "generate", "run_id": "manual__2026-12-01", "map_index": -1}


def plan_of(count: int, *, chunk: int = 4, prompt: str = "studio shot of product", **params) -> Plan:
    jobs = []
    for index in range(count):
        request = build_input(Variant.PRO, prompt=f"{prompt} {index}", image_size="square", **params)
        jobs.append(new_job(IDENTITY, index, Variant.PRO, request))
    cost = estimate([(job.variant, job.request) for job in jobs])
    return Plan.of(jobs, cost, chunk, None)


def trigger_for(plan: Plan, **kwargs) -> FluxGenerationTrigger:
    options = {"max_in_flight": 8, "poll_interval": 0.02, "timeout": 30, "progress_interval": 0}
    options.update(kwargs)
    return FluxGenerationTrigger.for_specs(plan.specs(), chunk_size=plan.chunk_size, **options)


def rebuilt(trigger: FluxGenerationTrigger) -> FluxGenerationTrigger:
    classpath, kwargs = trigger.serialize()
    return import_string(classpath)(**json.loads(json.dumps(kwargs)))


async def events_of(trigger: FluxGenerationTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def test_serialize_round_trip_rebuilds_the_same_trigger():
    trigger = trigger_for(plan_of(10), budget_usd="1.00")
    classpath, kwargs = trigger.serialize()
    again = rebuilt(trigger)
    assert classpath == "airflow_provider_flux2.triggers.flux.FluxGenerationTrigger"
    assert again.serialize() == (classpath, json.loads(json.dumps(kwargs)))
    assert [s.key for s in again.specs()] == [s.key for s in trigger.specs()]
    assert [s.input for s in again.specs()] == [j.request.to_wire() for j in plan_of(10).jobs]


def test_serializes_to_six_kwargs_the_window_is_built_from():
    trigger = trigger_for(plan_of(10), budget_usd="1.00", resubmit_failed=1)
    kwargs = trigger.serialize()[1]
    assert sorted(kwargs) == ["attached", "common", "flux_conn_id", "jobs", "metadata", "options"]
    assert kwargs["options"]["budget_usd"] == "1.00" and kwargs["options"]["chunk_size"] == 4
    window = rebuilt(trigger).window()
    assert window.chunk_size == 4 and window.resubmit_failed == 1 and window.budget == Decimal("1.00")
    assert window.batch_keys == trigger.window().batch_keys


def test_a_trigger_serialized_by_0_3_1_still_resumes_with_the_same_window():
    plan = plan_of(10)
    jobs, common = pack_specs(plan.specs())
    earlier = {  # the flat form 0.3.1 serialized, attached run and all
        "flux_conn_id": "flux2_default",
        "jobs": jobs,
        "common": common,
        "max_in_flight": 8,
        "chunk_size": 4,
        "use_batches": True,
        "resubmit_failed": 2,
        "budget_usd": "1.00",
        "metadata": {"dag_id": "catalogue"},
        "runs": [],
        "batches": {},
        "end_time": time.time() + 30,
        "poll_interval": 0.02,
        "expected_seconds": 10.0,
        "progress_interval": 0,
        "started_at": None,
        "attached": {"3": ["run-3", "batch-0", 1]},
    }
    trigger = FluxGenerationTrigger(**json.loads(json.dumps(earlier)))
    now = trigger_for(plan, budget_usd="1.00")
    assert trigger.options["end_time"] == earlier["end_time"] and trigger.metadata == {"dag_id": "catalogue"}
    window = trigger.window()
    assert window.batch_keys == now.window().batch_keys and window.budget == Decimal("1.00")
    assert window.states[3].run_id == "run-3" and window.states[3].phase == "in_flight"


def test_a_trigger_waiting_for_runs_sent_elsewhere_rebuilds_and_never_sends():
    trigger = FluxGenerationTrigger.waiting_for(["r1", "r2"], expected_seconds=40, timeout=30)
    again = rebuilt(trigger)
    window = again.window()
    assert [s.input for s in again.specs()] == [None, None] and [s.expected for s in again.specs()] == [40, 40]
    assert {i: s.run_id for i, s in window.states.items()} == {0: "r1", 1: "r2"}
    assert window.submissions(time.time()) == [] and window.resubmit_failed == 0


def test_an_unknown_option_is_named():
    with pytest.raises(FluxValidationError, match="max_inflight"):
        FluxGenerationTrigger(runs=["r1"], max_inflight=4)


def test_runs_the_window_and_yields_exactly_one_event(emulator):
    plan = plan_of(10)
    events = asyncio.run(events_of(trigger_for(plan)))
    assert len(events) == 1
    event = events[0]
    assert event["status"] == "success"
    states = rows_of(event)
    assert sorted(states) == list(range(10))
    assert all(s.phase == "done" and s.succeeded and s.batch_id for s in states.values())
    stats = emulator.stats()
    assert stats["requests"]["create_batch"] == 3  # chunks of 4, 4 and 2
    assert stats["max_concurrent_runs"] <= 8
    assert len(emulator.ledger()["entries"]) == 10


def test_a_rebuilt_trigger_replays_instead_of_paying_again(emulator):
    trigger = trigger_for(plan_of(12))
    first = asyncio.run(events_of(trigger))[0]
    created = emulator.stats()["runs_created"]
    second = asyncio.run(events_of(rebuilt(trigger)))[0]
    assert emulator.stats()["runs_created"] == created == 12
    assert {i: s.run_id for i, s in rows_of(first).items()} == {i: s.run_id for i, s in rows_of(second).items()}
    assert len(emulator.ledger()["entries"]) == 12


def test_two_copies_running_at_once_during_a_failover_pay_once(emulator):
    trigger = trigger_for(plan_of(12))

    async def both():
        return await asyncio.gather(events_of(trigger), events_of(rebuilt(trigger)))

    first, second = asyncio.run(both())
    assert first[0]["status"] == second[0]["status"] == "success"
    assert emulator.stats()["runs_created"] == 12
    assert len(emulator.ledger()["entries"]) == 12


def test_waits_for_runs_sent_elsewhere(emulator):
    hook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
    runs = [hook.submit(f"a paper boat {i}", image_size="square").id for i in range(3)]
    trigger = FluxGenerationTrigger(run_ids=runs, timeout=30, poll_interval=0.02)
    assert trigger.serialize()[1]["options"]["end_time"] > time.time()
    (event,) = asyncio.run(events_of(trigger))
    assert event["status"] == "success"
    assert sorted(finished_runs(event)) == sorted(runs)
    assert emulator.stats()["runs_created"] == 3


def test_the_deadline_yields_one_timeout_event_naming_the_runs_still_out(emulator):
    emulator.configure(latency={"queued": 0.01, "dispatching": 0.01, "running": 30})
    plan = plan_of(3, chunk=1)
    events = asyncio.run(events_of(trigger_for(plan, end_time=time.time() + 0.5)))
    assert len(events) == 1
    assert events[0]["status"] == "timeout"
    pending = [s.run_id for s in rows_of(events[0]).values() if s.phase == "in_flight"]
    assert len(pending) == 3 and all(run_id in events[0]["message"] for run_id in pending)


def watch_blocking(monkeypatch) -> tuple[list[str], list[asyncio.AbstractEventLoop]]:
    """``(blocking, loops)``: every ``time.sleep`` and synchronous HTTP request made on one of ``loops``
    (append the loop to watch) is listed in ``blocking`` — caught where it happens, whatever the load."""
    import httpx

    blocking: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []
    real_sleep, real_send = time.sleep, httpx.Client.send

    def on_a_watched_loop() -> bool:
        try:
            return asyncio.get_running_loop() in loops
        except RuntimeError:  # a thread without a loop (an executor's): not the loop's time
            return False

    def sleep(seconds):
        if on_a_watched_loop():
            blocking.append(f"time.sleep({seconds})")
        return real_sleep(seconds)

    def send(self, request, **kwargs):
        if on_a_watched_loop():
            blocking.append(f"a synchronous {request.method} {request.url.path}")
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(httpx.Client, "send", send)
    return blocking, loops


def test_nothing_blocks_the_event_loop(emulator, caplog, monkeypatch):
    """The trigger never sleeps or calls the API synchronously on its event loop, and asyncio's debug mode
    sees no callback hold the loop for long."""
    plan = plan_of(8)
    blocking, loops = watch_blocking(monkeypatch)

    async def main():
        loop = asyncio.get_running_loop()
        loops.append(loop)
        # A sync call here would wait on the API or a retry's sleep; a CPU-bound step of a few ms (parsing a
        # poll) can take ~0.1 s of wall time when four test workers share two cores: not the trigger's block.
        loop.slow_callback_duration = 0.25
        return await events_of(trigger_for(plan))

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        (event,) = asyncio.run(main(), debug=True)
    assert event["status"] == "success"
    assert blocking == []
    # asyncio.run's own teardown (shutdown_default_executor) is not the trigger's: a busy machine slows it.
    slow = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and "took" in r.getMessage() and "shutdown_default_executor" not in r.getMessage()
    ]
    assert not slow, slow


def test_the_blocking_watch_catches_a_synchronous_call_and_a_sleep_on_the_loop(emulator, monkeypatch):
    blocking, loops = watch_blocking(monkeypatch)

    async def a_blocking_trigger():
        loops.append(asyncio.get_running_loop())
        time.sleep(0.01)
        FluxHook().get_balance()  # sync, inside a coroutine: what the check above must catch
        await asyncio.to_thread(FluxHook().get_balance)  # in a thread: not the loop's time

    asyncio.run(a_blocking_trigger())
    assert len(blocking) == 2
    assert blocking[0] == "time.sleep(0.01)" and blocking[1].startswith("a synchronous GET")


def test_kwargs_for_1000_images_stay_under_one_megabyte():
    prompt = (
        "Studio photograph of a hand-thrown ceramic mug in sage green glaze on a walnut table, soft window light, "
        "shallow depth of field, catalogue style"
    )
    plan = plan_of(1000, chunk=8, prompt=prompt, output_format="png")
    trigger = trigger_for(plan, max_in_flight=32, budget_usd="40.00")
    size = len(json.dumps(trigger.serialize()[1]))
    print(f"trigger kwargs for 1,000 images: {size:,} bytes ({size / 1000:.0f} B per image)")
    assert size <= 1_000_000
