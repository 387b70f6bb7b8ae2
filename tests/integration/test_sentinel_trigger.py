"""The trigger waiting for Sentinel evaluations: killed mid-wait and rebuilt from its kwargs (a triggerer
restart), or running twice (a failover) — every evaluation is made and billed once, one event each."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
from decimal import Decimal
from typing import Any

from PIL import Image

from airflow_provider_flux2 import sentinel
from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger
from airflow_provider_flux2.window import JobSpec, rows_of

IDENTITY = {"dag_id": "d", "task_id": "check", "run_id": "r", "map_index": -1}


def image(seed: int) -> str:
    picture = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    picture.putpixel((seed, seed), (255, 0, 0))
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def trigger(count: int = 6) -> FluxGenerationTrigger:
    specs = []
    for i in range(count):
        body = sentinel.evaluation_body(generated_image_url=image(i), task_type="product", client_ref=f"ref-{i}")
        key = sentinel.evaluation_key(IDENTITY, i, 1, sentinel.body_hash(body))
        specs.append(JobSpec(index=i, model="standard", key=key, ref=f"ref-{i}", input=body, cost=Decimal("0.010")))
    return FluxGenerationTrigger.for_specs(
        specs, max_in_flight=3, chunk_size=1, use_batches=False, poll_interval=0.02, timeout=60, kind="evaluation"
    )


async def first_event(built: FluxGenerationTrigger) -> dict[str, Any]:
    async for event in built.run():
        return dict(event.payload)
    raise AssertionError("no event")


def rebuilt(original: FluxGenerationTrigger) -> FluxGenerationTrigger:
    classpath, kwargs = original.serialize()
    assert classpath.endswith("FluxGenerationTrigger") and kwargs["options"]["kind"] == "evaluation"
    return FluxGenerationTrigger(**kwargs)


def test_a_trigger_killed_mid_wait_and_rebuilt_bills_each_evaluation_once(emulator):
    # Long enough that none of the first three ends before the kill, even on two busy cores (at 0.6 s
    # the first ended while the third was still being sent, under a full `make test`).
    emulator.configure(evaluation_seconds=3.0)
    original = trigger()

    async def killed() -> None:
        task = asyncio.ensure_future(first_event(original))
        deadline = time.monotonic() + 10
        while emulator.stats()["requests"].get("create_evaluation", 0) < 3:  # the first three are in flight
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        task.cancel()  # what kill -9 of the triggerer leaves: submissions made, no event
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(killed())
    assert not emulator.ledger()["entries"]  # nothing finished yet
    event = asyncio.run(first_event(rebuilt(original)))
    assert event["status"] == "success" and len(event["keys"]) == 6
    assert emulator.api_key not in json.dumps(event)
    assert all(state.status == "succeeded" for state in rows_of(event).values())
    stats = emulator.stats()
    assert stats["evaluations_created"] == 6 and stats["requests"]["create_evaluation"] >= 9  # three replayed
    ledger = emulator.ledger()
    assert len(ledger["entries"]) == 6 and ledger["total_cost"] == "0.060"


def test_two_triggers_running_at_once_make_each_evaluation_once(emulator):
    emulator.configure(evaluation_seconds=0.2)
    original = trigger()

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(first_event(original), first_event(rebuilt(original))))

    events = asyncio.run(both())
    assert [e["status"] for e in events] == ["success", "success"]
    ids = [{state.run_id for state in rows_of(e).values()} for e in events]
    assert ids[0] == ids[1] and len(ids[0]) == 6
    assert emulator.stats()["evaluations_created"] == 6 and len(emulator.ledger()["entries"]) == 6
