"""FluxHook's Sentinel calls over a real socket: a local image inlined when sent, replays under the same key
(sync and async alike), the price from the job classes or the connection, and the key kept out of errors."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
from PIL import Image

from airflow_provider_flux2 import sentinel
from airflow_provider_flux2.exceptions import FluxAPIError, FluxValidationError
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.protocol import WireInput
from airflow_provider_flux2.window import BatchEntry


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "shot.png"
    Image.linear_gradient("L").resize((96, 96)).convert("RGB").save(path, "PNG")
    return path


def entry(url: str, key: str = "flux2-eval-test-1", **fields) -> BatchEntry:
    body = sentinel.evaluation_body(generated_image_url=url, task_type="product", client_ref="ref-1", **fields)
    return BatchEntry(WireInput(body), "ref-1", key)


def test_a_local_image_is_sent_inline_and_a_replay_is_billed_once(emulator, image):
    hook = FluxHook()
    first = hook.submit_evaluation(entry(image.as_uri(), generation_prompt="a gradient"))
    again = hook.submit_evaluation(entry(str(image), generation_prompt="a gradient"))  # the same bytes, inlined
    assert first.run_ids == again.run_ids
    evaluation = hook.get_evaluation(first.run_ids[0])
    while not evaluation.terminal:
        evaluation = hook.get_evaluation(evaluation.id)
    assert evaluation.completed and evaluation.overall_passed is True and evaluation.cost == Decimal("0.010")
    ledger = emulator.ledger()["entries"]
    assert [(e["kind"], e["idempotency_key"]) for e in ledger] == [("evaluation", "flux2-eval-test-1")]


def test_the_async_twins_share_the_builder_and_parser(emulator, image):
    async def go() -> sentinel.Evaluation:
        hook = FluxHook()
        try:
            done = await hook.asubmit_evaluation(entry(str(image), key="flux2-eval-async"))
            evaluation = await hook.aget_evaluation(done.run_ids[0])
            while not evaluation.terminal:
                await asyncio.sleep(0.01)
                evaluation = await hook.aget_evaluation(evaluation.id)
            return evaluation
        finally:
            await hook.aclose()

    evaluation = asyncio.run(go())
    assert evaluation.completed and evaluation.client_ref == "ref-1"


def test_the_price_comes_from_the_job_classes_unless_the_connection_names_one(emulator, monkeypatch):
    emulator.configure(evaluation_price_usd="0.0125")
    assert FluxHook().evaluation_price() == Decimal("0.0125")
    assert FluxHook().evaluation_price("premium") is None
    connection = json.loads(emulator.connection_json())
    connection["extra"]["sentinel_price_usd"] = "0.03"
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_DEFAULT", json.dumps(connection))
    assert FluxHook().evaluation_price() == Decimal("0.03")
    connection["extra"]["sentinel_price_usd"] = "-1"
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_DEFAULT", json.dumps(connection))
    with pytest.raises(FluxValidationError, match="sentinel_price_usd"):
        FluxHook().evaluation_price()


def test_an_oversized_local_image_is_refused_and_an_api_error_never_shows_the_key(emulator, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * 1024 * 1024))
    with pytest.raises(FluxValidationError, match="generated_image_url"):
        FluxHook().submit_evaluation(entry(str(big)))
    emulator.faults(
        {
            "rules": [
                {
                    "endpoint": "create_evaluation",
                    "fault": "http_error",
                    "status": 400,
                    "message": f"bad request from key {emulator.api_key}",
                }
            ]
        }
    )
    with pytest.raises(FluxAPIError) as caught:
        FluxHook().submit_evaluation(entry("https://cdn.example.com/a.png"))
    assert emulator.api_key not in str(caught.value) and "***" in str(caught.value)
