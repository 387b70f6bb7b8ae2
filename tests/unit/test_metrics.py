"""``metrics.py``: what a finished batch and a retry count, under which names and tags, in exact micro-dollars.

Airflow's ``Stats`` is replaced by a recorder here; that the same metrics reach a real StatsD server
(a UDP listener on loopback) from a DAG run and the hook is tested in ``tests/integration/test_metrics_to_statsd.py``.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from airflow_provider_flux2 import metrics
from airflow_provider_flux2.exceptions import (
    FluxConnectionError,
    FluxRateLimitError,
    FluxRequestTimeoutError,
    FluxServerError,
    FluxStorageError,
    FluxTimeoutError,
)


class Recorder:
    """Airflow's ``Stats`` as the provider calls it: ``incr`` and ``timing`` with tags."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object, dict[str, str]]] = []

    def incr(self, name, count=1, tags=None):
        self.calls.append(("incr", name, count, dict(tags or {})))

    def timing(self, name, value, tags=None):
        self.calls.append(("timing", name, value, dict(tags or {})))

    def named(self, name: str) -> list[tuple[object, dict[str, str]]]:
        return [(value, tags) for _, called, value, tags in self.calls if called == f"flux2.{name}"]


@pytest.fixture
def stats(monkeypatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(metrics, "_stats", lambda: recorder)
    monkeypatch.setenv("AIRFLOW__FLUX2__METRICS", "True")
    return recorder


def test_micro_dollars_are_exact():
    assert metrics.micro_usd(Decimal("0.045")) == 45_000
    assert metrics.micro_usd("0.255") == 255_000
    assert sum(metrics.micro_usd("0.015") for _ in range(1000)) == 15_000_000  # 1000 x $0.015 = $15 exactly


def _record(status, *, model="black-forest-labs/flux-2-pro", run_id="run-1", mp=2, cost="0.045", **extra):
    return {"model": model, "status": status, "run_id": run_id, "billed_mp": mp, "cost_usd": cost, **extra}


def test_a_batch_counts_images_by_outcome_and_only_billed_ones_in_megapixels_and_cost(stats):
    context = {"ti": SimpleNamespace(dag_id="nightly", task_id="generate")}
    metrics.images_finished(
        [
            _record("succeeded"),
            _record("succeeded", mp=1, cost="0.030"),
            _record("moderated", mp=1, cost="0.030"),
            _record("pending", run_id="run-9"),  # still at the API: not billed yet
            _record("skipped", run_id=None),  # never sent
        ],
        context,
    )
    tags = {"dag_id": "nightly", "task_id": "generate", "model": "black-forest-labs/flux-2-pro"}
    images = {t["outcome"]: n for n, t in stats.named("images")}
    assert images == {"succeeded": 2, "moderated": 1, "pending": 1, "skipped": 1}
    assert stats.named("megapixels") == [(4, tags)]
    assert stats.named("cost_microusd") == [(105_000, tags)]


def test_each_image_times_its_run_and_how_late_it_was_noticed(stats):
    timings = {
        "submitted_at": "2026-12-07T01:00:00Z",
        "finished_at": "2026-12-07T01:00:12.5+00:00",
        "detected_at": "2026-12-07T01:00:13Z",
    }
    metrics.images_finished([_record("succeeded", timings=timings), _record("succeeded", timings={"finished_at": "?"})])
    assert [v for v, _ in stats.named("run_latency")] == [timedelta(seconds=12.5)]
    assert [v for v, _ in stats.named("detection_lag")] == [timedelta(seconds=0.5)]


def test_a_clock_that_runs_backwards_times_nothing(stats):
    timings = {"submitted_at": "2026-12-07T01:00:10Z", "finished_at": "2026-12-07T01:00:00Z"}
    metrics.images_finished([_record("succeeded", timings=timings)])
    assert stats.named("run_latency") == []


def test_resubmissions_of_the_generate_task_count_as_retries(stats):
    records = [_record("succeeded", attempt=3), _record("succeeded", attempt=1)]
    metrics.images_finished(records, resubmitted=True)
    assert stats.named("retries") == [(2, {"model": "black-forest-labs/flux-2-pro", "kind": "resubmit"})]
    stats.calls.clear()
    metrics.images_finished(records)  # a regeneration's attempt says which regeneration it is
    assert stats.named("retries") == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (FluxRateLimitError(status_code=429, code="RATE_LIMITED", message="slow down"), "rate_limit"),
        (FluxServerError(status_code=503, code=None, message=None), "server"),
        (FluxConnectionError("refused", attempts=3, url="https://api"), "connection"),
        (FluxRequestTimeoutError("stalled", attempts=3, url="https://api"), "timeout"),
        (FluxTimeoutError("deadline"), "timeout"),
        (FluxStorageError("throttled", uri="s3://b/k.png", code="SlowDown"), "other"),
        (OSError("disk"), "other"),
    ],
)
def test_a_retried_error_is_counted_under_its_kind(stats, error, kind):
    assert metrics.retry_kind(error) == kind
    metrics.retried(error, {"dag_id": "d", "task_id": ""})
    assert stats.named("retries") == [(1, {"dag_id": "d", "kind": kind})]  # empty tags are dropped


def test_flux2_metrics_false_silences_the_provider(stats, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLUX2__METRICS", "False")
    metrics.retried("resubmit")
    metrics.images_finished([_record("succeeded")])
    assert stats.calls == []


def test_a_broken_metrics_backend_never_fails_the_caller(monkeypatch, caplog):
    monkeypatch.setattr(metrics, "_stats", lambda: (_ for _ in ()).throw(OSError("statsd down")))

    metrics.images_finished([{"model": "m", "status": "succeeded", "billed_mp": 1, "cost_usd": "0.03"}])

    assert "Could not emit metric flux2.images" in caplog.text


def test_task_tags_are_empty_outside_a_task():
    assert metrics.task_tags(None) == {} and metrics.task_tags({}) == {}
