"""Metrics through Airflow's own ``Stats`` client: wherever ``[metrics]`` sends Airflow's (StatsD, OpenTelemetry).

Names (``[metrics] statsd_prefix``, ``airflow`` by default, comes first):

* ``flux2.images`` — counter, one per image, tagged ``outcome`` (``succeeded``, ``failed``, ``moderated``,
  ``skipped``, ``dropped``, ``pending``);
* ``flux2.megapixels`` — counter, billed megapixels;
* ``flux2.cost_microusd`` — counter, billed cost in integer micro-dollars (``$0.045`` → ``45000``), so
  sums stay exact where a float of dollars would drift;
* ``flux2.run_latency`` — timer, submission to the API's completion of one image;
* ``flux2.detection_lag`` — timer, the API's completion to when the task noticed it;
* ``flux2.retries`` — counter, tagged ``kind`` (``rate_limit``, ``server``, ``connection``, ``timeout``,
  ``resubmit``).

Every metric is tagged ``dag_id``, ``task_id`` and ``model`` where known (retries of the hook carry
``kind`` only). Plain StatsD drops tags: turn on ``[metrics] statsd_influxdb_enabled`` (or use
Datadog/OpenTelemetry) to keep them. ``[flux2] metrics = False`` silences the provider alone.
A metric never fails a task: an emission error is logged and dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

log = logging.getLogger(__name__)
PREFIX = "flux2"
_MICRO = Decimal("0.000001")


def micro_usd(amount: Decimal | str) -> int:
    """Dollars as integer micro-dollars; prices have at most six decimals, so this is exact for them."""
    return int((Decimal(str(amount)) / _MICRO).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _stats() -> Any:
    """Airflow's stats module, initialised from ``[metrics]`` if nothing in this process did it yet."""
    try:
        from airflow.sdk.observability import stats
        from airflow.sdk.observability.metrics import stats_utils
    except ImportError:  # Airflow < 3.3: the core Stats, initialised by Airflow itself
        from airflow.stats import Stats

        return Stats
    # The task runner and the serde module initialise it; a triggerer or a CLI process may not have.
    if getattr(stats, "_factory", None) is None:
        from airflow.sdk.configuration import conf

        stats.initialize(
            factory=stats_utils.get_stats_factory(),
            export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=False),
        )
    return stats


def _enabled() -> bool:
    from airflow_provider_flux2.config import get_bool

    return get_bool("metrics")


def _emit(kind: str, name: str, value: Any, tags: Mapping[str, Any]) -> None:
    try:
        if not _enabled():
            return
        stats = _stats()
        clean = {k: str(v) for k, v in tags.items() if v not in (None, "")}
        if kind == "incr":
            stats.incr(f"{PREFIX}.{name}", count=value, tags=clean)
        else:
            stats.timing(f"{PREFIX}.{name}", value, tags=clean)
    except Exception:  # a metric must never fail the task that emits it
        log.warning("Could not emit metric %s.%s", PREFIX, name, exc_info=True)


def task_tags(context: Mapping[str, Any] | None) -> dict[str, str]:
    """``dag_id`` and ``task_id`` of the running task (empty outside a task)."""
    ti = (context or {}).get("ti")
    if ti is None:
        return {}
    return {"dag_id": ti.dag_id, "task_id": ti.task_id}


def _instant(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _between(start: str | None, end: str | None) -> timedelta | None:
    first, last = _instant(start), _instant(end)
    if first is None or last is None or last < first:
        return None
    return last - first


def images_finished(
    records: Iterable[Mapping[str, Any]], context: Mapping[str, Any] | None = None, *, resubmitted: bool = False
) -> None:
    """Count a finished batch: images by outcome, billed megapixels and cost, and each image's timers.

    :param records: the batch's records (``ImageRecord.to_xcom()`` dicts).
    :param context: the task's context, for the ``dag_id``/``task_id`` tags.
    :param resubmitted: a record's ``attempt`` counts the submissions of its run (the generate task):
        each one after the first is a ``resubmit`` retry. Not for regenerations, whose attempt says
        which regeneration they are.
    """
    base = task_tags(context)
    resubmits: Counter[str] = Counter()
    images: Counter[tuple[str, str]] = Counter()
    megapixels: Counter[str] = Counter()
    cost: Counter[str] = Counter()
    for record in records:
        model = str(record.get("model") or "")
        images[(model, str(record.get("status") or "pending"))] += 1
        if resubmitted:
            resubmits[model] += max(0, int(record.get("attempt") or 1) - 1)
        if record.get("status") in ("succeeded", "moderated", "failed") and record.get("run_id"):
            megapixels[model] += int(record.get("billed_mp") or 0)
            cost[model] += micro_usd(record.get("cost_usd") or "0")
        timings = record.get("timings") or {}
        latency = _between(timings.get("submitted_at"), timings.get("finished_at"))
        if latency is not None:
            _emit("timing", "run_latency", latency, {**base, "model": model})
        lag = _between(timings.get("finished_at"), timings.get("detected_at"))
        if lag is not None:
            _emit("timing", "detection_lag", lag, {**base, "model": model})
    for (model, outcome), count in images.items():
        _emit("incr", "images", count, {**base, "model": model, "outcome": outcome})
    for model, count in megapixels.items():
        if count:
            _emit("incr", "megapixels", count, {**base, "model": model})
    for model, count in cost.items():
        if count:
            _emit("incr", "cost_microusd", count, {**base, "model": model})
    for model, count in resubmits.items():
        if count:
            _emit("incr", "retries", count, {**base, "model": model, "kind": "resubmit"})


#: Exception class name → retry kind; anything else retried counts as ``other``.
_RETRY_KINDS = {
    "FluxRequestTimeoutError": "timeout",
    "FluxRateLimitError": "rate_limit",
    "FluxServerError": "server",
    "FluxConnectionError": "connection",
    "FluxTimeoutError": "timeout",
}


def retry_kind(error: BaseException) -> str:
    """The kind a retried error is counted under."""
    for cls in type(error).__mro__:
        if cls.__name__ in _RETRY_KINDS:
            return _RETRY_KINDS[cls.__name__]
    return "other"


def retried(error: BaseException | str, tags: Mapping[str, Any] | None = None, *, count: int = 1) -> None:
    """Count retries: a request retried after ``error``, or ``"resubmit"`` for failed runs sent again."""
    kind = error if isinstance(error, str) else retry_kind(error)
    _emit("incr", "retries", count, {**(tags or {}), "kind": kind})
