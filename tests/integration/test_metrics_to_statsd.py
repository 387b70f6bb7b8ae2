"""The provider's metrics reach a StatsD server: a UDP listener on loopback reads what Airflow's Stats sent.

What is counted, and how, is tested in ``tests/unit/test_metrics.py``."""

from __future__ import annotations

import re
import socket
import time
from datetime import datetime

import pytest
from airflow.sdk import DAG

from airflow_provider_flux2 import metrics
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

_PACKET = re.compile(r"^(?P<name>[^,:]+)(?P<tags>(,[^,:=]+=[^,:]*)*):(?P<value>[-\d.]+)\|(?P<type>c|ms|g)")


class StatsdListener:
    """A UDP socket on 127.0.0.1 that collects StatsD lines as ``(name, tags, value, type)``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[tuple[str, dict[str, str], float, str]] = []

    def drain(self, quiet: float = 0.3) -> list[tuple[str, dict[str, str], float, str]]:
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                match = _PACKET.match(line)
                assert match, f"not a StatsD line: {line!r}"
                tags = dict(t.split("=", 1) for t in match["tags"].split(",") if t)
                self.lines.append((match["name"], tags, float(match["value"]), match["type"]))
            deadline = time.monotonic() + quiet
        return self.lines

    def named(self, name: str) -> list[tuple[str, dict[str, str], float, str]]:
        return [line for line in self.drain() if line[0] == f"airflow.flux2.{name}"]


@pytest.fixture
def statsd(monkeypatch):
    """Airflow configured as a deployment with StatsD (InfluxDB-style tags) would be, sending to our listener."""
    # The fixture re-points Airflow's Stats through the task SDK's observability modules (Airflow >= 3.2).
    pytest.importorskip("airflow.sdk._shared.observability", reason="Stats is re-pointed through Airflow >= 3.2's SDK")
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    listener = StatsdListener()
    for name, value in {
        "STATSD_ON": "True",
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(listener.port),
        "STATSD_PREFIX": "airflow",
        "STATSD_INFLUXDB_ENABLED": "True",
    }.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{name}", value)
    # What the task runner does when a task process starts, done here because dag.test() runs in this process.
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    yield listener
    stats.initialize(factory=NoStatsLogger, export_legacy_names=False)
    listener.sock.close()


def test_a_batch_emits_images_by_outcome_megapixels_cost_and_timers(statsd, emulator, run_dag, tmp_path):
    with DAG("t_metrics_batch", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            prompts=["a red kite", "a blue kite", "a green kite"],
            image_size="1920x1080",
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
            progress_interval=0,
        )

    assert run_dag(dag).state == "success"

    tags = {"dag_id": "t_metrics_batch", "task_id": "generate", "model": "black-forest-labs/flux-2-pro"}
    assert statsd.named("images") == [("airflow.flux2.images", {**tags, "outcome": "succeeded"}, 3.0, "c")]
    assert statsd.named("megapixels") == [("airflow.flux2.megapixels", tags, 6.0, "c")]  # 1920x1080 = 2 MP each
    assert statsd.named("cost_microusd") == [("airflow.flux2.cost_microusd", tags, 135_000.0, "c")]  # 3 x $0.045
    for timer in ("run_latency", "detection_lag"):
        lines = statsd.named(timer)
        assert len(lines) == 3, timer
        assert all(line[1] == tags and line[3] == "ms" and line[2] >= 0 for line in lines)


def test_a_failed_run_sent_again_counts_as_a_resubmit(statsd, emulator, run_dag, tmp_path):
    emulator.faults({"rules": [{"endpoint": "create_run", "fault": "run_failure", "count": 1}]})
    with DAG("t_metrics_resubmit", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            prompt="a kite",
            image_size="square",
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
            progress_interval=0,
        )

    assert run_dag(dag).state == "success"

    retries = statsd.named("retries")
    assert [(line[1]["kind"], line[1]["task_id"], line[2]) for line in retries] == [("resubmit", "generate", 1.0)]
    assert statsd.named("images")[0][1]["outcome"] == "succeeded"


def test_retries_are_counted_by_kind(statsd, emulator):
    emulator.faults(
        {
            "rules": [
                {
                    "endpoint": "create_run",
                    "sequence": [{"fault": "rate_limit", "retry_after": None}, {"fault": "server_error"}, "ok"],
                }
            ]
        }
    )
    hook = FluxHook(
        api_key=emulator.api_key,
        base_url=emulator.base_url,
        extra={"retry_base_delay": 0.01, "retry_max_delay": 0.05},
    )
    hook.generate("a kite", image_size="square", poll_interval=0.02)

    kinds = sorted(line[1]["kind"] for line in statsd.named("retries"))
    assert kinds == ["rate_limit", "server"]


def test_flux2_metrics_false_silences_the_provider(statsd, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLUX2__METRICS", "False")
    metrics.retried("resubmit", {"dag_id": "d"})

    assert statsd.named("retries") == []

    monkeypatch.setenv("AIRFLOW__FLUX2__METRICS", "True")
    metrics.retried("resubmit", {"dag_id": "d"})

    assert [line[1] for line in statsd.named("retries")] == [{"dag_id": "d", "kind": "resubmit"}]
