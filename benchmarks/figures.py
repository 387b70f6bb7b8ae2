"""Figures from what one measured task left behind: its records, the emulator's stats, its slot use.

Pure functions: no I/O, no Airflow. Instants come from the records' ``timings`` (ISO-8601 UTC, ms):
``submitted_at`` and ``detected_at``/``stored_at`` are the client's clock, ``finished_at`` is the
API's. The emulator runs on the same machine, so the two clocks are the same clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Requests that read runs: what "poll requests" counts. Besides the trigger's polls, the operator
#: reads each finished run once more for its fresh URL, cost and seed (``get_run``, or one
#: ``get_batch_items`` for several finished runs of one batch); those reads are in the count too.
POLL_ENDPOINTS = ("get_batch", "get_batch_items", "get_run")


def instant(text: str) -> float:
    """Epoch seconds of an ISO-8601 timestamp."""
    return datetime.fromisoformat(text).timestamp()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100), interpolated between the closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _span(records: list[dict[str, Any]], start: str, end: str) -> list[float]:
    """Per record, ``end − start`` in seconds (records lacking either instant are left out)."""
    spans = []
    for record in records:
        timings = record.get("timings") or {}
        if timings.get(start) and timings.get(end):
            spans.append(instant(timings[end]) - instant(timings[start]))
    return spans


@dataclass(frozen=True)
class TaskFigures:
    """What one measured task did, in seconds, requests and images.

    :param images: records returned by the task.
    :param window_seconds: first submit to last image stored: the generation itself.
    :param task_seconds: first entry into ``execute`` to the last exit: the task, report included.
    :param worker_seconds: time inside ``execute``/``execute_complete`` (a worker slot held).
    :param worker_entries: how many times the task ran on a worker (1 + deferrals).
    :param worker_parts: worker seconds by step of the operator (see ``instruments.BenchOperator``).
    :param latencies: per image, submitted → finished at the API.
    :param lags: per image, finished at the API → seen finished by a poll.
    :param collect_waits: per image, seen finished → stored (the worker collects a whole event serially).
    :param requests: the emulator's request counts per endpoint.
    :param peak_in_flight: most runs at the API at one instant.
    :param billed: ledger entries.
    """

    images: int
    window_seconds: float
    task_seconds: float
    worker_seconds: float
    worker_entries: int
    worker_parts: dict[str, float]
    latencies: list[float]
    lags: list[float]
    collect_waits: list[float]
    requests: dict[str, int]
    peak_in_flight: int
    billed: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.window_seconds if self.window_seconds > 0 else math.nan

    @property
    def mean_latency(self) -> float:
        return mean(self.latencies)

    def ideal_images_per_second(self, max_in_flight: int) -> float:
        """``max_in_flight / mean latency``: every slot of the window busy all the time."""
        return max_in_flight / self.mean_latency

    def slot_cycle(self, max_in_flight: int) -> float:
        """Seconds one window slot spends per image: its run, and the time until the slot is used again."""
        return max_in_flight * self.window_seconds / self.images

    def busy_fraction(self, max_in_flight: int) -> float:
        """Share of the window's slot-seconds during which a run was at the API."""
        return sum(self.latencies) / (max_in_flight * self.window_seconds)

    @property
    def poll_requests(self) -> int:
        return sum(self.requests.get(endpoint, 0) for endpoint in POLL_ENDPOINTS)

    @property
    def polls_per_image(self) -> float:
        return self.poll_requests / self.images

    @property
    def lag_p50(self) -> float:
        return percentile(self.lags, 50)

    @property
    def lag_p95(self) -> float:
        return percentile(self.lags, 95)

    @property
    def worker_share(self) -> float:
        """Worker-held time as a share of the task's wall time."""
        return self.worker_seconds / self.task_seconds if self.task_seconds > 0 else math.nan


def task_figures(
    records: list[dict[str, Any]],
    stats: dict[str, Any],
    *,
    billed: int,
    worker_seconds: float,
    worker_entries: int,
    worker_parts: dict[str, float],
    task_seconds: float,
) -> TaskFigures:
    """Figures of one task from its records, the emulator's stats and its slot use."""
    submitted = [instant(r["timings"]["submitted_at"]) for r in records if r["timings"].get("submitted_at")]
    stored = [instant(r["timings"]["stored_at"]) for r in records if r["timings"].get("stored_at")]
    return TaskFigures(
        images=len(records),
        window_seconds=(max(stored) - min(submitted)) if stored and submitted else math.nan,
        task_seconds=task_seconds,
        worker_seconds=worker_seconds,
        worker_entries=worker_entries,
        worker_parts=dict(worker_parts),
        latencies=_span(records, "submitted_at", "finished_at"),
        lags=_span(records, "finished_at", "detected_at"),
        collect_waits=_span(records, "detected_at", "stored_at"),
        requests=dict(stats.get("requests", {})),
        peak_in_flight=int(stats.get("max_concurrent_runs", 0)),
        billed=billed,
    )


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan
