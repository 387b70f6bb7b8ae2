"""``file://`` storage: a local folder, with metadata in a sidecar JSON file per object."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from airflow_provider_flux2.storage.base import Publisher

SIDECAR_SUFFIX = ".meta.json"


def path_of(uri: str) -> Path:
    """The local path of a ``file://`` URI (or a plain path)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"not a file:// URI: {uri!r}")
    return Path(unquote(parsed.path) if parsed.scheme else uri)


class LocalPublisher(Publisher):
    """Writes under a local folder. Writes are atomic (temp file, then rename)."""

    scheme = "file"

    def __init__(self, base_uri: str) -> None:
        if "://" not in base_uri:
            base_uri = Path(base_uri).resolve().as_uri()
        super().__init__(base_uri)

    def put(self, uri: str, data: bytes | Path, content_type: str, metadata: Mapping[str, str]) -> None:
        target = path_of(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    with open(data, "rb") as src:
                        shutil.copyfileobj(src, out)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        sidecar = {"content_type": content_type, "metadata": dict(metadata)}
        target.with_name(target.name + SIDECAR_SUFFIX).write_text(json.dumps(sidecar, sort_keys=True))

    def get(self, uri: str) -> bytes:
        return path_of(uri).read_bytes()

    def exists(self, uri: str) -> bool:
        return path_of(uri).is_file()

    def metadata(self, uri: str) -> dict[str, str]:
        sidecar = path_of(uri)
        sidecar = sidecar.with_name(sidecar.name + SIDECAR_SUFFIX)
        if not sidecar.is_file():
            return {}
        return dict(json.loads(sidecar.read_text()).get("metadata", {}))
