"""``file://`` storage: a local folder; each object's content type and metadata live in a hidden ``.meta/`` folder.

Why ``.meta/<name>.json`` rather than a ``<name>.meta.json`` beside every file: the batch folder is what
people open (the gallery, the manifest, the images), and a sidecar per image doubles its listing. One
small file per object — not one shared index — keeps writes atomic and independent, so parallel
uploads into the same folder cannot lose each other's metadata.

Every file is written under a temporary name in its own folder and renamed into place, so nothing
half-written ever looks complete. A full volume (``ENOSPC``, or ``EDQUOT`` for a used-up quota) is a
:class:`~airflow_provider_flux2.exceptions.FluxStorageError` naming the path and the space left, with the
temporary file removed first.
"""

from __future__ import annotations

import errno
import json
import mimetypes
import os
import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

from airflow_provider_flux2.exceptions import FluxStorageError
from airflow_provider_flux2.storage.base import ObjectInfo, Publisher

META_DIR = ".meta"
#: ``errno`` values that mean the volume is full: no space left, or the user's quota used up.
_FULL = (errno.ENOSPC, errno.EDQUOT)
_UMASK_LOCK = threading.Lock()


def path_of(uri: str) -> Path:
    """The local path of a ``file://`` URI (or a plain path)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"not a file:// URI: {uri!r}")
    return Path(unquote(parsed.path) if parsed.scheme else uri)


def sidecar_of(path: Path) -> Path:
    """Where the content type and metadata of the object at ``path`` are kept."""
    return path.parent / META_DIR / f"{path.name}.json"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: ``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def published_mode() -> int:
    """The mode of a published file: what ``open()`` would give it (``0o666`` less the umask, 0644 by default)."""
    return 0o666 & ~current_umask()


def _write_atomically(target: Path, data: bytes | Path) -> None:
    # A temp file in the same folder, then a rename: a reader never sees half an image, and a
    # crash leaves the previous version (or nothing) rather than a truncated file. mkstemp makes the
    # temp file 0600; it gets the mode a plain open() would have given before it becomes visible, so
    # a web server or another group on a shared volume can read the gallery.
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), published_mode())
            if isinstance(data, bytes):
                out.write(data)
            else:
                with open(data, "rb") as src:
                    shutil.copyfileobj(src, out)
        os.replace(tmp, target)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # before the free space is measured: it counts too
        if isinstance(error, OSError) and error.errno in _FULL:
            raise volume_full(target, error) from error
        raise


def free_bytes(path: Path) -> int:
    """Free space on the volume holding ``path`` (its nearest existing folder, when it does not exist yet)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return 0


def volume_full(path: Path, error: OSError) -> FluxStorageError:
    """The error of a write that found its volume full: the path, the space left, what was undone."""
    free = free_bytes(path.parent)
    return FluxStorageError(
        f"Could not write {path}: {error.strerror or 'the volume is full'} ({free:,} bytes free on its volume); "
        "nothing half-written is left. Free some space, or store on another volume",
        uri=path.as_uri(),
        code=errno.errorcode.get(error.errno or 0, "ENOSPC"),
        free_bytes=free,
    )


class LocalPublisher(Publisher):
    """Writes under a local folder. Writes are atomic (temp file, then rename)."""

    scheme = "file"

    def __init__(self, base_uri: str, name_template: str | None = None) -> None:
        if "://" not in base_uri:
            base_uri = Path(base_uri).resolve().as_uri()
        super().__init__(base_uri, name_template)

    def _put(self, uri: str, data: bytes | Path, content_type: str, metadata: dict[str, str]) -> None:
        target = path_of(uri)
        _write_atomically(target, data)
        sidecar = {"content_type": content_type, "metadata": metadata}
        try:
            _write_atomically(sidecar_of(target), json.dumps(sidecar, sort_keys=True).encode("utf-8"))
        except BaseException:
            # Bytes without their content type and metadata are not a complete object: a retry stores both.
            target.unlink(missing_ok=True)
            raise

    def get(self, uri: str) -> bytes:
        return path_of(uri).read_bytes()

    def exists(self, uri: str) -> bool:
        return path_of(uri).is_file()

    def head(self, uri: str) -> ObjectInfo:
        path = path_of(uri)
        size = path.stat().st_size  # FileNotFoundError when there is no object, as on S3
        sidecar = sidecar_of(path)
        stored = json.loads(sidecar.read_text("utf-8")) if sidecar.is_file() else {}
        # A file written by something else has no sidecar: guess its type from the extension.
        content_type = stored.get("content_type") or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return ObjectInfo(uri=uri, size=size, content_type=content_type, metadata=dict(stored.get("metadata", {})))
