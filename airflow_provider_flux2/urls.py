"""The URL, host and reference rules every layer needs: the bottom of the package (no imports of ours).

What a host, a result URL, an API base URL and a reference image may be is decided here, once: the
protocol (downloads), the connection (its base URL), the models (``image_urls``), the operators'
arguments and the reference resolver all ask these functions.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

#: What a reference image is: a file in S3, a local file, an http(s) URL or an inline ``data:`` URI.
Kind = Literal["s3", "file", "url", "data"]
#: What a reference may be, for messages.
REFERENCE_ALLOWED = "an http(s) URL, a data:image/ URI, s3://bucket/key, file:///absolute/path or an absolute path"


def is_loopback_host(host: str | None) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1``: the only hosts plain ``http`` may go to."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$", re.IGNORECASE)


def is_valid_host(host: str | None) -> bool:
    """A DNS host name (labels of letters, digits, ``-``; ≤ 253 chars) or an IP literal."""
    if not host:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    name = host.rstrip(".")
    return 0 < len(name) <= 253 and all(_HOST_LABEL.match(label) for label in name.split("."))


def url_for_humans(url: str) -> str:
    """A URL fit for a message: scheme, host and path, without query, fragment or credentials."""
    if url.startswith("data:"):
        return url[:40] + ("..." if len(url) > 40 else "")
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0][:200]
    return f"{parts.scheme}://{netloc}{parts.path}"[:300]


def download_url_problem(url: str, plain_http_hosts: Sequence[str] = ()) -> str | None:
    """Why a result URL (or a redirect target) must not be fetched, or ``None`` when it may be.

    ``https`` to any valid host; plain ``http`` only to loopback (the emulator), because anything
    else would carry the image — and, through a misconfigured proxy, worse — in clear text.
    ``plain_http_hosts`` are further hosts plain ``http`` may go to (an emulator in a container
    network, allowed explicitly by the connection's ``allow_plain_http``).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # an out-of-range or non-numeric port raises here
    except ValueError as error:
        return f"not a URL ({error})"
    if parts.scheme not in ("https", "http"):
        return f"scheme {parts.scheme or '(none)'!r} is not allowed (https, or http to loopback)"
    if not is_valid_host(host):
        return f"host {host or '(none)'!r} is not a valid host name"
    if parts.username or parts.password:
        return "credentials in a URL are not allowed"
    allowed = {h.lower() for h in plain_http_hosts}
    if parts.scheme == "http" and not is_loopback_host(host) and (host or "").lower() not in allowed:
        return "plain http is allowed only to loopback; use https"
    return None


def base_url_problem(url: str, *, allow_plain_http: bool = False) -> str | None:
    """Why an API base URL is refused: ``https`` unless loopback (or explicitly allowed), a valid host, no query."""
    host = urlsplit(url).hostname if "://" in url else None
    problem = download_url_problem(url, (host,) if allow_plain_http and host else ())
    if problem is not None:
        return problem
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        return "a base URL takes no query or fragment"
    return None


def reference_kind(value: Any) -> Kind | None:
    """What a reference string is, or ``None`` when it is none of the accepted forms."""
    if not isinstance(value, str) or not value:
        return None
    if value.startswith("s3://"):
        return "s3"
    if value.startswith("file://") or value.startswith("/"):
        return "file"
    if value.startswith(("http://", "https://")):
        return "url"
    if value.startswith("data:image/"):
        return "data"
    return None


def is_storage_reference(value: Any) -> bool:
    """``s3://`` and local files: what must be resolved before the API can read it."""
    return reference_kind(value) in ("s3", "file")


def storage_reference_problem(value: str) -> str | None:
    """For an ``s3://`` or local reference: ``None`` when it is well formed, else what is wrong."""
    if value.startswith("s3://"):
        bucket, _, key = value[len("s3://") :].partition("/")
        return None if bucket and key and not key.endswith("/") else "s3://bucket/key naming one object"
    if value.startswith("file://") and not value.startswith("file:///"):
        return "file:///absolute/path (a file on the worker, no host)"
    return None


def reference_url_problem(url: Any) -> str | None:
    """Why an ``image_urls`` entry cannot be sent: ``http(s)://`` with a valid host, or ``data:image/``."""
    if not isinstance(url, str):
        return f"{type(url).__name__} is not a URL"
    if url.startswith("data:image/"):
        return None if "," in url else "a data: URI needs a comma before its payload"
    if not re.match(r"^https?://", url, re.IGNORECASE):
        return "each entry must be an http(s) URL or a data:image/ URI"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError as error:
        return f"not a URL ({error})"
    if not is_valid_host(host):
        return f"an http(s) URL needs a valid host (got {host or 'none'!r})"
    return None


def image_url_problem(url: Any) -> str | None:
    """Why an ``image_urls`` entry as a user writes it is refused: a URL the API can fetch, or a
    reference in storage (``s3://bucket/key``, ``file:///…``, an absolute path) that
    :mod:`~airflow_provider_flux2.references` presigns or inlines while planning."""
    if isinstance(url, str) and is_storage_reference(url):
        return storage_reference_problem(url)
    problem = reference_url_problem(url)
    if problem is None or not isinstance(url, str):
        return problem
    return f"{problem}, or s3://bucket/key, file:///absolute/path or an absolute path"
