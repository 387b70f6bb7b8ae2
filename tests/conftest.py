"""Shared fixtures: an isolated Airflow home on SQLite, and the emulator as a real HTTP server."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="flux2-airflow-home-"))

# Airflow reads its configuration at import: set it before anything imports airflow.
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")

EMULATOR_API_KEY = "rf_test_emulator_key_5f2c9a"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database for ``dag.test()`` (created once per session)."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[object]:
    from airflow_provider_flux2.emulator import Emulator

    with Emulator(profile="fast", api_key=EMULATOR_API_KEY) as emu:
        yield emu


@pytest.fixture
def emulator(emulator_server, monkeypatch):
    """The session's emulator, reset (runs, ledger, faults, config) for this test, wired as flux2_default."""
    emulator_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_DEFAULT", emulator_server.connection_json())
    yield emulator_server
    emulator_server.reset()
