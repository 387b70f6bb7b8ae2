"""Reference images from storage through real servers: s3:// (moto's server), the CLI, the hook and the emulator.

The resolver's own rules (local files, forms, limits) are tested in ``tests/unit/test_references.py``."""

from __future__ import annotations

import io
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from synthetic_images import Pictures

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import build_input
from airflow_provider_flux2.pricing import item_cost
from airflow_provider_flux2.references import (
    HEADER_BYTES,
    PRESIGN_MARGIN,
    ReferenceResolver,
    header_size,
)


class CountingClient:
    """A real boto3 client to moto, counting the bytes of every object read through it."""

    def __init__(self, client):
        self.client = client
        self.ranges: list[str | None] = []
        self.bytes_read = 0
        self.signed = 0

    def get_object(self, **kwargs):
        self.ranges.append(kwargs.get("Range"))
        response = self.client.get_object(**kwargs)
        body = response["Body"].read()
        self.bytes_read += len(body)
        response["Body"] = io.BytesIO(body)
        return response

    def generate_presigned_url(self, *args, **kwargs):
        self.signed += 1
        return self.client.generate_presigned_url(*args, **kwargs)


def _photo(size=(1600, 1200), fmt="jpeg", seed=3) -> bytes:
    return Pictures.encode(Pictures.noise(seed, size), fmt, **({"quality": 95} if fmt == "jpeg" else {}))


@pytest.fixture
def photo_in_s3(s3_admin, bucket) -> tuple[str, bytes]:
    data = _photo()
    s3_admin.put_object(Bucket=bucket, Key="shots/dish.jpg", Body=data, ContentType="image/jpeg")
    return f"s3://{bucket}/shots/dish.jpg", data


def test_s3_reference_is_measured_with_a_ranged_read_not_a_download(s3_admin, photo_in_s3):
    uri, data = photo_in_s3
    assert len(data) > 4 * HEADER_BYTES  # a real photo, much larger than the header read
    client = CountingClient(s3_admin)
    reference = ReferenceResolver(s3_client=client).measure(uri)
    assert (reference.width, reference.height) == (1600, 1200)
    assert reference.billed_mp == 2  # 1,920,000 px
    assert reference.size_bytes == len(data)
    assert client.ranges == [f"bytes=0-{HEADER_BYTES - 1}"]
    assert client.bytes_read == HEADER_BYTES


def test_s3_reference_is_sent_presigned_for_longer_than_the_task_timeout(moto_aws_conn, photo_in_s3):
    uri, data = photo_in_s3
    resolver = ReferenceResolver(aws_conn_id=moto_aws_conn, valid_for=2 * 3600)
    request = build_input("pro", prompt="the dish, as a watercolour", image_urls=[uri], image_size="square_hd")
    wire, references = resolver.resolve(request)
    url = wire.image_urls[0]
    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert int(query["x-amz-expires"]) == 2 * 3600 + PRESIGN_MARGIN
    fetched = httpx.get(url, trust_env=False)  # no AWS credentials: the URL alone is enough
    assert fetched.status_code == 200 and fetched.content == data
    assert request.image_urls == [uri]  # the request as written is untouched (its hash is the identity)
    assert references[0].as_dict() == {"source": uri, "width": 1600, "height": 1200, "billed_mp": 2}


def test_reference_is_priced_at_its_real_size(s3_admin, photo_in_s3):
    uri, _ = photo_in_s3
    request = build_input("pro", prompt="p", image_urls=[uri], image_size="square_hd")
    unmeasured = item_cost("pro", request)
    assert unmeasured.reference_mp == 1  # as written, it cannot be measured: the 1 MP minimum
    wire, _ = ReferenceResolver(s3_client=s3_admin).resolve(request)
    measured = item_cost("pro", wire)
    assert measured.reference_mp == 2
    assert measured.cost == Decimal("0.030") + 2 * Decimal("0.015")


def test_missing_s3_object_is_refused_naming_the_field(s3_admin, bucket):
    with pytest.raises(FluxValidationError) as info:
        ReferenceResolver(s3_client=s3_admin).measure(f"s3://{bucket}/nope.jpg", "image_urls[0]")
    assert info.value.field == "image_urls[0]"
    assert "no such object" in info.value.allowed


def test_s3_prefix_is_not_a_reference(s3_admin, bucket):
    with pytest.raises(FluxValidationError) as info:
        ReferenceResolver(s3_client=s3_admin).measure(f"s3://{bucket}/shots/")
    assert "one object" in info.value.allowed


def test_s3_object_that_is_not_an_image_is_refused(s3_admin, bucket):
    s3_admin.put_object(Bucket=bucket, Key="notes.txt", Body=b"hello" * 100)
    with pytest.raises(FluxValidationError) as info:
        ReferenceResolver(s3_client=s3_admin).measure(f"s3://{bucket}/notes.txt")
    assert "header can be read" in info.value.allowed


def test_jpeg_with_a_large_exif_block_is_read_further(s3_admin, bucket):
    plain = _photo((800, 600))
    # Two 60 KB APP2 segments (as a camera's EXIF and ICC blocks can be) push the frame header past the first read.
    segment = b"\xff\xe2" + (60_002).to_bytes(2, "big") + b"\0" * 60_000
    data = plain[:2] + segment * 2 + plain[2:]
    s3_admin.put_object(Bucket=bucket, Key="exif.jpg", Body=data)
    assert header_size(data[:HEADER_BYTES]) is None
    assert header_size(data) == (800, 600)
    client = CountingClient(s3_admin)
    reference = ReferenceResolver(s3_client=client).measure(f"s3://{bucket}/exif.jpg")
    assert (reference.width, reference.height) == (800, 600)
    assert len(client.ranges) == 2


def test_aws_connection_is_used_for_s3_references(moto_aws_conn, s3_admin, photo_in_s3):
    uri, _ = photo_in_s3
    reference = ReferenceResolver(aws_conn_id=moto_aws_conn).measure(uri)
    assert (reference.width, reference.height) == (1600, 1200)


def test_without_a_connection_boto3s_default_chain_is_used(aws_env, photo_in_s3):
    uri, _ = photo_in_s3
    resolver = ReferenceResolver()
    assert resolver.measure(uri).billed_mp == 2
    assert "X-Amz-Signature=" in resolver.wire_url(uri)


def test_one_photo_used_by_many_images_is_read_and_signed_once(s3_admin, photo_in_s3):
    uri, _ = photo_in_s3
    client = CountingClient(s3_admin)
    resolver = ReferenceResolver(s3_client=client)
    urls = {
        resolver.resolve(build_input("pro", prompt=f"style {i}", image_urls=[uri]))[0].image_urls[0] for i in range(5)
    }
    assert len(client.ranges) == 1
    assert len(urls) == 1


# -- the CLI -----------------------------------------------------------------------------------------------


def _flux2(*args: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_flux2.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_flux2_estimate_prices_an_s3_reference_at_its_real_size(moto_aws_conn, photo_in_s3):
    uri, _ = photo_in_s3
    result = _flux2(
        "estimate", "--count", "4", "--size", "square_hd", "--reference", uri, "--aws-conn-id", moto_aws_conn
    )
    assert result.returncode == 0, result.stderr
    assert f"reference {uri}: 1600x1200, billed as 2 MP per image" in result.stderr
    assert "total: 4 image(s), 12 MP, $0.240" in result.stdout


def test_flux2_estimate_refuses_a_missing_local_reference_before_pricing(tmp_path):
    result = _flux2("estimate", "--reference", str(tmp_path / "nope.jpg"))
    assert result.returncode == 1
    assert "image_urls[0]" in result.stderr and "nope.jpg" in result.stderr
    assert result.stdout == ""


# -- a re-plan sends the same presigned URL (so a repeated Idempotency-Key replays, not 409s) ----------


class StateStore:
    """What ReferenceResolver needs of Airflow's ``task_state_store``: ``get`` and ``set`` of JSON values."""

    def __init__(self):
        self.values: dict = {}

    def get(self, key):
        return self.values.get(key)

    def set(self, key, value):
        import json

        self.values[key] = json.loads(json.dumps(value))  # stored as JSON, as the real store does


def test_a_replan_resends_the_remembered_url_and_the_api_replays(emulator, moto_aws_conn, photo_in_s3):
    from airflow_provider_flux2.exceptions import FluxConflictError
    from airflow_provider_flux2.hooks.flux import FluxHook

    uri, _ = photo_in_s3
    request = build_input("pro", prompt="the dish, as a watercolour", image_urls=[uri], image_size="square")
    store, hook, key = StateStore(), FluxHook(), "flux2-test-replan-key"
    first, _ = ReferenceResolver(aws_conn_id=moto_aws_conn, memory=store).resolve(request)
    run = hook.submit(first, model="pro", idempotency_key=key)
    # The worker died before recording the run: the retry plans again, in a new process.
    again, _ = ReferenceResolver(aws_conn_id=moto_aws_conn, memory=store).resolve(request)
    assert again.image_urls == first.image_urls
    assert hook.submit(again, model="pro", idempotency_key=key).id == run.id
    assert len(emulator.ledger()["entries"]) <= 1  # replayed: never billed twice
    # Without the memory, the URL is signed anew (later, so differently: here a different expiry stands
    # in for the later signing time, within the same second) and the API refuses the changed body.
    fresh, _ = ReferenceResolver(aws_conn_id=moto_aws_conn, valid_for=3 * 3600).resolve(request)
    assert fresh.image_urls != first.image_urls
    with pytest.raises(FluxConflictError):
        hook.submit(fresh, model="pro", idempotency_key=key)


def test_a_remembered_url_close_to_expiry_is_signed_again(s3_admin, photo_in_s3):
    uri, _ = photo_in_s3
    client, store, now = CountingClient(s3_admin), StateStore(), [1_000_000.0]
    url = ReferenceResolver(s3_client=client, memory=store, clock=lambda: now[0]).wire_url(uri)
    assert store.values["flux/references"][uri] == {"url": url, "expires_at": now[0] + 6 * 3600 + PRESIGN_MARGIN}
    now[0] += 6 * 3600  # an hour of validity left: still sent again
    assert ReferenceResolver(s3_client=client, memory=store, clock=lambda: now[0]).wire_url(uri) == url
    assert client.signed == 1
    now[0] += 1  # less than an hour left: a new signature
    ReferenceResolver(s3_client=client, memory=store, clock=lambda: now[0]).wire_url(uri)
    assert client.signed == 2
    assert store.values["flux/references"][uri]["expires_at"] == now[0] + 6 * 3600 + PRESIGN_MARGIN


# -- estimate() and the hook measure storage references on their own ---------------------------------


def test_estimate_reads_each_s3_reference_once_through_the_given_resolver(s3_admin, photo_in_s3):
    from airflow_provider_flux2.pricing import estimate

    uri, _ = photo_in_s3
    client = CountingClient(s3_admin)
    plan = [{"prompt": f"style {i}", "image_urls": [uri]} for i in range(5)]
    result = estimate(plan, references=ReferenceResolver(s3_client=client))
    assert [item.reference_mp for item in result.items] == [2] * 5
    assert len(client.ranges) == 1


def test_the_hook_sends_local_and_s3_references_fetchable_and_billed_at_their_size(
    emulator, moto_aws_conn, photo_in_s3, tmp_path
):
    from airflow_provider_flux2.hooks.flux import FluxHook

    uri, _ = photo_in_s3  # 1600x1200: 2 MP
    local = tmp_path / "snap.png"
    local.write_bytes(_photo((1200, 1000), "png"))  # 1,200,000 px: 2 MP
    hook = FluxHook(aws_conn_id=moto_aws_conn)
    assert hook.estimate([{"prompt": "a dish", "image_urls": [uri, str(local)]}]).items[0].reference_mp == 4
    run, image = hook.generate("the dish, as a watercolour", image_urls=[uri, f"file://{local}"], image_size="square")
    sent = run.input["image_urls"]
    assert sent[0].startswith("http://") and "X-Amz-Signature" in sent[0] and sent[1].startswith("data:image/png")
    (entry,) = emulator.ledger()["entries"]
    assert Decimal(entry["cost"]) == Decimal("0.030") + 4 * Decimal("0.015") == Decimal(str(run.cost))
    assert image.width == 512
