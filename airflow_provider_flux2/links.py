"""The task's "FLUX images" link: a URL a browser opens from the Airflow UI.

Airflow 3 computes an operator's extra links in the worker when the task ends and stores them as
XCom; the UI only reads that value. So the link is made here, with the task's own connection:

* a prefix listed in ``[flux2] public_base_urls`` → its public URL (the gallery page itself);
* ``s3://`` → a presigned URL (``[flux2] link_expiry_seconds``) made with the task's AWS connection,
  so MinIO links point at MinIO's own endpoint. A presigned page cannot sign the thumbnails it links,
  so for a gallery the presigned link opens its ``contact_sheet.png`` (every image, id and outcome in
  one picture); a folder opens as a presigned listing;
* ``file://`` → ``[flux2] local_link_template`` (the folder path by default), or whatever an Airflow UI
  plugin registered with :func:`set_local_link`;
* any other scheme → the URI as it is.

A task that wrote no gallery (it failed first) has an empty link, and nothing looks up a missing XCom.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlparse

log = logging.getLogger(__name__)
#: The attribute of the running operator that holds its gallery (or folder) URI.
GALLERY_ATTRIBUTE = "_flux_gallery_uri"
GALLERY_PAGE = "index.html"
CONTACT_SHEET = "contact_sheet.png"

_local_link: Callable[[str], str] | None = None


def set_local_link(builder: Callable[[str], str] | None) -> None:
    """Make ``file://`` links with ``builder(absolute path)`` (e.g. an Airflow UI view serving the files).

    ``None`` goes back to ``[flux2] local_link_template``.
    """
    global _local_link
    _local_link = builder


def remember_gallery(ti: Any, operator: Any, key: str, uri: str) -> None:
    """Push the gallery URI as XCom ``key`` and keep it on the operator for its link."""
    ti.xcom_push(key=key, value=uri)
    setattr(operator, GALLERY_ATTRIBUTE, uri)


def operator_link(operator: Any) -> str:
    """The link of a task that just ran: empty when it stored no gallery."""
    uri = getattr(operator, GALLERY_ATTRIBUTE, None)
    if not uri:
        return ""
    return gallery_link(uri, aws_conn_id=getattr(operator, "aws_conn_id", None))


def gallery_link(uri: str, *, aws_conn_id: str | None = None) -> str:
    """A URL a browser opens for a gallery page or a folder stored at ``uri``."""
    public = public_url(uri)
    if public is not None:
        return public
    scheme = urlparse(uri).scheme
    if scheme == "s3":
        try:
            return presigned_url(uri, aws_conn_id=aws_conn_id)
        except Exception:  # a link must never fail the task: fall back to the console
            log.warning("Could not presign a link for %s; linking the S3 console instead", uri, exc_info=True)
            return console_url(uri)
    if scheme in ("file", ""):
        return local_link(uri)
    return uri


def public_url(uri: str) -> str | None:
    """``uri`` under the longest prefix of ``[flux2] public_base_urls``, as its public URL; else ``None``."""
    from airflow_provider_flux2.config import get_option

    raw = get_option("public_base_urls").strip()
    if not raw:
        return None
    try:
        mapping = json.loads(raw)
    except ValueError:
        log.warning("[flux2] public_base_urls is not a JSON object; ignoring it")
        return None
    for prefix in sorted(mapping, key=len, reverse=True):
        base = prefix.rstrip("/")
        if uri == base or uri.startswith(base + "/"):
            rest = uri[len(base) :].lstrip("/")
            return "/".join(p for p in (str(mapping[prefix]).rstrip("/"), quote(rest)) if p)
    return None


def presigned_url(uri: str, *, aws_conn_id: str | None = None, expires_in: int | None = None) -> str:
    """A presigned GET of the gallery's contact sheet (or of the object), or a presigned listing of a folder."""
    from airflow_provider_flux2.config import get_int
    from airflow_provider_flux2.storage.s3 import s3_client, split_s3_uri

    bucket, key = split_s3_uri(uri)
    client = s3_client(aws_conn_id)
    expires = min(expires_in or get_int("link_expiry_seconds"), 7 * 24 * 3600)
    name = key.rsplit("/", 1)[-1]
    if name == GALLERY_PAGE:
        key = key[: -len(GALLERY_PAGE)] + CONTACT_SHEET
    elif "." not in name:  # a folder: its listing
        prefix = key.rstrip("/") + "/" if key else ""
        params = {"Bucket": bucket, "Prefix": prefix}
        return str(client.generate_presigned_url("list_objects_v2", Params=params, ExpiresIn=expires))
    return str(client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires))


def console_url(uri: str) -> str:
    """The AWS console's view of the folder holding ``uri``."""
    bucket, _, key = uri[5:].partition("/")
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={quote(folder)}"


def local_link(uri: str) -> str:
    """The link of a ``file://`` gallery: the registered builder's, else ``[flux2] local_link_template``."""
    from airflow_provider_flux2.config import get_option
    from airflow_provider_flux2.storage.local import path_of

    path = str(path_of(uri))
    if _local_link is not None:
        return _local_link(path)
    template = get_option("local_link_template") or "{path}"
    return template.format(path=path, quoted_path=quote(path, safe=""))
