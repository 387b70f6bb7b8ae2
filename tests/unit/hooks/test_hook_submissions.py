"""The hook's submission primitives the window uses: a batch or a run under a given key, sync and async."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.hooks.flux import BatchEntry, FluxConnectionConfig, FluxHook
from airflow_provider_flux2.models import Variant, build_input
from airflow_provider_flux2.protocol import WireInput


def entries(count: int, tag: str) -> list[BatchEntry]:
    return [
        BatchEntry(build_input(Variant.PRO, prompt=f"{tag} {i}", image_size="square"), f"ref/{tag}/{i}", f"k-{tag}-{i}")
        for i in range(count)
    ]


def test_a_batch_sent_twice_under_its_key_is_replayed_sync_and_async(emulator):
    hook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
    batch = entries(3, "replay")
    first = hook.create_batch(batch, model=Variant.PRO, batch_key="flux2-batch-replay", metadata=None)

    async def again():
        ahook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
        try:
            return await ahook.acreate_batch(batch, model=Variant.PRO, batch_key="flux2-batch-replay", metadata=None)
        finally:
            await ahook.aclose()

    second = asyncio.run(again())
    assert (second.batch_id, second.run_ids) == (first.batch_id, first.run_ids) and len(first.run_ids) == 3
    # No header says "replayed" on the real API: the same ids back is the replay (created_at, seconds
    # old here, is too recent to call it one; a rebuilt trigger's replay is minutes old).
    assert not first.replayed
    assert emulator.stats()["runs_created"] == 3


def test_a_run_sent_from_its_wire_form_is_the_same_run(emulator):
    hook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
    (entry,) = entries(1, "wire")
    first = hook.submit_one(entry, model=Variant.PRO)
    wire = BatchEntry(WireInput(entry.request.to_wire()), entry.client_ref, entry.idempotency_key)

    async def again():
        ahook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
        try:
            return await ahook.asubmit(wire, model=Variant.PRO)
        finally:
            await ahook.aclose()

    replay = asyncio.run(again())
    assert replay.run_ids == first.run_ids  # same body, same key: a replay, not a 409
    assert emulator.stats()["runs_created"] == 1


def test_max_task_spend_usd_is_read_exactly_and_checked():
    config = FluxConnectionConfig.build(api_key="k", base_url=None, extra={"max_task_spend_usd": "12.50"}, conn_id="c")
    assert config.max_task_spend == Decimal("12.50")
    assert FluxConnectionConfig.build(api_key="k", base_url=None, extra={}, conn_id="c").max_task_spend is None
    with pytest.raises(FluxValidationError, match="max_task_spend_usd"):
        FluxConnectionConfig.build(api_key="k", base_url=None, extra={"max_task_spend_usd": "-1"}, conn_id="c")
