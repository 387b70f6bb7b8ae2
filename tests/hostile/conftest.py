"""The hostile catalogue's fixtures: the hostile server, the probe (children measured for time and memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hostile_server import HostileServer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

#: A distinctive key: any sight of it outside the request's Authorization header is a leak.
SECRET_KEY = "rf_live_HOSTILE_7c1e9b44_do_not_leak"
#: Where the figures of a session's cases are written (the report reads them).
FIGURES = Path(os.environ.get("FLUX2_HOSTILE_FIGURES", Path(os.environ["AIRFLOW_HOME"]) / "hostile-figures.json"))

#: Every case may use at most this much memory of its own (a bomb would take hundreds of MiB).
MAX_CASE_MIB = 64.0
_FIGURES: list[dict[str, Any]] = []


@dataclass
class Outcome:
    """What a case did in its child: the value or the error, its time and its memory."""

    case: str
    data: dict[str, Any]
    group: str = ""
    checked_secret: bool = field(default=False)

    @property
    def ok(self) -> bool:
        return bool(self.data.get("ok"))

    @property
    def error(self) -> dict[str, Any]:
        return self.data.get("error") or {}

    @property
    def message(self) -> str:
        return str(self.error.get("message", ""))

    @property
    def value(self) -> Any:
        return self.data.get("value")

    @property
    def elapsed(self) -> float:
        return float(self.data.get("elapsed", 0.0))

    @property
    def rss_mib(self) -> float:
        return float(self.data.get("rss_mib", 0.0))

    def everything(self) -> str:
        """All text the case produced: value, error, traceback, log records, stdout, stderr."""
        return json.dumps(self.data)

    def raised(self, kind: str, *contains: str) -> Outcome:
        assert not self.data.get("hung"), f"{self.case} hung"
        assert not self.ok, f"{self.case} did not fail: {self.value!r}"
        assert kind in self.error.get("mro", []), f"{self.case}: expected {kind}, got {self.error.get('traceback')}"
        for text in contains:
            assert text in self.message, f"{self.case}: {text!r} not in {self.message!r}"
        return self

    def succeeded(self) -> Outcome:
        assert not self.data.get("hung"), f"{self.case} hung"
        assert self.ok, f"{self.case} failed: {self.error.get('traceback')}"
        return self

    def bounded(self, seconds: float, mib: float = MAX_CASE_MIB) -> Outcome:
        assert self.elapsed <= seconds, f"{self.case} took {self.elapsed:.2f}s (bound {seconds}s)"
        assert self.rss_mib <= mib, f"{self.case} used {self.rss_mib:.1f} MiB (bound {mib} MiB)"
        return self

    def no_secret(self, secret: str = SECRET_KEY) -> Outcome:
        text = self.everything()
        assert secret not in text, f"{self.case}: the key leaked: {text[max(0, text.find(secret) - 300) :][:600]}"
        assert secret.encode().hex() not in text
        self.checked_secret = True
        return self


class Probe:
    """One probe subprocess (see ``probe.py``); ``run(case, limit, **kwargs)`` → :class:`Outcome`."""

    def __init__(self, database: Path | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
        if database is not None:
            # The probe forks a child per case; SQLite forbids carrying a connection across a fork, so the
            # probe gets a copy of the session's database instead of sharing the file the other tests use.
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{database}"
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "probe.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(REPO),
        )
        self.lock = threading.Lock()
        assert self.process.stdout is not None
        hello = self.process.stdout.readline()
        assert json.loads(hello).get("ready"), hello

    def run(self, case: str, *, limit: float = 20.0, group: str = "", **kwargs: Any) -> Outcome:
        assert self.process.stdin is not None and self.process.stdout is not None
        with self.lock:
            self.process.stdin.write(json.dumps({"case": case, "kwargs": kwargs, "limit": limit}) + "\n")
            self.process.stdin.flush()
            data = json.loads(self.process.stdout.readline())
        outcome = Outcome(case=case, data=data, group=group)
        _FIGURES.append(
            {"group": group, "case": case, "elapsed": outcome.elapsed, "rss_mib": outcome.rss_mib, "ok": outcome.ok}
        )
        return outcome

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def probe(airflow_db, tmp_path_factory) -> Iterator[Probe]:
    runner = Probe(_copy_of_session_database(tmp_path_factory.mktemp("probe-db") / "airflow.db"))
    try:
        yield runner
    finally:
        runner.close()


def _copy_of_session_database(target: Path) -> Path | None:
    """A consistent copy (SQLite's backup API) of the session's migrated metadata database."""
    import sqlite3

    url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if not url.startswith("sqlite:///"):
        return None
    source, copy = sqlite3.connect(url.removeprefix("sqlite:///")), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return target


@pytest.fixture
def nothing_created(emulator):
    """The emulator, checked after the test: no run or batch was created, nothing billed."""
    yield emulator
    stats = emulator.stats()
    assert stats["runs_created"] == 0 and stats["batches_created"] == 0, stats
    assert emulator.ledger()["entries"] == []


def record_figure(group: str, case: str, elapsed: float, rss_mib: float) -> None:
    """For cases measured in the test process itself (``dag.test()`` runs)."""
    _FIGURES.append({"group": group, "case": case, "elapsed": elapsed, "rss_mib": rss_mib, "ok": True})


def _groups() -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for figure in _FIGURES:
        group = groups.setdefault(figure["group"] or "other", {"cases": 0, "max_rss_mib": 0.0, "max_seconds": 0.0})
        group["cases"] += 1
        group["max_rss_mib"] = round(max(group["max_rss_mib"], figure["rss_mib"]), 1)
        group["max_seconds"] = round(max(group["max_seconds"], figure["elapsed"]), 2)
    return groups


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _FIGURES:
        FIGURES.write_text(json.dumps({"groups": _groups(), "cases": _FIGURES}, indent=1))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The hostile catalogue's figures: cases, peak memory of one case and longest wait, by group."""
    if not _FIGURES:
        return
    terminalreporter.section("hostile catalogue")
    for name, group in sorted(_groups().items()):
        terminalreporter.write_line(
            f"{name:<40} {group['cases']:>4} measured calls, peak {group['max_rss_mib']:>6.1f} MiB, "
            f"longest {group['max_seconds']:>6.2f} s"
        )
    terminalreporter.write_line(f"figures: {FIGURES}")
