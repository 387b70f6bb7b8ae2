"""What the hostile catalogue's children run (see ``probe.py``): each case is one call of a public surface.

Every function takes plain JSON-able arguments and returns a JSON-able summary; an exception is
reported to the test with its type, message and attributes.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
from airflow.sdk import Connection

from airflow_provider_flux2 import cli
from airflow_provider_flux2.hooks.connection import FluxConnectionConfig
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.models import Run
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.publish import FluxPublishOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator
from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger

#: Fast-failing defaults for a hook that meets a hostile server.
FAST = {
    "timeout": 0.5,
    "request_deadline": 1.0,
    "download_deadline": 1.0,
    "max_attempts": 1,
    "retry_base_delay": 0.01,
    "max_response_mb": 2,
    "max_download_mb": 4,
}

OPERATORS = {
    "generate": FluxGenerateImageOperator,
    "quality": FluxQualityCheckOperator,
    "publish": FluxPublishOperator,
}

# Warm what a child would otherwise load lazily (so its memory figure is the case's own).
httpx.Client().close()


def _hook(base_url: str, key: str, extra: dict[str, Any] | None) -> FluxHook:
    return FluxHook(api_key=key, base_url=base_url, extra={**FAST, **(extra or {})})


def _summary(value: Any) -> Any:
    if isinstance(value, Run):
        return {
            "run": value.id,
            "status": value.status_code.value,
            "cost": None if value.cost is None else str(value.cost),
        }
    if hasattr(value, "width") and hasattr(value, "data"):
        return {"image": [value.width, value.height, value.format, len(value.data)]}
    if isinstance(value, tuple):
        return [_summary(v) for v in value]
    return value if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)


def hook_call(base_url: str, key: str, method: str, args: list[Any] | None = None, **kw: Any) -> Any:
    """``FluxHook(...).<method>(*args, **kwargs)``; ``extra`` overrides the fast defaults;
    ``deadline_in`` becomes a wall-clock ``deadline`` that many seconds from now."""
    import time

    extra = kw.pop("extra", None)
    if "deadline_in" in kw:
        kw["deadline"] = time.time() + kw.pop("deadline_in")
    return _summary(getattr(_hook(base_url, key, extra), method)(*(args or []), **kw))


def hook_acall(base_url: str, key: str, method: str, args: list[Any] | None = None, **kw: Any) -> Any:
    """The async twin; ``deadline_in`` becomes a wall-clock ``deadline`` that many seconds from now."""
    import time

    extra = kw.pop("extra", None)
    if "deadline_in" in kw:
        kw["deadline"] = time.time() + kw.pop("deadline_in")

    async def go() -> Any:
        hook = _hook(base_url, key, extra)
        try:
            return await getattr(hook, method)(*(args or []), **kw)
        finally:
            await hook.aclose()

    return _summary(asyncio.run(go()))


def download(base_url: str, key: str, url: str, fmt: str = "png", extra: dict[str, Any] | None = None) -> Any:
    """``hook.download`` of a succeeded 512×512 run whose output URL is ``url``."""
    run = Run.model_validate(
        {
            "id": "run-dl",
            "status_code": "succeeded",
            "input": {"prompt": "a cup", "image_size": "square", "output_format": fmt},
            "output": {"images": [{"url": url}]},
        }
    )
    return _summary(_hook(base_url, key, extra).download(run, refreshes=0))


def config(key: str = "rf_live_key", base_url: str | None = None, extra: dict[str, Any] | None = None) -> Any:
    built = FluxConnectionConfig.build(api_key=key, base_url=base_url, extra=extra or {}, conn_id="hostile")
    return {"base_url": built.base_url, "timeout": built.timeout}


def connection(**fields: Any) -> Any:
    """``FluxConnectionConfig.from_connection`` of an Airflow connection with these fields."""
    conn = Connection(conn_id="hostile", conn_type="flux2", **fields)
    built = FluxConnectionConfig.from_connection(conn, "hostile")
    return {"base_url": built.base_url}


def operator(kind: str, **kwargs: Any) -> Any:
    op = OPERATORS[kind](task_id="t", **kwargs)
    return {"constructed": op.task_id}


def operator_plan(kind: str, emulator_conn: str, **kwargs: Any) -> Any:
    """Construct, then plan with a fake rendered context (what ``execute`` does before sending)."""
    os.environ["AIRFLOW_CONN_FLUX2_DEFAULT"] = emulator_conn
    op = OPERATORS[kind](task_id="t", **kwargs)

    class _TI:
        dag_id, task_id, run_id, map_index = "d", "t", "r", -1

    plan = op.plan({"ti": _TI()})  # type: ignore[arg-type]
    return {"images": len(plan.images)}


def run_cli(argv: list[str], env: dict[str, str] | None = None) -> Any:
    """``flux2 <argv>`` in process: the exit code (stderr is captured by the probe)."""
    os.environ.update(env or {})
    return {"exit": cli.main(argv)}


def trigger(base_url: str, key: str, runs: list[str], timeout: float = 2.0, extra: dict[str, Any] | None = None) -> Any:
    """A trigger's ``run()`` against ``base_url`` (its connection given by environment): the one event."""
    os.environ["AIRFLOW_CONN_HOSTILE"] = json.dumps(
        {"conn_type": "flux2", "host": base_url, "password": key, "extra": {**FAST, **(extra or {})}}
    )
    trig = FluxGenerationTrigger(flux_conn_id="hostile", runs=runs, timeout=timeout, poll_interval=0.05)

    async def go() -> list[Any]:
        return [event.payload async for event in trig.run()]

    return {"events": asyncio.run(go())}


def trigger_missing_connection(runs: list[str]) -> Any:
    trig = FluxGenerationTrigger(flux_conn_id="flux2_nowhere_to_be_found", runs=runs, timeout=30, poll_interval=0.05)

    async def go() -> list[Any]:
        return [event.payload async for event in trig.run()]

    return {"events": asyncio.run(go())}


CASES = {
    name: fn
    for name, fn in globals().items()
    if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", None) == __name__
}
