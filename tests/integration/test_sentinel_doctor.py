"""``flux2 doctor --sentinel`` over real sockets: the job classes' price, then one evaluation under the cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from airflow_provider_flux2.doctor import Doctor

REPO = Path(__file__).resolve().parents[2]


def doctor(emulator: Any, **kwargs: Any) -> Doctor:
    settings = {"timeout": 5, "run_timeout": 20, "sleep": lambda _s: None, "replay_after": 0, "sentinel": True}
    return Doctor(base_url=emulator.base_url, api_key=emulator.api_key, **{**settings, **kwargs})


def evaluations(emulator: Any) -> list[dict[str, Any]]:
    entries = httpx.get(f"{emulator.base_url}/_emulator/ledger", trust_env=False).json()["entries"]
    return [e for e in entries if e["kind"] == "evaluation"]


def test_one_evaluation_is_sent_replayed_judged_and_billed_at_the_listed_price(emulator):
    emulator.configure(evaluation_price_usd="0.012")
    report = doctor(emulator).run()
    assert report.passed, [c.line() for c in report.deviations]
    checks = {check.name: check for check in report.checks}
    assert checks["sentinel price"].status == "PASS" and "$0.012 per evaluation" in checks["sentinel price"].seen
    for name in ("sentinel", "sentinel replay", "sentinel verdict", "sentinel cost"):
        assert checks[name].status == "PASS", checks[name].line()
    assert checks["sentinel cost"].cost_usd == "0.012"
    assert report.sentinel_price_usd == "0.012"
    assert len(evaluations(emulator)) == 1  # the replay billed nothing
    assert Decimal(report.spent_usd) == Decimal("0.180") + Decimal("0.012")


def test_the_evaluation_is_skipped_past_the_spend_cap_and_a_price_mismatch_is_a_deviation(emulator):
    report = doctor(emulator, max_spend=Decimal("0.005")).run()
    checks = {check.name: check for check in report.checks}
    assert checks["sentinel"].status == "SKIP" and "sentinel" in report.skipped
    assert evaluations(emulator) == []
    emulator.reset()
    mismatch = doctor(emulator, sentinel_price=Decimal("0.02")).run()
    checks = {check.name: check for check in mismatch.checks}
    assert (
        checks["sentinel price"].status == "WARN" and "sentinel_price_usd says $0.020" in checks["sentinel price"].seen
    )
    assert checks["sentinel cost"].status == "FAIL" and "set sentinel_price_usd" in checks["sentinel cost"].seen


def test_a_failed_evaluation_is_reported(emulator):
    emulator.faults({"rules": [{"endpoint": "create_evaluation", "fault": "run_failure", "code": "JUDGE_DOWN"}]})
    checks = {check.name: check for check in doctor(emulator).run().checks}
    assert checks["sentinel verdict"].status == "FAIL" and "failed JUDGE_DOWN" in checks["sentinel verdict"].seen


def test_the_command_takes_sentinel_and_never_prints_the_key(emulator, tmp_path):
    out = tmp_path / "doctor.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FLUX2_API_KEY", None)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "airflow_provider_flux2.cli", "doctor"),
            "--sentinel",
            "--replay-after",
            "0",
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS sentinel cost" in result.stdout and "Sentinel: $0.010 per evaluation" in result.stdout
    assert json.loads(out.read_text())["sentinel_price_usd"] == "0.010"
    assert emulator.api_key not in result.stdout + result.stderr + out.read_text()
