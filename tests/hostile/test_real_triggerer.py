"""The key under a real triggerer: a deployment on loopback (``benchmarks/deployment.py``) whose
connection points at a server that accepts submissions and then echoes the key on every poll.

The triggerer's polls fail with the echo in the error body; the trigger's error event (stored in
the metadata DB and re-raised by the operator in a new task process) must carry the redacted text.
Afterwards every table of the deployment's PostgreSQL and every file of the deployment (logs of
each process, task logs, outputs, the database's own files) is searched for the key.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from cases import FAST
from conftest import SECRET_KEY, record_figure

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]


def _tables_with_the_key(dep) -> list[str]:
    found = []
    tables = dep.postgres.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    for (table,) in tables:
        for row in dep.postgres.query(f'SELECT * FROM "{table}"'):
            text = repr(row)
            if SECRET_KEY in text or SECRET_KEY.encode().hex() in text:
                found.append(table)
                break
    return found


def _files_with_the_key(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and SECRET_KEY.encode() in p.read_bytes()]


def test_a_trigger_meeting_an_echoing_api_leaks_the_key_nowhere(hostile):
    from deployment import Deployment

    connection = {
        "conn_type": "flux2",
        "host": hostile.url("echo-poll"),
        "password": SECRET_KEY,
        "extra": {**FAST, "request_deadline": 5, "timeout": 5},
    }
    env = {
        "AIRFLOW_CONN_FLUX2_DEFAULT": json.dumps(connection),
        "FLUX2_DEPLOY_BENCH_IMAGES": "2",
        "FLUX2_DEPLOY_TIME_SCALE": "0.05",
    }
    started = time.monotonic()
    with Deployment(executor="local", env=env, emulator={"profile": "fast", "time_scale": 0.1}) as dep:
        dep.wait_for_dag("flux2_deploy_bench")
        run_id = dep.trigger("flux2_deploy_bench")
        assert dep.wait_dag_run("flux2_deploy_bench", run_id, timeout=300) == "failed"
        (task,) = dep.task_states("flux2_deploy_bench", run_id)
        assert task.try_number >= 1
        polled = [r for r in hostile.requests if r[0] == "GET" and "/s/echo-poll/" in r[1]]
        assert polled, "the triggerer never polled the echoing server"
        assert any(r[2].get("authorization") == f"Bearer {SECRET_KEY}" for r in polled)  # the echo was real
        logs = "".join(p.read_text(errors="replace") for p in dep.root.rglob("*.log"))
        assert "Bearer ***" in logs or "Bearer ***" in repr(dep.postgres.query("SELECT next_kwargs FROM task_instance"))
        assert _tables_with_the_key(dep) == []
        assert _files_with_the_key(dep.root) == []
    record_figure("redaction: real triggerer", "deployment run", time.monotonic() - started, 0.0)
