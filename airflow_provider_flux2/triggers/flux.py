"""FluxGenerationTrigger: run a task's window on the triggerer — submit, poll, top up — holding no worker slot.

The trigger acts: it submits the task's jobs (batch endpoint, chunks fixed by index), polls one
request per batch, tops the window up the moment slots free, resubmits failed runs under derived
keys, stops submitting before the spend the API reports passes the budget, and logs progress lines
(they reach the task log). It yields **exactly one** event, when every job is terminal or the deadline
passes.

Why acting here is safe: every submission carries the job's deterministic ``Idempotency-Key`` (and a
batch the key of its fixed chunk), so a trigger rebuilt from its kwargs after a triggerer restart, or
running twice during a failover, *replays* its submissions — the API answers with the runs it already
made and bills nothing again. Submissions are its only side effect; it writes nothing anywhere.

With ``runs`` (or ``batches``) instead of jobs it only waits for runs sent elsewhere (the quality
operator's regenerations). With ``kind="evaluation"`` its jobs are Runflow Sentinel evaluations of
stored images (the quality operator's gate): the same window, sent and read through the hook's
evaluation calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_flux2.arguments import DEFAULT_POLL_INTERVAL, DEFAULT_TIMEOUT
from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.loops import arun_window
from airflow_provider_flux2.window import JobKind, JobSpec, Window, log_kill, pack_specs, rows_of, unpack_specs

#: The least time a trigger lives before it fires. A trigger that fires a fraction of a second after
#: its task deferred can race Airflow's own bookkeeping of the deferral (apache/airflow#67287, #72716:
#: "state mismatch … queued/running" fails the try). A replay of finished runs would do exactly that.
MIN_LIFETIME = 1.0


class FluxGenerationTrigger(BaseTrigger):
    """Run the window of a task's jobs on the triggerer (or wait for runs sent elsewhere).

    :param flux_conn_id: the ``flux2`` connection (default ``flux2_default``).
    :param jobs: the jobs, compact: ``[index, model id, key, client_ref, input (beside common), cost, expected s]``.
    :param common: input fields every job shares (kept once, so 1,000 jobs fit in well under 1 MB).
    :param batch_keys: chunk number → batch Idempotency-Key; by default the window derives them from
        the jobs' keys (kept only so triggers serialized by an earlier version still load).
    :param max_in_flight: most runs at the API at once.
    :param chunk_size: jobs per batch request.
    :param use_batches: use the batch endpoint.
    :param resubmit_failed: times a failed (unbilled, non-moderation) run is sent again.
    :param budget_usd: stop submitting before the spend (as the API reports it) would pass this.
    :param metadata: the runs' ``metadata`` (the task's identity).
    :param runs: run ids to wait for, sent elsewhere (``run_ids`` is another name for it).
    :param batches: batch id → run ids to wait for, sent elsewhere.
    :param end_time: wall-clock deadline (epoch seconds). Wall-clock is used deliberately: the trigger
        is serialized and may resume in another triggerer process, where a monotonic clock means nothing.
    :param timeout: instead of ``end_time``: seconds from now (default six hours, as the operators); turned into an
        ``end_time`` at construction, so a rebuilt trigger keeps the same deadline.
    :param poll_interval: the shortest pause between two polls of one batch or run.
    :param expected_seconds: for runs sent elsewhere: their expected generation time.
    :param progress_interval: at most one progress line per this many seconds.
    :param attached: job index → ``[run id, batch id or None, attempt]`` of the runs an earlier try
        of the task sent: waited for by id instead of sent again (the API may have forgotten the keys).
    :param kind: ``run`` (images) or ``evaluation`` (Sentinel evaluations: each job's input is the
        evaluation request, its run id the evaluation id).
    """

    def __init__(
        self,
        *,
        flux_conn_id: str = FluxHook.default_conn_name,
        jobs: list[list[Any]] | None = None,
        common: dict[str, Any] | None = None,
        batch_keys: list[str] | None = None,
        max_in_flight: int = 8,
        chunk_size: int = 1,
        use_batches: bool = True,
        resubmit_failed: int = 2,
        budget_usd: str | None = None,
        metadata: dict[str, Any] | None = None,
        runs: list[str] | None = None,
        run_ids: list[str] | None = None,
        batches: dict[str, list[str]] | None = None,
        end_time: float | None = None,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        expected_seconds: float = 10.0,
        progress_interval: float = 30.0,
        started_at: float | None = None,
        attached: dict[str, list[Any]] | None = None,
        kind: str = "run",
    ) -> None:
        super().__init__()
        self.flux_conn_id = flux_conn_id
        self.jobs = [list(j) for j in jobs or []]
        self.common = dict(common or {})
        self.batch_keys = list(batch_keys or [])
        self.max_in_flight = max_in_flight
        self.chunk_size = chunk_size
        self.use_batches = use_batches
        self.resubmit_failed = resubmit_failed
        self.budget_usd = budget_usd
        self.metadata = metadata
        self.runs = list(dict.fromkeys([*(runs or []), *(run_ids or [])]))
        self.batches = {k: list(v) for k, v in (batches or {}).items()}
        if not self.jobs and not self.runs and not self.batches:
            raise FluxValidationError(field="jobs", value=jobs, allowed="at least one job, run id or batch")
        if end_time is None:
            end_time = time.time() + (DEFAULT_TIMEOUT if timeout is None else float(timeout))
        self.end_time = end_time
        self.poll_interval = poll_interval
        self.expected_seconds = expected_seconds
        self.progress_interval = progress_interval
        self.started_at = started_at
        self.attached = {str(k): list(v) for k, v in (attached or {}).items()}
        if kind not in ("run", "evaluation"):
            raise FluxValidationError(field="kind", value=kind, allowed="run or evaluation")
        self.kind: JobKind = "evaluation" if kind == "evaluation" else "run"
        self._live: Window | None = None  # the window run() drives, for on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "flux_conn_id": self.flux_conn_id,
                "jobs": self.jobs,
                "common": self.common,
                **({"batch_keys": self.batch_keys} if self.batch_keys else {}),
                "max_in_flight": self.max_in_flight,
                "chunk_size": self.chunk_size,
                "use_batches": self.use_batches,
                "resubmit_failed": self.resubmit_failed,
                "budget_usd": self.budget_usd,
                "metadata": self.metadata,
                "runs": self.runs,
                "batches": self.batches,
                "end_time": self.end_time,
                "poll_interval": self.poll_interval,
                "expected_seconds": self.expected_seconds,
                "progress_interval": self.progress_interval,
                "started_at": self.started_at,
                **({"attached": self.attached} if self.attached else {}),
                **({"kind": self.kind} if self.kind != "run" else {}),
            },
        )

    @classmethod
    def for_specs(cls, specs: list[JobSpec], **kwargs: Any) -> FluxGenerationTrigger:
        """A trigger for these jobs, in their row form (input fields they all share kept once, ``common``)."""
        jobs, common = pack_specs(specs)
        return cls(jobs=jobs, common=common, **kwargs)

    def specs(self) -> list[JobSpec]:
        return unpack_specs(self.jobs, self.common)

    def window(self) -> Window:
        """The window this trigger runs (the worker builds the same one for non-deferrable tasks)."""
        if self.jobs:
            window = Window(
                jobs=self.specs(),
                max_in_flight=self.max_in_flight,
                chunk_size=self.chunk_size,
                end_time=self.end_time,
                batch_keys=self.batch_keys,
                use_batches=self.use_batches,
                resubmit_failed=self.resubmit_failed,
                budget=Decimal(self.budget_usd) if self.budget_usd is not None else None,
                poll_interval=self.poll_interval,
                kind=self.kind,
            )
            since = self.started_at or time.time()
            for key, (run_id, batch_id, attempt) in self.attached.items():
                window.reattach(int(key), run_id, batch_id=batch_id, attempt=int(attempt), submitted_at=since)
            return window
        attached: list[tuple[str, str | None]] = [(run_id, None) for run_id in self.runs]
        attached += [(run_id, batch_id) for batch_id, ids in self.batches.items() for run_id in ids]
        specs = [
            JobSpec(index=i, model="", key="", ref="", input=None, cost=Decimal("0"), expected=self.expected_seconds)
            for i in range(len(attached))
        ]
        window = Window(
            jobs=specs,
            max_in_flight=max(1, len(specs)),
            chunk_size=1,
            end_time=self.end_time,
            resubmit_failed=0,
            poll_interval=self.poll_interval,
        )
        since = self.started_at or time.time()
        for index, (run_id, batch_id) in enumerate(attached):
            window.attach(index, run_id, batch_id=batch_id, submitted_at=since)
        return window

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Run the window until every job is terminal or the deadline passes; yield exactly one event."""
        window = self._live = self.window()
        hook = FluxHook(self.flux_conn_id)
        started = time.time()
        try:
            event = await arun_window(
                hook, window, metadata=self.metadata, logger=self.log, progress_interval=self.progress_interval
            )
        finally:
            await hook.aclose()
        await asyncio.sleep(max(0.0, started + MIN_LIFETIME - time.time()))
        yield TriggerEvent(event)

    async def on_kill(self) -> None:
        """Airflow >= 3.3 calls this when a user kills the deferred task (mark failed or success, clear).

        Runflow documents no public cancel for a run (only an admin override that neither stops the
        inference nor refunds it), so nothing can be cancelled: the log names every run still at the
        API — they finish and bill — and the jobs never sent. Best effort: never raises.
        """
        window = self._live
        if window is None:
            try:
                window = self.window()
            except Exception as error:  # never fail the kill
                self.log.warning("on_kill could not list the runs left at the API: %s", error)
                return
        log_kill(window, self.log)


def finished_runs(event: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Run id → ``{"status", "completed_at", "detected_at"}`` of every terminal run an event reports."""
    from datetime import datetime, timezone

    out = {}
    for state in rows_of(event).values():
        if state.run_id and state.terminal:
            detected = state.detected_at
            out[state.run_id] = {
                "status": state.status,
                "completed_at": state.completed_at,
                "detected_at": datetime.fromtimestamp(detected, timezone.utc).isoformat() if detected else None,
            }
    return out
