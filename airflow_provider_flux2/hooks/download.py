"""Downloading and verifying output images: streamed, size-capped, redirect-checked, decoded once.

The hook (:meth:`FluxHook.download <airflow_provider_flux2.hooks.flux.FluxHook.download>`) owns the
connection, its clients and its retry policy; this module owns what happens to one output URL: the
download within the connection's ``download_deadline`` and ``max_download_mb``, every redirect hop
checked like the first URL, an expired URL told apart (the hook reads the run again for a fresh one),
and the bytes verified — format and size from the header before a pixel is decoded, then one decode
behind Pillow's bomb guard.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx
from PIL import Image

import airflow_provider_flux2.hooks.transport as transport
from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import FluxAPIError, FluxImageError, FluxValidationError
from airflow_provider_flux2.formats import image_format
from airflow_provider_flux2.hooks.connection import FluxConnectionConfig
from airflow_provider_flux2.image_header import HeaderError, read_header
from airflow_provider_flux2.models import DEFAULT_SIZE, Run, size_of
from airflow_provider_flux2.quality.decoding import decode_image

#: Output URLs answer these when they have expired; the run is re-read for a fresh URL.
EXPIRED_URL_STATUSES = frozenset({403, 404, 410})
DEFAULT_MAX_DOWNLOAD_BYTES = 128 * 1024 * 1024
#: How long to pause before attempt ``n`` of a download that failed with ``error`` (the hook's policy).
Pause = Callable[[protocol.ApiRequest, int, Exception], float]


@dataclass(frozen=True)
class DownloadedImage:
    """Verified bytes of one output image (kept in memory only until stored)."""

    data: bytes = field(repr=False)
    content_type: str
    width: int
    height: int
    format: str
    url: str = field(repr=False)

    @property
    def size_bytes(self) -> int:
        return len(self.data)


class ExpiredURL(Exception):
    """An output URL answered 403/404/410: read the run again for a fresh one."""


def fetch(client: httpx.Client, config: FluxConnectionConfig, url: str, run_id: str, pause: Pause) -> tuple[bytes, str]:
    """The bytes and content type at ``url`` (a ``data:`` URI decoded in place); transient failures are
    tried again after ``pause``; an expired URL raises :class:`ExpiredURL`."""
    if url.startswith("data:"):
        return decode_data_uri(url, run_id)
    request = protocol.ApiRequest("GET", url, run_id=run_id)
    attempt = 0
    while True:
        attempt += 1
        try:
            return stream(client, config, url, run_id)
        except (FluxAPIError, httpx.TransportError) as error:
            time.sleep(pause(request, attempt, error))


def stream(client: httpx.Client, config: FluxConnectionConfig, url: str, run_id: str) -> tuple[bytes, str]:
    """One download within ``download_deadline``, following at most ``max_redirects`` checked hops."""
    current = url
    with transport.deadline(config.download_deadline):
        for _hop in range(config.max_redirects + 1):
            problem = protocol.download_url_problem(current, config.plain_http_hosts)
            if problem is not None:
                what = "the output URL" if current == url else f"a redirect from {protocol.url_for_humans(url)}"
                raise FluxImageError(
                    f"Refused to download {protocol.url_for_humans(current)} ({what}): {problem}", run_id=run_id
                )
            with _opened(client, current, url, run_id) as response:
                if response.is_redirect:
                    current = urljoin(current, response.headers.get("location", ""))
                    continue
                if response.status_code in EXPIRED_URL_STATUSES:
                    raise ExpiredURL()
                return _body(response, config, current, run_id)
    raise FluxImageError(
        f"Too many redirects (more than {config.max_redirects}) downloading {protocol.url_for_humans(url)}",
        run_id=run_id,
    )


def _body(response: httpx.Response, config: FluxConnectionConfig, current: str, run_id: str) -> tuple[bytes, str]:
    """The answer's body under the download cap (64 KiB of an error's), or the API error it carries."""
    try:
        body = transport.read_body(response, config.max_download_bytes if response.status_code < 400 else 64 * 1024)
    except protocol.BodyTooLargeError:
        raise FluxImageError(
            f"Image at {protocol.url_for_humans(current)} exceeds the "
            f"{config.max_download_bytes}-byte download cap (connection extra max_download_mb)",
            run_id=run_id,
        ) from None
    except protocol.BodyDecodingError as error:
        raise FluxImageError(f"Image at {protocol.url_for_humans(current)}: {error}", run_id=run_id) from None
    if response.status_code >= 400:
        raise protocol.error_from_response(
            response.status_code, response.headers, body, run_id=run_id, secrets=config.secrets
        )
    return body, response.headers.get("content-type", "")


@contextlib.contextmanager
def _opened(client: httpx.Client, current: str, first: str, run_id: str) -> Iterator[httpx.Response]:
    """``GET current``; a redirect whose ``Location`` httpx cannot even parse is our error."""
    try:
        with client.stream("GET", current) as response:
            yield response
    except httpx.InvalidURL as error:
        raise FluxImageError(
            f"Refused to download {protocol.url_for_humans(first)}: a redirect to an invalid URL ({error})",
            run_id=run_id,
        ) from None


def size_of_run(run: Run, *, strict: bool = False) -> tuple[int, int]:
    """The size a run asked for (the API's default when its input does not say)."""
    try:
        return size_of((run.input or {}).get("image_size") or DEFAULT_SIZE)
    except FluxValidationError:
        if strict:
            raise
        return size_of(DEFAULT_SIZE)


def decode_data_uri(url: str, run_id: str) -> tuple[bytes, str]:
    """The bytes and media type of a base64 ``data:`` URI (the API may inline small outputs)."""
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise FluxImageError("Unsupported data: URI (not base64)", run_id=run_id)
    try:
        return base64.b64decode(payload, validate=True), header[5:].split(";")[0]
    except binascii.Error as error:
        raise FluxImageError(f"Undecodable data: URI ({error})", run_id=run_id) from None


def verify_image(
    data: bytes,
    content_type: str,
    *,
    width: int,
    height: int,
    output_format: str,
    url: str = "",
    run_id: str | None = None,
) -> DownloadedImage:
    """Check format and size from the image's header, then decode the bytes (the one decoder, with
    Pillow's bomb guard).

    The header is read first, so an image of the wrong size (or more pixels than Pillow's limit) is
    refused before a single pixel is decoded; any error Pillow raises on hostile bytes is ours.
    """
    fmt = image_format(output_format)
    want = fmt.pillow if fmt else output_format.upper()
    found_format, size = header_of(data, run_id)
    if found_format != want:
        raise FluxImageError(f"Expected a {want} image, got {found_format}", run_id=run_id)
    if size != (width, height):
        raise FluxImageError(f"Expected {width}x{height}, got {size[0]}x{size[1]}", run_id=run_id)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise FluxImageError(f"{width}x{height} is more pixels than Pillow's limit ({limit})", run_id=run_id)
    decoded = decode_image(data)  # never raises: Pillow's errors on hostile bytes come back as text
    if decoded.image is None:
        error = (decoded.error or "")[:200]
        raise FluxImageError(f"Downloaded bytes are not a readable image ({error})", run_id=run_id)
    decoded.image.close()
    declared = content_type.split(";")[0].strip().lower()
    expected_type = fmt.content_type if fmt else f"image/{output_format}"
    if declared and declared not in (expected_type, "application/octet-stream", "binary/octet-stream"):
        raise FluxImageError(f"Expected content type {expected_type}, got {declared}", run_id=run_id)
    return DownloadedImage(
        data=data, content_type=expected_type, width=width, height=height, format=output_format, url=url
    )


def header_of(data: bytes, run_id: str | None) -> tuple[str | None, tuple[int, int]]:
    """Format and size from the image header alone (nothing decoded), as a :class:`FluxImageError`."""
    try:
        return read_header(data)
    except HeaderError as error:
        if error.bomb:
            message = f"Image header declares more pixels than Pillow's limit ({Image.MAX_IMAGE_PIXELS}): {error}"
        else:
            message = f"Downloaded bytes are not a readable image ({error})"
        raise FluxImageError(message, run_id=run_id) from None


__all__ = [
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "EXPIRED_URL_STATUSES",
    "DownloadedImage",
    "ExpiredURL",
    "decode_data_uri",
    "fetch",
    "header_of",
    "size_of_run",
    "stream",
    "verify_image",
]
