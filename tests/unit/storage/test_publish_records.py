from __future__ import annotations

import hashlib

import pytest
from synthetic_images import Pictures, image_record

from airflow_provider_flux2.models import CheckVerdict
from airflow_provider_flux2.storage import BatchLocation, LocalPublisher
from airflow_provider_flux2.storage.base import content_hash
from airflow_provider_flux2.storage.local import path_of
from airflow_provider_flux2.storage.publish import CONTENT_SHA256, content_type_of, object_metadata, publish_records

OK = CheckVerdict(check="size", passed=True, reason="is 256×192")
BAD = CheckVerdict(check="size", passed=False, reason="is 200×192, expected 256×192")


@pytest.fixture
def stores(tmp_path):
    staging = LocalPublisher((tmp_path / "staging").as_uri())
    destination = LocalPublisher((tmp_path / "published").as_uri())
    return staging, destination


def staged(staging, index, **fields):
    data = Pictures.encode(Pictures.scene(index))
    uri = staging.put_image(BatchLocation("d", "r", "generate"), index, data, "image/png")
    return image_record(index, uri=uri, **fields), data


def test_object_metadata_traces_and_prices_the_image_without_the_prompt():
    record = image_record(4, prompt="a secret product launch", seed=99, cost_usd="0.045", billed_mp=2)

    metadata = object_metadata(record)

    assert metadata == {
        "prompt-sha256": hashlib.sha256(b"a secret product launch").hexdigest(),
        "seed": "99",
        "model": "black-forest-labs/flux-2-pro",
        "billed-mp": "2",
        "cost-usd": "0.045",
        "index": "4",
        "attempt": "1",
        "run-id": "run-4",
    }
    assert "secret" not in "".join(metadata.values())


def test_the_content_type_comes_from_the_record_or_its_format():
    assert content_type_of(image_record(0, output_format="jpeg")) == "image/jpeg"
    assert content_type_of(image_record(0, content_type="image/png", output_format="jpeg")) == "image/png"


def test_only_images_that_passed_are_published_with_their_metadata(stores):
    staging, destination = stores
    good, data = staged(staging, 0, checks=[OK])
    bad, _ = staged(staging, 1, checks=[BAD])
    failed = image_record(2, status="failed", uri=None, cost_usd="0")
    location = BatchLocation("d", "r", "publish")

    out = publish_records([good, bad.to_xcom(), failed], destination, location, reader=staging.get)

    assert out[0].uri == destination.uri_for(location, f"00000-{content_hash(data)[:12]}.png")
    assert destination.get(out[0].uri) == data
    assert destination.metadata(out[0].uri)["seed"] == str(good.seed)
    assert (out[0].content_hash, out[0].size_bytes, out[0].content_type) == (content_hash(data), len(data), "image/png")
    assert out[0].timings.stored_at is not None
    assert out[1] == bad and out[2] == failed  # untouched: the manifest still shows where they were


def test_an_image_already_at_its_destination_key_is_not_read_or_copied_again(stores):
    _, destination = stores
    location = BatchLocation("d", "r", "generate")
    data = Pictures.encode(Pictures.scene(5))
    uri = destination.put_image(location, 0, data, "image/png")
    record = image_record(0, uri=uri, content_hash=content_hash(data), checks=[OK])

    def reader(uri: str) -> bytes:
        raise AssertionError(f"read {uri}")

    assert publish_records([record], destination, location, reader=reader) == [record]


def test_a_retry_copies_only_what_an_earlier_try_did_not_publish(stores):
    staging, destination = stores
    records = [staged(staging, i, checks=[OK])[0] for i in range(3)]
    location = BatchLocation("d", "r", "publish")
    first = publish_records(records[:2], destination, location, reader=staging.get)  # the store failed on #2
    inodes = {r.uri: path_of(r.uri).stat().st_ino for r in first}

    again = publish_records(records, destination, location, reader=staging.get)

    assert [r.uri for r in again[:2]] == [r.uri for r in first]
    assert all(path_of(uri).stat().st_ino == inode for uri, inode in inodes.items())  # not written again
    assert destination.metadata(again[2].uri)[CONTENT_SHA256] == again[2].content_hash


def test_an_object_at_the_key_without_the_same_sha256_is_published_again(stores):
    staging, destination = stores
    record, data = staged(staging, 0, checks=[OK])
    location = BatchLocation("d", "r", "publish")
    uri = publish_records([record], destination, location, reader=staging.get)[0].uri
    destination.put(uri, b"not the image", "image/png")  # overwritten by something else, no sha256

    publish_records([record], destination, location, reader=staging.get)

    assert destination.get(uri) == data
