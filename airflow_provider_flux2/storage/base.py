"""One storage interface for images, manifests and galleries; ``file://`` and ``s3://`` implement it.

Keys are deterministic — ``{prefix}/{dag_id}/{run_id}/{task_id}/{index:05d}-{content hash[:12]}.{ext}`` —
so a re-run overwrites what it wrote before instead of duplicating it.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONTENT_TYPES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png"}
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+:=@,-]")


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of the bytes; its first 12 characters go into the key."""
    return hashlib.sha256(data).hexdigest()


def safe_segment(text: str) -> str:
    """A path segment that is the same on S3 and on a local disk (no slashes, no spaces)."""
    return _UNSAFE.sub("_", text) or "_"


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


def image_name(index: int, digest: str, content_type: str) -> str:
    """``00007-0123456789ab.jpg``: index first so listings sort in batch order."""
    return f"{index:05d}-{digest[:12]}.{EXTENSIONS.get(content_type, 'bin')}"


class Publisher(ABC):
    """Writes objects under one base URI and says where they went.

    :param base_uri: ``file:///abs/path`` or ``s3://bucket/prefix``.
    """

    scheme: str = ""

    def __init__(self, base_uri: str) -> None:
        self.base_uri = base_uri.rstrip("/")

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
    ) -> str:
        """Store one image under its deterministic key and return its URI."""
        if digest is None:
            digest = content_hash(data if isinstance(data, bytes) else Path(data).read_bytes())
        uri = self.uri_for(location, image_name(index, digest, content_type))
        self.put(uri, data, content_type, metadata or {})
        return uri

    @abstractmethod
    def put(self, uri: str, data: bytes | Path, content_type: str, metadata: Mapping[str, str]) -> None:
        """Write bytes (or a file, streamed) to ``uri`` with its content type and metadata."""

    @abstractmethod
    def get(self, uri: str) -> bytes:
        """Read an object back."""

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """Whether an object is at ``uri``."""

    @abstractmethod
    def metadata(self, uri: str) -> dict[str, str]:
        """The metadata stored with an object."""
