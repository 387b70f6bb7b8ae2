"""Other stores through Airflow's ObjectStoragePath: the connection in the URI picks the filesystem.

Two fsspec ``DirFileSystem`` folders are attached to Airflow under one scheme and two connection ids,
as a provider's filesystem would be per connection; the publisher must write through the one its URI names.
"""

from __future__ import annotations

import json

import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from synthetic_images import Pictures, image_record

from airflow_provider_flux2.storage import BatchLocation, ObjectStoragePublisher, publisher_for, uri_reader
from airflow_provider_flux2.storage.report import write_batch_report

SCHEME = "memory"  # a protocol fsspec knows; the filesystem behind each connection is ours
LOCATION = BatchLocation("catalogue", "manual__2026-12-01T12:38:50.911527+00:00", "publish")


@pytest.fixture
def stores(tmp_path):
    """``memory://store_a@…`` and ``memory://store_b@…``: two folders behind two connection ids."""
    from airflow.sdk.io import attach
    from airflow.sdk.io import store as registry

    roots = {name: tmp_path / name for name in ("store_a", "store_b")}
    for name, root in roots.items():
        root.mkdir()
        attach(SCHEME, conn_id=name, fs=DirFileSystem(path=str(root), fs=LocalFileSystem()))
    yield roots
    for name in roots:
        registry._STORE_CACHE.pop(f"{SCHEME}-{name}", None)


def test_the_connection_named_in_the_uri_picks_the_store(stores):
    publisher = publisher_for(f"{SCHEME}://store_b@bucket/images")

    uri = publisher.put_image(LOCATION, 2, b"\x89PNG b", "image/png", {"seed": "5"}, name_fields={"item_id": "SKU-5"})

    assert isinstance(publisher, ObjectStoragePublisher)
    assert (
        uri
        == f"{SCHEME}://store_b@bucket/images/catalogue/manual__2026-12-01T12-38-50.911527Z/publish/"
        + (uri.rsplit("/", 1)[1])
    )
    assert uri.rsplit("/", 1)[1].startswith("00002-SKU-5-")
    written = [p for p in stores["store_b"].rglob("*") if p.is_file()]
    assert next(p for p in written if ".meta" not in p.parts).read_bytes() == b"\x89PNG b"
    assert not any(p.is_file() for p in stores["store_a"].rglob("*"))
    info = publisher.head(uri)
    assert (info.size, info.content_type, info.metadata) == (6, "image/png", {"seed": "5"})
    assert publisher.get(uri) == b"\x89PNG b" and publisher.exists(uri)


def test_missing_objects_are_file_not_found_like_on_the_other_stores(stores):
    publisher = publisher_for(f"{SCHEME}://store_a@bucket")

    with pytest.raises(FileNotFoundError):
        publisher.get(f"{SCHEME}://store_a@bucket/none.png")
    assert not publisher.exists(f"{SCHEME}://store_a@bucket/none.png")


def test_a_whole_batch_report_lands_in_the_store_and_reads_back(stores):
    pictures = Pictures()
    publisher = publisher_for(f"{SCHEME}://store_a@bucket/out")
    records = []
    for index in range(2):
        data = pictures.encode(pictures.scene(index, (64, 48)), "jpeg")
        uri = publisher.put_image(LOCATION, index, data, "image/jpeg")
        records.append(
            image_record(index, width=64, height=48, uri=uri, content_type="image/jpeg", output_format="jpeg")
        )

    uris = write_batch_report(publisher, LOCATION, records, reader=uri_reader())

    manifest = json.loads(publisher.get(uris["manifest_uri"]))
    assert [row["uri"] for row in manifest["images"]] == [r.uri for r in records]
    assert b"<html" in publisher.get(uris["gallery_uri"]).lower()


def test_operators_accept_an_object_store_uri_airflow_can_open_and_refuse_one_it_cannot(stores):
    from airflow_provider_flux2.exceptions import FluxValidationError
    from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
    from airflow_provider_flux2.operators.publish import FluxPublishOperator

    FluxGenerateImageOperator(task_id="g", prompt="p", output_uri=f"{SCHEME}://store_a@bucket/out")
    FluxPublishOperator(task_id="p", records=[], destination_uri=f"{SCHEME}://store_b@bucket/final")

    with pytest.raises(FluxValidationError, match="a scheme an installed Airflow provider registers"):
        FluxGenerateImageOperator(task_id="g2", prompt="p", output_uri="gs://bucket/out")  # no Google provider here


def test_a_bad_template_or_latest_uri_is_refused_when_the_dag_is_parsed():
    from airflow_provider_flux2.exceptions import FluxValidationError
    from airflow_provider_flux2.operators.publish import FluxPublishOperator

    with pytest.raises(FluxValidationError, match="output_name_template"):
        FluxPublishOperator(task_id="p", records=[], destination_uri="/data/final", output_name_template="{sku}")
    with pytest.raises(FluxValidationError, match="latest_uri"):
        FluxPublishOperator(task_id="p", records=[], destination_uri="/data/final", latest_uri="relative/latest")
