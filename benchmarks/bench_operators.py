"""The tasks ``make bench`` measures on the real deployment, beside the shipped operator.

Imported by the DAG file ``deployment_dags/flux2_deploy_bench.py`` (``benchmarks/`` is on every Airflow
process's ``PYTHONPATH``). Every class appends one line per worker entry to ``FLUX2_DEPLOY_ENTRIES``
(:class:`EntryLogged`), which is how the harness counts worker entries and worker-slot seconds.

- :class:`WavesOperator`: the shipped operator with ``batch_size = max_in_flight``: the window only
  takes a whole chunk, so the next wave of ``max_in_flight`` runs goes in when the last one is done;
- :class:`PollingClientOperator`: what a user writes with a plain client library inside a task —
  single runs (``POST /v1/models/{owner}/{slug}/runs`` with an ``Idempotency-Key``), ``max_in_flight``
  of them at once, each polled with ``GET /v1/runs/{id}`` at a fixed interval until terminal, then
  downloaded; the task holds its worker slot from start to end, as those clients do. The intervals
  are those issue 12 gives: fal-client 0.1 s, Black Forest Labs' client 1 s, Runflow's JS SDK 2 s;
- :class:`HttpSubmitOperator`, :class:`HttpRunSensor`, :class:`HttpDownloadOperator`: the
  ``apache-airflow-providers-http`` way, one mapped task group per image.

Images are written under ``FLUX2_DEPLOY_OUTPUT``; each image's record (the same ``timings`` as the
shipped operator's manifest: submitted, finished at the API, seen finished, stored) is appended to
``{output}/{dag_id}/{run_id}/records.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from airflow.providers.http.operators.http import HttpOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.sdk import BaseHook, BaseOperator
from entries import EntryLogged, log_entry

from airflow_provider_flux2.models import build_input
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

#: The model every bench task generates with, as the API spells it.
MODEL_PATH = "/v1/models/black-forest-labs/flux-2-pro/runs"
TERMINAL = ("succeeded", "failed", "canceled")
#: The HTTP connection of the ``HttpOperator`` DAG (type ``http``; the key travels as a header in its extra).
HTTP_CONN_ID = "flux2_http"
#: Transient answers a plain client retries (after a pause), as the retry helpers of those clients do.
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_ATTEMPTS = 6
#: Bounds of every request a peer client makes: seconds, and bytes of a downloaded image.
REQUEST_TIMEOUT = 30.0
MAX_IMAGE_BYTES = 128 * 1024 * 1024


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _output_root() -> Path:
    return Path(os.environ.get("FLUX2_DEPLOY_OUTPUT", "/tmp/flux2-deploy-output"))


class ClockScaled:
    """Mixin for the shipped operator on a compressed API clock (as ``instruments.BenchOperator``).

    The window guesses a run's duration in real seconds; at a time scale below 1 the guess is
    compressed with the clock, so the adaptive interval sees runs as the API ages them (the trigger's
    window only: the non-deferrable path keeps real-second guesses). At time scale 1, where the
    targets are measured, this changes nothing.
    """

    clock_scale: float = 1.0

    def _trigger(self, context: Any, plan: Any) -> Any:
        trigger = super()._trigger(context, plan)  # type: ignore[misc]
        for job in trigger.jobs:  # [index, model, key, ref, input, cost, expected seconds]
            job[6] = job[6] * self.clock_scale
        return trigger


class ShippedBenchOperator(EntryLogged, ClockScaled, FluxGenerateImageOperator):
    """The operator as shipped (deferrable or not), its worker entries logged."""

    def __init__(self, *, clock_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock_scale = clock_scale


class WavesOperator(ShippedBenchOperator):
    """Baseline: whole waves. ``batch_size = max_in_flight`` (at most 100, the API's batch limit): the
    window submits only whole chunks that fit, so a wave goes in when every run of the last one is done."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["batch_size"] = min(int(kwargs.get("max_in_flight", 8)), 100)
        super().__init__(**kwargs)


# -- the records the peers leave -------------------------------------------------------------------------

_RECORDS_LOCK = threading.Lock()


def write_record(dag_id: str, run_id: str, record: dict[str, Any]) -> None:
    """Append one image's record to ``{output}/{dag_id}/{run_id}/records.jsonl`` (one line, one write)."""
    folder = _output_root() / dag_id / run_id
    folder.mkdir(parents=True, exist_ok=True)
    with _RECORDS_LOCK, open(folder / "records.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def wire_input(item: dict[str, Any]) -> dict[str, Any]:
    """The API's JSON input of one bench item (the same inputs, so the same latencies and prices)."""
    return dict(build_input("pro", **item).to_wire())


def idempotency_key(dag_id: str, run_id: str, task_id: str, index: int) -> str:
    return "bench-" + hashlib.sha256(f"{dag_id}\n{run_id}\n{task_id}\n{index}".encode()).hexdigest()[:40]


def store(dag_id: str, run_id: str, task_id: str, index: int, data: bytes, content_type: str) -> str:
    suffix = "png" if "png" in content_type else "jpg"
    path = _output_root() / dag_id / run_id / task_id / f"{index:05d}.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.as_uri()


def output_url(run: dict[str, Any]) -> str:
    """The first output URL of a succeeded run (the shape ``docs/protocol.md`` normalises)."""
    output = run.get("output") or {}
    for key in ("outputs", "images"):
        for entry in output.get(key) or []:
            if entry.get("url"):
                return str(entry["url"])
    for url in output.get("image_urls") or []:
        return str(url)
    raise ValueError(f"run {run.get('id')} succeeded without an output URL")


def download(client: httpx.Client, url: str) -> tuple[bytes, str]:
    """GET an image, bounded in time and bytes."""
    with client.stream("GET", url, timeout=REQUEST_TIMEOUT) as response:
        response.raise_for_status()
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_IMAGE_BYTES:
                raise ValueError(f"{url.split('?')[0]}: more than {MAX_IMAGE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks), response.headers.get("content-type", "")


class PeerClient:
    """A plain HTTP client of the API, as the client libraries are: retries transient answers."""

    def __init__(self, base_url: str, api_key: str, pause: float) -> None:
        self.client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=REQUEST_TIMEOUT,
            trust_env=False,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
        )
        self.pause = pause

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == MAX_ATTEMPTS:
                    raise
                time.sleep(self.pause * attempt)
                continue
            if response.status_code in RETRY_STATUSES and attempt < MAX_ATTEMPTS:
                time.sleep(self.pause * attempt)
                continue
            if response.status_code >= 400:
                request_id = response.headers.get("x-request-id", "?")
                raise RuntimeError(f"{method} {path} answered {response.status_code} (request {request_id})")
            body = response.json()
            assert isinstance(body, dict)
            return body
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()


class PollingClientOperator(BaseOperator):
    """A plain client library's loop inside one task: single runs, a fixed poll interval, the slot held.

    :param prompts: the items (``prompt``, ``image_size``, ``seed``), as the shipped operator takes them.
    :param poll_every: seconds between two polls of one run (already multiplied by the time scale).
    :param max_in_flight: runs at the API at once (one thread each: submit, poll, download).
    """

    def __init__(
        self,
        *,
        prompts: Sequence[dict[str, Any]],
        poll_every: float,
        max_in_flight: int,
        flux_conn_id: str = "flux2_default",
        deadline: float = 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompts = list(prompts)
        self.poll_every = poll_every
        self.max_in_flight = max_in_flight
        self.flux_conn_id = flux_conn_id
        self.deadline = deadline

    def execute(self, context: Any) -> Any:
        return log_entry(context, "execute", lambda: self._run(context))

    def _run(self, context: Any) -> int:
        conn = BaseHook.get_connection(self.flux_conn_id)
        ti = context["ti"]
        client = PeerClient(str(conn.host).rstrip("/"), str(conn.password), pause=max(0.05, self.poll_every))
        ends = time.monotonic() + self.deadline
        failures: list[str] = []

        def one(index: int) -> None:
            item = self.prompts[index]
            ref = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{index}"
            submitted = _now_iso()
            run = client.request(
                "POST",
                MODEL_PATH,
                json={"input": wire_input(item), "client_ref": ref},
                headers={"Idempotency-Key": idempotency_key(ti.dag_id, ti.run_id, ti.task_id, index)},
            )
            while run["status_code"] not in TERMINAL:
                if time.monotonic() > ends:
                    raise TimeoutError(f"run {run['id']} not finished within {self.deadline:.0f} s")
                time.sleep(self.poll_every)
                run = client.request("GET", f"/v1/runs/{run['id']}")
            detected = _now_iso()
            record = {
                "index": index,
                "client_ref": ref,
                "run_id": run["id"],
                "status": run["status_code"],
                "timings": {"submitted_at": submitted, "finished_at": run.get("completed_at"), "detected_at": detected},
            }
            if run["status_code"] == "succeeded":
                data, content_type = download(client.client, output_url(run))
                record["uri"] = store(ti.dag_id, ti.run_id, ti.task_id, index, data, content_type)
                record["timings"]["stored_at"] = _now_iso()
            else:
                failures.append(f"#{index} {run['status_code']} ({run.get('failure_code')})")
            write_record(ti.dag_id, ti.run_id, record)

        try:
            with ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="peer") as pool:
                list(pool.map(one, range(len(self.prompts))))
        finally:
            client.close()
        if failures:
            raise RuntimeError(f"{len(failures)} run(s) did not succeed: {', '.join(failures[:10])}")
        self.log.info("%d images generated, each polled every %.2f s", len(self.prompts), self.poll_every)
        return len(self.prompts)


# -- the apache-airflow-providers-http DAG ------------------------------------------------------------


def run_id_of(response: Any) -> str:
    """``response_filter`` of the submit: the run id is what goes to XCom."""
    return str(response.json()["id"])


def is_terminal(response: Any) -> bool:
    """``response_check`` of the sensor: done when the run is terminal."""
    return response.json()["status_code"] in TERMINAL


class HttpSubmitOperator(EntryLogged, HttpOperator):
    """``HttpOperator`` POSTing one run; pushes the run id. The ``Idempotency-Key`` names the DAG run
    too (what ``{{ run_id }}`` in the header would do), so a second DAG run is a second set of runs."""

    def execute(self, context: Any) -> Any:
        key = self.headers.get("Idempotency-Key")
        if key:
            self.headers = {**self.headers, "Idempotency-Key": idempotency_key(str(key), context["run_id"], "", 0)}
        return super().execute(context)


class HttpRunSensor(EntryLogged, HttpSensor):
    """``HttpSensor`` on ``GET /v1/runs/{id}``; when a poke sees the run terminal, the instant goes to XCom
    (``detected_at``: the moment the DAG learnt it, as the shipped trigger's poll records it)."""

    def poke(self, context: Any) -> bool:
        done = bool(super().poke(context))
        if done:
            context["ti"].xcom_push(key="detected_at", value=_now_iso())
        return done


class HttpDownloadOperator(BaseOperator):
    """After the sensor: read the run for its output URL, download the image, store it, write the record.

    The sensor cannot hand the run's body on, so the URL costs one more ``GET /v1/runs/{id}``.
    """

    template_fields: Sequence[str] = ("run_id", "detected_at", "index")

    def __init__(self, *, run_id: str, detected_at: str, index: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id
        self.detected_at = detected_at
        self.index = index

    def execute(self, context: Any) -> Any:
        return log_entry(context, "execute", lambda: self._download(context))

    def _download(self, context: Any) -> str:
        conn = BaseHook.get_connection(HTTP_CONN_ID)
        headers = {str(k): str(v) for k, v in conn.extra_dejson.items()}
        client = PeerClient(str(conn.host).rstrip("/"), "", pause=0.5)
        client.client.headers.update(headers)
        ti = context["ti"]
        try:
            run = client.request("GET", f"/v1/runs/{self.run_id}")
            if run["status_code"] != "succeeded":
                raise RuntimeError(f"run {self.run_id} ended {run['status_code']} ({run.get('failure_code')})")
            data, content_type = download(client.client, output_url(run))
        finally:
            client.close()
        index = int(self.index)
        uri = store(ti.dag_id, ti.run_id, "images", index, data, content_type)
        write_record(
            ti.dag_id,
            ti.run_id,
            {
                "index": index,
                "client_ref": run.get("client_ref") or f"{ti.dag_id}/{ti.run_id}/images/{index}",
                "run_id": run["id"],
                "status": run["status_code"],
                "uri": uri,
                "timings": {
                    "submitted_at": run.get("created_at"),
                    "finished_at": run.get("completed_at"),
                    "detected_at": self.detected_at,
                    "stored_at": _now_iso(),
                },
            },
        )
        return uri
