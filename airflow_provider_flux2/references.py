"""Reference images from storage: ``s3://``, ``file://`` and local paths, measured and made sendable.

A reference is written the way the team stores it (``s3://photos/dish.jpg``,
``/data/shots/dish.png``, ``file:///data/shots/dish.png``) and stays written that way in the
request the plan hashes, the Idempotency-Key and the manifest: a re-plan, a retry or a resume sees
the same request and re-attaches instead of paying again. Only the copy that is *sent* carries the
form the API can read:

- ``s3://bucket/key`` → a presigned GET URL (through the task's AWS connection) valid for the
  task's timeout plus an hour, so a run queued late in a long batch can still fetch it;
- a local file → a ``data:`` URI, up to :data:`MAX_INLINE_BYTES`; a larger file is refused before
  anything is sent, with the advice to put it in S3 (or shrink it).

A presigned URL changes every time it is signed, and the API compares a repeated Idempotency-Key's
body: a retry that re-sent an image with a freshly signed URL would get a 409 instead of a replay.
So the resolver remembers the URLs it signed in the task's ``task_state_store`` (Airflow >= 3.3)
and a re-plan — a resume, a retry after a crash between a submit and its record — sends the same
URL again while it stays valid for at least :data:`REUSE_MIN_SECONDS` (or the task's timeout, if
shorter). Local files need nothing of the kind: the same bytes make the same ``data:`` URI.

Each reference is measured from its image header — a ranged read of the first bytes for a remote
object, never a full download — so the plan prices it at its real megapixels rather than the 1 MP
an unmeasurable ``http(s)`` URL is assumed to be. Problems (a missing object, a file that is not
an image) are :class:`~airflow_provider_flux2.exceptions.FluxValidationError` naming
``image_urls[i]``, raised while planning: before any money is spent.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import mimetypes
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote, urlparse

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.image_header import data_uri_size, header_format, header_size
from airflow_provider_flux2.megapixels import ASSUMED_REFERENCE_MP, billed_megapixels
from airflow_provider_flux2.urls import REFERENCE_ALLOWED as REFERENCE_ALLOWED
from airflow_provider_flux2.urls import Kind as Kind
from airflow_provider_flux2.urls import is_storage_reference as is_storage_reference
from airflow_provider_flux2.urls import reference_kind as reference_kind
from airflow_provider_flux2.urls import storage_reference_problem as storage_reference_problem

if TYPE_CHECKING:
    from airflow_provider_flux2.models import FluxInput


#: The largest local file sent inline as a ``data:`` URI (4 MiB; about 5.6 MB once base64-encoded).
MAX_INLINE_BYTES = 4 * 1024 * 1024
#: Bytes read from the start of a remote object to find its size; a JPEG whose EXIF pushes its
#: frame header further is read again, up to :data:`MAX_HEADER_BYTES`.
HEADER_BYTES = 64 * 1024
MAX_HEADER_BYTES = 1024 * 1024
#: A presigned reference outlives the task's timeout by this much (seconds).
PRESIGN_MARGIN = 3600
#: SigV4 presigned URLs are valid for at most seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: A remembered presigned URL is sent again while it stays valid at least this long.
REUSE_MIN_SECONDS = 3600
#: Where the signed URLs are remembered in ``task_state_store``.
MEMORY_KEY = "flux/references"


@dataclass(frozen=True)
class Reference:
    """One reference image: as written, its kind, and its size when known before the run."""

    source: str
    kind: Kind
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None

    @property
    def billed_mp(self) -> int:
        if self.width and self.height:
            return billed_megapixels(self.width, self.height)
        return ASSUMED_REFERENCE_MP

    def as_dict(self) -> dict[str, Any]:
        """For the record (and so the manifest): never a signature, never the bytes."""
        shown = self.source if self.kind != "data" else self.source[:40] + "…"
        return {"source": shown, "width": self.width, "height": self.height, "billed_mp": self.billed_mp}


def local_path(source: str) -> Path:
    """``file:///a/b.png`` or ``/a/b.png`` → ``Path("/a/b.png")``."""
    if source.startswith("file://"):
        parsed = urlparse(source)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"a file:// URI on another host: {source!r}")
        return Path(unquote(parsed.path))
    return Path(source)


class _HasRequest(Protocol):
    """A planned image: what :meth:`ReferenceResolver.attach` needs (a frozen dataclass)."""

    @property
    def request(self) -> Any: ...

    @property
    def meta(self) -> dict[str, Any]: ...


_Image = TypeVar("_Image", bound=_HasRequest)


class ReferenceResolver:
    """Measures references and turns storage references into URLs the API can fetch.

    One resolver serves one plan: each distinct reference is read and presigned once, however many
    images use it (one photo, several styles).

    :param aws_conn_id: Airflow AWS connection for ``s3://`` (else boto3's default chain).
    :param valid_for: seconds the task may run (its ``timeout``); presigned URLs last this plus
        :data:`PRESIGN_MARGIN`, at most seven days.
    :param max_inline_bytes: largest local file sent as a ``data:`` URI.
    :param s3_client: a boto3 S3 client to use instead of making one.
    :param memory: where signed URLs are remembered across re-plans: the task's
        ``task_state_store`` (anything with ``get(key)`` and ``set(key, value)``); ``None``: not kept.
    :param clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        *,
        aws_conn_id: str | None = None,
        valid_for: float = 6 * 3600,
        max_inline_bytes: int = MAX_INLINE_BYTES,
        s3_client: Any = None,
        memory: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.aws_conn_id = aws_conn_id
        self.valid_for = valid_for
        self.expires_in = int(min(MAX_PRESIGN_SECONDS, valid_for + PRESIGN_MARGIN))
        self.memory = memory
        self.clock = clock
        self.max_inline_bytes = max_inline_bytes
        self._s3 = s3_client
        self._measured: dict[str, Reference] = {}
        self._wire: dict[str, str] = {}

    # -- S3 --------------------------------------------------------------------------------------

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = self._make_s3()
        return self._s3

    def _make_s3(self) -> Any:
        # The publisher's client: the Amazon provider's S3Hook for aws_conn_id, SigV4 for presigning.
        from airflow_provider_flux2.storage.s3 import s3_client

        return s3_client(self.aws_conn_id)

    def _s3_header(self, source: str, field: str) -> tuple[bytes, int | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        from airflow_provider_flux2.storage.s3 import split_s3_uri

        try:
            bucket, key = split_s3_uri(source)
        except ValueError:
            raise FluxValidationError(field=field, value=source, allowed="s3://bucket/key") from None
        if not key or key.endswith("/"):
            raise FluxValidationError(field=field, value=source, allowed="s3://bucket/key naming one object")
        wanted = HEADER_BYTES
        while True:
            try:
                response = self.s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{wanted - 1}")
                with contextlib.closing(response["Body"]) as body:
                    data = body.read(wanted)
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                problem = "no such object" if code in ("NoSuchKey", "404", "NotFound") else f"S3 says {code}"
                allowed = f"an S3 object this task's AWS connection can read ({problem})"
                raise FluxValidationError(field=field, value=source, allowed=allowed) from None
            except BotoCoreError as error:
                allowed = f"a reachable S3 object ({type(error).__name__}: {error})"
                raise FluxValidationError(field=field, value=source, allowed=allowed) from None
            total = _total_from_content_range(response.get("ContentRange"))
            if header_size(data) is not None or wanted >= MAX_HEADER_BYTES or (total and total <= wanted):
                return data, total
            wanted = min(MAX_HEADER_BYTES, wanted * 4)

    # -- measuring -------------------------------------------------------------------------------

    def measure(self, source: str, field: str = "image_urls") -> Reference:
        """The reference's kind and, where it can be known before the run, its pixel size."""
        if source in self._measured:
            return self._measured[source]
        kind = reference_kind(source)
        if kind is None:
            raise FluxValidationError(field=field, value=source, allowed=REFERENCE_ALLOWED)
        if kind == "s3":
            data, total = self._s3_header(source, field)
            reference = self._sized(source, kind, data, total, field)
        elif kind == "file":
            data, total = self._file(source, field)
            reference = self._sized(source, kind, data, total, field)
        elif kind == "data":
            size = data_uri_size(source)
            reference = Reference(source, kind, *(size or (None, None)))
        else:  # an http(s) URL: not ours to fetch at plan time; priced at the 1 MP minimum
            reference = Reference(source, kind)
        self._measured[source] = reference
        return reference

    def _sized(self, source: str, kind: Kind, data: bytes, total: int | None, field: str) -> Reference:
        size = header_size(data)
        if size is None:
            raise FluxValidationError(
                field=field, value=source, allowed="an image file (JPEG, PNG or WebP) whose header can be read"
            )
        return Reference(source, kind, size[0], size[1], total)

    def _file(self, source: str, field: str) -> tuple[bytes, int]:
        try:
            path = local_path(source)
        except ValueError:
            raise FluxValidationError(field=field, value=source, allowed="file:///absolute/path") from None
        if not path.is_absolute():
            raise FluxValidationError(field=field, value=source, allowed="an absolute path or file:///absolute/path")
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise OSError("not a regular file")
        except OSError as error:
            allowed = f"a readable image file on the worker ({error.strerror or error})"
            raise FluxValidationError(field=field, value=source, allowed=allowed) from None
        if size > self.max_inline_bytes:
            allowed = (
                f"a local file of at most {self.max_inline_bytes:,} bytes (this one is {size:,}): local "
                "references are sent inline as data: URIs; upload larger ones to S3 and pass s3://bucket/key, "
                "or save a smaller JPEG"
            )
            raise FluxValidationError(field=field, value=source, allowed=allowed)
        with path.open("rb") as handle:
            return handle.read(HEADER_BYTES), size

    # -- sending ---------------------------------------------------------------------------------

    def wire_url(self, source: str, field: str = "image_urls") -> str:
        """What the API is sent for ``source``: a presigned URL, a ``data:`` URI, or ``source`` itself."""
        if source in self._wire:
            return self._wire[source]
        kind = self.measure(source, field).kind
        if kind == "s3":
            url = self._remembered(source) or self._presign(source)
        elif kind == "file":
            path = local_path(source)
            data = path.read_bytes()
            if len(data) > self.max_inline_bytes:  # it grew since it was measured
                self._measured.pop(source, None)
                self.measure(source, field)
            mime = _mime(path, data)
            url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        else:
            url = source
        self._wire[source] = url
        return url

    def _presign(self, source: str) -> str:
        from airflow_provider_flux2.storage.s3 import split_s3_uri

        bucket, key = split_s3_uri(source)
        url = str(
            self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.expires_in
            )
        )
        if self.memory is not None:
            signed = dict(self.memory.get(MEMORY_KEY) or {})
            signed[source] = {"url": url, "expires_at": self.clock() + self.expires_in}
            self.memory.set(MEMORY_KEY, signed)
        return url

    def _remembered(self, source: str) -> str | None:
        """The URL signed for ``source`` by an earlier plan of this task, while it is still good."""
        if self.memory is None:
            return None
        entry = (self.memory.get(MEMORY_KEY) or {}).get(source)
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            return None
        left = float(entry.get("expires_at") or 0) - self.clock()
        return entry["url"] if left >= min(self.valid_for, REUSE_MIN_SECONDS) else None

    def resolve(self, request: FluxInput) -> tuple[FluxInput, list[Reference]]:
        """The request to send (storage references made fetchable, every reference measured) and
        the references as measured. A request without references is returned as it is."""
        sources = list(request.image_urls or [])
        if not sources:
            return request, []
        references = [self.measure(s, f"image_urls[{i}]") for i, s in enumerate(sources)]
        wire = [self.wire_url(s, f"image_urls[{i}]") for i, s in enumerate(sources)]
        sizes = [(r.width, r.height) if r.width and r.height else None for r in references]
        return request.with_references(wire, sizes), references

    def measured(self, request: FluxInput, sources: Sequence[str]) -> FluxInput:
        """``request`` with ``sources`` as its references and their measured sizes, for pricing only
        (nothing is presigned or inlined)."""
        from airflow_provider_flux2.models import build_input

        given = request.model_dump(mode="json", exclude_unset=True, exclude_none=True)  # defaults stay defaults
        with_sources = build_input(request.variant, **{**given, "image_urls": list(sources)})
        references = [self.measure(s, f"image_urls[{i}]") for i, s in enumerate(sources)]
        sizes = [(r.width, r.height) if r.width and r.height else None for r in references]
        return with_sources.with_references(list(sources), sizes)

    def attach(self, image: _Image) -> _Image:
        """A planned image whose request can be sent, with its measured references on its record.

        The image's identity (request hash, Idempotency-Key, params) was computed from the
        references as written, and is kept.
        """
        request, references = self.resolve(image.request)
        if not references:
            return image
        meta = {**image.meta, "references": [r.as_dict() for r in references]}
        return dataclasses.replace(image, request=request, meta=meta)  # type: ignore[type-var,unused-ignore]


def _total_from_content_range(value: Any) -> int | None:
    """``bytes 0-65535/1234567`` → 1234567."""
    if isinstance(value, str) and "/" in value:
        total = value.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    return None


def _mime(path: Path, data: bytes) -> str:
    from PIL import Image

    found = Image.MIME.get(header_format(data) or "")
    return found or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def references_of(images: Sequence[Any]) -> list[dict[str, Any]]:
    """Every distinct reference of a plan's images, as recorded (for logs and the manifest)."""
    seen: dict[str, dict[str, Any]] = {}
    for image in images:
        for entry in image.meta.get("references", []):
            seen.setdefault(entry["source"], entry)
    return list(seen.values())
