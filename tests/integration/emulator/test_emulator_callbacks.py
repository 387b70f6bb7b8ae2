"""Callbacks: signed POSTs to ``callback_url`` when a run ends, retried with backoff."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SECRET = "emulator-callback-secret"


class Receiver:
    """A tiny HTTP server that records callbacks and answers 500 to the first ``failures`` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = 500 if len(receiver.received) < receiver.failures else 204
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, raw, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/flux"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[dict[str, str], bytes, int]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"got {len(self.received)} of {count} callbacks"
            time.sleep(0.02)
        return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _attempts(api, count: int, timeout: float = 10.0) -> list[dict]:
    """The emulator's record of its deliveries, once it holds ``count`` of them (it records an attempt
    after the receiver has answered, so the receiver can count one before the emulator does)."""
    deadline = time.monotonic() + timeout
    while len(attempts := api.emulator.stats()["callbacks"]) < count:
        assert time.monotonic() < deadline, f"the emulator recorded {len(attempts)} of {count} deliveries"
        time.sleep(0.02)
    return attempts


def _signature(secret: str, raw: bytes) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def test_succeeded_run_is_posted_signed(api, receiver):
    run_id = api.create_run("call me back", callback_url=receiver.url, metadata={"dag_id": "d1"}).json()["id"]
    ((headers, raw, _),) = receiver.wait_for(1)
    assert hmac.compare_digest(headers["runflow-signature"], _signature(SECRET, raw))
    assert headers["runflow-request-id"].startswith("req_")
    assert headers["content-type"] == "application/json"
    payload = json.loads(raw)
    assert set(payload) == {
        "event", "run_id", "status", "output", "duration_ms", "created_at", "completed_at", "metadata"
    }  # fmt: skip
    assert (payload["event"], payload["run_id"], payload["status"]) == ("run.completed", run_id, "succeeded")
    assert payload["metadata"] == {"dag_id": "d1"}
    assert payload["output"]["outputs"][0]["url"].startswith(api.emulator.base_url)
    assert payload["duration_ms"] >= 0 and payload["completed_at"].endswith("Z")


def test_failed_run_is_posted_as_run_failed(api, receiver):
    api.emulator.faults({"rules": [{"endpoint": "create_run", "fault": "run_failure", "count": 1}]})
    api.create_run("doomed", callback_url=receiver.url)
    ((_, raw, _),) = receiver.wait_for(1)
    payload = json.loads(raw)
    assert (payload["event"], payload["status"], payload["output"]) == ("run.failed", "failed", None)


def test_failed_delivery_is_retried_with_the_same_signed_body(api, receiver):
    receiver.failures = 2
    api.create_run("retry my callback", callback_url=receiver.url)
    deliveries = receiver.wait_for(3)
    assert [status for _, _, status in deliveries] == [500, 500, 204]
    bodies = {raw for _, raw, _ in deliveries}
    assert len(bodies) == 1
    assert len({headers["runflow-request-id"] for headers, _, _ in deliveries}) == 1
    attempts = _attempts(api, 3)
    time.sleep(0.1)
    assert len(receiver.received) == 3  # delivered: no more attempts
    assert len(api.emulator.stats()["callbacks"]) == 3
    assert [(a["attempt"], a["status"], a["delivered"]) for a in attempts] == [
        (1, 500, False),
        (2, 500, False),
        (3, 204, True),
    ]


def test_retries_back_off_exponentially(api, receiver):
    api.emulator.configure(callback_retry_base=0.1)
    receiver.failures = 3
    api.create_run("backoff", callback_url=receiver.url)
    receiver.wait_for(4)
    attempts = _attempts(api, 4)
    assert len(attempts) == 4
    # Waits of 0.1, 0.2 and 0.4 s between attempts: scheduled so, and at least that long in fact
    # (a loaded machine can only make them longer).
    assert [a["next_attempt_in"] for a in attempts] == [0.1, 0.2, 0.4, None]
    times = [datetime.fromisoformat(a["at"].replace("Z", "+00:00")).timestamp() for a in attempts]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39


def test_delivery_gives_up_after_the_configured_attempts(api):
    api.emulator.configure(callback_max_attempts=3, callback_retry_base=0.01)
    api.create_run("nobody listens", callback_url="http://127.0.0.1:9/unreachable")
    deadline = time.monotonic() + 5
    while len(api.emulator.stats()["callbacks"]) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.1)
    attempts = api.emulator.stats()["callbacks"]
    assert len(attempts) == 3
    assert all(a["error"] and not a["delivered"] for a in attempts)


def test_custom_callback_secret(api, receiver):
    api.emulator.configure(callback_secret="s3cret")
    api.create_run("custom secret", callback_url=receiver.url)
    ((headers, raw, _),) = receiver.wait_for(1)
    assert headers["runflow-signature"] == _signature("s3cret", raw)
    assert headers["runflow-signature"] != _signature(SECRET, raw)


def test_every_batch_item_calls_back(api, receiver):
    batch = api.create_batch([{"prompt": "a"}, {"prompt": "b"}], callback_url=receiver.url).json()
    deliveries = receiver.wait_for(2)
    assert {json.loads(raw)["run_id"] for _, raw, _ in deliveries} == {i["run_id"] for i in batch["items"]}


def test_callback_url_must_be_http(api):
    response = api.create_run("bad hook", callback_url="ftp://example.com/hook")
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["callback_url"]
