from __future__ import annotations

import hashlib

import pytest

from airflow_provider_flux2.storage import BatchLocation, LocalPublisher, publisher_for, uri_reader
from airflow_provider_flux2.storage.base import (
    MAX_METADATA_BYTES,
    ascii_metadata,
    file_hash,
    image_name,
    safe_segment,
)


def test_keys_follow_dag_run_task_index_and_content_hash():
    location = BatchLocation("nightly catalogue", "manual__2026-01-01T00:00:00+00:00", "publish")
    publisher = LocalPublisher("file:///data/images")

    uri = publisher.uri_for(location, image_name(7, "0123456789abcdef" * 4, "image/png"))

    assert uri == "file:///data/images/nightly_catalogue/manual__2026-01-01T00-00-00Z/publish/00007-0123456789ab.png"


def test_a_mapped_task_gets_its_own_folder():
    location = BatchLocation("d", "r", "generate", map_index=3)

    assert location.parts() == ["d", "r", "generate", "3"]


@pytest.mark.parametrize(("text", "segment"), [("a b/c", "a_b_c"), ("", "_"), ("ok-1.2", "ok-1.2")])
def test_segments_are_safe_on_disk_and_on_s3(text, segment):
    assert safe_segment(text) == segment


def test_file_hash_equals_the_hash_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 9000  # more than one read chunk
    path = tmp_path / "x.bin"
    path.write_bytes(data)

    assert file_hash(path) == hashlib.sha256(data).hexdigest()


def test_metadata_keys_are_lower_cased_and_values_stringified():
    assert ascii_metadata({"Seed": 42, "Cost-USD": "0.030", "none": None}) == {
        "seed": "42",
        "cost-usd": "0.030",
        "none": "",
    }


def test_non_ascii_metadata_values_are_rfc2047_encoded_like_s3_does():
    from email.header import decode_header

    value = ascii_metadata({"title": "café ☕\nnew line"})["title"]

    assert value.isascii() and value.startswith("=?utf-8?b?")
    [(raw, charset)] = decode_header(value)
    assert raw.decode(charset) == "café ☕\nnew line"


@pytest.mark.parametrize("key", ["has space", "ümlaut", "-leading", ""])
def test_metadata_keys_outside_the_safe_set_are_refused(key):
    with pytest.raises(ValueError, match="Metadata key"):
        ascii_metadata({key: "x"})


def test_metadata_over_the_s3_limit_is_refused_before_any_upload():
    with pytest.raises(ValueError, match=str(MAX_METADATA_BYTES)):
        ascii_metadata({"big": "x" * MAX_METADATA_BYTES})


def test_publisher_for_picks_the_store_from_the_uri(tmp_path):
    assert isinstance(publisher_for(str(tmp_path)), LocalPublisher)
    assert publisher_for(tmp_path.as_uri()).base_uri == tmp_path.as_uri()
    assert type(publisher_for("s3://bucket/prefix")).__name__ == "S3Publisher"
    with pytest.raises(ValueError, match=r"Unsupported output_uri .*no filesystem is registered for gs://"):
        publisher_for("gs://bucket/prefix")


def test_uri_reader_reads_from_any_folder(tmp_path):
    staging, published = LocalPublisher(str(tmp_path / "a")), LocalPublisher(str(tmp_path / "b"))
    first = staging.put_named(BatchLocation("d", "r", "t"), "x.png", b"staged", "image/png")
    second = published.put_named(BatchLocation("d", "r", "t"), "x.png", b"published", "image/png")
    read = uri_reader()

    assert (read(first), read(second)) == (b"staged", b"published")
    with pytest.raises(FileNotFoundError):
        read(f"{tmp_path.as_uri()}/missing.png")
