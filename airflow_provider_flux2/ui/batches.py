"""What the FLUX view shows: recent batches, spend per DAG per day, failures and regenerations.

A *batch* is a manifest the provider wrote (a generate task with ``write_manifest``, or a publish
task), found through what Airflow already keeps: the task's ``flux_manifest_uri`` XCom and the
asset event a publish task emits (whose ``extra`` carries ``manifest_uri``). Nothing is stored by
the view itself. The database is read here; the arithmetic below it is pure and tested on its own.

Spend is counted once per image: a run's manifests overlap (a publish manifest repeats the images
its generate task already listed), so a DAG run's images are keyed by the API run id that billed
them, and each counts once, at the figure its manifest gives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

from airflow_provider_flux2.pricing import usd

#: XCom keys the generate and publish operators write (``operators/flux.py``).
XCOM_MANIFEST = "flux_manifest_uri"
XCOM_GALLERY = "flux_gallery_url"
GALLERY_HTML = "index.html"
FAILED_OUTCOMES = ("failed", "failed_checks", "moderated", "dropped", "superseded")
#: Paid for but not delivered: the "why" behind a night that cost more than its images.
UNDELIVERED_OUTCOMES = ("failed_checks", "moderated", "dropped", "superseded")


@dataclass
class Batch:
    """One manifest and where it came from."""

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

    @property
    def folder_uri(self) -> str | None:
        """The folder that holds the manifest and the gallery (what the view may serve)."""
        uri = self.manifest_uri or self.gallery_uri
        if not uri:
            return None
        return uri.rsplit("/", 1)[0] if uri.rsplit("/", 1)[-1].endswith((".json", ".html")) else uri.rstrip("/")

    @property
    def cost(self) -> Decimal:
        return Decimal(str(self.summary.get("total_cost_usd") or "0"))

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
            "cost_usd": usd(self.cost),
            "estimated_cost_usd": self.summary.get("estimated_cost_usd"),
            **{k: self.summary.get(k) for k in keys},
            "error": self.error,
        }


# -- finding batches (the database) --------------------------------------------------------------


def find_batches(*, dag_ids: set[str] | None, limit: int = 100, session: Any = None) -> list[Batch]:
    """The most recent batches (newest first) of the DAGs in ``dag_ids`` (``None``: every DAG).

    From the ``flux_manifest_uri`` / ``flux_gallery_url`` XComs and the asset events whose extra
    names a manifest; one batch per manifest (or gallery) URI.
    """
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if dag_ids is not None and not dag_ids:
        return []
    with create_session() if session is None else _nullcontext(session) as db:
        query = (
            select(XComModel)
            .where(XComModel.key.in_([XCOM_MANIFEST, XCOM_GALLERY]))
            .order_by(XComModel.timestamp.desc())
            .limit(limit * 4)
        )
        if dag_ids is not None:
            query = query.where(XComModel.dag_id.in_(dag_ids))
        by_task: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        for row in db.scalars(query):
            task = (row.dag_id, row.run_id, row.task_id, row.map_index)
            entry = by_task.setdefault(task, {"at": row.timestamp})
            entry[row.key] = XComModel.deserialize_value(row)
        events = select(AssetEvent, AssetModel.name).join(AssetModel, AssetModel.id == AssetEvent.asset_id)
        events = events.order_by(AssetEvent.timestamp.desc()).limit(limit)
        if dag_ids is not None:
            events = events.where(AssetEvent.source_dag_id.in_(dag_ids))
        assets: list[tuple[Any, str]] = list(db.execute(events).tuples())
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
        )
        batches[batch.manifest_uri or batch.gallery_uri or ""] = batch
    for event, asset_name in assets:
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
            )
        found.asset = asset_name
    ordered = sorted(batches.values(), key=lambda b: b.at, reverse=True)
    return ordered[:limit]


class _nullcontext:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# -- reading manifests ----------------------------------------------------------------------------


class ManifestCache:
    """Manifests by URI, read again after ``ttl`` seconds (a re-run overwrites its manifest)."""

    def __init__(self, read: Callable[[str], bytes], ttl: float = 30.0, size: int = 512) -> None:
        self.read = read
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def get(self, uri: str) -> dict[str, Any]:
        now = time.monotonic()
        hit = self._entries.get(uri)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        manifest = json.loads(self.read(uri))
        if len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))
        self._entries[uri] = (now, manifest)
        return manifest


def load_manifests(batches: Iterable[Batch], cache: ManifestCache) -> list[Batch]:
    """Fill each batch's summary and rows; a manifest that cannot be read is noted, not fatal."""
    loaded = []
    for batch in batches:
        if batch.manifest_uri:
            try:
                manifest = cache.get(batch.manifest_uri)
                batch.summary = dict(manifest.get("summary") or {})
                batch.rows = [r for r in manifest.get("images") or [] if isinstance(r, dict)]
            except Exception as error:  # one unreadable manifest must not hide the others
                batch.error = f"{type(error).__name__}: {error}"
        loaded.append(batch)
    return loaded


# -- the arithmetic (pure) ------------------------------------------------------------------------


def spend_by_dag_day(batches: Iterable[Batch]) -> list[dict[str, Any]]:
    """``[{dag_id, day, cost_usd, regeneration_cost_usd, undelivered_cost_usd, images, failed,
    regenerated, runs}]``, newest day first: what was spent, how much of it paid for regenerations,
    and how much bought images that were not delivered (dropped, superseded, moderated).

    Each image counts once per DAG run, keyed by the API run that billed it (a publish manifest
    repeats its generate task's images): as its latest manifest says it ended, at the highest
    figure any of its manifests gives, on the day it was first recorded.
    """
    # The latest manifest says how an image ended (a publish manifest knows what the checks did);
    # the highest figure any manifest gives is what it cost.
    images: dict[tuple[str, str, str], tuple[str, dict[str, Any], Decimal]] = {}
    for batch in sorted(batches, key=lambda b: b.at):
        for row in batch.rows:
            identity = row.get("run_id") or f"{batch.manifest_uri}#{row.get('index')}/{row.get('attempt')}"
            key = (batch.dag_id, batch.run_id, str(identity))
            earlier = images.get(key)
            cost = max(_cost(row), earlier[2]) if earlier else _cost(row)
            images[key] = (earlier[0] if earlier else batch.at.date().isoformat(), row, cost)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for (dag_id, run_id, _), (day, row, cost) in images.items():
        group = groups.setdefault(
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
                "runs": set(),
            },
        )
        group["cost"] += cost
        if int(row.get("attempt") or 1) > 1:
            group["regeneration_cost"] += cost
        if row.get("outcome") in UNDELIVERED_OUTCOMES:
            group["undelivered_cost"] += cost
        group["images"] += 1
        group["failed"] += 1 if row.get("outcome") in FAILED_OUTCOMES else 0
        group["regenerated"] += 1 if int(row.get("attempt") or 1) > 1 else 0
        group["runs"].add(run_id)
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
    """``(batch, row)`` of every image that failed, was dropped or moderated, and of every
    regeneration; once per image of a DAG run (the latest manifest's word), newest first."""
    latest: dict[tuple[str, str, str], tuple[Batch, dict[str, Any]]] = {}
    for batch in sorted(batches, key=lambda b: b.at):
        for row in batch.rows:
            identity = row.get("run_id") or f"{batch.manifest_uri}#{row.get('index')}/{row.get('attempt')}"
            latest[(batch.dag_id, batch.run_id, str(identity))] = (batch, row)
    chosen = [
        (batch, row)
        for batch, row in latest.values()
        if row.get("outcome") in FAILED_OUTCOMES or int(row.get("attempt") or 1) > 1
    ]
    return sorted(chosen, key=lambda item: (item[0].at, -int(item[1].get("index") or 0)), reverse=True)


def _cost(row: Mapping[str, Any]) -> Decimal:
    try:
        return Decimal(str(row.get("billed_cost_usd") or row.get("cost_usd") or "0"))
    except ArithmeticError:
        return Decimal("0")


def total_spend(rows: Iterable[Mapping[str, Any]]) -> str:
    return usd(sum((Decimal(r["cost_usd"]) for r in rows), Decimal("0")))


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
