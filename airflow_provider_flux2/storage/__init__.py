"""Publishers: where images, manifests and galleries are stored (``file://``, ``s3://``, or any store
Airflow's ``ObjectStoragePath`` reaches: ``gs://``, ``abfs://``, ``sftp://``…).

Every public name is importable from this package. The publisher interface, the local publisher,
:func:`publisher_for` and :func:`uri_reader` are loaded with it (DAG files import them and they are
light); the rest — the S3 publisher (boto3), the manifest, publishing and the report — on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from airflow_provider_flux2._lazy import lazy_exports
from airflow_provider_flux2.storage.base import BatchLocation, ObjectInfo, Publisher, content_hash
from airflow_provider_flux2.storage.local import LocalPublisher

if TYPE_CHECKING:
    from airflow_provider_flux2.storage.manifest import (
        MANIFEST_CSV,
        MANIFEST_JSON,
        Manifest,
        billed_cost,
        build_manifest,
        write_manifest,
    )
    from airflow_provider_flux2.storage.objectstore import ObjectStoragePublisher
    from airflow_provider_flux2.storage.publish import is_publishable, object_metadata, publish_records
    from airflow_provider_flux2.storage.report import write_batch_report
    from airflow_provider_flux2.storage.s3 import S3Publisher


def publisher_for(
    uri: str, *, aws_conn_id: str | None = None, conn_id: str | None = None, name_template: str | None = None
) -> Publisher:
    """The publisher for a destination URI.

    ``file:///path`` (or a plain path) is a local folder; ``s3://bucket/prefix`` goes through the Amazon
    provider's S3Hook with ``aws_conn_id``; any other scheme goes through Airflow's ``ObjectStoragePath``,
    its connection named in the URI (``gs://my_gcp@bucket/prefix``) or by ``conn_id``.

    :param name_template: how stored images are named (default ``[flux2] output_name_template``).
    """
    if uri.startswith("s3://"):
        from airflow_provider_flux2.storage.s3 import S3Publisher

        return S3Publisher(uri, aws_conn_id=aws_conn_id, name_template=name_template)
    if uri.startswith("file://") or "://" not in uri:
        return LocalPublisher(uri, name_template)
    from airflow_provider_flux2.storage.objectstore import ObjectStoragePublisher

    return ObjectStoragePublisher(uri, conn_id=conn_id, name_template=name_template)


def uri_reader(*, aws_conn_id: str | None = None) -> Callable[[str], bytes]:
    """A function that reads any ``file://`` or ``s3://`` URI, reusing one publisher (and client) per bucket.

    For batches whose images live in more than one place: published images at the destination,
    dropped ones still in staging.
    """
    publishers: dict[str, Publisher] = {}

    def read(uri: str) -> bytes:
        parsed = urlparse(uri)
        root = "file:///" if parsed.scheme in ("", "file") else f"{parsed.scheme}://{parsed.netloc}"
        if root not in publishers:
            publishers[root] = publisher_for(root, aws_conn_id=aws_conn_id)
        return publishers[root].get(uri)

    return read


#: Names loaded on first use, and where they live.
_MODULE_OF: dict[str, str] = {
    "S3Publisher": "airflow_provider_flux2.storage.s3",
    "ObjectStoragePublisher": "airflow_provider_flux2.storage.objectstore",
    "MANIFEST_CSV": "airflow_provider_flux2.storage.manifest",
    "MANIFEST_JSON": "airflow_provider_flux2.storage.manifest",
    "Manifest": "airflow_provider_flux2.storage.manifest",
    "billed_cost": "airflow_provider_flux2.storage.manifest",
    "build_manifest": "airflow_provider_flux2.storage.manifest",
    "write_manifest": "airflow_provider_flux2.storage.manifest",
    "is_publishable": "airflow_provider_flux2.storage.publish",
    "object_metadata": "airflow_provider_flux2.storage.publish",
    "publish_records": "airflow_provider_flux2.storage.publish",
    "write_batch_report": "airflow_provider_flux2.storage.report",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _MODULE_OF)


__all__ = [
    "MANIFEST_CSV",
    "MANIFEST_JSON",
    "BatchLocation",
    "LocalPublisher",
    "Manifest",
    "ObjectInfo",
    "ObjectStoragePublisher",
    "Publisher",
    "S3Publisher",
    "billed_cost",
    "build_manifest",
    "content_hash",
    "is_publishable",
    "object_metadata",
    "publish_records",
    "publisher_for",
    "uri_reader",
    "write_batch_report",
    "write_manifest",
]
