"""What the FLUX view shows: the batches of a range of days, spend per DAG per day, failures and regenerations.

A *batch* is a manifest the provider wrote (a generate task — with ``write_manifest``, or whenever it
fails after anything was billed — or a publish task), found through what Airflow already keeps: the
task's ``flux_manifest_uri`` XCom, the asset event a publish task emits (whose ``extra`` carries
``manifest_uri``), and the task instance's state (a batch whose task failed is shown failed, with what
its manifest says it spent). Nothing is stored by the view itself. The database is read here; the
arithmetic below it is pure and tested on its own.

Spend is counted once per image: a run's manifests overlap (a publish manifest repeats the images
its generate task already listed), so a DAG run's images are keyed by the API run id that billed
them, and each counts once, at the figure its manifest gives.

A retry never counts twice. A task's batch folder — and so its manifest — is the same for every try
(``{output}/{dag_id}/{run_id}/{task_id}[/{map_index}]``: no try number), so a retry rewrites the failed
try's ``manifest.json`` in place; Airflow (3.x) deletes a task's XComs when a new try starts, and the
operator records its folder again before it defers. So one task instance is one batch, whose manifest
is its latest try's: while a retry runs, the view reads the failed try's manifest from the folder
(:func:`earlier_try_manifest`); when the retry ends, its own manifest replaces it, with the same API
run ids (a retry replays its runs under the same keys: nothing is billed twice).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

from airflow_provider_flux2.outputs import XCOM_GALLERY, XCOM_MANIFEST
from airflow_provider_flux2.pricing import usd
from airflow_provider_flux2.storage.manifest import MANIFEST_JSON

#: The longest range the view shows, in days.
MAX_DAYS = 366
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Outcomes of an image that was not delivered: it failed, failed a check, was moderated, dropped or
#: superseded, or its task ended before it finished (``pending``: still running at the API, never sent,
#: or stopped by the budget).
FAILED_OUTCOMES = ("failed", "failed_checks", "moderated", "dropped", "superseded", "pending")
#: Paid for but not delivered: the "why" behind a night that cost more than its images.
UNDELIVERED_OUTCOMES = ("failed_checks", "moderated", "dropped", "superseded")
#: Task instance states of a task whose (latest) try failed; ``up_for_retry``: another try will run.
FAILED_STATES = ("failed", "up_for_retry")
#: Task instance states of a task that has not ended yet.
RUNNING_STATES = ("scheduled", "queued", "running", "deferred", "up_for_reschedule", "restarting")
#: States of a try that has not started: the task's XComs are still the previous try's.
WAITING_STATES = ("scheduled", "queued")
#: What the view keeps of a manifest's row (a manifest of 10,000 images is not held whole, per range).
ROW_FIELDS = (
    "index",
    "attempt",
    "run_id",
    "status",
    "outcome",
    "billed_cost_usd",
    "cost_usd",
    "estimated_cost_usd",
    "failure_code",
    "failed_checks",
    "prompt",
)
_PROMPT_KEPT = 200


@dataclass
class Batch:
    """One task instance's manifest, where it came from, and how the task ended."""

    manifest_uri: str | None
    gallery_uri: str | None
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    at: datetime
    asset: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    #: The task instance's state (``None`` when Airflow no longer has it) and try number.
    state: str | None = None
    try_number: int = 0
    #: The manifest shown is a failed earlier try's: the retry is waiting to start (its XComs are still
    #: that try's), or running (the manifest is read from the folder it left it in).
    earlier_try: bool = False

    @property
    def folder_uri(self) -> str | None:
        """The folder that holds the manifest and the gallery (what the view may serve)."""
        uri = self.manifest_uri or self.gallery_uri
        if not uri:
            return None
        return uri.rsplit("/", 1)[0] if uri.rsplit("/", 1)[-1].endswith((".json", ".html")) else uri.rstrip("/")

    @property
    def task(self) -> tuple[str, str, str, int]:
        """The task instance this batch belongs to."""
        return (self.dag_id, self.run_id, self.task_id, self.map_index)

    @property
    def failed(self) -> bool:
        """Whether the task's latest try failed (whatever it billed is in its manifest)."""
        return self.state in FAILED_STATES

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def cost(self) -> Decimal:
        return Decimal(str(self.summary.get("total_cost_usd") or "0"))

    def unfinished(self) -> dict[str, int]:
        """Images its task ended before finishing, by why (``STILL_RUNNING``, ``NOT_SENT``, ``BUDGET_STOPPED``)."""
        codes = (str(r.get("failure_code") or "UNKNOWN") for r in self.rows if r.get("outcome") == "pending")
        return dict(Counter(codes))

    def as_dict(self) -> dict[str, Any]:
        keys = ("count", "passed", "failed", "dropped", "superseded", "regenerated", "model")
        return {
            "manifest_uri": self.manifest_uri,
            "gallery_uri": self.gallery_uri,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
            "at": self.at.isoformat(),
            "asset": self.asset,
            "state": self.state,
            "try_number": self.try_number,
            "task_failed": self.failed,
            "earlier_try": self.earlier_try,
            "cost_usd": usd(self.cost),
            "estimated_cost_usd": self.summary.get("estimated_cost_usd"),
            **{k: self.summary.get(k) for k in keys},
            "unfinished": self.unfinished(),
            "error": self.error,
        }


# -- finding batches (the database) --------------------------------------------------------------


def range_start(days: int, now: datetime | None = None) -> datetime:
    """Midnight (UTC) of the first day of "the last ``days`` days": ``days=1`` is yesterday and today."""
    first = ((now or datetime.now(timezone.utc)) - timedelta(days=days)).date()
    return datetime(first.year, first.month, first.day, tzinfo=timezone.utc)


def find_batches(*, dag_ids: set[str] | None, since: datetime | None = None, session: Any = None) -> list[Batch]:
    """Every batch (newest first) of the DAGs in ``dag_ids`` (``None``: every DAG) recorded since ``since``.

    From the ``flux_manifest_uri`` / ``flux_gallery_url`` XComs and the asset events whose extra
    names a manifest, each with its task instance's state and try number; one batch per task
    instance (:func:`latest_per_task`).
    """
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import and_, select

    if dag_ids is not None and not dag_ids:
        return []
    ti = TaskInstance
    with create_session() if session is None else _nullcontext(session) as db:
        query = (
            select(XComModel, ti.state, ti.try_number)
            .outerjoin(
                ti,
                and_(
                    ti.dag_id == XComModel.dag_id,
                    ti.run_id == XComModel.run_id,
                    ti.task_id == XComModel.task_id,
                    ti.map_index == XComModel.map_index,
                ),
            )
            .where(XComModel.key.in_([XCOM_MANIFEST, XCOM_GALLERY]))
            .order_by(XComModel.timestamp.desc())
        )
        if since is not None:
            query = query.where(XComModel.timestamp >= since)
        if dag_ids is not None:
            query = query.where(XComModel.dag_id.in_(dag_ids))
        by_task: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        for row, state, try_number in db.execute(query).tuples():
            task = (row.dag_id, row.run_id, row.task_id, row.map_index)
            entry = by_task.setdefault(task, {"at": row.timestamp, "state": state, "try_number": try_number})
            entry[row.key] = XComModel.deserialize_value(row)
        events = (
            select(AssetEvent, AssetModel.name, ti.state, ti.try_number)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .outerjoin(
                ti,
                and_(
                    ti.dag_id == AssetEvent.source_dag_id,
                    ti.run_id == AssetEvent.source_run_id,
                    ti.task_id == AssetEvent.source_task_id,
                    ti.map_index == AssetEvent.source_map_index,
                ),
            )
            .order_by(AssetEvent.timestamp.desc())
        )
        if since is not None:
            events = events.where(AssetEvent.timestamp >= since)
        if dag_ids is not None:
            events = events.where(AssetEvent.source_dag_id.in_(dag_ids))
        assets: list[tuple[Any, str, str | None, int | None]] = list(db.execute(events).tuples())
    batches: dict[str, Batch] = {}
    for (dag_id, run_id, task_id, map_index), entry in by_task.items():
        manifest, gallery = entry.get(XCOM_MANIFEST), entry.get(XCOM_GALLERY)
        if not isinstance(manifest, str) and not isinstance(gallery, str):
            continue
        batch = Batch(
            manifest_uri=manifest if isinstance(manifest, str) else None,
            gallery_uri=gallery if isinstance(gallery, str) else None,
            dag_id=dag_id,
            run_id=run_id,
            task_id=task_id,
            map_index=map_index,
            at=_utc(entry["at"]),
            state=_state(entry["state"]),
            try_number=int(entry["try_number"] or 0),
        )
        batches[batch.manifest_uri or batch.gallery_uri or ""] = batch
    for event, asset_name, state, try_number in assets:
        extra = event.extra or {}
        manifest = extra.get("manifest_uri")
        if not isinstance(manifest, str) or not event.source_dag_id:
            continue
        found = batches.get(manifest)
        if found is None:
            found = batches[manifest] = Batch(
                manifest_uri=manifest,
                gallery_uri=extra.get("gallery_uri"),
                dag_id=event.source_dag_id,
                run_id=event.source_run_id or "",
                task_id=event.source_task_id or "",
                map_index=event.source_map_index if event.source_map_index is not None else -1,
                at=_utc(event.timestamp),
                state=_state(state),
                try_number=int(try_number or 0),
            )
        found.asset = asset_name
    return latest_per_task(batches.values())


def latest_per_task(batches: Iterable[Batch]) -> list[Batch]:
    """One batch per task instance, its latest (a later try's manifest supersedes an earlier one's), newest first."""
    latest: dict[tuple[str, str, str, int], Batch] = {}
    for batch in sorted(batches, key=lambda b: b.at):
        latest[batch.task] = batch
    return sorted(latest.values(), key=lambda b: b.at, reverse=True)


class _nullcontext:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _state(state: Any) -> str | None:
    """A task instance state as its plain value (``TaskInstanceState.FAILED`` → ``"failed"``)."""
    return None if state is None else str(getattr(state, "value", state))


# -- reading manifests ----------------------------------------------------------------------------


class ManifestCache:
    """What the view needs of each manifest — its summary and :data:`ROW_FIELDS` of each row — by URI.

    An entry read for a batch recorded at ``stamp`` holds while the batch's record does: a re-run or a
    retry rewrites the manifest in place and records it again, with a later stamp. Without a stamp,
    an entry is read again after ``ttl`` seconds. At most ``size`` manifests are kept, the least
    recently used dropped first.
    """

    def __init__(self, read: Callable[[str], bytes], ttl: float = 30.0, size: int = 4096) -> None:
        self.read = read
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, tuple[float, datetime | None, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, uri: str, stamp: datetime | None = None) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.pop(uri, None)
            if hit is not None and (hit[1] == stamp if stamp is not None else now - hit[0] < self.ttl):
                self._entries[uri] = hit  # the most recently used goes last
                return hit[2]
        manifest = _kept(json.loads(self.read(uri)))
        with self._lock:
            while len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[uri] = (now, stamp, manifest)
        return manifest


def _kept(manifest: Mapping[str, Any]) -> dict[str, Any]:
    rows = []
    for row in manifest.get("images") or []:
        if isinstance(row, dict):
            kept = {k: row[k] for k in ROW_FIELDS if k in row}
            if isinstance(kept.get("prompt"), str):
                kept["prompt"] = kept["prompt"][:_PROMPT_KEPT]
            rows.append(kept)
    return {"summary": dict(manifest.get("summary") or {}), "images": rows}


def earlier_try_manifest(batch: Batch) -> str | None:
    """The manifest a failed earlier try left in the folder of a batch whose retry is running, if any.

    A retry's task has no manifest XCom (Airflow deleted the failed try's when the retry started) but
    records its folder, where the failed try wrote ``manifest.json``: what that try billed stays in
    the view until the retry's own manifest replaces it.
    """
    if batch.manifest_uri or batch.try_number <= 1 or not batch.running or not batch.gallery_uri:
        return None
    folder = batch.folder_uri
    return f"{folder}/{MANIFEST_JSON}" if folder and not batch.gallery_uri.endswith(".html") else None


def load_manifests(batches: Iterable[Batch], cache: ManifestCache, workers: int = 8) -> list[Batch]:
    """Fill each batch's summary and rows; a manifest that cannot be read is noted, not fatal.

    Manifests are read ``workers`` at a time (a year of batches in S3 is thousands of reads the first
    time; the cache keeps them after that).
    """
    loaded = list(batches)
    wanted = [(b, b.manifest_uri or earlier_try_manifest(b)) for b in loaded]
    reads = [(batch, uri) for batch, uri in wanted if uri]

    def read(item: tuple[Batch, str]) -> dict[str, Any] | Exception:
        try:
            return cache.get(item[1], item[0].at)
        except Exception as error:  # one unreadable manifest must not hide the others
            return error

    if len(reads) > 1:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(reads)))) as pool:
            results = list(pool.map(read, reads))
    else:
        results = [read(item) for item in reads]
    for (batch, uri), result in zip(reads, results, strict=True):
        from_folder = batch.manifest_uri is None
        if isinstance(result, Exception):
            if not from_folder:  # an earlier try may have written no manifest: nothing to report
                batch.error = f"{type(result).__name__}: {result}"
            continue
        batch.summary = result["summary"]
        batch.rows = result["images"]
        batch.manifest_uri = uri
        batch.earlier_try = from_folder or (batch.state in WAITING_STATES and batch.try_number > 1)
    return loaded


# -- the arithmetic (pure) ------------------------------------------------------------------------


def spend_by_dag_day(batches: Iterable[Batch]) -> list[dict[str, Any]]:
    """``[{dag_id, day, cost_usd, regeneration_cost_usd, undelivered_cost_usd, images, failed,
    regenerated, failed_tasks, runs}]``, newest day first: what was spent, how much of it paid for
    regenerations, how much bought images that were not delivered (dropped, superseded, moderated),
    and how many batches' tasks failed (their spend is in the day's, as their manifests give it).

    Each image counts once per DAG run, keyed by the API run that billed it (a publish manifest
    repeats its generate task's images): as its latest manifest says it ended, at the highest
    figure any of its manifests gives, on the day it was first recorded.
    """
    batches = list(batches)
    # The latest manifest says how an image ended (a publish manifest knows what the checks did);
    # the highest figure any manifest gives is what it cost.
    images: dict[tuple[str, str, str], tuple[str, dict[str, Any], Decimal]] = {}
    for batch in sorted(batches, key=lambda b: b.at):
        for row in batch.rows:
            key = (batch.dag_id, batch.run_id, _identity(batch, row))
            earlier = images.get(key)
            cost = max(_cost(row), earlier[2]) if earlier else _cost(row)
            images[key] = (earlier[0] if earlier else batch.at.date().isoformat(), row, cost)
    groups: dict[tuple[str, str], dict[str, Any]] = {}

    def group_of(dag_id: str, day: str) -> dict[str, Any]:
        return groups.setdefault(
            (dag_id, day),
            {
                "dag_id": dag_id,
                "day": day,
                "cost": Decimal("0"),
                "regeneration_cost": Decimal("0"),
                "undelivered_cost": Decimal("0"),
                "images": 0,
                "failed": 0,
                "regenerated": 0,
                "failed_tasks": 0,
                "runs": set(),
            },
        )

    for (dag_id, run_id, _), (day, row, cost) in images.items():
        group = group_of(dag_id, day)
        group["cost"] += cost
        if int(row.get("attempt") or 1) > 1:
            group["regeneration_cost"] += cost
        if row.get("outcome") in UNDELIVERED_OUTCOMES:
            group["undelivered_cost"] += cost
        group["images"] += 1
        group["failed"] += 1 if row.get("outcome") in FAILED_OUTCOMES else 0
        group["regenerated"] += 1 if int(row.get("attempt") or 1) > 1 else 0
        group["runs"].add(run_id)
    for batch in latest_per_task(batches):
        if batch.failed:
            group_of(batch.dag_id, batch.at.date().isoformat())["failed_tasks"] += 1
    result = []
    for group in sorted(groups.values(), key=lambda g: (g["day"], g["dag_id"]), reverse=True):
        money = {name: usd(group.pop(name)) for name in ("cost", "regeneration_cost", "undelivered_cost")}
        result.append(
            {
                **group,
                "cost_usd": money["cost"],
                "regeneration_cost_usd": money["regeneration_cost"],
                "undelivered_cost_usd": money["undelivered_cost"],
                "runs": len(group["runs"]),
            }
        )
    return result


def failure_rows(batches: Iterable[Batch]) -> list[tuple[Batch, dict[str, Any]]]:
    """``(batch, row)`` of every image that was not delivered (failed, dropped, moderated, or left
    unfinished by its task) and of every regeneration; once per image of a DAG run (the latest
    manifest's word), newest first."""
    latest: dict[tuple[str, str, str], tuple[Batch, dict[str, Any]]] = {}
    for batch in sorted(batches, key=lambda b: b.at):
        for row in batch.rows:
            latest[(batch.dag_id, batch.run_id, _identity(batch, row))] = (batch, row)
    chosen = [
        (batch, row)
        for batch, row in latest.values()
        if row.get("outcome") in FAILED_OUTCOMES or int(row.get("attempt") or 1) > 1
    ]
    return sorted(chosen, key=lambda item: (item[0].at, -int(item[1].get("index") or 0)), reverse=True)


def _identity(batch: Batch, row: Mapping[str, Any]) -> str:
    """An image within its DAG run: the API run that billed it, else its place in its manifest."""
    return str(row.get("run_id") or f"{batch.manifest_uri}#{row.get('index')}/{row.get('attempt')}")


def _cost(row: Mapping[str, Any]) -> Decimal:
    try:
        return Decimal(str(row.get("billed_cost_usd") or row.get("cost_usd") or "0"))
    except ArithmeticError:
        return Decimal("0")


def total_spend(rows: Iterable[Mapping[str, Any]]) -> str:
    return usd(sum((Decimal(r["cost_usd"]) for r in rows), Decimal("0")))


# -- one page of the view (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    """A range of days: its spend and failures counted in full, and one page of its batches."""

    days: int
    since: date
    spend: list[dict[str, Any]]
    #: This page's batches, newest first, and the failures and regenerations of their images.
    batches: list[Batch]
    failures: list[tuple[Batch, dict[str, Any]]]
    page: int
    limit: int
    total_batches: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total_batches / self.limit))

    @property
    def first(self) -> int:
        """The 1-based position of this page's first batch in the range."""
        return (self.page - 1) * self.limit + 1

    @property
    def total_cost_usd(self) -> str:
        return total_spend(self.spend)

    def count(self, name: str) -> int:
        """A spend column summed over the range (``images``, ``failed``, ``regenerated``, ``failed_tasks``)."""
        return sum(int(row[name]) for row in self.spend)


def overview(
    batches: Iterable[Batch], *, days: int, page: int = 1, limit: int = DEFAULT_PAGE_SIZE, now: datetime | None = None
) -> Overview:
    """Page ``page`` (``limit`` batches, newest first) of the batches recorded in the last ``days`` days.

    The spend and the counts cover every batch of the range, one per task instance (its latest try's);
    the failures listed are those of this page's batches (each image once, in the batch that has the
    latest word on it).
    """
    since = range_start(days, now)
    in_range = latest_per_task(b for b in batches if b.at >= since)
    shown = in_range[(page - 1) * limit : page * limit]
    on_page = {id(batch) for batch in shown}
    return Overview(
        days=days,
        since=since.date(),
        spend=spend_by_dag_day(in_range),
        batches=shown,
        failures=[(batch, row) for batch, row in failure_rows(in_range) if id(batch) in on_page],
        page=page,
        limit=limit,
        total_batches=len(in_range),
    )


# -- which files the view may serve ----------------------------------------------------------------


def local_folder(uri: str | None) -> PurePosixPath | None:
    """``file:///a/b`` (or ``/a/b``) → ``/a/b``; ``None`` for other schemes."""
    if not uri:
        return None
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return PurePosixPath(unquote(urlparse(uri).path))
    return PurePosixPath(uri) if uri.startswith("/") else None


def serving_batch(path: PurePosixPath, batches: Iterable[Batch]) -> Batch | None:
    """The batch whose folder holds ``path`` (an absolute path with no ``..``), if any."""
    if ".." in path.parts or not path.is_absolute():
        return None
    for batch in batches:
        folder = local_folder(batch.folder_uri)
        if folder is not None and (path == folder or folder in path.parents):
            return batch
    return None
