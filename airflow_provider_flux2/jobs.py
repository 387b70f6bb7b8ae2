"""The job — one image: its request, price and keys — and what a task does with many of them.

* :class:`Job` and :func:`new_job`: a validated request, its price and the deterministic keys that make
  sending it again a replay, not a new charge.
* :class:`Plan`: every job of a task, priced, chunked (chunks are fixed by index, so a chunk always goes
  under the same batch key) and turned into the window the trigger (or the worker) runs.
* :class:`Progress`: what ``task_state_store`` keeps between tries (Airflow >= 3.3): batch ids and what
  is stored — ids, never copies of records. Typed and versioned; checked on load.
* :func:`record_for_run`, :func:`store_image` and :func:`collect`: a finished run becomes a record,
  its image is downloaded, verified and stored — many at once, in a bounded pool.
* :func:`records`: one record per job, in plan order — the collected ones, and a :func:`pending_record`
  (built from the same job fields) for every job nothing was collected for.
The loops that drive a window (in a worker, on the triggerer) are in :mod:`airflow_provider_flux2.loops`.

The operators import from here and never from each other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import (
    FluxError,
    FluxImageError,
    FluxModerationError,
    FluxRunFailedError,
    InsufficientBalanceError,
)
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.models import (
    FluxInput,
    ImageRecord,
    Run,
    RunStatus,
    Timings,
    Variant,
    utc_now_iso,
)
from airflow_provider_flux2.pricing import NOT_STORED, Budget, CostEstimate, ItemCost, cents, image_cost, routed, usd
from airflow_provider_flux2.storage import BatchLocation, content_hash, publisher_for
from airflow_provider_flux2.storage.base import image_workers
from airflow_provider_flux2.storage.naming import name_fields
from airflow_provider_flux2.storage.publish import object_metadata
from airflow_provider_flux2.window import (
    BatchEntry,
    JobSpec,
    JobState,
    Submit,
    batch_key,
    expected_duration,
    resubmission_key,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_flux2.storage.base import Publisher

log = logging.getLogger(__name__)

ModerationPolicy = Literal["fail", "skip", "record"]
FailurePolicy = Literal["fail", "record"]
#: The folder under ``$AIRFLOW_HOME`` used when neither ``output_uri`` nor ``[flux2] default_output_uri`` is set.
DEFAULT_OUTPUT_FOLDER = "flux2-images"
#: Per-item keys that describe an item rather than generate it; they are kept on its record.
ITEM_META = ("id", "source_hash", "extra")


def merge_item(entry: Any, shared: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One prompt entry (a string, or a dict with ``prompt`` and per-item keys) over the task's shared
    generation parameters: ``(generation params, meta)``, unset values dropped. Meta (``id``,
    ``source_hash``, ``extra``'s keys) rides on the record. The one merge: the generate operator's plan
    and the night's plan price the same items."""
    if isinstance(entry, dict) and "prompt" in entry:
        meta = {k: entry[k] for k in ("id", "source_hash") if entry.get(k) is not None}
        meta.update(entry.get("extra") or {})
        item = {**shared, **{k: v for k, v in entry.items() if k not in ITEM_META}}
    else:
        meta, item = {}, {**shared, "prompt": entry}
    return {k: v for k, v in item.items() if v is not None}, meta


#: Collecting one image (download, verify, store) is tried this many times before the task fails.
COLLECT_ATTEMPTS = 3
#: Images collected at once by one worker: enough to hide download latency, few enough for memory
#: (each holds one image's bytes until it is stored).
COLLECT_WORKERS = 8
#: Memory collection may hold at once: each worker holds one image's bytes and its decoded pixels, so
#: 4096×4096 images get fewer workers than 1-megapixel ones.
COLLECT_MEMORY = 512 * 1024 * 1024
#: Collection records what it stored (``task_state_store``) after every this many images.
CHECKPOINT_EVERY = 100


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One image of a plan: validated request, price and identity."""

    index: int
    variant: Variant
    request: FluxInput
    prompt: str
    params: dict[str, Any]
    idempotency_key: str
    client_ref: str
    request_hash: str
    meta: dict[str, Any] = field(default_factory=dict)  # per-item id / source_hash / extra, kept on the record
    #: The model the request goes to: the variant's, or an edit model for reference images (routing table).
    model: str = ""

    def __post_init__(self) -> None:
        if not self.model:
            object.__setattr__(self, "model", self.variant.model_id)

    def entry(self, attempt: int) -> BatchEntry:
        return BatchEntry(self.request, self.client_ref, resubmission_key(self.idempotency_key, attempt))

    def spec(self, cost: ItemCost) -> JobSpec:
        """What the window needs of this job."""
        return JobSpec(
            index=self.index,
            model=self.model,
            key=self.idempotency_key,
            ref=self.client_ref,
            input=self.request.to_wire(),
            cost=cost.cost,
            expected=expected_duration(self.request.width, self.request.height),
        )


def new_job(
    identity: Mapping[str, Any],
    index: int,
    variant: Variant,
    request: FluxInput,
    item: str | int | None = None,
    meta: Mapping[str, Any] | None = None,
    routes: Mapping[str, str] | None = None,
) -> Job:
    """A job with the keys that make its submission idempotent, sent to the model its references need.

    :param identity: the task's Airflow identity (dag, task, run, map index).
    :param item: what tells this image apart inside the task (default: its index).
    :param routes: the connection's ``edit_models`` record (see :func:`~airflow_provider_flux2.pricing.routed`).
    """
    target, request, _ = routed(variant, request, routes)
    req_hash = protocol.request_hash(target, request)
    item_identity = {**identity, "item": index if item is None else item}
    return Job(
        index=index,
        variant=variant,
        model=target,
        request=request,
        prompt=request.prompt,
        params={k: v for k, v in request.to_wire().items() if k != "prompt"},
        idempotency_key=protocol.idempotency_key(item_identity, req_hash),
        client_ref=protocol.client_ref(item_identity, req_hash),
        request_hash=req_hash,
        meta=dict(meta or {}),
    )


def default_chunk_size(max_in_flight: int, batch_size: int | None, use_batches: bool) -> int:
    """Jobs per batch request: a quarter of the window by default, so a quarter of it freeing tops it up.

    Smaller chunks keep the window fuller (a chunk waits for its whole size to free); larger ones mean
    fewer requests (one submit and one poll per batch). A chunk of one goes as a single run.
    """
    if not use_batches:
        return 1
    size = batch_size or max(1, max_in_flight // 4)
    return max(1, min(size, max_in_flight, protocol.MAX_BATCH_ITEMS))


@dataclass(frozen=True)
class Plan:
    """Every job of a task, priced and chunked; built once per worker entry."""

    jobs: list[Job]
    estimate: CostEstimate
    chunk_size: int
    digest: str
    budget: Budget | None = None

    @classmethod
    def of(cls, jobs: list[Job], estimate: CostEstimate, chunk_size: int, budget: Budget | None) -> Plan:
        digest = hashlib.sha256("".join(j.idempotency_key for j in jobs).encode()).hexdigest()[:16]
        return cls(jobs=jobs, estimate=estimate, chunk_size=chunk_size, digest=digest, budget=budget)

    @property
    def chunks(self) -> int:
        return -(-len(self.jobs) // self.chunk_size)

    def chunk(self, number: int) -> list[Job]:
        return self.jobs[number * self.chunk_size : (number + 1) * self.chunk_size]

    def batch_keys(self) -> list[str]:
        """The batch keys the window derives for this plan's chunks (for a caller sending chunks itself)."""
        return [batch_key([job.idempotency_key for job in self.chunk(number)]) for number in range(self.chunks)]

    def specs(self) -> list[JobSpec]:
        return [job.spec(self.estimate.items[job.index]) for job in self.jobs]

    def line(self, max_in_flight: int, *, balance: Decimal | None = None) -> str:
        """``Plan: 1,000 images · 1,250 MP · $31.50 of $40.00 budget · balance $120.00 · max 32 in flight``,
        with what is only estimated (prices, unverified routes) said at the end."""
        count = len(self.jobs)
        money = f"${cents(self.estimate.total)}"
        money += f" of ${cents(self.budget.limit)} budget" if self.budget is not None else ", no budget"
        if balance is not None:
            money += f" · balance ${cents(balance)}"
        return (
            f"Plan: {count:,} image{'s' if count != 1 else ''} · {self.estimate.total_mp:,} MP · {money} · "
            f"max {max_in_flight} in flight{self.estimate.caveats()}"
        )


def check_balance(plan: Plan, balance: Decimal | None, *, action: str, log: Any) -> None:
    """Refuse (``fail``) or warn about (``warn``) a plan that costs more than the credit balance.

    The plan counts at the highest price any source names (``CostEstimate.worst_total``); an unknown
    balance (the endpoint missing or refused) checks nothing.
    """
    if balance is None or plan.estimate.worst_total <= balance:
        return
    error = InsufficientBalanceError(estimate=plan.estimate.worst_total, balance=balance, images=len(plan.jobs))
    if action == "fail":
        raise error
    log.warning("%s (going on: insufficient_balance_action=%r, or a retry)", error, action)


# --------------------------------------------------------------------------------------------------
# Progress between tries
# --------------------------------------------------------------------------------------------------


#: Hex digits of an object's SHA-256 kept in the progress: enough to tell a changed object (64 bits).
PROGRESS_HASH_CHARS = 16


class Progress(BaseModel):
    """What ``task_state_store`` keeps between tries: ids and what is stored, never record copies.

    Compact, so a 1,000-image task stays under Airflow's ``[state_store] max_value_storage_bytes``
    (64 KB by default; about 50 bytes per image): each stored object is its name under ``root`` and
    the first :data:`PROGRESS_HASH_CHARS` hex digits of its SHA-256.

    :param plan: the plan's digest; progress of another plan (inputs changed) is not used.
    :param batch_ids: batches the API made for this task (a person can look them up).
    :param root: the common prefix of the stored objects' URIs.
    :param stored: image index → ``"<name under root> <sha256 prefix>"``.
    :param runs: image index → ``"<run id> <attempt>"`` of the runs sent one by one (a batch's runs are
        found again through its ``/items``, by their ``client_ref``): a later try waits for these by id
        instead of sending them again, so what was paid for never depends on the API remembering a key.
    """

    model_config = ConfigDict(extra="forbid")

    version: Literal[3, 4] = 4
    plan: str
    batch_ids: list[str] = []
    root: str = ""
    stored: dict[str, str] = {}
    runs: dict[str, str] = {}

    @classmethod
    def of(
        cls,
        plan: str,
        batch_ids: Iterable[str],
        stored: Mapping[str, tuple[str, str]],
        runs: Mapping[str, tuple[str, int]] | None = None,
    ) -> Progress:
        """Progress from image index → ``(uri, sha256)`` of each stored object (and → ``(run id,
        attempt)`` of each run sent alone)."""
        prefix = os.path.commonprefix([uri for uri, _ in stored.values()])  # noqa: RUF071 - URIs, not paths
        root = prefix[: prefix.rfind("/") + 1]  # up to its last "/" ("" when there is none)
        entries = {
            index: f"{uri[len(root) :]} {digest[:PROGRESS_HASH_CHARS]}" for index, (uri, digest) in stored.items()
        }
        singles = {index: f"{run_id} {attempt}" for index, (run_id, attempt) in (runs or {}).items()}
        return cls(plan=plan, batch_ids=sorted(set(batch_ids)), root=root, stored=entries, runs=singles)

    @classmethod
    def after(
        cls,
        plan: Plan,
        states: Mapping[int, JobState],
        stored: Mapping[int, ImageRecord],
        earlier: Progress | None = None,
    ) -> Progress:
        """The progress of a try: its batches, runs sent alone and stored objects, kept with an earlier try's."""
        batches = {s.batch_id for s in states.values() if s.batch_id} | set(earlier.batch_ids if earlier else [])
        objects = earlier.objects() if earlier else {}
        objects.update({str(i): (r.uri, r.content_hash) for i, r in stored.items() if r.uri and r.content_hash})
        singles = earlier.single_runs() if earlier else {}
        singles.update({str(s.index): (s.run_id, s.attempt) for s in states.values() if s.run_id and not s.batch_id})
        return cls.of(plan.digest, batches, objects, singles)

    def single_runs(self) -> dict[str, tuple[str, int]]:
        """Image index → ``(run id, attempt)`` of each run an earlier try sent alone."""
        out = {}
        for index, entry in self.runs.items():
            run_id, _, attempt = entry.rpartition(" ")
            out[index] = (run_id, int(attempt))
        return out

    def objects(self) -> dict[str, tuple[str, str]]:
        """Image index → ``(uri, sha256 prefix)`` of each object an earlier try stored."""
        out = {}
        for index, entry in self.stored.items():
            name, _, digest = entry.rpartition(" ")
            out[index] = (self.root + name, digest)
        return out

    @classmethod
    def load(cls, raw: Any, plan: Plan, logger: Any = log) -> Progress | None:
        """Progress from an earlier try, checked: ``None`` (with a warning) when unreadable or another plan's."""
        if raw is None:
            return None
        try:
            progress = cls.model_validate(raw)
        except ValidationError as error:
            logger.warning("Ignoring recorded progress of an unknown shape (%s); starting over", error.errors()[0])
            return None
        if progress.plan != plan.digest:
            logger.warning("The recorded progress belongs to a different plan (inputs changed); starting over")
            return None
        return progress


def earlier_runs(hook: FluxHook, plan: Plan, progress: Progress, logger: Any = log) -> dict[str, list[Any]]:
    """Job index → ``[run id, batch id or None, attempt]`` of every run an earlier try of the task sent.

    A batch's runs are read back through its ``/items`` and matched to the jobs by ``client_ref``; runs
    sent alone come from the progress. A batch that cannot be read is left to the keys (logged).
    """
    by_ref = {job.client_ref: job.index for job in plan.jobs}
    found: dict[str, list[Any]] = {}
    for batch_id in progress.batch_ids:
        try:
            runs = hook.get_batch_items(batch_id)
        except FluxError as error:
            logger.warning("Could not read batch %s of an earlier try (%s); its jobs go by their keys", batch_id, error)
            continue
        for run in runs:
            index = by_ref.get(run.client_ref or "")
            if index is not None:
                found[str(index)] = [run.id, batch_id, 1]
    for key, (run_id, attempt) in progress.single_runs().items():
        if int(key) < len(plan.jobs):
            found[key] = [run_id, None, attempt]
    if found:
        logger.info(
            "Re-attaching to %d run(s) an earlier try sent (%d batch(es), %d single run(s)), by id rather than "
            "by key; %d job(s) to send",
            len(found),
            len(progress.batch_ids),
            len(progress.runs),
            len(plan.jobs) - len(found),
        )
    return found


# --------------------------------------------------------------------------------------------------
# Records and collection
# --------------------------------------------------------------------------------------------------


def is_moderated(run: Run, failure: FluxRunFailedError | None) -> bool:
    """Moderated: failed with a moderation code, or succeeded with the NSFW flag (a blacked-out image)."""
    if isinstance(failure, FluxModerationError):
        return True
    return run.status_code == RunStatus.SUCCEEDED and run.output is not None and run.output.nsfw


def run_outcome(
    run: Run, on_moderation: ModerationPolicy = "record"
) -> Literal["succeeded", "failed", "moderated", "skipped"]:
    """A finished run's record status: ``moderated`` (``skipped`` under ``on_moderation="skip"``),
    ``failed`` or ``succeeded``."""
    failure = protocol.failure_of(run)
    if is_moderated(run, failure):
        return "skipped" if on_moderation == "skip" else "moderated"
    return "failed" if failure is not None else "succeeded"


def record_for_run(
    job: Job,
    item_cost: ItemCost,
    run: Run,
    *,
    attempt: int,
    batch_id: str | None,
    submitted_at: str | None,
    seen: Mapping[str, Any],
    log: Any,
) -> ImageRecord:
    """What the API said about one finished run, next to what was planned (status set by the caller).

    The cost is decided by :func:`~airflow_provider_flux2.pricing.image_cost`; a mismatch with the
    estimate is logged as a warning naming the run.
    """
    cost, api_cost = image_cost(item_cost, run)
    if api_cost is not None and run.status_code == RunStatus.SUCCEEDED and api_cost != item_cost.cost:
        log.warning(
            "Run %s (image %d) was billed $%s by the API; the estimate was $%s",
            run.id,
            job.index,
            usd(api_cost),
            usd(item_cost.cost),
        )
    output = run.output
    return ImageRecord(
        **_planned(job, item_cost),
        upsampled_prompt=output.prompt if output else None,
        seed=(output.seed if output and output.seed is not None else job.request.seed),
        cost_usd=usd(cost),
        api_cost_usd=usd(api_cost) if api_cost is not None else None,
        run_id=run.id,
        batch_id=batch_id,
        request_id=run.request_id,
        idempotency_key=resubmission_key(job.idempotency_key, attempt),
        failure_code=run.failure_code,
        failure_message=run.failure_message,
        nsfw=bool(output and output.nsfw),
        quality_score=run.quality_score,
        attempt=attempt,
        timings=Timings(
            submitted_at=submitted_at,
            finished_at=run.completed_at or seen.get("completed_at"),
            detected_at=seen.get("detected_at"),
        ),
    )


def pending_record(job: Job, item_cost: ItemCost, state: JobState | None) -> ImageRecord:
    """The record of a job with nothing collected: ``pending``, with why (:func:`unfinished`). It costs
    nothing unless the API finished and billed it (:data:`~airflow_provider_flux2.pricing.NOT_STORED`)."""
    code, message = unfinished(state)
    paid = state.cost if state is not None and state.cost is not None else item_cost.cost
    return ImageRecord(
        **_planned(job, item_cost),
        seed=job.request.seed,
        cost_usd=usd(paid) if code == NOT_STORED else "0",
        idempotency_key=job.idempotency_key,
        status="pending",
        failure_code=code,
        failure_message=message,
        run_id=state.run_id if state is not None else None,
        batch_id=state.batch_id if state is not None else None,
    )


def unfinished(state: JobState | None) -> tuple[str, str]:
    """Why a job has no collected record: its failure code and message on a ``pending`` record."""
    if state is not None and state.phase in ("in_flight", "read"):
        return (
            "STILL_RUNNING",
            f"still {state.status or 'queued'} at the API when the task ended; it bills when it finishes, "
            "and a retry replays it under the same key",
        )
    if state is not None and state.phase == "done" and state.succeeded:
        return (
            NOT_STORED,
            "finished and billed at the API, but not stored (storing it failed); a retry stores it without "
            "paying again",
        )
    if state is not None and state.stopped == "refused":
        return "REFUSED", "refused by the API when submitted: nothing was created or billed"
    if state is not None and state.phase == "stopped" and state.stopped == "budget":
        return "BUDGET_STOPPED", "not submitted: the running budget stopped the submissions"
    return "NOT_SENT", "not submitted: the task ended before it was sent"


def records(plan: Plan, states: Mapping[int, JobState], collected: Mapping[int, ImageRecord]) -> list[ImageRecord]:
    """One record per job, in plan order: the collected ones, and a :func:`pending_record` for the rest
    (the budget stopped them, they were never sent, or they were still running when the task ended)."""
    out = []
    for job in plan.jobs:
        record = collected.get(job.index)
        out.append(
            record if record is not None else pending_record(job, plan.estimate.items[job.index], states.get(job.index))
        )
    return out


def _planned(job: Job, item_cost: ItemCost) -> dict[str, Any]:
    """What a record takes from its job and its price, whatever became of its run."""
    return {
        "index": job.index,
        "model": job.model,
        "prompt": job.prompt,
        "params": job.params,
        "width": job.request.width,
        "height": job.request.height,
        "output_format": job.request.output_format,
        "billed_mp": item_cost.billed_mp,
        "estimated_cost_usd": usd(item_cost.cost),
        "client_ref": job.client_ref,
        "source_hash": job.meta.get("source_hash"),
        "extra": {k: v for k, v in job.meta.items() if k != "source_hash"},
    }


def store_image(
    hook: FluxHook, publisher: Publisher, location: BatchLocation, run: Run, job: Job, record: ImageRecord
) -> None:
    """Download a succeeded run's image, verify it, store it under its deterministic key; fill the record."""
    downloaded = hook.download(
        run, width=job.request.width, height=job.request.height, output_format=job.request.output_format
    )
    digest = content_hash(downloaded.data)
    record.content_hash = digest
    record.content_type = downloaded.content_type
    record.size_bytes = downloaded.size_bytes
    record.uri = publisher.put_image(
        location,
        job.index,
        downloaded.data,
        downloaded.content_type,
        object_metadata(record),
        digest,
        name_fields(record),
    )
    record.timings.stored_at = utc_now_iso()


def _kept(publisher: Publisher, stored: tuple[str, str] | None, record: ImageRecord) -> bool:
    """Whether the object an earlier try stored is still there, byte for byte; fills the record if so."""
    if stored is None:
        return False
    uri, digest = stored
    try:
        data = publisher.get(uri)
    except (FileNotFoundError, OSError, FluxError):
        return False
    except Exception:  # a store's own "not found" (botocore) means the same: store it again
        return False
    digest_now = content_hash(data)
    if not digest or not digest_now.startswith(digest):
        return False
    record.uri, record.content_hash, record.size_bytes = uri, digest_now, len(data)
    record.content_type = f"image/{record.output_format}"
    record.timings.stored_at = utc_now_iso()
    return True


def is_collect_retryable(error: BaseException) -> bool:
    """An image worth fetching again: a transient API error, an expired or garbled download, a flaky store."""
    return protocol.is_transient(error) or isinstance(error, (FluxImageError, OSError))


@dataclass
class Collected:
    """What collection produced: records by index, and what it did for the log."""

    records: dict[int, ImageRecord] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)  # objects an earlier try stored, still intact
    restored: list[int] = field(default_factory=list)  # objects an earlier try stored, missing or changed


def collect(
    hook: FluxHook,
    plan: Plan,
    states: Mapping[int, JobState],
    publisher: Publisher,
    location: BatchLocation,
    *,
    on_moderation: ModerationPolicy,
    progress: Progress | None,
    logger: Any = log,
    workers: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    checkpoint: Callable[[Collected], None] | None = None,
    into: Collected | None = None,
) -> Collected:
    """Every finished job → its record; succeeded ones downloaded, verified and stored, concurrently.

    Finished runs are read in as few requests as the API allows: one ``/items`` read per batch (fresh
    output URLs, the cost, the seed, any failure); a batch with a single job to collect is read as that run.
    An image an earlier try stored that is still intact is kept; a missing or changed one is stored again.
    ``checkpoint`` is called every :data:`CHECKPOINT_EVERY` images, so a crash mid-way loses little.
    ``into`` receives the records as they are made, so a caller still has them when one image fails.
    """
    finished = [s for s in states.values() if s.phase == "done" and s.run_id]
    by_batch: dict[str, list[JobState]] = {}
    for state in finished:
        if state.batch_id:
            by_batch.setdefault(state.batch_id, []).append(state)
    # One group per batch read at once (its members then downloaded by the thread that read it), one
    # per job read alone: a thread downloads one group's images while others wait for their reads, so
    # the reads (paced by the API's request limit) and the downloads overlap instead of following.
    groups: list[tuple[str | None, list[JobState]]] = [(b, m) for b, m in by_batch.items() if len(m) > 1]
    grouped = {s.index for _, members in groups for s in members}
    groups += [(None, [s]) for s in finished if s.index not in grouped]
    workers = workers or collect_workers(plan.jobs[s.index] for s in finished)
    hook.get_conn()  # created once, before the threads share it
    runs: dict[str, Run] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="flux-collect") as pool:
        out = into if into is not None else Collected()
        stored = progress.objects() if progress is not None else {}

        def one(state: JobState) -> tuple[int, ImageRecord, str]:
            job = plan.jobs[state.index]
            run = runs.get(state.run_id or "")
            if run is None or not run.terminal:
                run = _retrying(lambda: hook.get_run(state.run_id or ""), sleep)
            record = record_for_run(
                job,
                plan.estimate.items[job.index],
                run,
                attempt=state.attempt,
                batch_id=state.batch_id,
                submitted_at=_iso(state.submitted_at),
                seen={"detected_at": _iso(state.detected_at), "completed_at": state.completed_at},
                log=logger,
            )
            status = run_outcome(run, on_moderation)
            what = ""
            if run.status_code == RunStatus.SUCCEEDED and status != "skipped":
                previous = stored.get(str(job.index))
                if _kept(publisher, previous, record):
                    what = "kept"
                else:
                    _retrying(lambda: store_image(hook, publisher, location, run, job, record), sleep, logger, job)
                    what = "restored" if previous is not None else ""
            record.status = status
            return job.index, record, what

        def guarded(state: JobState) -> tuple[int, ImageRecord | None, str, BaseException | None]:
            try:
                return (*one(state), None)
            except Exception as error:  # one image's failure must not lose the others' records
                return state.index, None, "", error

        def group(batch_id: str | None, members: list[JobState]) -> list[tuple[int, ImageRecord | None, str, Any]]:
            if batch_id is not None:
                try:
                    items = _retrying(lambda: hook.get_batch_items(batch_id), sleep)
                except Exception as error:  # the batch could not be read: its images fail, the others go on
                    return [(state.index, None, "", error) for state in members]
                runs.update({run.id: run for run in items})
            return [guarded(state) for state in members]

        errors: list[tuple[int, BaseException]] = []
        results = (result for done in pool.map(lambda g: group(*g), groups) for result in done)
        for index, record, what, error in results:
            if record is None:
                errors.append((index, error or FluxError("unknown")))
                continue
            out.records[index] = record
            if what == "kept":
                out.kept.append(index)
            elif what == "restored":
                out.restored.append(index)
            if checkpoint is not None and len(out.records) % CHECKPOINT_EVERY == 0:
                checkpoint(out)
    if errors:
        if checkpoint is not None:
            checkpoint(out)  # what did get stored is recorded before the task fails
        index, first = errors[0]
        logger.error(
            "Could not collect %d image(s) (%s); the %d others are stored",
            len(errors),
            ", ".join(f"#{i}" for i, _ in errors[:20]),
            len(out.records),
        )
        raise first
    return out


def collect_workers(jobs: Iterable[Job]) -> int:
    """Images collected at once: :data:`COLLECT_WORKERS`, fewer when the largest image would make them
    hold more than :data:`COLLECT_MEMORY` (its encoded bytes plus 4 bytes a pixel once decoded)."""
    largest = max((job.request.width * job.request.height for job in jobs), default=0)
    return image_workers(largest, COLLECT_WORKERS, COLLECT_MEMORY)


def _retrying(
    call: Callable[[], Any], sleep: Callable[[float], None], logger: Any = log, job: Job | None = None
) -> Any:
    for attempt in range(1, COLLECT_ATTEMPTS + 1):
        try:
            return call()
        except Exception as error:
            if attempt >= COLLECT_ATTEMPTS or not is_collect_retryable(error):
                raise
            # One image's bad luck (an URL expiring, a flaky store) must not fail a 1,000-image task.
            logger.warning(
                "Could not fetch or store%s (%s); trying again (%d of %d)",
                f" image {job.index}" if job is not None else " a batch's runs",
                error,
                attempt,
                COLLECT_ATTEMPTS,
            )
            sleep(min(2.0 * attempt, 10.0))
    raise AssertionError("unreachable")


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


# --------------------------------------------------------------------------------------------------
# The worker's loop over the window (the trigger runs the same one, async)
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# A task's identity and places
# --------------------------------------------------------------------------------------------------


def map_index(ti: Any) -> int:
    return -1 if ti.map_index is None else int(ti.map_index)


def task_identity(context: Context, *, durable: bool = True) -> dict[str, Any]:
    """The Airflow identity the keys derive from; ``durable=False`` adds the try, so every try pays anew."""
    ti = context["ti"]
    identity = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "map_index": ti.map_index}
    if not durable:
        identity["run_id"] = f"{ti.run_id}#try{ti.try_number}"
    return identity


def task_location(context: Context) -> BatchLocation:
    ti = context["ti"]
    return BatchLocation(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=map_index(ti))


def run_metadata(context: Context) -> dict[str, Any]:
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "map_index": ti.map_index}


def output_publisher(output_uri: str | None, aws_conn_id: str | None, name_template: str | None = None) -> Publisher:
    """Where an operator stores images: its ``output_uri``, else ``[flux2] default_output_uri``, else
    the folder ``$AIRFLOW_HOME/flux2-images`` on the worker (logged as a warning: fine on one machine,
    not where workers do not share a disk)."""
    try:
        from airflow.sdk import conf
    except ImportError:  # Airflow 3.1: the Task SDK exposes conf from 3.2 on
        from airflow.configuration import conf  # type: ignore[assignment]

    uri = output_uri or conf.get("flux2", "default_output_uri", fallback=None)
    if not uri:
        from airflow.configuration import AIRFLOW_HOME

        uri = Path(AIRFLOW_HOME, DEFAULT_OUTPUT_FOLDER).resolve().as_uri()
        log.warning(
            "No output_uri and no [flux2] default_output_uri: storing images in %s on this worker; "
            "set one of them to s3://bucket/prefix when workers do not share a disk",
            uri,
        )
    return publisher_for(uri, aws_conn_id=aws_conn_id, name_template=name_template)


__all__ = [
    "Collected",
    "Job",
    "Plan",
    "Progress",
    "Submit",
    "collect",
    "new_job",
    "pending_record",
    "record_for_run",
    "records",
    "run_outcome",
    "store_image",
]
