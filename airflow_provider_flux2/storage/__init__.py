"""Publishers: where images, manifests and galleries are stored (``file://`` or ``s3://``)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

from airflow_provider_flux2.storage.base import BatchLocation, Publisher, content_hash
from airflow_provider_flux2.storage.local import LocalPublisher


def publisher_for(uri: str, *, aws_conn_id: str | None = None) -> Publisher:
    """The publisher for a destination URI: ``file:///path`` (or a plain path) or ``s3://bucket/prefix``."""
    if uri.startswith("s3://"):
        from airflow_provider_flux2.storage.s3 import S3Publisher

        return S3Publisher(uri, aws_conn_id=aws_conn_id)
    if uri.startswith("file://") or "://" not in uri:
        return LocalPublisher(uri)
    raise ValueError(f"Unsupported output_uri {uri!r}: use file:///absolute/path or s3://bucket/prefix")


def uri_reader(*, aws_conn_id: str | None = None) -> Callable[[str], bytes]:
    """A function that reads any ``file://`` or ``s3://`` URI, reusing one publisher (and client) per bucket.

    For batches whose images live in more than one place: published images at the destination,
    dropped ones still in staging.
    """
    publishers: dict[str, Publisher] = {}

    def read(uri: str) -> bytes:
        parsed = urlparse(uri)
        root = f"s3://{parsed.netloc}" if parsed.scheme == "s3" else "file:///"
        if root not in publishers:
            publishers[root] = publisher_for(root, aws_conn_id=aws_conn_id)
        return publishers[root].get(uri)

    return read


__all__ = ["BatchLocation", "LocalPublisher", "Publisher", "content_hash", "publisher_for", "uri_reader"]
