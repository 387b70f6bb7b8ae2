"""The package's public names: importable from ``airflow_provider_flux2.storage``, heavy ones on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import airflow_provider_flux2.storage as storage

EAGER = {"BatchLocation", "LocalPublisher", "ObjectInfo", "Publisher", "content_hash", "publisher_for", "uri_reader"}


def test_every_public_name_is_the_object_its_module_defines():
    assert set(storage.__all__) == EAGER | set(storage._MODULE_OF)
    for name in storage._MODULE_OF:
        assert getattr(storage, name) is getattr(importlib.import_module(storage._MODULE_OF[name]), name), name
    for name in EAGER:  # defined in one of the package's modules, not a placeholder
        assert getattr(storage, name).__module__.startswith("airflow_provider_flux2.storage"), name
    # and they work together: the same bytes hash the same, a stored object reads back by its URI
    assert storage.content_hash(b"abc") == storage.content_hash(b"abc") != storage.content_hash(b"abd")


def test_publishers_and_the_manifest_writers_import_from_the_package(tmp_path):
    from airflow_provider_flux2.storage import (
        LocalPublisher,
        Publisher,
        S3Publisher,
        build_manifest,
        publish_records,
        publisher_for,
        write_batch_report,
        write_manifest,
    )
    from airflow_provider_flux2.storage.report import write_batch_report as from_module

    assert write_batch_report is from_module
    assert isinstance(publisher_for("s3://bucket/prefix"), S3Publisher)
    local = publisher_for(tmp_path.as_uri())
    assert isinstance(local, LocalPublisher) and isinstance(local, Publisher)
    uri = local.put_named(storage.BatchLocation("d", "r", "t"), "note.txt", b"hello", "text/plain")
    assert storage.uri_reader()(uri) == b"hello" and (tmp_path / "d" / "r" / "t" / "note.txt").read_bytes() == b"hello"
    modules = {f.__module__ for f in (build_manifest, write_manifest, publish_records)}
    assert modules == {"airflow_provider_flux2.storage.manifest", "airflow_provider_flux2.storage.publish"}


def test_importing_the_package_does_not_load_boto3_pillow_or_pydantic():
    code = (
        "import sys, airflow_provider_flux2.storage as s; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore', 'PIL', 'pydantic'}); "
        "assert not heavy, heavy; "
        "s.S3Publisher; assert 'boto3' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'S3'"):
        _ = storage.S3
