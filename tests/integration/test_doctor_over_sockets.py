"""``flux2 doctor`` over real sockets: against the emulator, and against a proxy that deviates from it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_provider_flux2.doctor import Doctor
from airflow_provider_flux2.emulator.launcher import _bind, _Server
from airflow_provider_flux2.pricing import PriceTable

REPO = Path(__file__).resolve().parents[2]


def _ledger(emulator) -> list[dict[str, Any]]:
    return httpx.get(f"{emulator.base_url}/_emulator/ledger", trust_env=False).json()["entries"]


def _doctor(base_url: str, key: str, **kwargs: Any) -> Doctor:
    settings: dict[str, Any] = {
        "timeout": 5,
        "run_timeout": 20,
        "sleep": lambda _s: None,
        "replay_after": 0,
        **kwargs,
    }
    return Doctor(base_url=base_url, api_key=key, **settings)


def _by_name(report) -> dict[str, Any]:
    return {check.name: check for check in report.checks}


# -- a deviating API: the emulator behind a proxy that changes one thing ----------------------------


class DeviatingProxy:
    """Forwards to the emulator, changing what ``deviation`` names (one of the keys of ``_CHANGES``)."""

    def __init__(self, upstream: str, key: str) -> None:
        self.upstream, self.key, self.deviation = upstream, key, "none"
        self.app = Starlette(routes=[Route("/{path:path}", self.forward, methods=["GET", "POST"])])

    async def forward(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "idempotency-key")}
        path = request.url.path
        if self.deviation == "open_auth":
            headers["authorization"] = f"Bearer {self.key}"  # any key works
        if self.deviation == "no_idempotency":
            headers.pop("idempotency-key", None)  # every POST is a new run
        if self.deviation == "no_klein" and "klein" in path:
            return JSONResponse({"code": "MODEL_NOT_FOUND", "message": "unknown model", "errors": None}, 404)
        if self.deviation == "no_batches" and path.endswith("/batches"):
            return JSONResponse({"detail": "Not Found"}, 404)
        if self.deviation == "stall_batches" and path.endswith("/batches"):
            await asyncio.sleep(3)  # longer than the doctor's timeout in that test
        async with httpx.AsyncClient(base_url=self.upstream, trust_env=False) as client:
            upstream = await client.request(
                request.method, path, params=request.query_params, content=await request.body(), headers=headers
            )
        try:
            body = upstream.json()
        except ValueError:
            return Response(upstream.content, upstream.status_code, media_type=upstream.headers.get("content-type"))
        body = self._change(body)
        keep = {k: v for k, v in upstream.headers.items() if k.lower() in ("x-request-id", "retry-after")}
        return JSONResponse(body, upstream.status_code, headers=keep)

    def _change(self, body: Any) -> Any:
        if not isinstance(body, dict):
            return body
        if self.deviation == "cost" and body.get("cost"):
            body["cost"] = "0.035"
        if self.deviation == "shape" and isinstance(body.get("output"), dict):
            body["output"] = {"result": body["output"]}
        if self.deviation == "unnamed_422" and body.get("code") == "VALIDATION_ERROR":
            body["errors"] = None
        return body


@pytest.fixture(scope="module")
def proxy_server(emulator_server) -> Iterator[tuple[DeviatingProxy, str]]:
    proxy = DeviatingProxy(emulator_server.base_url, emulator_server.api_key)
    sock = _bind("127.0.0.1", 0)
    started = threading.Event()
    config = uvicorn.Config(proxy.app, log_level="warning", access_log=False, lifespan="off", loop="asyncio")
    server = _Server(config, on_started=started.set)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield proxy, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def proxy(proxy_server, emulator):
    deviating, url = proxy_server
    deviating.deviation = "none"
    yield deviating, url
    deviating.deviation = "none"


# -- against the emulator ------------------------------------------------------------------------------


def test_doctor_passes_against_the_emulator_and_is_billed_once(emulator):
    report = _doctor(emulator.base_url, emulator.api_key).run()
    failed = [check.line() for check in report.checks if check.status == "FAIL"]
    assert report.passed, failed
    checks = _by_name(report)
    passing = (
        "health",
        "auth: bad key",
        "auth: your key",
        "validation",
        "idempotency",
        "idempotency 409",
        "cost 1920x1080",
        "batch read-back",
        "edit pro",
        "idempotency later",
    )
    for name in passing:
        assert checks[name].status == "PASS", checks[name].line()
    assert {f"model {v}" for v in ("pro", "flex", "max", "turbo", "klein-4b", "klein-9b")} <= set(checks)
    assert checks["cost"].cost_usd == "0.030"
    assert checks["cost 1920x1080"].cost_usd == "0.045"  # the seed's second row: the extra-MP rate, rounded up
    assert "2 page(s)" in checks["batch read-back"].seen and checks["batch read-back"].cost_usd == "0.060"
    assert checks["balance"].status == "WARN"  # this emulator has no credit_usd: no balance endpoint
    assert "expires in 600 s" in checks["output url"].seen
    assert "batches supported" in checks["batches"].seen
    assert checks["retry-after"].status == "SKIP"
    # No pro edit model exists: the reference went to the text-to-image model, and that is recorded.
    assert report.edit_models == {"pro": "black-forest-labs/flux-2-pro"}
    assert report.measured_prices["pro"] == {"first_mp": "0.030", "extra_mp": "0.015"}
    ledger = _ledger(emulator)
    # Five real runs: 1 MP, 1920x1080, a 2-item batch, one edit; the replays and the 409 cost nothing.
    assert len(ledger) == 5
    assert sum(Decimal(e["cost"]) for e in ledger) == Decimal(report.spent_usd) == Decimal("0.180")
    assert sorted((e["width"], e["height"]) for e in ledger).count((512, 512)) == 3


def test_doctor_run_uses_the_chosen_model_and_its_price(emulator):
    report = _doctor(emulator.base_url, emulator.api_key, model="klein-4b").run()
    assert report.passed, [c.line() for c in report.deviations]
    checks = _by_name(report)
    assert checks["cost"].cost_usd == "0.005"
    models = {(e["model"], e["cost"]) for e in _ledger(emulator)}
    assert ("black-forest-labs/flux-2-klein-4b", "0.005") in models
    # klein's references go to its documented edit model, billed per image.
    assert ("black-forest-labs/flux-2-klein-4b/edit", "0.005") in models
    assert report.edit_models == {"klein-4b": "black-forest-labs/flux-2-klein-4b/edit"}
    assert report.measured_prices["black-forest-labs/flux-2-klein-4b/edit"] == "0.005"


def test_doctor_honours_retry_after_and_reports_it(emulator):
    emulator.faults({"rules": [{"endpoint": "get_run", "fault": "rate_limit", "retry_after": 0.1, "count": 1}]})
    report = _doctor(emulator.base_url, emulator.api_key).run()
    check = _by_name(report)["retry-after"]
    assert check.status == "PASS"
    assert "1 429(s)" in check.seen
    assert report.passed


def test_doctor_warns_when_a_429_has_no_retry_after(emulator):
    emulator.faults({"rules": [{"endpoint": "get_run", "fault": "rate_limit", "count": 1}]})
    check = _by_name(_doctor(emulator.base_url, emulator.api_key).run())["retry-after"]
    assert check.status == "WARN"
    assert "backs off exponentially" in check.seen


def test_doctor_never_passes_max_spend(emulator):
    report = _doctor(emulator.base_url, emulator.api_key, max_spend=Decimal("0.02")).run()
    checks = _by_name(report)
    assert checks["run"].status == "SKIP"
    assert "$0.030" in checks["run"].seen and "--max-spend $0.020" in checks["run"].seen
    assert {"run", "cost 1920x1080", "batch read-back", "edit pro"} <= set(report.skipped)
    assert _ledger(emulator) == []
    assert report.spent_usd == "0.000"


def test_doctor_reports_an_unreachable_api_and_stops(emulator):
    sock = _bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    report = _doctor(f"http://127.0.0.1:{port}", "rf_x").run()
    assert [c.name for c in report.checks] == ["health", "stopped"]
    assert not report.passed


# -- against a deviating API ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deviation", "check", "named"),
    [
        ("cost", "cost", "seen cost $0.035"),
        ("shape", "output shape", "output keys: ['result']"),
        ("unnamed_422", "validation", "the field is not named"),
        ("no_klein", "model klein-4b", "404 MODEL_NOT_FOUND"),
        ("no_batches", "batches", "404"),
    ],
)
def test_doctor_names_the_deviation(proxy, deviation, check, named):
    deviating, url = proxy
    deviating.deviation = deviation
    report = _doctor(url, deviating.key).run()
    assert not report.passed
    checks = _by_name(report)
    assert checks[check].status == "FAIL", checks[check].line()
    assert named in checks[check].line()
    assert check in [c.name for c in report.deviations]


def test_open_auth_deviation_is_seen_as_200_or_404_not_401(proxy):
    deviating, url = proxy
    deviating.deviation = "open_auth"
    check = _by_name(_doctor(url, deviating.key).run())["auth: bad key"]
    assert check.status == "FAIL"
    assert "seen 404 RUN_NOT_FOUND" in check.line()


def test_missing_idempotency_is_caught_and_its_cost_counted(proxy, emulator):
    deviating, url = proxy
    deviating.deviation = "no_idempotency"
    report = _doctor(url, deviating.key).run()
    checks = _by_name(report)
    assert checks["idempotency"].status == "FAIL"
    assert "billed twice" in checks["idempotency"].seen
    assert checks["idempotency 409"].status == "FAIL"
    assert "accepted" in checks["idempotency 409"].seen
    assert checks["idempotency later"].status == "FAIL" and "billed twice" in checks["idempotency later"].seen
    # Every run was counted before it was sent: the three of the first run, then 2 MP, the batch, the
    # edit and the late replay.
    assert report.committed_usd == "0.270"
    assert emulator.stats()["runs_created"] == 8  # the late replay's run may not have ended (billed) yet
    assert sum(Decimal(e["cost"]) for e in _ledger(emulator)) <= Decimal(report.max_spend_usd)


def test_missing_idempotency_under_a_tight_cap_sends_no_second_run(proxy, emulator):
    deviating, url = proxy
    deviating.deviation = "no_idempotency"
    report = _doctor(url, deviating.key, max_spend=Decimal("0.05")).run()
    checks = _by_name(report)
    assert checks["idempotency"].status == "SKIP"
    assert len(_ledger(emulator)) == 1


# -- the command -----------------------------------------------------------------------------------------


def test_flux2_doctor_command_prints_steps_and_writes_json(emulator, tmp_path):
    out = tmp_path / "doctor.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FLUX2_API_KEY", None)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "airflow_provider_flux2.cli", "doctor", "--json", str(out)),
            *("--replay-after", "0", "--write-prices", str(tmp_path / "prices.json")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "connection flux2_default" in result.stdout
    assert "PASS cost" in result.stdout
    assert "all checks passed" in result.stdout
    report = json.loads(out.read_text())
    assert report["passed"] is True
    assert report["deviations"] == []
    assert report["spent_usd"] == "0.180"
    assert "(cost $0.045)" in result.stdout  # each step says what it cost
    prices = json.loads((tmp_path / "prices.json").read_text())
    assert prices == {"pro": {"first_mp": "0.030", "extra_mp": "0.015"}}
    assert PriceTable().with_overrides(prices).price("pro").estimate is False  # usable as the prices extra
    assert emulator.api_key not in result.stdout + result.stderr + out.read_text()


def test_flux2_doctor_command_exits_1_on_a_deviation(proxy, tmp_path):
    deviating, url = proxy
    deviating.deviation = "cost"
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLUX2_API_KEY": deviating.key, "FLUX2_BASE_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_flux2.cli", "doctor", "--max-spend", "0.05"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "(key from FLUX2_API_KEY, model black-forest-labs/flux-2-pro" in result.stdout
    assert "FAIL cost" in result.stdout
    assert "1 deviation(s): cost" in result.stdout
    assert deviating.key not in result.stdout + result.stderr


def test_an_api_that_stops_answering_midway_is_reported_not_a_crash(proxy, emulator):
    deviating, url = proxy
    deviating.deviation = "stall_batches"
    report = _doctor(url, deviating.key, timeout=0.5).run()
    checks = _by_name(report)
    assert checks["batches"].status == "FAIL" and "ReadTimeout" in checks["batches"].seen
    assert checks["cost"].status == "PASS"  # what was seen before is kept
    assert checks["idempotency later"].status == "PASS"  # and the steps after it still ran
    assert "stopped" not in checks


def test_max_spend_zero_runs_only_the_free_checks(emulator):
    report = _doctor(emulator.base_url, emulator.api_key, max_spend=Decimal("0")).run()
    statuses = {check.name: check.status for check in report.checks}
    assert statuses["run"] == statuses["idempotency"] == "SKIP"
    assert statuses["validation"] == statuses["batches"] == statuses["auth: bad key"] == "PASS"
    assert report.passed and report.committed_usd == "0.000"
    assert _ledger(emulator) == []
