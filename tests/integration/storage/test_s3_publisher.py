from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image
from synthetic_images import Pictures, image_record

from airflow_provider_flux2.storage import BatchLocation, publisher_for
from airflow_provider_flux2.storage.base import content_hash
from airflow_provider_flux2.storage.publish import object_metadata
from airflow_provider_flux2.storage.report import write_batch_report
from airflow_provider_flux2.storage.s3 import MULTIPART_THRESHOLD, S3Publisher

LOCATION = BatchLocation("catalogue", "scheduled__2026-05-01T00:00:00+00:00", "publish")
REGION = "eu-west-1"


def header(headers: dict, name: str) -> str:
    value = headers[name]
    return value.decode() if isinstance(value, bytes) else value


def keys(s3_admin, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_an_image_lands_under_its_key_with_content_type_and_metadata(aws_env, s3_admin, bucket):
    publisher = publisher_for(f"s3://{bucket}/images")
    data = Pictures.encode(Pictures.scene(1))
    record = image_record(3, prompt="a café at dawn", seed=42, cost_usd="0.030")

    uri = publisher.put_image(LOCATION, 3, data, "image/png", object_metadata(record))

    key = f"images/catalogue/scheduled__2026-05-01T00-00-00Z/publish/00003-{content_hash(data)[:12]}.png"
    assert uri == f"s3://{bucket}/{key}"
    stored = s3_admin.get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "image/png"
    assert stored["Metadata"] == object_metadata(record)
    assert stored["Metadata"]["seed"] == "42"
    assert publisher.get(uri) == data
    assert publisher.metadata(uri) == object_metadata(record)
    assert publisher.head(uri).content_type == "image/png"


def test_non_ascii_metadata_is_stored_as_an_encoded_word(aws_env, s3_admin, bucket):
    publisher = S3Publisher(f"s3://{bucket}")

    uri = publisher.put_named(LOCATION, "x.txt", b"x", "text/plain", {"caption": "crème brûlée"})

    assert publisher.metadata(uri)["caption"] == "=?utf-8?b?Y3LDqG1lIGJyw7tsw6ll?="


def test_a_rerun_overwrites_the_same_key_and_leaves_no_duplicate(aws_env, s3_admin, bucket):
    publisher = publisher_for(f"s3://{bucket}/images")
    data = Pictures.encode(Pictures.scene(2))

    first = publisher.put_image(LOCATION, 0, data, "image/png", {"attempt": "1"})
    second = publisher.put_image(LOCATION, 0, data, "image/png", {"attempt": "2"})

    assert first == second
    assert len(keys(s3_admin, bucket)) == 1
    assert publisher.metadata(second) == {"attempt": "2"}


def test_a_4096_square_png_goes_up_from_its_file_in_parts(aws_env, s3_admin, bucket, tmp_path):
    # Noise does not compress: a 4096×4096 RGB PNG of noise is ≈ 50 MB, several 8 MiB parts.
    pixels = np.random.default_rng(0).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
    source = tmp_path / "big.png"
    Image.fromarray(pixels).save(source, "PNG", compress_level=1)
    size = source.stat().st_size
    publisher = publisher_for(f"s3://{bucket}/images")

    uri = publisher.put_image(LOCATION, 7, source, "image/png", {"seed": "7"})

    info = publisher.head(uri)
    parts = math.ceil(size / MULTIPART_THRESHOLD)
    assert parts >= 5
    assert info.etag.strip('"').endswith(f"-{parts}")  # the ETag of a multipart upload: md5-of-md5s "-N"
    assert (info.size, info.content_type, info.metadata) == (size, "image/png", {"seed": "7"})
    assert content_hash(publisher.get(uri)) == content_hash(source.read_bytes())
    assert uri.endswith(f"00007-{content_hash(source.read_bytes())[:12]}.png")


def test_large_bytes_go_up_in_parts_without_a_temp_file(aws_env, bucket):
    publisher = S3Publisher(f"s3://{bucket}", multipart_threshold=5 * 1024 * 1024)  # S3's smallest part
    data = bytes(np.random.default_rng(1).integers(0, 256, 11 * 1024 * 1024, dtype=np.uint8))

    uri = publisher.put_named(LOCATION, "blob.bin", data, "application/octet-stream")

    assert publisher.head(uri).etag.strip('"').endswith("-3")
    assert publisher.get(uri) == data


def test_small_files_go_up_in_one_put(aws_env, bucket, tmp_path):
    source = tmp_path / "small.png"
    source.write_bytes(Pictures.encode(Pictures.scene(3)))
    publisher = S3Publisher(f"s3://{bucket}")

    uri = publisher.put_image(LOCATION, 0, source, "image/png")

    assert "-" not in publisher.head(uri).etag


def test_a_missing_object_is_file_not_found_like_on_disk(aws_env, bucket):
    publisher = S3Publisher(f"s3://{bucket}")
    uri = f"s3://{bucket}/nothing.png"

    assert not publisher.exists(uri)
    with pytest.raises(FileNotFoundError):
        publisher.get(uri)
    with pytest.raises(FileNotFoundError):
        publisher.head(uri)


def test_other_s3_errors_are_not_disguised_as_missing_objects(aws_env):
    publisher = S3Publisher("s3://no-such-bucket-for-flux")

    with pytest.raises(ClientError, match="NoSuchBucket"):
        publisher.get("s3://no-such-bucket-for-flux/a.png")


def test_credentials_and_endpoint_come_from_the_airflow_connection(isolated_aws, moto_endpoint, bucket, monkeypatch):
    # Nothing in the environment points at moto: only the connection's extras can.
    monkeypatch.setenv(
        "AIRFLOW_CONN_FLUX_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIACONNEXAMPLE",
                "password": "conn-secret",
                "extra": {"endpoint_url": moto_endpoint, "region_name": REGION, "aws_session_token": "conn-token"},
            }
        ),
    )
    publisher = publisher_for(f"s3://{bucket}/via-connection", aws_conn_id="flux_s3")
    sent: list[dict[str, str]] = []
    publisher.client.meta.events.register("before-send.s3.*", lambda request, **_: sent.append(dict(request.headers)))

    uri = publisher.put_image(LOCATION, 0, b"\x89PNG fake", "image/png", {"seed": "1"})

    assert publisher.get(uri) == b"\x89PNG fake"
    authorization = header(sent[0], "Authorization")
    assert "Credential=AKIACONNEXAMPLE/" in authorization
    assert f"/{REGION}/s3/aws4_request" in authorization
    assert header(sent[0], "X-Amz-Security-Token") == "conn-token"


def test_without_a_connection_the_default_chain_is_used(aws_env, bucket):
    publisher = S3Publisher(f"s3://{bucket}")
    sent: list[dict[str, str]] = []
    publisher.client.meta.events.register("before-send.s3.*", lambda request, **_: sent.append(dict(request.headers)))

    publisher.put_named(LOCATION, "a.txt", b"a", "text/plain")

    assert "Credential=AKIAENVEXAMPLE/" in header(sent[0], "Authorization")


def test_the_batch_report_is_written_beside_the_images_on_s3(aws_env, s3_admin, bucket):
    publisher = publisher_for(f"s3://{bucket}/out")
    records = []
    for i in range(3):
        uri = publisher.put_image(LOCATION, i, Pictures.encode(Pictures.scene(i)), "image/png")
        records.append(image_record(i, uri=uri))

    uris = write_batch_report(publisher, LOCATION, records)

    folder = publisher.folder_uri(LOCATION)
    assert uris["gallery_uri"] == f"{folder}/index.html"
    prefix = folder.removeprefix(f"s3://{bucket}/") + "/"
    names = sorted(k.removeprefix(prefix) for k in keys(s3_admin, bucket))
    assert [n for n in names if not n.startswith(("0000", "thumbs/"))] == [
        "contact_sheet.png",
        "index.html",
        "manifest.csv",
        "manifest.json",
    ]
    assert len([n for n in names if n.startswith("thumbs/")]) == 3
    assert publisher.head(uris["gallery_uri"]).content_type == "text/html; charset=utf-8"
    manifest = json.loads(publisher.get(uris["manifest_uri"]))
    assert manifest["summary"]["total_cost_usd"] == "0.090"
    assert Image.open(io.BytesIO(publisher.get(uris["contact_sheet_uri"]))).format == "PNG"
    assert Path(uris["manifest_csv_uri"]).name == "manifest.csv"
