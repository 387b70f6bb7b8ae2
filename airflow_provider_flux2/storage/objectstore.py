"""Any other store through Airflow's ``ObjectStoragePath``: ``gs://``, ``abfs://``, ``sftp://``, ``hdfs://``…

The filesystem and its credentials come from the provider that registers the scheme
(``apache-airflow-providers-google`` for ``gs://``, ``-microsoft-azure`` for ``abfs://``,
``-sftp`` for ``sftp://``) and the Airflow connection named in the URI (``gs://my_gcp@bucket/prefix``)
or given as ``conn_id``. Content type and metadata are kept as on a local disk, in a hidden
``.meta/<name>.json`` beside each object, since fsspec filesystems have no common way to store them.
"""

from __future__ import annotations

import json
import mimetypes
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow_provider_flux2.storage.base import ObjectInfo, Publisher

META_DIR = ".meta"
_COPY_CHUNK = 1024 * 1024


def _object_path(uri: str, conn_id: str | None) -> Any:
    try:
        from airflow.sdk import ObjectStoragePath
    except ImportError:  # Airflow 3.1 has it under airflow.sdk.io only
        from airflow.sdk.io.path import ObjectStoragePath

    return ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)


def has_filesystem(scheme: str) -> bool:
    """Whether Airflow can open ``scheme://``: a provider registers it, or ``attach()`` was given a filesystem."""
    from airflow.sdk.io import fs, store

    if fs.has_fs(scheme):
        return True
    # attach(protocol, fs=...) registers a filesystem instance outside the providers' registry.
    return any(getattr(s, "protocol", None) == scheme for s in getattr(store, "_STORE_CACHE", {}).values())


class ObjectStoragePublisher(Publisher):
    """Writes under any URI Airflow's ``ObjectStoragePath`` can open.

    :param base_uri: e.g. ``gs://bucket/prefix`` or ``sftp://my_sftp@/srv/images``.
    :param conn_id: the Airflow connection, when the URI does not name one.
    :param name_template: how stored images are named.
    """

    def __init__(self, base_uri: str, conn_id: str | None = None, name_template: str | None = None) -> None:
        parsed = urlparse(base_uri)
        if not parsed.scheme or parsed.scheme in ("file", "s3"):
            raise ValueError(f"not an object-storage URI: {base_uri!r} (file:// and s3:// have their own publishers)")
        if not has_filesystem(parsed.scheme):
            raise ValueError(
                f"Unsupported output_uri {base_uri!r}: no filesystem is registered for {parsed.scheme}:// "
                "(install the Airflow provider that brings it, e.g. apache-airflow-providers-google for gs://, "
                "or use file:///absolute/path or s3://bucket/prefix)"
            )
        super().__init__(base_uri, name_template)
        self.scheme = parsed.scheme
        self.conn_id = conn_id

    def path(self, uri: str) -> Any:
        """The ``ObjectStoragePath`` of a URI under this publisher (with its connection)."""
        return _object_path(uri, self.conn_id)

    def _sidecar(self, uri: str) -> Any:
        folder, _, name = uri.rpartition("/")
        return self.path(f"{folder}/{META_DIR}/{name}.json")

    def _put(self, uri: str, data: bytes | Path, content_type: str, metadata: dict[str, str]) -> None:
        target = self.path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            with open(data, "rb") as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
        sidecar = self._sidecar(uri)
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_bytes(json.dumps({"content_type": content_type, "metadata": metadata}, sort_keys=True).encode())

    def get(self, uri: str) -> bytes:
        path = self.path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"No object at {uri}")
        return bytes(path.read_bytes())

    def exists(self, uri: str) -> bool:
        return bool(self.path(uri).is_file())

    def head(self, uri: str) -> ObjectInfo:
        path = self.path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"No object at {uri}")
        size = int(path.stat()["size"])
        sidecar = self._sidecar(uri)
        stored = json.loads(sidecar.read_bytes()) if sidecar.is_file() else {}
        name = uri.rsplit("/", 1)[-1]
        content_type = stored.get("content_type") or mimetypes.guess_type(name)[0] or "application/octet-stream"
        return ObjectInfo(uri=uri, size=size, content_type=content_type, metadata=dict(stored.get("metadata", {})))
