"""Fixtures for the emulator's integration tests: a plain httpx client over a real socket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

TERMINAL = {"succeeded", "failed", "canceled", "partial_succeeded"}


class Api:
    """The emulator's API through plain httpx (no provider code), with the helpers most tests need.

    :param emulator: the running emulator (``tests/conftest.py``'s ``emulator`` fixture).
    :param client: an httpx client with the emulator's base URL and Bearer key.
    """

    def __init__(self, emulator: Any, client: httpx.Client) -> None:
        self.emulator = emulator
        self.client = client

    @staticmethod
    def model_path(variant: str = "pro") -> str:
        return f"/v1/models/black-forest-labs/flux-2-{variant}"

    def create_run(
        self, prompt: str = "a red fox in fresh snow", *, variant: str = "pro", key: str | None = None, **fields: Any
    ) -> httpx.Response:
        """``POST .../runs``; ``fields`` go into ``input`` except metadata, callback_url and client_ref."""
        body: dict[str, Any] = {"input": {"prompt": prompt}}
        for name in ("metadata", "callback_url", "client_ref"):
            if name in fields:
                body[name] = fields.pop(name)
        body["input"].update(fields)
        headers = {"Idempotency-Key": key} if key else {}
        return self.client.post(f"{self.model_path(variant)}/runs", json=body, headers=headers)

    def run(self, prompt: str = "a red fox in fresh snow", **fields: Any) -> dict[str, Any]:
        """Create a run, check the 201, and wait for it to end."""
        response = self.create_run(prompt, **fields)
        assert response.status_code == 201, response.text
        return self.wait(response.json()["id"])

    def create_batch(
        self, items: list[dict[str, Any]], *, variant: str = "pro", key: str | None = None, **body: Any
    ) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return self.client.post(f"{self.model_path(variant)}/batches", json={"input": items, **body}, headers=headers)

    def get_run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run["status_code"] in TERMINAL:
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run['status_code']}"
            time.sleep(0.02)

    def wait_batch(self, batch_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            batch = self.client.get(f"/v1/batches/{batch_id}").json()
            if batch["status_code"] in TERMINAL:
                return batch
            assert time.monotonic() < deadline, f"batch {batch_id} still {batch['status_code']}"
            time.sleep(0.02)

    def download(self, run: dict[str, Any], **kwargs: Any) -> httpx.Response:
        """GET the run's output URL without the API key (presigned URLs need none)."""
        with httpx.Client(trust_env=False, timeout=kwargs.pop("timeout", 10.0)) as plain:
            return plain.get(run["output"]["outputs"][0]["url"], **kwargs)


@pytest.fixture
def api(emulator: Any) -> Iterator[Api]:
    """A client for the session's emulator, reset for this test."""
    headers = {"Authorization": f"Bearer {emulator.api_key}"}
    with httpx.Client(base_url=emulator.base_url, headers=headers, timeout=10.0, trust_env=False) as client:
        yield Api(emulator, client)
