"""The secret search: a distinctive key through full ``dag.test()`` runs, with emulator faults and
with a server that echoes the key back; then every log file, every table of the metadata DB, every
output file and everything printed is searched for it.

Airflow's secrets masker hides registered secrets in task logs; the search is for the places it
does not reach: XCom, trigger events and kwargs stored in the DB, manifests, galleries, and the
exceptions' own text.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from datetime import datetime
from pathlib import Path

import pytest
from airflow.sdk import DAG
from cases import FAST
from conftest import SECRET_KEY, record_figure

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

GROUP = "secret search: dag.test"
NEEDLES = (SECRET_KEY.encode(), SECRET_KEY.encode().hex().encode(), json.dumps(SECRET_KEY).encode())


@pytest.fixture(scope="module")
def keyed_emulator():
    from airflow_provider_flux2.emulator import Emulator

    with Emulator(profile="fast", api_key=SECRET_KEY) as emu:
        yield emu


def _files_with_the_key(root: Path) -> list[str]:
    """Files under ``root`` holding the key. The session's SQLite database is read through SQL
    (:func:`_rows_with_the_key`), never opened as a plain file: a process that opens and closes a
    database file it also holds SQLite connections to drops SQLite's POSIX locks on it (sqlite.org,
    "How To Corrupt An SQLite Database File", 2.2), and the next writer corrupts it. That was the
    "damaged shared database" the FLUX view's tests used to meet later in the session."""
    database = Path(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")).resolve()
    found = []
    for path in root.rglob("*"):
        if path.resolve().parent == database.parent and path.name.startswith(database.name):
            continue  # airflow.db and its -journal/-wal/-shm
        if path.is_file():
            data = path.read_bytes()
            if any(needle in data for needle in NEEDLES):
                found.append(str(path))
    return found


def _rows_with_the_key() -> list[str]:
    """Every row of every table of the metadata DB, as text (compressed values inflated)."""
    from airflow.utils.session import create_session
    from sqlalchemy import MetaData, select

    found = []
    with create_session() as session:
        metadata = MetaData()
        metadata.reflect(bind=session.get_bind())
        for table in metadata.sorted_tables:
            for row in session.execute(select(table)):
                for column, value in zip(table.columns, row, strict=False):
                    texts = [str(value).encode()]
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        raw = bytes(value)
                        texts.append(raw)
                        with contextlib.suppress(zlib.error):
                            texts.append(zlib.decompress(raw))
                    if any(needle in text for text in texts for needle in NEEDLES):
                        found.append(f"{table.name}.{column.name}")
    return found


def _dag(name: str, output: Path, conn_id: str, **kwargs) -> DAG:
    with DAG(f"secret_{name}_{time.monotonic_ns()}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            flux_conn_id=conn_id,
            output_uri=output.as_uri(),
            poll_interval=0.02,
            progress_interval=0,
            retries=0,
            **kwargs,
        )
    return dag


@pytest.mark.parametrize("deferrable", [True, False])
def test_the_key_is_nowhere_after_a_faulty_run_and_an_echoing_one(
    airflow_db, keyed_emulator, hostile, run_dag, task_states, tmp_path, capfd, monkeypatch, deferrable
):
    keyed_emulator.reset()
    keyed_emulator.faults(
        {
            "rules": [
                {"endpoint": "create_batch", "fault": "rate_limit", "retry_after": 0.05, "count": 1},
                {"endpoint": "get_batch", "fault": "server_error", "count": 2},
                {"endpoint": "get_run", "fault": "server_error", "count": 1},
                {"endpoint": "create_batch", "fault": "run_failure", "count": 1},
                {"endpoint": "create_batch", "fault": "moderation", "count": 1},
                {"endpoint": "download", "fault": "url_expired", "count": 1},
            ]
        }
    )
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_SECRET", keyed_emulator.connection_json())
    echo = {"conn_type": "flux2", "host": hostile.url("echo-in-run"), "password": SECRET_KEY, "extra": FAST}
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_ECHO", json.dumps(echo))
    echo_500 = {**echo, "host": hostile.url("echo-500"), "extra": {**FAST, "max_attempts": 2}}
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_ECHO500", json.dumps(echo_500))

    started = time.monotonic()
    faulty = run_dag(
        _dag(
            "faults",
            tmp_path / "faults",
            "flux2_secret",
            prompts=[f"a cup, view {i}" for i in range(6)],
            image_size="square",
            max_in_flight=4,
            on_moderation="record",
            on_run_failure="record",
            deferrable=deferrable,
        )
    )
    echoed = run_dag(
        _dag(
            "echo",
            tmp_path / "echo",
            "flux2_echo",
            prompt="a cup",
            image_size="square",
            output_format="png",
            use_batches=False,
            on_run_failure="record",
            resubmit_failed=1,
            deferrable=deferrable,
        )
    )
    refused = run_dag(_dag("echo500", tmp_path / "echo500", "flux2_echo500", prompt="a cup", deferrable=deferrable))
    elapsed = time.monotonic() - started
    record_figure(GROUP, f"three DAG runs, deferrable={deferrable}", elapsed, 0.0)
    printed = capfd.readouterr()

    assert task_states(faulty) == {"generate": "success"}
    assert task_states(refused) == {"generate": "failed"}
    assert len(keyed_emulator.ledger()["entries"]) >= 5  # the faulty run did real work
    home = Path(os.environ["AIRFLOW_HOME"])
    assert _files_with_the_key(home) == []
    assert _files_with_the_key(tmp_path) == []
    assert _rows_with_the_key() == []
    assert SECRET_KEY not in printed.out and SECRET_KEY not in printed.err
    # The echoes did travel: redacted, not dropped.
    assert "Bearer ***" in printed.out + printed.err or "Bearer ***" in "".join(
        p.read_text(errors="replace") for p in home.rglob("*.log")
    )
    assert task_states(echoed)["generate"] in ("success", "failed")
    assert elapsed < 60


@pytest.mark.parametrize("scenario", ["drip-body", "gzip-bomb", "echo-500"])
@pytest.mark.parametrize("deferrable", [True, False])
def test_an_operator_meeting_a_hostile_api_fails_typed_bounded_and_keyless(
    airflow_db, hostile, run_dag, task_states, tmp_path, capfd, monkeypatch, scenario, deferrable
):
    import resource

    connection = {
        "conn_type": "flux2",
        "host": hostile.url(scenario),
        "password": SECRET_KEY,
        "extra": {**FAST, "max_attempts": 2},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_HOSTILE_OP", json.dumps(connection))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    dag_run = run_dag(_dag(f"op_{scenario}", tmp_path, "flux2_hostile_op", prompt="a cup", deferrable=deferrable))
    elapsed = time.monotonic() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak_before
    record_figure(GROUP, f"operator vs {scenario}, deferrable={deferrable}", elapsed, grown)
    printed = capfd.readouterr()
    assert task_states(dag_run) == {"generate": "failed"}
    expected = {
        "drip-body": "FluxRequestTimeoutError",
        "gzip-bomb": "RESPONSE_TOO_LARGE",
        "echo-500": "Bearer ***",
    }[scenario]
    assert expected in printed.out + printed.err
    assert SECRET_KEY not in printed.out + printed.err
    assert elapsed < 15 and grown < 128  # a 512 MiB bomb expanding in this process would show here
