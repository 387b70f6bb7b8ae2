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
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_flux2.arguments import DEFAULT_POLL_INTERVAL, DEFAULT_TIMEOUT
from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.loops import arun_window
from airflow_provider_flux2.window import JobSpec, Window, log_kill, pack_specs, rows_of, unpack_specs

#: The least time a trigger lives before it fires. A trigger that fires a fraction of a second after
#: its task deferred can race Airflow's own bookkeeping of the deferral (apache/airflow#67287, #72716:
#: "state mismatch … queued/running" fails the try). A replay of finished runs would do exactly that.
MIN_LIFETIME = 1.0


#: The window's options, carried in the trigger's one ``options`` kwarg, with their defaults.
OPTIONS: dict[str, Any] = {
    "max_in_flight": 8,
    "chunk_size": 1,
    "use_batches": True,
    "resubmit_failed": 2,
    "budget_usd": None,
    "poll_interval": DEFAULT_POLL_INTERVAL,
    "progress_interval": 30.0,
    "end_time": None,
    "started_at": None,
    "kind": "run",
}


class FluxGenerationTrigger(BaseTrigger):
    """Run the window of a task's jobs on the triggerer (or wait for runs sent elsewhere).

    It serializes to six kwargs: ``flux_conn_id``, ``jobs`` and ``common`` (the specs' row form),
    ``options`` (the window's options, :data:`OPTIONS`), ``metadata`` and ``attached``. The window
    derives everything else (chunks, batch keys) from them.

    :param flux_conn_id: the ``flux2`` connection (default ``flux2_default``).
    :param jobs: the jobs' row form, ``[index, model id, key, client_ref, input (beside common), cost,
        expected s]`` (:meth:`~airflow_provider_flux2.window.JobSpec.to_row`); build a trigger from
        specs with :meth:`for_specs`.
    :param common: input fields every job shares (kept once, so 1,000 jobs fit in well under 1 MB).
    :param options: the window's options (:data:`OPTIONS`): ``max_in_flight`` (most runs at the API at
        once), ``chunk_size`` (jobs per batch request), ``use_batches``, ``resubmit_failed`` (times a failed,
        unbilled, non-moderation run is sent again), ``budget_usd`` (stop submitting before the spend the
        API reports would pass it), ``poll_interval`` (the shortest pause between two polls of one batch
        or run), ``progress_interval`` (at most one progress line per this many seconds), ``end_time``
        (wall-clock deadline, epoch seconds: the trigger may resume in another triggerer process, where a
        monotonic clock means nothing), ``started_at`` and ``kind`` (``run``, images, or ``evaluation``,
        Runflow Sentinel evaluations: each job's input is the evaluation request, its run id the
        evaluation id). Each may also be given as a kwarg of its own, as versions before 0.3.2
        serialized them, so their deferred tasks still resume.
    :param metadata: the runs' ``metadata`` (the task's identity).
    :param attached: job index → ``[run id, batch id or None, attempt]`` of runs sent already (by an
        earlier try of the task): waited for by id instead of sent again (the API may have forgotten
        the keys).
    :param runs: instead of jobs: run ids to wait for, sent elsewhere (``run_ids`` is another name for
        it); see :meth:`waiting_for`.
    :param batches: instead of jobs: batch id → run ids to wait for, sent elsewhere.
    :param expected_seconds: for runs sent elsewhere: their expected generation time.
    :param timeout: instead of ``end_time``: seconds from now (default six hours, as the operators);
        turned into an ``end_time`` at construction, so a rebuilt trigger keeps the same deadline.
    """

    def __init__(
        self,
        *,
        flux_conn_id: str = FluxHook.default_conn_name,
        jobs: list[list[Any]] | None = None,
        common: dict[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        attached: Mapping[str, Sequence[Any]] | None = None,
        runs: list[str] | None = None,
        run_ids: list[str] | None = None,
        batches: Mapping[str, list[str]] | None = None,
        expected_seconds: float = 10.0,
        timeout: float | None = None,
        **one_by_one: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(one_by_one) - {*OPTIONS, "batch_keys"})
        if unknown:
            raise FluxValidationError(
                field=unknown[0], value=one_by_one[unknown[0]], allowed=f"options {', '.join(OPTIONS)}"
            )
        self.options: dict[str, Any] = {**OPTIONS, **(options or {}), **one_by_one}
        # The batch keys a trigger serialized by 0.3.1 or earlier may carry are kept (its chunks replay
        # under them); a trigger of this version carries none: the window derives them from the jobs.
        if not self.options.get("batch_keys"):
            self.options.pop("batch_keys", None)
        if self.options["kind"] not in ("run", "evaluation"):
            raise FluxValidationError(field="kind", value=self.options["kind"], allowed="run or evaluation")
        if self.options["end_time"] is None:
            self.options["end_time"] = time.time() + (DEFAULT_TIMEOUT if timeout is None else float(timeout))
        self.flux_conn_id = flux_conn_id
        self.jobs = [list(j) for j in jobs or []]
        self.common = dict(common or {})
        self.metadata = metadata
        self.attached = {str(k): list(v) for k, v in (attached or {}).items()}
        elsewhere: list[tuple[str, str | None]] = [
            (run_id, None) for run_id in dict.fromkeys([*(runs or []), *(run_ids or [])])
        ]
        elsewhere += [(run_id, batch_id) for batch_id, ids in (batches or {}).items() for run_id in ids]
        if elsewhere:  # runs sent elsewhere: jobs that cannot be sent, each attached to its run
            specs = [
                JobSpec(index=i, model="", key="", ref="", input=None, cost=Decimal("0"), expected=expected_seconds)
                for i in range(len(elsewhere))
            ]
            self.jobs, self.common = pack_specs(specs)
            self.attached = {str(i): [run_id, batch_id, 1] for i, (run_id, batch_id) in enumerate(elsewhere)}
            self.options.update(max_in_flight=max(1, len(specs)), chunk_size=1, resubmit_failed=0)
        if not self.jobs:
            raise FluxValidationError(field="jobs", value=jobs, allowed="at least one job, run id or batch")
        self._live: Window | None = None  # the window run() drives, for on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "flux_conn_id": self.flux_conn_id,
                "jobs": self.jobs,
                "common": self.common,
                "options": dict(self.options),
                "metadata": self.metadata,
                "attached": self.attached,
            },
        )

    @classmethod
    def for_specs(cls, specs: list[JobSpec], **kwargs: Any) -> FluxGenerationTrigger:
        """A trigger for these jobs, in their row form (input fields they all share kept once, ``common``)."""
        jobs, common = pack_specs(specs)
        return cls(jobs=jobs, common=common, **kwargs)

    @classmethod
    def waiting_for(cls, run_ids: Sequence[str], **kwargs: Any) -> FluxGenerationTrigger:
        """A trigger that only waits for runs sent elsewhere (the quality operator's regenerations)."""
        return cls(runs=list(run_ids), **kwargs)

    def specs(self) -> list[JobSpec]:
        return unpack_specs(self.jobs, self.common)

    def window(self) -> Window:
        """The window this trigger runs (the worker builds the same one for non-deferrable tasks)."""
        options = self.options
        window = Window(
            jobs=self.specs(),
            max_in_flight=options["max_in_flight"],
            chunk_size=options["chunk_size"],
            end_time=options["end_time"],
            batch_keys=list(options.get("batch_keys") or []),
            use_batches=options["use_batches"],
            resubmit_failed=options["resubmit_failed"],
            budget=Decimal(options["budget_usd"]) if options["budget_usd"] is not None else None,
            poll_interval=options["poll_interval"],
            kind=options["kind"],
        )
        since = options["started_at"] or time.time()
        for key, (run_id, batch_id, attempt) in self.attached.items():
            window.reattach(int(key), run_id, batch_id=batch_id, attempt=int(attempt), submitted_at=since)
        return window

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Run the window until every job is terminal or the deadline passes; yield exactly one event."""
        window = self._live = self.window()
        hook = FluxHook(self.flux_conn_id)
        started = time.time()
        try:
            every = self.options["progress_interval"]
            event = await arun_window(hook, window, metadata=self.metadata, logger=self.log, progress_interval=every)
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
