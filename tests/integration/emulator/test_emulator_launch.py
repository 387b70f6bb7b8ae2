"""Starting the emulator: in a thread, in a subprocess, and as ``flux2 emulator`` driven by curl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from airflow_provider_flux2.emulator import TEST_CONNECTION_EXTRA, Emulator

PRO_RUNS = "/v1/models/black-forest-labs/flux-2-pro/runs"
FLUX2 = Path(sys.executable).with_name("flux2")


def test_connection_json_points_airflow_at_the_emulator(emulator):
    conn = json.loads(emulator.connection_json())
    assert conn == {
        "conn_type": "flux2",
        "host": emulator.base_url,
        "password": emulator.api_key,
        "extra": TEST_CONNECTION_EXTRA,
    }
    assert emulator.base_url.startswith("http://127.0.0.1:")


def test_connection_uri_parses_back_in_airflow(emulator):
    from airflow.models.connection import Connection

    conn = Connection(conn_id="flux2_default", uri=emulator.connection_uri())
    assert conn.conn_type == "flux2"
    assert conn.host == emulator.base_url
    assert conn.password == emulator.api_key
    assert conn.extra_dejson == TEST_CONNECTION_EXTRA


def test_thread_mode_binds_loopback_on_a_free_port_and_stops():
    with Emulator(api_key="k1", fleet_size=3) as emu:
        assert emu.port > 0
        assert httpx.get(f"{emu.base_url}/v1/health", trust_env=False).status_code == 200
        assert emu.get_config()["fleet_size"] == 3
        base = emu.base_url
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/v1/health", trust_env=False, timeout=1)


def test_without_a_key_any_bearer_token_is_accepted(monkeypatch):
    monkeypatch.delenv("FLUX2_EMULATOR_API_KEY", raising=False)
    with Emulator() as emu, httpx.Client(base_url=emu.base_url, trust_env=False) as client:
        assert client.get(f"/v1/runs/{uuid.uuid4()}", headers={"Authorization": "Bearer anything"}).status_code == 404
        own_key = {"Authorization": f"Bearer {emu.api_key}"}
        assert client.get(f"/v1/runs/{uuid.uuid4()}", headers=own_key).status_code == 404
        assert client.get("/v1/runs/x").status_code == 401


def test_the_key_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLUX2_EMULATOR_API_KEY", "rf_env_key")
    with Emulator() as emu, httpx.Client(base_url=emu.base_url, trust_env=False) as client:
        assert emu.api_key == "rf_env_key"
        assert client.get("/v1/runs/x", headers={"Authorization": "Bearer other"}).status_code == 401
        assert client.get(f"/v1/runs/{uuid.uuid4()}", headers={"Authorization": "Bearer rf_env_key"}).status_code == 404


def test_unknown_config_key_is_refused_at_construction():
    with pytest.raises(ValueError, match="no_such_option"):
        Emulator(no_such_option=1)


@pytest.mark.timeout(60)
def test_subprocess_mode_serves_and_is_controlled_over_http():
    with Emulator(
        subprocess=True, api_key="rf_sub", url_ttl=30, latency={"queued": 0, "dispatching": 0, "running": 0.05}
    ) as emu:
        headers = {"Authorization": "Bearer rf_sub"}
        with httpx.Client(base_url=emu.base_url, headers=headers, trust_env=False) as client:
            assert emu.get_config()["url_ttl"] == 30
            emu.faults({"rules": [{"endpoint": "create_run", "fault": "rate_limit", "retry_after": 1, "count": 1}]})
            assert client.post(PRO_RUNS, json={"input": {"prompt": "sub"}}).status_code == 429
            run_id = client.post(PRO_RUNS, json={"input": {"prompt": "sub"}}).json()["id"]
            deadline = time.monotonic() + 10
            while client.get(f"/v1/runs/{run_id}").json()["status_code"] != "succeeded":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert len(emu.ledger()["entries"]) == 1
            assert emu.stats()["faults_fired"][0]["fault"] == "rate_limit"
            emu.configure(url_ttl=5)
            emu.reset()
            assert emu.get_config()["url_ttl"] == 30  # the start-up config is restored
            assert emu.ledger()["entries"] == []
        process = emu._process
    assert process is not None and process.poll() is not None


def _curl(*args: str) -> bytes:
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail-with-body", *args], capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    return result.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.timeout(60)
def test_flux2_emulator_command_serves_a_run_that_curl_creates_polls_and_downloads(tmp_path):
    port_file = tmp_path / "port"
    env = {k: v for k, v in os.environ.items() if k != "FLUX2_EMULATOR_API_KEY"}
    env["NO_PROXY"] = "*"
    process = subprocess.Popen(
        [str(FLUX2), "emulator", "--port", "0", "--port-file", str(port_file), "--api-key", "rf_live_curl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "the emulator did not write its port file"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        assert json.loads(_curl(f"{base}/v1/health")) == {"status": "ok"}
        auth = ["-H", "Authorization: Bearer rf_live_curl"]
        body = json.dumps({"input": {"prompt": "curl made this", "image_size": "square", "seed": 7}})
        created = json.loads(
            _curl("-X", "POST", *auth, "-H", "Content-Type: application/json", "-H", "Idempotency-Key: curl-1",
                  "--data", body, f"{base}{PRO_RUNS}")
        )  # fmt: skip
        assert created["status_code"] == "queued"
        deadline = time.monotonic() + 10
        while (run := json.loads(_curl(*auth, f"{base}/v1/runs/{created['id']}")))["status_code"] != "succeeded":
            assert time.monotonic() < deadline, run
            time.sleep(0.05)
        image_path = tmp_path / "out.jpg"
        _curl("--output", str(image_path), run["output"]["outputs"][0]["url"])
        with Image.open(image_path) as image:
            assert (image.format, image.size) == ("JPEG", (512, 512))
        ledger = json.loads(_curl(f"{base}/_emulator/ledger"))
        assert [e["idempotency_key"] for e in ledger["entries"]] == ["curl-1"]
        assert ledger["total_cost"] == "0.030"
    finally:
        process.terminate()
        process.wait(timeout=10)
