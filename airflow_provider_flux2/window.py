"""The window: which jobs to submit next, what to poll, when a batch is done — decided without I/O.

One :class:`Window` holds every job of a task and answers the questions a driving loop asks:

* :meth:`Window.submissions` — what to send now: whole chunks (fixed by index, so a rebuilt window
  sends the same batches under the same keys) while they fit under ``max_in_flight``, resubmissions
  of failed runs first; nothing past the budget.
* :meth:`Window.polls` — which batches (one request each) and single runs are due for a poll.
* :meth:`Window.wakeup` — when the loop should look again.
* :meth:`Window.finished` — every job is terminal, or the deadline passed, or something failed for good.

The loop reports back what happened (:meth:`submitted`, :meth:`submit_failed`, :meth:`observe_batch`,
:meth:`observe_run`, :meth:`observe_items`, :meth:`poll_failed`). Two plain loops drive it: the
trigger's (async, on the triggerer) and the worker's (sync, for non-deferrable tasks), the way
httpx's ``Client`` and ``AsyncClient`` share ``BaseClient``. Every decision here is tested without a
socket (``tests/unit/test_window.py``).

A window's jobs are image runs, or — with ``kind="evaluation"`` — Runflow Sentinel evaluations of
stored images: sent one by one under their own keys, polled one request each, read through
:meth:`~airflow_provider_flux2.sentinel.Evaluation.as_run` (``pending`` is ``queued``, ``completed``
is ``succeeded``). Every other decision (slots, top-up, resubmission, budget, deadline) is the same.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import FluxConnectionError, FluxRateLimitError, FluxRequestTimeoutError
from airflow_provider_flux2.megapixels import billed_megapixels
from airflow_provider_flux2.models import Batch, FluxInput, Run, RunStatus
from airflow_provider_flux2.money import cents
from airflow_provider_flux2.money import format_usd as usd

# --------------------------------------------------------------------------------------------------
# What a submission carries and returns, and the poll schedule (shared by both loops and the hook)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """What one submit produced: a batch id (when the batch endpoint was used) and run ids in order."""

    run_ids: list[str]
    batch_id: str | None = None
    #: The API said this answer replays an earlier submission (same key): the runs may be done already.
    replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "run_ids": list(self.run_ids)}


@dataclass(frozen=True)
class BatchEntry:
    """One image of a batch submit: its input, its client_ref and its own Idempotency-Key."""

    request: FluxInput | protocol.WireInput
    client_ref: str
    idempotency_key: str


#: The longest pause between polls of runs the API holds queued (behind its concurrency cap).
QUEUED_MAX_INTERVAL = 30.0


def adaptive_poll_interval(
    statuses: Iterable[RunStatus | str], *, base: float, elapsed: float, expected: float
) -> float:
    """Seconds until the next poll: slow while runs queue or have long to go, ``base`` near their end.

    :param base: the shortest pause (the operator's ``poll_interval``); never polled faster.
    :param elapsed: seconds since the oldest awaited run was submitted.
    :param expected: the expected generation time of the largest image awaited (``expected_duration``).

    A queue is polled every ``2 × base`` (or ``expected / 2``, at most ``4 × base``): a cold start takes
    5–10 s. Runs still queued long past their expected end (twice it, plus :data:`QUEUED_MAX_INTERVAL`)
    are held by the model's concurrency cap: they are polled ever less often, every quarter of their
    age, at most :data:`QUEUED_MAX_INTERVAL`. A running batch far from its expected end is polled every
    half of the time left (at most ``4 × base``); within ``2 × base`` of it, every ``base``.
    """
    states = {RunStatus(s) for s in statuses}
    if not states:
        return base
    if states <= {RunStatus.QUEUED}:
        if elapsed > 2 * expected + QUEUED_MAX_INTERVAL:  # queued long past its end: held by the model's cap
            return min(QUEUED_MAX_INTERVAL, max(4 * base, elapsed / 4))
        return min(4 * base, max(2 * base, expected / 2))
    remaining = expected - elapsed
    if remaining > 2 * base:
        return min(4 * base, remaining / 2)
    return base


def expected_duration(width: int, height: int) -> float:
    """A rough guess of generation time (s) for polling: a few seconds plus ~1.5 s per megapixel."""
    return 4.0 + 1.5 * billed_megapixels(width, height)


#: Poll rounds a loop does in one turn: a batch seen finished makes its items read due at once.
POLL_ROUNDS = 3
#: Turns in a row whose submissions failed with an answer (5xx, 408), after the hook's own retries,
#: before the window gives up: an API that answers "no" does not heal by waiting. A silent API (no
#: answer: a time-out, a lost connection) or one asking to slow down (429) is waited for like a poll.
MAX_CONSECUTIVE_FAILURES = 5
#: Submission errors that mean the API did not answer, or asked to wait: ridden out until the deadline.
SILENT = (FluxConnectionError, FluxRequestTimeoutError, FluxRateLimitError)
#: The longest pause between two polls of an API that does not answer. A poll that fails for a reason
#: that may go away by itself (a network error, a time-out, 5xx, 429) never ends the wait: the window
#: backs off, doubling to this cap with jitter, and the task's own deadline decides when to stop.
OUTAGE_MAX_BACKOFF = 60.0
#: An outage is reported at most once per this many seconds, not once per poll.
OUTAGE_REPORT_EVERY = 60.0
#: What a window's jobs are: image runs, or evaluations of stored images (see the module docstring).
JobKind = Literal["run", "evaluation"]
#: Job phases: not sent yet · at the API · failed, its failure code unknown (read the run) · failed, to be
#: sent again · terminal for good · never sent (budget or deadline).
Phase = Literal["waiting", "in_flight", "read", "resubmit", "done", "stopped"]


@dataclass(frozen=True)
class JobSpec:
    """What the window needs of one job: its keys, what it asks for, what it should cost.

    :param input: the wire input (``None`` for a run attached by id, which cannot be sent again).
    :param expected: seconds the run is expected to take, for the poll interval.
    """

    index: int
    model: str
    key: str
    ref: str
    input: dict[str, Any] | None
    cost: Decimal
    expected: float = 10.0

    def attempt_key(self, attempt: int) -> str:
        return resubmission_key(self.key, attempt)

    def to_row(self, common: Mapping[str, Any] | None = None) -> list[Any]:
        """The compact form a trigger's kwargs carry: ``[index, model, key, ref, input, cost, expected]``,
        the input without the fields in ``common`` (kept once for all jobs, see :func:`pack_specs`);
        ``None`` for a job attached by run id, which cannot be sent."""
        shared = common or {}
        own = None if self.input is None else {k: v for k, v in self.input.items() if k not in shared}
        return [self.index, self.model, self.key, self.ref, own, str(self.cost), round(self.expected, 2)]

    @classmethod
    def from_row(cls, row: Sequence[Any], common: Mapping[str, Any] | None = None) -> JobSpec:
        index, model, key, ref, own, cost, expected = row
        return cls(
            index=int(index),
            model=model,
            key=key,
            ref=ref,
            input=None if own is None else {**(common or {}), **own},
            cost=Decimal(cost),
            expected=float(expected),
        )


def pack_specs(specs: Sequence[JobSpec]) -> tuple[list[list[Any]], dict[str, Any]]:
    """``(rows, common)``: the specs in their row form, the input fields they all share kept once (so a
    1,000-job trigger stays well under 1 MB). :func:`unpack_specs` gives the same specs back."""
    inputs = [spec.input or {} for spec in specs]
    common: dict[str, Any] = {}
    if len(inputs) > 1:
        common = {k: v for k, v in inputs[0].items() if all(k in i and i[k] == v for i in inputs)}
    return [spec.to_row(common) for spec in specs], common


def unpack_specs(rows: Iterable[Sequence[Any]], common: Mapping[str, Any] | None = None) -> list[JobSpec]:
    return [JobSpec.from_row(row, common) for row in rows]


def batch_key(keys: Sequence[str]) -> str:
    """A batch's Idempotency-Key: fixed by its jobs' keys (chunks are fixed by index, not by timing), so
    a rebuilt window or a task retry sends the same chunk under the same key and is replayed."""
    digest = hashlib.sha256("\x1f".join(keys).encode()).hexdigest()
    return f"flux2-batch-{digest[:43]}"


def resubmission_key(key: str, attempt: int) -> str:
    """Attempt 1 uses the job's key; a failed (unbilled) run is resubmitted under a derived one.

    Deterministic, so a rebuilt window or a task retry walks the same chain and replays instead of paying again.
    """
    return key if attempt <= 1 else f"{key}-r{attempt}"


@dataclass
class JobState:
    """Where one job stands; ``to_row``/``from_row`` give it the compact shape events carry."""

    index: int
    phase: Phase = "waiting"
    attempt: int = 1
    run_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the run's status_code
    submitted_at: float | None = None
    detected_at: float | None = None
    completed_at: str | None = None
    cost: Decimal | None = None  # what the API reported (a succeeded run)
    failure_code: str | None = None
    previous: list[str] = field(default_factory=list)  # run ids of earlier attempts (failed, unbilled)
    stopped: str | None = None  # why it was never sent

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"i": self.index, "p": self.phase, "a": self.attempt}
        optional = {
            "r": self.run_id,
            "b": self.batch_id,
            "s": self.status,
            "t": _round(self.submitted_at),
            "d": _round(self.detected_at),
            "c": self.completed_at,
            "$": str(self.cost) if self.cost is not None else None,
            "f": self.failure_code,
            "x": self.stopped,
        }
        row.update({k: v for k, v in optional.items() if v is not None})
        if self.previous:
            row["v"] = list(self.previous)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobState:
        return cls(
            index=int(row["i"]),
            phase=row.get("p", "done"),
            attempt=int(row.get("a", 1)),
            run_id=row.get("r"),
            batch_id=row.get("b"),
            status=row.get("s"),
            submitted_at=row.get("t"),
            detected_at=row.get("d"),
            completed_at=row.get("c"),
            cost=Decimal(row["$"]) if row.get("$") is not None else None,
            failure_code=row.get("f"),
            previous=list(row.get("v") or []),
            stopped=row.get("x"),
        )

    @property
    def terminal(self) -> bool:
        return self.status is not None and RunStatus(self.status).terminal

    @property
    def succeeded(self) -> bool:
        return self.status == RunStatus.SUCCEEDED.value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class Submit:
    """Send these jobs: as one batch (``batch_key`` set) or one run each."""

    jobs: tuple[int, ...]
    model: str
    batch_key: str | None = None
    kind: JobKind = "run"

    @property
    def is_batch(self) -> bool:
        return self.batch_key is not None


@dataclass(frozen=True)
class Poll:
    """Read one thing: a batch's statuses, a single run, or a batch's items (the costs the API reports)."""

    kind: Literal["batch", "run", "items", "evaluation"]
    id: str


@dataclass
class Window:
    """The sans-I/O state machine of one task's jobs (see the module docstring).

    :param jobs: the jobs, in plan order.
    :param max_in_flight: most runs at the API at once.
    :param chunk_size: jobs per batch request; chunks are fixed by index (chunk ``k`` is jobs
        ``k*size … (k+1)*size-1``) so the same chunk always goes under the same batch key.
    :param use_batches: send chunks through the batch endpoint (1-job chunks always go as single runs).
    :param resubmit_failed: times a failed (unbilled, non-moderation) run is sent again.
    :param budget: stop submitting when what is spent (as the API reports it) plus what is in flight
        plus the next submission would pass this; ``None``: no running limit.
    :param end_time: wall-clock deadline (epoch seconds).
    :param poll_interval: the shortest pause between two polls of one batch or run.
    :param batch_keys: chunk number → batch Idempotency-Key; derived from the chunks' job keys
        (:func:`batch_key`) when not given, so a window needs nothing but its specs and options.
    :param kind: ``run`` (images) or ``evaluation`` (Sentinel evaluations: never batched).
    """

    jobs: list[JobSpec]
    max_in_flight: int
    chunk_size: int
    end_time: float
    batch_keys: list[str] = field(default_factory=list)
    use_batches: bool = True
    resubmit_failed: int = 2
    budget: Decimal | None = None
    poll_interval: float = 2.0
    kind: JobKind = "run"
    states: dict[int, JobState] = field(init=False)
    next_chunk: int = field(init=False, default=0)
    error: str | None = field(init=False, default=None)
    budget_stop: dict[str, str] | None = field(init=False, default=None)
    failures: int = field(init=False, default=0)  # turns in a row whose submissions were refused
    _turn: int = field(init=False, default=0)  # submissions() calls: one a turn of the loop
    _failed_turn: int = field(init=False, default=-1)
    drain_on_error: bool = field(init=False, default=False)  # the error leaves the runs at the API readable
    poll_failures: int = field(init=False, default=0)  # polls failed in a row (the API silent)
    outage_since: float | None = field(init=False, default=None)
    outage_error: str | None = field(init=False, default=None)
    _outage_said: float = field(init=False, default=0.0)
    _specs: dict[int, JobSpec] = field(init=False)
    _due: dict[tuple[str, str], float] = field(init=False, default_factory=dict)
    _targets: dict[tuple[str, str], list[int]] = field(init=False, default_factory=dict)
    _no_batches: set[str] = field(init=False, default_factory=set)
    _retry: list[tuple[Submit, float]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._specs = {spec.index: spec for spec in self.jobs}
        self.states = {spec.index: JobState(spec.index) for spec in self.jobs}
        if self.kind == "evaluation":  # evaluations have no batch endpoint: each job is its own chunk
            self.use_batches, self.chunk_size = False, 1
        self.chunk_size = max(1, min(self.chunk_size, self.max_in_flight, protocol.MAX_BATCH_ITEMS))
        if not self.batch_keys:
            self.batch_keys = [batch_key([spec.key for spec in self.chunk(n)]) for n in range(self.chunks)]

    # -- runs already sent (an earlier try's, or sent elsewhere: the quality operator's regenerations) --

    def reattach(
        self, index: int, run_id: str, *, batch_id: str | None = None, attempt: int = 1, submitted_at: float
    ) -> None:
        """A job already sent (by an earlier try of this task, its run id recorded, or elsewhere): waited
        for, not sent again — whether or not the API still remembers its Idempotency-Key. The other jobs
        are sent. A job whose spec has no input (a run sent elsewhere) is never resubmitted."""
        state = self.states[index]
        state.phase, state.run_id, state.batch_id = "in_flight", run_id, batch_id
        state.attempt, state.submitted_at = attempt, submitted_at
        target = ("batch", batch_id) if batch_id else (self.kind, run_id)
        self._targets.setdefault(target, []).append(index)
        self._due.setdefault(target, submitted_at)

    # -- decisions -----------------------------------------------------------------------------------

    @property
    def chunks(self) -> int:
        return math.ceil(len(self.jobs) / self.chunk_size)

    def chunk(self, number: int) -> list[JobSpec]:
        return self.jobs[number * self.chunk_size : (number + 1) * self.chunk_size]

    def in_flight(self) -> int:
        return sum(1 for s in self.states.values() if s.phase in ("in_flight", "read"))

    def submissions(self, now: float) -> list[Submit]:
        """What to send now: resubmissions first (one slot each), then whole chunks while they fit."""
        if self.error is not None or now >= self.end_time:
            return []
        self._turn += 1
        out = [submit for submit, at in self._retry if at <= now]
        self._retry = [(submit, at) for submit, at in self._retry if at > now]
        free = self.max_in_flight - self.in_flight()
        committed = self.committed()
        for state in self.states.values():
            if state.phase == "resubmit" and free > 0:
                spec = self._specs[state.index]
                if not self._affordable(committed, spec.cost, [state.index]):
                    return out
                out.append(Submit((state.index,), spec.model, kind=self.kind))
                state.phase = "in_flight"  # holds its slot until the loop reports the submission
                committed += spec.cost
                free -= 1
        while self.next_chunk < self.chunks:
            # Jobs re-attached to an earlier try's runs are not sent again.
            chunk = [spec for spec in self.chunk(self.next_chunk) if self.states[spec.index].phase == "waiting"]
            whole = len(chunk) == len(self.chunk(self.next_chunk))
            if not chunk:
                self.next_chunk += 1
                continue
            if len(chunk) > free:
                break
            cost = sum((spec.cost for spec in chunk), Decimal("0"))
            if not self._affordable(committed, cost, [spec.index for spec in chunk]):
                break
            models = {spec.model for spec in chunk}
            batchable = (
                whole and self.use_batches and len(chunk) > 1 and len(models) == 1 and not models & self._no_batches
            )
            key = self.batch_keys[self.next_chunk] if batchable and self.next_chunk < len(self.batch_keys) else None
            if key is not None:
                out.append(Submit(tuple(spec.index for spec in chunk), chunk[0].model, key))
            else:  # a batch request carries one model; mixed chunks and unbatchable models go one run each
                out.extend(Submit((spec.index,), spec.model, kind=self.kind) for spec in chunk)
            for spec in chunk:
                self.states[spec.index].phase = "in_flight"
            self.next_chunk += 1
            committed += cost
            free -= len(chunk)
        return out

    def committed(self) -> Decimal:
        """Spent (the API's figure where it reported one, the estimate otherwise) plus what is in flight."""
        total = Decimal("0")
        for state in self.states.values():
            spec = self._specs[state.index]
            if state.phase in ("in_flight", "read"):
                total += spec.cost
            elif state.phase == "done" and state.succeeded:
                total += state.cost if state.cost is not None else spec.cost
        return total

    def spent(self) -> Decimal:
        """What finished runs cost (the API's figure where reported): failed runs are free."""
        return sum(
            (
                (s.cost if s.cost is not None else self._specs[s.index].cost)
                for s in self.states.values()
                if s.phase == "done" and s.succeeded
            ),
            Decimal("0"),
        )

    def _affordable(self, committed: Decimal, cost: Decimal, indices: list[int]) -> bool:
        if self.budget is None or committed + cost <= self.budget:
            return True
        self.budget_stop = {
            "committed": usd(committed),
            "next": usd(cost),
            "limit": usd(self.budget),
            "jobs": str(len(indices)),
        }
        for state in self.states.values():
            if state.phase in ("waiting", "resubmit"):
                state.phase, state.stopped = "stopped", "budget"
        self.next_chunk = self.chunks
        return False

    def polls(self, now: float) -> list[Poll]:
        """Batches, runs and batch items due for a read now (one request each)."""
        due = []
        for target, at in sorted(self._due.items(), key=lambda item: item[1]):
            if at <= now and self._awaited(target):
                kind = target[0]
                if kind == "batch" and self.budget is not None:
                    # The running budget wants the API's cost of each finished run: one read of the batch's
                    # items gives the statuses and the costs together (a lean poll, then the items, is two).
                    kind = "items"
                due.append(Poll(kind, target[1]))  # type: ignore[arg-type]
        return due

    def _target(self, poll: Poll) -> tuple[str, str]:
        """The awaited thing a poll reads (a batch polled through its items is still the batch)."""
        return ("batch", poll.id) if poll.kind == "items" else (poll.kind, poll.id)

    def _awaited(self, target: tuple[str, str]) -> bool:
        kind, _ = target
        states = [self.states[i] for i in self._targets.get(target, [])]
        if kind in ("run", "evaluation"):
            return any(s.phase in ("in_flight", "read") and s.run_id == target[1] for s in states)
        return any(s.phase == "in_flight" and s.batch_id == target[1] and not s.terminal for s in states)

    def wakeup(self, now: float) -> float:
        """When the loop should look again (epoch seconds): the next due poll, or the deadline."""
        pending = [at for target, at in self._due.items() if self._awaited(target)]
        pending += [at for _, at in self._retry] if self.error is None else []
        return min([*pending, self.end_time])

    def finished(self, now: float) -> bool:
        if now >= self.end_time:
            return True
        if self.error is not None:
            return not self._draining()
        return all(s.phase in ("done", "stopped") for s in self.states.values())

    def _draining(self) -> bool:
        """After a refused submission: runs already at the API are still awaited (they bill; their
        images are collected), though nothing more is sent."""
        return self.drain_on_error and any(s.phase in ("in_flight", "read") and s.run_id for s in self.states.values())

    def status(self, now: float) -> str:
        if self.error is not None:
            return "error"
        if all(s.phase in ("done", "stopped") for s in self.states.values()):
            return "success"
        return "timeout" if now >= self.end_time else "running"

    # -- observations --------------------------------------------------------------------------------

    def submitted(
        self, submit: Submit, run_ids: list[str], batch_id: str | None, now: float, *, replayed: bool = False
    ) -> None:
        """The API accepted ``submit``: its runs are in flight.

        A replayed answer (a rebuilt trigger, a retry) is polled at once: its runs may have finished long
        ago, and waiting a fresh run's first interval would slow the catch-up to a crawl.
        """
        self.failures = 0
        self._answered()
        target = ("batch", batch_id) if batch_id else None
        # The same run ids back (a transient failure whose first attempt did reach the API) is a replay too.
        known = {r for s in self.states.values() for r in (s.run_id, *s.previous) if r}
        replayed = replayed or bool(known.intersection(run_ids))
        for index, run_id in zip(submit.jobs, run_ids, strict=True):
            state = self.states[index]
            state.phase, state.run_id, state.batch_id, state.submitted_at = "in_flight", run_id, batch_id, now
            state.status, state.detected_at, state.completed_at, state.cost = RunStatus.QUEUED.value, None, None, None
            job_target = target or (self.kind, run_id)
            self._targets.setdefault(job_target, []).append(index)
            expected = max(self._specs[i].expected for i in submit.jobs)
            first = 0.0 if replayed else self._interval([RunStatus.QUEUED.value], 0.0, expected)
            self._due[job_target] = now + first

    def submit_failed(self, submit: Submit, error: BaseException, now: float) -> None:
        """The API refused ``submit``: fall back to single runs, send it again later, or give up."""
        if submit.is_batch and protocol.batch_unsupported(error):
            # The model has no batch endpoint: each job goes alone, under its own key.
            self._no_batches.add(submit.model)
            self._retry.extend((Submit((index,), submit.model), now) for index in submit.jobs)
            return
        if isinstance(error, SILENT):
            # The API down, hanging or rate limiting: the jobs keep their slots and the same request (same
            # key: billed once if it did arrive) goes again after a backoff, until the task's deadline.
            if isinstance(error, FluxRateLimitError):  # asked to wait: no outage
                delay = max(2 * self.poll_interval, error.retry_after or 0.0)
            else:
                self._silent(error, now)
                delay = min(OUTAGE_MAX_BACKOFF, self.poll_interval * 2 ** min(self.poll_failures - 1, 16))
            self._retry.append((submit, now + delay * (1 + protocol.JITTER * random.random())))
            return
        if protocol.is_transient(error):
            if self._failed_turn != self._turn:  # submissions failing together in one turn count once
                self._failed_turn = self._turn
                self.failures += 1
            if self.failures < MAX_CONSECUTIVE_FAILURES:
                # The jobs keep their slots; the same request (same key) goes again shortly.
                self._retry.append((submit, now + self.poll_interval))
                return
        self.error = f"Submitting jobs {', '.join(map(str, submit.jobs[:10]))} failed: {_typed(error)}"
        self.drain_on_error = True
        status = getattr(error, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500 and status != 409:
            # A refusal (402, 401, 422…) created nothing: these jobs were never sent, and bill nothing.
            for index in submit.jobs:
                state = self.states[index]
                if state.phase == "in_flight" and not state.run_id:
                    state.phase, state.stopped = "waiting", "refused"

    def observe_batch(self, batch: Batch, now: float) -> None:
        """Statuses of one batch's items; a finished item frees its slot at once."""
        self._answered()
        by_run = {item.run_id: item for item in batch.items if item.run_id}
        target = ("batch", batch.id)
        for index in self._targets.get(target, []):
            state = self.states[index]
            item = by_run.get(state.run_id or "")
            if item is None or state.batch_id != batch.id or state.phase != "in_flight":
                continue
            self._observe(state, item.status_code, None, now)
        self._reschedule(target, now)

    def observe_run(self, run: Run, now: float) -> None:
        """One run read (a single run, or a failed batch item whose failure code is needed)."""
        self._answered()
        for state in self.states.values():
            if state.run_id == run.id and state.phase in ("in_flight", "read"):
                state.cost = run.cost if run.status_code == RunStatus.SUCCEEDED else None
                state.failure_code = run.failure_code
                self._observe(state, run.status_code, run.completed_at, now, known=True)
        self._reschedule((self.kind, run.id), now)

    def observe_items(self, batch_id: str, runs: Iterable[Run], now: float) -> None:
        """A batch's items: each run's status, failure code and the cost the API reports (the running budget).

        The poll of a batch under a running budget (see :meth:`polls`): statuses and costs in one read.
        """
        self._answered()
        by_run = {run.id: run for run in runs}
        batch = ("batch", batch_id)
        for index in self._targets.get(batch, []):
            state = self.states[index]
            run = by_run.get(state.run_id or "")
            if run is None or state.batch_id != batch_id or state.phase != "in_flight":
                continue
            state.cost = run.cost if run.status_code == RunStatus.SUCCEEDED else None
            state.failure_code = run.failure_code
            self._observe(state, run.status_code, run.completed_at, now, known=True)
        if batch in self._due:
            self._reschedule(batch, now)

    def poll_failed(self, poll: Poll, error: BaseException, now: float) -> None:
        """A poll failed after the hook's own retries: a lasting error stops the window; anything that may
        go away by itself (the API down, hanging, rate limiting) is ridden out until the deadline, the
        poll sent again after a backoff that doubles to :data:`OUTAGE_MAX_BACKOFF`, with jitter."""
        if not protocol.is_transient(error):
            self.error = f"Reading {poll.kind} {poll.id} failed: {_typed(error)}"
            self.drain_on_error = False  # the runs cannot be read: nothing to wait for
            return
        if isinstance(error, FluxRateLimitError):
            # Asked to slow down, not a silent API: no failed poll, no outage; read again a little later
            # (the connection's rate limiter has already cut the pace of every request).
            delay = max(2 * self.poll_interval, error.retry_after or 0.0)
            self._due[self._target(poll)] = now + delay * (1 + protocol.JITTER * random.random())
            return
        self._silent(error, now)
        delay = min(OUTAGE_MAX_BACKOFF, self.poll_interval * 2 ** min(self.poll_failures - 1, 16))
        self._due[self._target(poll)] = now + delay * (1 + protocol.JITTER * random.random())

    def _silent(self, error: BaseException, now: float) -> None:
        """A request the API did not answer (a poll or a submission): the outage goes on."""
        self.poll_failures += 1
        if self.outage_since is None:
            self.outage_since = now
        self.outage_error = _typed(error)

    def _answered(self) -> None:
        """The API answered a poll: an outage, if there was one, is over."""
        self.poll_failures, self.outage_since, self.outage_error, self._outage_said = 0, None, None, 0.0

    def outage_line(self, now: float) -> str | None:
        """Once the API has been silent a minute, and once a minute after: for how long, and what the wait
        does (the hook's own retry warnings say each failed request)."""
        if self.outage_since is None or now - self.outage_since < OUTAGE_REPORT_EVERY:
            return None
        if now - self._outage_said < OUTAGE_REPORT_EVERY:
            return None
        self._outage_said = now
        return (
            f"The FLUX API has not answered for {duration(now - self.outage_since)} ({self.poll_failures} failed "
            f"request(s), last: {self.outage_error}); waiting on until the deadline, "
            f"{duration(self.end_time - now)} from now"
        )

    def _observe(
        self, state: JobState, status: RunStatus, completed_at: str | None, now: float, *, known: bool = False
    ) -> None:
        state.status = status.value
        if not status.terminal:
            return
        if state.detected_at is None:
            state.detected_at = now
        state.completed_at = completed_at or state.completed_at
        if status == RunStatus.SUCCEEDED:
            state.phase = "done"  # its slot is free at once (under a budget its cost came with it: see polls)
            return
        # failed or canceled: free of charge; is it worth sending again?
        if not known:
            self._read(state, ("run", state.run_id or ""), now)
            return
        spec = self._specs[state.index]
        moderated = (state.failure_code or "") in protocol.MODERATION_CODES
        if not moderated and spec.input is not None and state.attempt <= self.resubmit_failed and not self.error:
            state.previous.append(state.run_id or "")
            state.attempt += 1
            state.phase, state.run_id, state.batch_id, state.status = "resubmit", None, None, None
            state.detected_at = state.completed_at = None
            state.failure_code = None
            return
        state.phase = "done"

    def _read(self, state: JobState, target: tuple[str, str], now: float) -> None:
        """A failed batch item: read its run at once (its failure code decides whether to resubmit)."""
        state.phase = "read"
        members = self._targets.setdefault(target, [])
        if state.index not in members:
            members.append(state.index)
        self._due[target] = now

    def _reschedule(self, target: tuple[str, str], now: float) -> None:
        states = [
            self.states[i] for i in self._targets.get(target, []) if self.states[i].phase in ("in_flight", "read")
        ]
        if not states:
            self._due.pop(target, None)
            return
        submitted = min(s.submitted_at or now for s in states)
        expected = max(self._specs[s.index].expected for s in states)
        self._due[target] = now + self._interval([s.status or "queued" for s in states], now - submitted, expected)

    def _interval(self, statuses: list[str], elapsed: float, expected: float) -> float:
        return adaptive_poll_interval(statuses, base=self.poll_interval, elapsed=elapsed, expected=expected)

    # -- what the loop reports -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "failed": 0, "moderated": 0, "in_flight": 0, "stopped": 0}
        for state in self.states.values():
            if state.phase == "stopped":
                counts["stopped"] += 1
            elif state.phase in ("in_flight", "read"):
                counts["in_flight"] += 1
            elif state.phase == "done":
                moderated = (state.failure_code or "") in protocol.MODERATION_CODES
                counts["moderated" if moderated else "done" if state.succeeded else "failed"] += 1
        return counts

    def entries(self, submit: Submit) -> list[BatchEntry]:
        """The inputs of a submission, each with the key of its current attempt."""
        entries = []
        for index in submit.jobs:
            spec = self._specs[index]
            if spec.input is None:
                raise ValueError(f"job {index} was attached by run id and cannot be sent")
            key = spec.attempt_key(self.states[index].attempt)
            entries.append(BatchEntry(protocol.WireInput(spec.input), spec.ref, key))
        return entries

    def progress_line(self, started: float, now: float) -> str:
        """``37/200 done · 2 failed · $1.11 of $6.00 budget · ETA 3m10s · 8 in flight``.

        Money is rounded to the cent for reading; records and the final summary keep exact figures.
        """
        counts = self.counts()
        total = len(self.jobs)
        finished = counts["done"] + counts["failed"] + counts["moderated"]
        spent = f"${cents(self.spent())}"
        spent += f" of ${cents(self.budget)} budget" if self.budget is not None else " spent"
        eta = ""
        if 0 < finished < total and now > started:
            eta = f" · ETA {duration((total - finished) * (now - started) / finished)}"
        extra = f" · {counts['moderated']} moderated" if counts["moderated"] else ""
        extra += f" · {counts['stopped']} not sent (budget)" if counts["stopped"] else ""
        flight = counts["in_flight"]
        return f"{finished}/{total} done · {counts['failed']} failed · {spent}{eta} · {flight} in flight{extra}"

    def kill_line(self, *, limit: int = 200) -> str:
        """What a killed task leaves behind, for its log: the runs still at the API — they finish and
        bill, since Runflow has no public cancel — by run and batch id, and the jobs never sent."""
        at_api = [s for s in self.states.values() if s.phase in ("in_flight", "read") and s.run_id]
        sending = sum(1 for s in self.states.values() if s.phase == "in_flight" and not s.run_id)
        unsent = sum(1 for s in self.states.values() if s.phase in ("waiting", "resubmit"))
        if not at_api and not sending:
            return f"Killed with no {self.kind} at the API; {unsent} job(s) never sent: nothing more is billed"
        estimate = sum((self._specs[s.index].cost for s in at_api if s.index in self._specs), Decimal(0))
        ids = [s.run_id or "" for s in at_api]
        shown = ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
        batches = sorted({s.batch_id for s in at_api if s.batch_id})
        line = (
            f"Killed with {len(at_api)} {self.kind}(s) still at the API: Runflow has no public cancel, so they "
            f"finish and bill (about ${cents(estimate)}); {self.kind} ids: {shown}"
        )
        line += f"; batches: {', '.join(batches)}" if batches else ""
        line += f"; {sending} submission(s) in progress may also bill" if sending else ""
        line += f"; {unsent} job(s) never sent" if unsent else ""
        return line + ". A retry re-attaches to them under the same keys and pays nothing again."

    def event(self, now: float) -> dict[str, Any]:
        """The one event of a wait: its status, a message, and where every job stands (compact rows).

        An evaluation window's event also names each job's key (``keys``): the task that resumes on it
        matches the evaluation ids to its images by key, not by a position it would have to re-derive."""
        status = self.status(now)
        if status == "running":
            status = "timeout"
        counts = self.counts()
        if status == "error":
            message = self.error or "failed"
        elif status == "timeout":
            pending = [s.run_id for s in self.states.values() if s.phase in ("in_flight", "read") and s.run_id]
            message = f"{len(pending)} {self.kind}(s) did not finish before the deadline: {', '.join(pending[:20])}"
        else:
            message = f"{counts['done'] + counts['failed'] + counts['moderated']} job(s) finished"
        payload: dict[str, Any] = {
            "status": status,
            "message": message,
            "jobs": [state.to_row() for state in self.states.values()],
        }
        if self.budget_stop is not None:
            payload["budget_stop"] = self.budget_stop
        if self.kind == "evaluation":
            payload["keys"] = {str(spec.index): spec.key for spec in self.jobs}
        return payload


def log_kill(window: Window | None, logger: Any) -> None:
    """``on_kill`` of a task or a trigger: name what its window leaves at the API (Runflow has no public
    cancel, so runs already sent finish and bill). Best effort: never raises."""
    if window is None:
        return
    try:
        logger.warning("%s", window.kill_line())
    except Exception as error:
        logger.warning("on_kill could not list the runs left at the API: %s", error)


def _typed(error: BaseException) -> str:
    """``FluxRequestTimeoutError: …``: the event carries text, so the error's type travels in it."""
    return f"{type(error).__name__}: {error}"


def duration(seconds: float) -> str:
    """``3m10s``, ``1h05m``, ``42s``."""
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def rows_of(event: Mapping[str, Any]) -> dict[int, JobState]:
    """The job states an event carries, by index."""
    states = [JobState.from_row(row) for row in event.get("jobs") or []]
    return {state.index: state for state in states}


__all__ = [
    "JobSpec",
    "JobState",
    "Poll",
    "Submit",
    "Window",
    "batch_key",
    "log_kill",
    "pack_specs",
    "resubmission_key",
    "rows_of",
    "unpack_specs",
]
