"""Storage that fails on publish: S3 throttling (503 ``SlowDown``) and a bucket policy that changes
mid-run (403 ``AccessDenied``), injected by a proxy in front of moto's server; a local volume that fills
up (a real tmpfs of 64 or 128 KiB where the test may mount one, and everywhere a volume that refuses writes
past N bytes). Uploads are retried by the AWS SDK alone; what runs out fails the task with the object,
the bucket (or the path and the free space) and the cause; a retry stores only what is missing and
the API bills nothing again."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np
import pytest
from airflow.sdk import DAG
from synthetic_images import Pictures, image_record

from airflow_provider_flux2.exceptions import FluxStorageError
from airflow_provider_flux2.jobs import is_collect_retryable
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.storage import BatchLocation, LocalPublisher, local, publisher_for
from airflow_provider_flux2.storage.base import content_hash
from airflow_provider_flux2.storage.local import META_DIR
from airflow_provider_flux2.storage.publish import publish_records
from airflow_provider_flux2.storage.s3 import S3Publisher

LOCATION = BatchLocation("catalogue", "scheduled__2026-05-01", "publish")
REGION = "eu-west-1"
SECRET = "faults-secret-9d1e"
#: An image's key ends in ``/<index>-<id>-<hash>.<ext>`` (``00003-…``); its thumbnail's is under ``thumbs/``.
IMAGE_KEY = re.compile(r"(?<!/thumbs)/\d{5}-[^/]*\.(?:jpg|png)$")


# -- a fault-injecting proxy in front of moto's server --------------------------------------------


@dataclass
class Fault:
    """Answer up to ``times`` object PUTs whose path matches ``path`` with ``status`` and an S3 error."""

    status: int
    code: str
    message: str
    path: re.Pattern[str] = re.compile("")
    times: int | None = None  # None: every time


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    injected: bool


@dataclass
class S3Faults:
    """What the proxy does and saw. PUTs of objects (``PutObject``, ``UploadPart``) meet the faults."""

    url: str = ""
    faults: list[Fault] = field(default_factory=list)
    seen: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, status: int, code: str, message: str, *, path: str = "", times: int | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(status, code, message, re.compile(path), times))

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def fault_for(self, method: str, path: str) -> Fault | None:
        if method != "PUT" or urlparse(path).path.strip("/").count("/") < 1:  # an object, not a bucket
            return None
        with self.lock:
            for fault in self.faults:
                if fault.path.search(urlparse(path).path) and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def puts(self, *, injected: bool | None = None, path: re.Pattern[str] = IMAGE_KEY) -> list[str]:
        """Object paths PUT through the proxy (image keys by default), answered by a fault or by moto."""
        with self.lock:
            return [
                urlparse(e.path).path
                for e in self.seen
                if e.method == "PUT" and path.search(urlparse(e.path).path) and injected in (None, e.injected)
            ]


_HOP_BY_HOP = {"connection", "keep-alive", "expect", "transfer-encoding", "proxy-connection", "te", "upgrade"}


def _handler(faults: S3Faults, upstream: str) -> type[BaseHTTPRequestHandler]:
    target = urlparse(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" answered as S3 does

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, length: str | None = None) -> None:
            self.send_response_only(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", length if length is not None else str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            body = self._body()
            fault = faults.fault_for(self.command, self.path)
            if fault is not None:
                request_id = uuid.uuid4().hex[:16].upper()
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{fault.code}</Code><Message>{fault.message}</Message>"
                    f"<RequestId>{request_id}</RequestId><HostId>faults</HostId></Error>"
                ).encode()
                with faults.lock:  # noted before the client can read the answer and the test look
                    faults.seen.append(Exchange(self.command, self.path, fault.status, True))
                self._answer(fault.status, [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)], xml)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                with faults.lock:
                    faults.seen.append(Exchange(self.command, self.path, response.status, False))
                self._answer(response.status, kept, answer, length or ("0" if self.command == "HEAD" else None))
            finally:
                connection.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler


@pytest.fixture
def s3_faults(moto_endpoint) -> Iterator[S3Faults]:
    """A proxy on 127.0.0.1 that forwards to moto's server, except the PUTs a test tells it to fail."""
    faults = S3Faults()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(faults, moto_endpoint))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="s3-faults", daemon=True)
    thread.start()
    faults.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield faults
    finally:
        server.shutdown()
        server.server_close()


def aws_connection(monkeypatch, endpoint: str, conn_id: str = "aws_faults", **config_kwargs) -> str:
    """An Airflow AWS connection to ``endpoint``, with botocore ``config_kwargs`` in its extras when given."""
    extra: dict = {"endpoint_url": endpoint, "region_name": REGION}
    if config_kwargs:
        extra["config_kwargs"] = config_kwargs
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "aws", "login": "AKIAFAULTS", "password": SECRET, "extra": extra}),
    )
    return conn_id


SLOW_DOWN = (503, "SlowDown", "Please reduce your request rate.")
ACCESS_DENIED = (403, "AccessDenied", "Access Denied")


# -- S3: the SDK's retries, and the error when they run out ---------------------------------------


def test_slowdown_is_ridden_out_by_the_sdks_standard_retry_mode(isolated_aws, s3_faults, monkeypatch, bucket):
    conn_id = aws_connection(monkeypatch, s3_faults.url)
    s3_faults.inject(*SLOW_DOWN, times=2)
    publisher = publisher_for(f"s3://{bucket}/night", aws_conn_id=conn_id)
    data = Pictures.encode(Pictures.scene(1))

    uri = publisher.put_image(LOCATION, 1, data, "image/png", {"seed": "1"})

    assert publisher.client.meta.config.retries == {"mode": "standard"}  # 3 attempts in all, the SDK's default
    assert publisher.get(uri) == data
    assert len(s3_faults.puts(injected=True)) == 2 and len(s3_faults.puts(injected=False)) == 1


def test_the_retry_mode_and_attempts_come_from_the_aws_connection(isolated_aws, s3_faults, monkeypatch, bucket):
    conn_id = aws_connection(monkeypatch, s3_faults.url, retries={"mode": "adaptive", "max_attempts": 5})
    s3_faults.inject(*SLOW_DOWN, times=2)
    publisher = publisher_for(f"s3://{bucket}/night", aws_conn_id=conn_id)

    uri = publisher.put_named(LOCATION, "a.txt", b"a", "text/plain")

    # botocore's max_attempts counts retries: 5 of them, 6 attempts in all.
    assert publisher.client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 6}
    assert publisher.get(uri) == b"a"
    assert len(s3_faults.puts(injected=True, path=re.compile(r"a\.txt"))) == 2


def test_without_retry_settings_in_the_connection_boto3s_own_retry_mode_applies(
    isolated_aws, s3_faults, monkeypatch, bucket
):
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    conn_id = aws_connection(monkeypatch, s3_faults.url)

    assert publisher_for(f"s3://{bucket}", aws_conn_id=conn_id).client.meta.config.retries == {"mode": "adaptive"}


def test_a_connection_that_sets_only_max_attempts_keeps_a_mode_that_backs_off(
    isolated_aws, s3_faults, monkeypatch, bucket
):
    conn_id = aws_connection(monkeypatch, s3_faults.url, retries={"max_attempts": 1})
    publisher = publisher_for(f"s3://{bucket}/night", aws_conn_id=conn_id)

    assert publisher.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}


def test_slowdown_past_the_retries_fails_naming_the_object_the_bucket_and_the_cause(
    isolated_aws, s3_faults, monkeypatch, bucket
):
    conn_id = aws_connection(monkeypatch, s3_faults.url, retries={"max_attempts": 1})
    s3_faults.inject(*SLOW_DOWN)
    publisher = publisher_for(f"s3://{bucket}/night", aws_conn_id=conn_id)
    data = Pictures.encode(Pictures.scene(2))

    with pytest.raises(FluxStorageError) as raised:
        publisher.put_image(LOCATION, 2, data, "image/png")

    error = raised.value
    key = f"night/catalogue/scheduled__2026-05-01/publish/00002-{content_hash(data)[:12]}.png"
    assert (error.bucket, error.key, error.code) == (bucket, key, "SlowDown")
    assert error.uri == f"s3://{bucket}/{key}"
    text = str(error)
    assert f"{key!r} in S3 bucket {bucket!r}" in text
    assert "SlowDown: Please reduce your request rate." in text
    assert "HTTP 503, 2 attempts of 2, AWS SDK retry mode 'standard'" in text
    assert '"mode": "adaptive"' in text  # what to change
    assert SECRET not in text and "AKIAFAULTS" not in text
    assert len(s3_faults.puts(injected=True)) == 2  # the SDK's attempts, and no loop of ours on top
    assert not is_collect_retryable(error)  # collection does not try it a third time either


def test_access_denied_fails_at_once_naming_the_object_and_the_permission(isolated_aws, s3_faults, monkeypatch, bucket):
    conn_id = aws_connection(monkeypatch, s3_faults.url)
    s3_faults.inject(*ACCESS_DENIED)
    publisher = publisher_for(f"s3://{bucket}/night", aws_conn_id=conn_id)

    with pytest.raises(FluxStorageError) as raised:
        publisher.put_named(LOCATION, "manifest.json", b"{}", "application/json")

    text = str(raised.value)
    assert "'night/catalogue/scheduled__2026-05-01/publish/manifest.json'" in text and repr(bucket) in text
    assert "AccessDenied: Access Denied (HTTP 403, 1 attempt of 3" in text
    assert "s3:PutObject" in text
    assert len(s3_faults.puts(injected=True, path=re.compile("manifest"))) == 1  # a 403 is never retried


def test_a_multipart_upload_out_of_retries_fails_naming_the_object_and_leaves_nothing(
    isolated_aws, s3_faults, monkeypatch, bucket, tmp_path, s3_admin
):
    conn_id = aws_connection(monkeypatch, s3_faults.url, retries={"max_attempts": 1})
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(np.random.default_rng(3).integers(0, 256, 11 * 1024 * 1024, dtype=np.uint8)))
    publisher = S3Publisher(f"s3://{bucket}/night", aws_conn_id=conn_id, multipart_threshold=5 * 1024 * 1024)
    s3_faults.inject(*SLOW_DOWN, path=r"big\.bin")  # every part of it (PUT …?partNumber=N&uploadId=…)

    with pytest.raises(FluxStorageError) as raised:
        publisher.put_named(LOCATION, "big.bin", source, "application/octet-stream")

    assert raised.value.key == "night/catalogue/scheduled__2026-05-01/publish/big.bin"
    assert "SlowDown" in str(raised.value) and repr(bucket) in str(raised.value)
    assert not publisher.exists(f"s3://{bucket}/{raised.value.key}")
    assert not s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads")  # aborted, nothing left behind


def test_a_publish_retry_after_a_failed_upload_uploads_only_what_is_missing(
    isolated_aws, s3_faults, monkeypatch, bucket, tmp_path
):
    conn_id = aws_connection(monkeypatch, s3_faults.url, retries={"max_attempts": 1})
    staging = LocalPublisher((tmp_path / "staging").as_uri())
    records = []
    for index in range(5):
        uri = staging.put_image(
            BatchLocation("d", "r", "generate"), index, Pictures.encode(Pictures.scene(index)), "image/png"
        )
        records.append(image_record(index, uri=uri))
    destination = publisher_for(f"s3://{bucket}/published", aws_conn_id=conn_id)
    s3_faults.inject(*SLOW_DOWN, path=r"/00003-")  # the bucket throttles one key past the retries

    with pytest.raises(FluxStorageError, match="00003-"):
        publish_records(records, destination, LOCATION, reader=staging.get)
    stored_first = s3_faults.puts(injected=False)
    s3_faults.clear()
    published = publish_records(records, destination, LOCATION, reader=staging.get)  # the task's retry

    assert [Path(p).name[:5] for p in stored_first] == ["00000", "00001", "00002"]
    uploaded = s3_faults.puts(injected=False)
    assert len(uploaded) == len(set(uploaded)) == 5  # each image uploaded once, over both tries
    assert all(destination.get(r.uri) == staging.get(o.uri) for r, o in zip(published, records, strict=True))


# -- the generate task: a failed store costs a try, never a payment ----------------------------------


def ledger_total(emulator) -> Decimal:
    return sum((Decimal(e["cost"]) for e in emulator.ledger()["entries"]), Decimal("0"))


def generate_dag(name: str, operator: type[FluxGenerateImageOperator] = FluxGenerateImageOperator, **kwargs) -> DAG:
    with DAG(f"faults_{name}_{uuid.uuid4().hex[:6]}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        operator(
            task_id="generate",
            prompts=[f"a storage fault {i}" for i in range(6)],
            image_size="square",
            poll_interval=0.02,
            progress_interval=0,
            max_in_flight=6,
            retries=1,
            retry_delay=timedelta(seconds=0),
            **kwargs,
        )
    return dag


def try_numbers(dag_run) -> list[int]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return [ti.try_number for ti in dag_run.get_task_instances(session=session)]


@pytest.mark.parametrize(
    ("fault", "times"),
    [(SLOW_DOWN, 4), (ACCESS_DENIED, 2)],  # two images: SlowDown on both of the SDK's 2 attempts each
    ids=["slowdown-past-the-retries", "access-denied"],
)
def test_a_generate_task_whose_uploads_fail_is_retried_storing_only_what_is_missing_and_billing_nothing(
    emulator, run_dag, xcom, isolated_aws, s3_faults, monkeypatch, bucket, s3_admin, capfd, fault, times
):
    conn_id = aws_connection(monkeypatch, s3_faults.url, retries={"mode": "standard", "max_attempts": 1})
    s3_faults.inject(*fault, path=r"/0000[24]-", times=times)  # images #2 and #4, on the first try only
    dag = generate_dag("s3", output_uri=f"s3://{bucket}/night", aws_conn_id=conn_id, deferrable=True)

    dr = run_dag(dag)

    assert dr.state == "success" and try_numbers(dr) == [2]
    log = capfd.readouterr().out
    assert re.search(rf"Could not store '[^']*/0000[24]-[^']*' in S3 bucket '{bucket}': {fault[1]}", log)
    assert "4 object(s) were intact, 0 missing or changed" in log  # the retry read what the first try stored
    # The failed try wrote its manifest before failing: the two unstored images are billed (NOT_STORED).
    assert "The failed try's manifest: " in log and "($0.180 billed for 4 stored image(s)" in log
    assert len(s3_faults.puts(injected=True)) == times
    uploaded = s3_faults.puts(injected=False)
    assert len(uploaded) == len(set(uploaded)) == 6  # every image uploaded once over both tries
    assert emulator.stats()["runs_created"] == 6  # the retry replayed the runs: the same keys
    assert len(emulator.ledger()["entries"]) == 6  # billed once each
    records = xcom(dr, "generate")
    assert [r["status"] for r in records] == ["succeeded"] * 6
    assert sum(Decimal(r["cost_usd"]) for r in records) == ledger_total(emulator) == Decimal("0.180")
    for record in records:
        key = record["uri"].removeprefix(f"s3://{bucket}/")
        assert content_hash(s3_admin.get_object(Bucket=bucket, Key=key)["Body"].read()) == record["content_hash"]


# -- a local volume that fills up ------------------------------------------------------------------


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


class _Overlay:
    """A module as ``local.py`` sees it: the real one, with a few names replaced."""

    def __init__(self, module: object, **replaced: object) -> None:
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)


class _CappedFile:
    def __init__(self, file, volume: CappedVolume) -> None:
        self._file = file
        self._volume = volume

    def write(self, data) -> int:
        with self._volume.lock:
            room = self._volume.free()
            if len(data) > room:  # write what fits, then fail, as a full disk does
                self._file.write(data[: max(room, 0)])
                self._file.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written = self._file.write(data)
            self._file.flush()  # on the volume now, so the next write sees it
            return written

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self) -> _CappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


class CappedVolume:
    """A folder the local publisher sees as a volume of ``capacity`` bytes: a write past it stores what
    fits and fails with ``ENOSPC``, and ``shutil.disk_usage`` reports the same figures. Runs anywhere."""

    def __init__(self, root: Path, capacity: int, monkeypatch) -> None:
        self.root = root
        self.capacity = capacity
        self.lock = threading.RLock()
        monkeypatch.setattr(local, "os", _Overlay(os, fdopen=self._fdopen))
        monkeypatch.setattr(local, "shutil", _Overlay(shutil, disk_usage=self._disk_usage))

    def used(self) -> int:
        total = 0
        for path in self.root.rglob("*"):
            with contextlib.suppress(FileNotFoundError):  # a temporary file renamed or removed meanwhile
                total += path.stat().st_size if path.is_file() else 0
        return total

    def free(self) -> int:
        return max(0, self.capacity - self.used())

    def grow(self) -> None:
        self.capacity = 64 * 1024 * 1024

    def _fdopen(self, fd: int, *args, **kwargs) -> _CappedFile:
        return _CappedFile(os.fdopen(fd, *args, **kwargs), self)

    def _disk_usage(self, path) -> DiskUsage:
        used = self.used()
        return DiskUsage(self.capacity, used, max(0, self.capacity - used))


class TmpfsVolume:
    """A real tmpfs of ``capacity`` bytes mounted on ``root`` (root only; the test is skipped elsewhere)."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root; the capped volume covers this elsewhere")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={capacity}", "tmpfs", str(root)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    def free(self) -> int:
        return shutil.disk_usage(self.root).free

    def grow(self) -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(self.root)], check=True)

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.root)], check=False)


@pytest.fixture(params=["capped", "tmpfs"])
def small_volume(request, tmp_path, monkeypatch):
    """``small_volume(capacity)`` → a volume of that many bytes: capped (everywhere) or a real tmpfs."""
    mounted: list[TmpfsVolume] = []

    def make(capacity: int):
        root = tmp_path / "volume"
        root.mkdir()
        if request.param == "capped":
            return CappedVolume(root, capacity, monkeypatch)
        mounted.append(TmpfsVolume(root, capacity))
        return mounted[-1]

    yield make
    for volume in mounted:
        volume.unmount()


def leftovers(root: Path) -> list[Path]:
    """Temporary files (``.<name>.<random>``) anywhere under ``root``: there must be none."""
    return [p for p in root.rglob(".*") if p.is_file()]


def visible_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("[0-9]" * 5 + "-*") if META_DIR not in p.parts and "thumbs" not in p.parts)


def noise_png(seed: int) -> bytes:
    return Pictures.encode(Pictures.noise(seed, size=(96, 96)))  # ≈ 28 KB: noise does not compress


def test_a_full_volume_fails_naming_the_path_and_the_free_space_and_leaves_nothing_half_written(small_volume):
    volume = small_volume(128 * 1024)
    publisher = LocalPublisher(volume.root.as_uri())
    written: dict[str, bytes] = {}

    with pytest.raises(FluxStorageError) as raised:
        for index in range(20):
            data = noise_png(index)
            written[publisher.put_image(LOCATION, index, data, "image/png")] = data

    error = raised.value
    assert 2 <= len(written) < 20
    assert error.code == "ENOSPC" and error.uri.startswith(volume.root.as_uri())
    assert error.free_bytes == volume.free() < len(noise_png(len(written)))
    assert str(error).startswith(f"Could not write {local.path_of(error.uri)}: No space left on device")
    assert f"({error.free_bytes:,} bytes free on its volume)" in str(error)
    assert not leftovers(volume.root)
    assert not local.path_of(error.uri).exists()
    assert {p.as_uri(): p.read_bytes() for p in visible_images(volume.root)} == written  # each one whole
    assert all(local.sidecar_of(local.path_of(uri)).is_file() for uri in written)  # and with its metadata
    assert not is_collect_retryable(error)  # a full disk is not tried again in a few seconds


def test_an_image_whose_metadata_does_not_fit_is_taken_away_too(tmp_path, monkeypatch):
    data = noise_png(1)
    root = tmp_path / "volume"
    root.mkdir()
    CappedVolume(root, len(data) + 10, monkeypatch)  # the image fits; its sidecar does not
    publisher = LocalPublisher(root.as_uri())

    with pytest.raises(FluxStorageError, match=re.escape(f"/{META_DIR}/")):
        publisher.put_image(LOCATION, 1, data, "image/png", {"seed": "1"})

    assert not visible_images(root) and not leftovers(root)


def test_an_overwrite_that_does_not_fit_leaves_the_earlier_version_whole(tmp_path, monkeypatch):
    root = tmp_path / "volume"
    root.mkdir()
    volume = CappedVolume(root, 40 * 1024, monkeypatch)
    publisher = LocalPublisher(root.as_uri())
    uri = publisher.put_named(LOCATION, "manifest.json", b'{"images": 1}', "application/json")
    volume.capacity = volume.used() + 100

    with pytest.raises(FluxStorageError, match=r"manifest\.json"):
        publisher.put_named(LOCATION, "manifest.json", b"x" * 4096, "application/json")

    assert publisher.get(uri) == b'{"images": 1}'
    assert publisher.head(uri).content_type == "application/json"
    assert not leftovers(root)


def test_a_generate_task_on_a_full_volume_is_retried_storing_only_what_is_missing_and_billing_nothing(
    emulator, run_dag, xcom, small_volume, capfd
):
    volume = small_volume(64 * 1024)  # two of the six ≈ 20 KB images, with their metadata
    first_try: dict[str, int] = {}

    class GrowsItsVolumeOnRetry(FluxGenerateImageOperator):
        """Someone frees space before the retry; what the first try stored is noted (its inodes)."""

        def execute(self, context):
            if context["ti"].try_number > 1:
                first_try.update({p.name: p.stat().st_ino for p in visible_images(volume.root)})
                volume.grow()
            return super().execute(context)

    dag = generate_dag("disk", GrowsItsVolumeOnRetry, output_uri=volume.root.as_uri(), deferrable=False)

    dr = run_dag(dag)

    assert dr.state == "success" and try_numbers(dr) == [2]
    log = capfd.readouterr().out
    assert re.search(r"Could not write \S+: No space left on device \([\d,]+ bytes free on its volume\)", log)
    intact = re.search(r"(\d+) object\(s\) were intact, 0 missing or changed", log)
    assert intact and int(intact.group(1)) == len(first_try)
    images = visible_images(volume.root)
    assert len(images) == 6 and not leftovers(volume.root)
    assert all(p.stat().st_ino == first_try[p.name] for p in images if p.name in first_try)  # not written again
    assert emulator.stats()["runs_created"] == 6 and len(emulator.ledger()["entries"]) == 6  # billed once
    records = xcom(dr, "generate")
    assert [r["status"] for r in records] == ["succeeded"] * 6
    assert sorted(content_hash(p.read_bytes()) for p in images) == sorted(r["content_hash"] for r in records)
    assert sum(Decimal(r["cost_usd"]) for r in records) == ledger_total(emulator) == Decimal("0.180")
