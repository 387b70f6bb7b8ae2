"""FluxGenerationTrigger: wait for FLUX runs on the triggerer, holding no worker slot.

The trigger only reads: it polls batches (one request per batch) and single runs, and yields one
event as soon as enough runs have finished for the operator to top its window up. It never submits
anything, so a triggerer restart that rebuilds it from its kwargs cannot create a run.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_flux2.exceptions import FluxAPIError, FluxValidationError
from airflow_provider_flux2.hooks.flux import FluxHook, adaptive_poll_interval
from airflow_provider_flux2.models import Batch, Run, RunStatus, utc_now_iso

#: Polls that may fail in a row (after the hook's own retries) before the wait is given up.
MAX_CONSECUTIVE_POLL_FAILURES = 5
#: The deadline of a trigger built with neither ``end_time`` nor ``timeout``.
DEFAULT_WAIT_TIMEOUT = 3600.0


def _is_permanent_poll_error(error: BaseException) -> bool:
    """Whether a polling error cannot succeed on a later poll (auth, not found, bad request)."""
    if isinstance(error, FluxValidationError):
        return True
    return isinstance(error, FluxAPIError) and 400 <= error.status_code < 500 and error.status_code not in (408, 429)


@dataclass
class RunWatch:
    """Which runs are awaited and which have finished: the bookkeeping shared by trigger and operator.

    :param batches: batch id → the run ids it holds that are awaited (polled with one request each).
    :param runs: run ids polled one by one (single runs, resubmissions, batch fallback).
    :param min_finished: how many finished runs make the wait worth ending.
    :param flush_after: end the wait this long after the first finish, even below ``min_finished``,
        so finished images are fetched before their URLs expire.
    """

    batches: dict[str, list[str]]
    runs: list[str]
    min_finished: int = 1
    flush_after: float = 300.0
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    first_finish_at: float | None = None

    @property
    def awaited(self) -> list[str]:
        ids = [r for ids in self.batches.values() for r in ids] + list(self.runs)
        return [r for r in ids if r not in self.finished]

    def batches_to_poll(self) -> list[str]:
        return [b for b, ids in self.batches.items() if any(r not in self.finished for r in ids)]

    def runs_to_poll(self) -> list[str]:
        return [r for r in self.runs if r not in self.finished]

    def observe(self, run_id: str, status: RunStatus, completed_at: str | None = None) -> None:
        self.statuses[run_id] = status.value
        if status.terminal and run_id not in self.finished:
            self.finished[run_id] = {
                "status": status.value,
                "completed_at": completed_at,
                "detected_at": utc_now_iso(),
            }
            if self.first_finish_at is None:
                self.first_finish_at = time.time()

    def observe_batch(self, batch: Batch) -> None:
        wanted = set(self.batches.get(batch.id, []))
        for item in batch.items:
            if item.run_id in wanted:
                self.observe(item.run_id, item.status_code)

    def observe_run(self, run: Run) -> None:
        self.observe(run.id, run.status_code, run.completed_at)

    def ready(self) -> bool:
        if not self.awaited:
            return True
        if len(self.finished) >= self.min_finished:
            return True
        return self.first_finish_at is not None and time.time() - self.first_finish_at >= self.flush_after

    def pending_statuses(self) -> list[str]:
        return [self.statuses.get(r, RunStatus.QUEUED.value) for r in self.awaited]

    def event(self, status: str, message: str) -> dict[str, Any]:
        return {"status": status, "message": message, "finished": self.finished, "pending": self.awaited}


class FluxGenerationTrigger(BaseTrigger):
    """Wait for one or many FLUX runs (as batches and/or single runs) until enough have finished.

    :param flux_conn_id: the ``flux2`` connection (default ``flux2_default``).
    :param batches: batch id → awaited run ids of that batch.
    :param runs: run ids awaited one by one (``run_ids`` is accepted as another name for it).
    :param min_finished: yield once this many runs have finished (the operator passes its free
        window slots); by default all of them.
    :param end_time: wall-clock deadline (epoch seconds). Wall-clock is used deliberately: the trigger
        is serialized and may resume in another triggerer process, where a monotonic clock means nothing.
    :param timeout: instead of ``end_time``: seconds from now (default one hour); turned into an
        ``end_time`` at construction, so a rebuilt trigger keeps the same deadline.
    :param poll_interval: the shortest pause between polls; the actual one adapts to the runs' status.
    :param expected_seconds: the expected generation time of the largest image, for the interval.
    :param flush_after: yield this long after the first run finished even below ``min_finished``
        (default 300 s when ``min_finished`` is set, never when waiting for all runs).
    :param started_at: when the oldest awaited run was submitted (epoch seconds), so the interval
        follows the runs' age rather than the age of this wait (a task defers many times).
    """

    def __init__(
        self,
        *,
        flux_conn_id: str = FluxHook.default_conn_name,
        batches: dict[str, list[str]] | None = None,
        runs: list[str] | None = None,
        run_ids: list[str] | None = None,
        min_finished: int | None = None,
        end_time: float | None = None,
        timeout: float | None = None,
        poll_interval: float = 5.0,
        expected_seconds: float = 10.0,
        flush_after: float | None = None,
        started_at: float | None = None,
    ) -> None:
        super().__init__()
        self.flux_conn_id = flux_conn_id
        self.batches = {k: list(v) for k, v in (batches or {}).items()}
        self.runs = list(dict.fromkeys([*(runs or []), *(run_ids or [])]))
        if not self.batches and not self.runs:
            raise FluxValidationError(field="runs", value=runs, allowed="at least one run id (or a batch)")
        self.min_finished = min_finished
        if end_time is None:
            end_time = time.time() + (DEFAULT_WAIT_TIMEOUT if timeout is None else float(timeout))
        self.end_time = end_time
        self.poll_interval = poll_interval
        self.expected_seconds = expected_seconds
        self.flush_after = flush_after
        self.started_at = started_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "flux_conn_id": self.flux_conn_id,
                "batches": self.batches,
                "runs": self.runs,
                "min_finished": self.min_finished,
                "end_time": self.end_time,
                "poll_interval": self.poll_interval,
                "expected_seconds": self.expected_seconds,
                "flush_after": self.flush_after,
                "started_at": self.started_at,
            },
        )

    def watch(self) -> RunWatch:
        awaited = len(self.runs) + sum(len(ids) for ids in self.batches.values())
        if self.min_finished is None:
            min_finished, flush_after = awaited, self.flush_after if self.flush_after is not None else math.inf
        else:
            min_finished, flush_after = self.min_finished, self.flush_after if self.flush_after is not None else 300.0
        return RunWatch(batches=self.batches, runs=self.runs, min_finished=min_finished, flush_after=flush_after)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until enough runs finish; yield exactly one event and return."""
        hook = FluxHook(self.flux_conn_id)
        try:
            payload = await watch_runs(
                self.watch(),
                # The hook bounds each poll (and its retries) by the trigger's own deadline.
                get_batch=functools.partial(hook.aget_batch, deadline=self.end_time),
                get_run=functools.partial(hook.aget_run, deadline=self.end_time),
                end_time=self.end_time,
                poll_interval=self.poll_interval,
                expected_seconds=self.expected_seconds,
                sleep=asyncio.sleep,
                log=self.log,
                started_at=self.started_at,
            )
        finally:
            await hook.aclose()
        yield TriggerEvent(payload)

    async def on_kill(self) -> None:
        """Airflow >= 3.3 calls this when the deferred task is killed: say which runs are abandoned.

        Runflow has no cancel endpoint for a run, so the runs finish (and bill) on their own; the ids
        are logged so a person can find their results. Best effort: never raises.
        """
        try:
            abandoned = self.watch().awaited
            self.log.warning(
                "Task killed while waiting; %d FLUX run(s) left running at the API: %s",
                len(abandoned),
                ", ".join(abandoned),
            )
        except Exception as error:
            self.log.warning("on_kill could not list the abandoned runs: %s", error)


async def watch_runs(
    watch: RunWatch,
    *,
    get_batch: Callable[[str], Any],
    get_run: Callable[[str], Any],
    end_time: float,
    poll_interval: float,
    expected_seconds: float,
    sleep: Callable[[float], Any],
    log: Any,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Drive ``watch`` until it is ready, the deadline passes, or polling fails for good.

    ``get_batch``/``get_run`` may be coroutines (the trigger) or plain functions (the operator's
    synchronous path); the bookkeeping and the decisions are the same.
    """
    started = time.time() if started_at is None else started_at
    failures = 0
    while True:
        try:
            await _poll_once(watch, get_batch, get_run)
        except Exception as error:
            if _is_permanent_poll_error(error):
                return watch.event("error", f"Polling runs {', '.join(watch.awaited)} failed: {error}")
            failures += 1
            if failures >= MAX_CONSECUTIVE_POLL_FAILURES:
                return watch.event(
                    "error",
                    f"Polling failed {failures} times in a row ({error}); runs still awaited: "
                    f"{', '.join(watch.awaited)}",
                )
            log.warning("Polling FLUX runs failed (%s); will poll again", error)
        else:
            failures = 0
        if watch.ready():
            return watch.event("success", f"{len(watch.finished)} run(s) finished; {len(watch.awaited)} awaited")
        now = time.time()
        if now >= end_time:
            return watch.event("timeout", f"Runs {', '.join(watch.awaited)} did not finish before the deadline")
        interval = adaptive_poll_interval(
            watch.pending_statuses(), base=poll_interval, elapsed=now - started, expected=expected_seconds
        )
        result = sleep(max(0.0, min(interval, end_time - now)))
        if asyncio.iscoroutine(result):
            await result


def wait_in_worker(
    hook: FluxHook,
    watch: RunWatch,
    *,
    end_time: float,
    poll_interval: float,
    expected_seconds: float,
    log: Any,
    started_at: float | None = None,
) -> dict[str, Any]:
    """The trigger's wait, run in the worker with the hook's sync client (non-deferrable tasks)."""
    return asyncio.run(
        watch_runs(
            watch,
            get_batch=functools.partial(hook.get_batch, deadline=end_time),
            get_run=functools.partial(hook.get_run, deadline=end_time),
            end_time=end_time,
            poll_interval=poll_interval,
            expected_seconds=expected_seconds,
            sleep=time.sleep,
            log=log,
            started_at=started_at,
        )
    )


async def _poll_once(watch: RunWatch, get_batch: Callable[[str], Any], get_run: Callable[[str], Any]) -> None:
    for batch_id in watch.batches_to_poll():
        watch.observe_batch(await _maybe_await(get_batch(batch_id)))
    for run_id in watch.runs_to_poll():
        watch.observe_run(await _maybe_await(get_run(run_id)))


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value
