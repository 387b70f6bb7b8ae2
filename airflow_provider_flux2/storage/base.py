"""One storage interface for images, manifests and galleries; ``file://`` and ``s3://`` implement it.

Keys are deterministic — ``{prefix}/{dag_id}/{run_id}/{task_id}/{name}.{ext}``, the name from a template
(``{index}-{id}-{hash}`` by default: batch index, the item's id, 12 hex digits of the content hash; see
:mod:`~airflow_provider_flux2.storage.naming`) — so a re-run overwrites what it wrote before instead of
duplicating it. Folder names carry no ``:`` or ``+`` (``manual__2026-12-01T12-38-50.911527Z``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_flux2.formats import IMAGE_FORMATS
from airflow_provider_flux2.storage.naming import check_template, render_name, safe_segment

#: Views of the one format table (``formats.IMAGE_FORMATS``): output_format → content type → extension.
CONTENT_TYPES = {name: fmt.content_type for name, fmt in IMAGE_FORMATS.items()}
EXTENSIONS = {fmt.content_type: fmt.extension for fmt in IMAGE_FORMATS.values()}
_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
#: S3 refuses a request whose user metadata (keys plus values, UTF-8) exceeds 2 KB; both publishers
#: enforce the same limit so a DAG that works on ``file://`` also works on ``s3://``.
MAX_METADATA_BYTES = 2048
_HASH_CHUNK = 1024 * 1024


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of the bytes; its first 12 characters go into the key."""
    return hashlib.sha256(data).hexdigest()


def image_workers(largest_pixels: int, most: int, memory: int) -> int:
    """Images handled at once: ``most``, fewer when the largest would make them hold more than ``memory``
    bytes (its encoded bytes plus 4 bytes a pixel once decoded: 8 bytes a pixel in all)."""
    if largest_pixels <= 0:
        return 1
    return max(1, min(most, memory // (largest_pixels * 8)))


def file_hash(path: Path | str) -> str:
    """SHA-256 hex digest of a file, read in chunks so a large image is never held in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_of(uri: str) -> str:
    """The folder (prefix) holding an object: ``s3://b/a/x.jpg`` → ``s3://b/a``."""
    return uri.rsplit("/", 1)[0]


def ascii_metadata(metadata: Mapping[str, object] | None) -> dict[str, str]:
    """Object metadata both stores accept: lower-case keys, printable-ASCII values.

    Keys are lower-cased (S3 does it anyway) and must be ``[a-z0-9][a-z0-9_.-]*``. A value with any
    character outside printable ASCII is stored as one RFC 2047 encoded word (``=?utf-8?b?…?=``) —
    the convention S3 itself uses for non-ASCII metadata, which ``email.header.decode_header`` reads.

    :raises ValueError: a key is not allowed, or the whole exceeds :data:`MAX_METADATA_BYTES`.
    """
    result: dict[str, str] = {}
    for raw_key, raw_value in (metadata or {}).items():
        key = str(raw_key).lower()
        if not _METADATA_KEY.match(key):
            raise ValueError(f"Metadata key {raw_key!r} is not allowed: use letters, digits, '-', '_' and '.'")
        value = "" if raw_value is None else str(raw_value)
        if not all(" " <= ch <= "~" for ch in value):
            value = "=?utf-8?b?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="
        result[key] = value
    size = sum(len(k) + len(v) for k, v in result.items())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"Object metadata is {size} bytes; S3 allows at most {MAX_METADATA_BYTES}")
    return result


@dataclass(frozen=True)
class BatchLocation:
    """Where one task's batch lives: ``{base}/{dag_id}/{run_id}/{task_id}`` (map index appended if mapped)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    def parts(self) -> list[str]:
        task = self.task_id if self.map_index < 0 else f"{self.task_id}/{self.map_index}"
        return [safe_segment(self.dag_id), safe_segment(self.run_id), *map(safe_segment, task.split("/"))]


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object besides its bytes."""

    uri: str
    size: int
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    #: The store's entity tag when it has one (S3: ``"<md5>"``, or ``"<md5>-<parts>"`` after a multipart upload).
    etag: str | None = None


def image_name(
    index: int,
    digest: str,
    content_type: str,
    template: str | None = None,
    *,
    item_id: Any = None,
    seed: int | None = None,
) -> str:
    """``00007-SKU-1042-0123456789ab.jpg``: index first so listings sort in batch order, then the item's id.

    :param template: the name template (default ``[flux2] output_name_template``).
    """
    name = render_name(template or default_name_template(), index=index, digest=digest, item_id=item_id, seed=seed)
    return f"{name}.{EXTENSIONS.get(content_type, 'bin')}"


def default_name_template() -> str:
    """``[flux2] output_name_template``, or the built-in default outside Airflow."""
    from airflow_provider_flux2.config import DEFAULT_NAME_TEMPLATE, get_option

    try:
        return get_option("output_name_template") or DEFAULT_NAME_TEMPLATE
    except ImportError:
        return DEFAULT_NAME_TEMPLATE


class Publisher(ABC):
    """Writes objects under one base URI and says where they went.

    :param base_uri: ``file:///abs/path`` or ``s3://bucket/prefix``.
    :param name_template: how stored images are named (default ``[flux2] output_name_template``);
        checked here, so a bad template fails before anything is generated.
    """

    scheme: str = ""

    def __init__(self, base_uri: str, name_template: str | None = None) -> None:
        self.base_uri = base_uri.rstrip("/")
        self.name_template = check_template(name_template or default_name_template())

    def uri_for(self, location: BatchLocation, name: str) -> str:
        return "/".join([self.base_uri, *location.parts(), name])

    def folder_uri(self, location: BatchLocation) -> str:
        return "/".join([self.base_uri, *location.parts()])

    def put_image(
        self,
        location: BatchLocation,
        index: int,
        data: bytes | Path,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        digest: str | None = None,
        name_fields: Mapping[str, Any] | None = None,
    ) -> str:
        """Store one image under its deterministic key and return its URI.

        :param data: the bytes, or the path of a file holding them (streamed; large files go multipart).
        :param digest: the SHA-256 of the bytes when the caller already has it.
        :param name_fields: ``item_id`` and ``seed`` for the name template
            (:func:`~airflow_provider_flux2.storage.naming.name_fields` of the image's record).
        """
        if digest is None:
            digest = content_hash(data) if isinstance(data, bytes) else file_hash(data)
        uri = self.image_uri(location, index, digest, content_type, name_fields)
        self.put(uri, data, content_type, metadata)
        return uri

    def image_uri(
        self,
        location: BatchLocation,
        index: int,
        digest: str,
        content_type: str,
        name_fields: Mapping[str, Any] | None = None,
    ) -> str:
        """The deterministic key :meth:`put_image` stores an image under, without storing it."""
        return self.uri_for(
            location, image_name(index, digest, content_type, self.name_template, **(name_fields or {}))
        )

    def put_named(
        self,
        location: BatchLocation,
        name: str,
        data: bytes | Path,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Store an object under ``name`` (may contain ``/``) in the batch folder; return its URI."""
        uri = self.uri_for(location, name)
        self.put(uri, data, content_type, metadata)
        return uri

    def put(
        self, uri: str, data: bytes | Path, content_type: str, metadata: Mapping[str, object] | None = None
    ) -> None:
        """Write bytes (or a file, streamed) to ``uri`` with its content type and metadata.

        Metadata goes through :func:`ascii_metadata` first, so both stores keep exactly the same values.
        """
        self._put(uri, data, content_type, ascii_metadata(metadata))

    def metadata(self, uri: str) -> dict[str, str]:
        """The metadata stored with an object (its content type is in :meth:`head`)."""
        return self.head(uri).metadata

    @abstractmethod
    def _put(self, uri: str, data: bytes | Path, content_type: str, metadata: dict[str, str]) -> None:
        """Write to ``uri``; ``metadata`` is already ASCII-safe."""

    @abstractmethod
    def get(self, uri: str) -> bytes:
        """Read an object back; :class:`FileNotFoundError` when there is none."""

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """Whether an object is at ``uri``."""

    @abstractmethod
    def head(self, uri: str) -> ObjectInfo:
        """Size, content type and metadata of an object; :class:`FileNotFoundError` when there is none."""
