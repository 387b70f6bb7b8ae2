"""Write a batch's report beside its images: the manifest (JSON and CSV), the gallery and the PNG contact sheet."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from airflow_provider_flux2.models import ImageRecord
from airflow_provider_flux2.pricing import PriceTable
from airflow_provider_flux2.storage import uri_reader
from airflow_provider_flux2.storage.base import BatchLocation, Publisher, image_workers
from airflow_provider_flux2.storage.gallery import (
    CONTACT_SHEET_PNG,
    GALLERY_HTML,
    Card,
    contact_sheet_png,
    relative_link,
    render_gallery,
    thumb_name,
    thumbnail_jpeg,
)
from airflow_provider_flux2.storage.manifest import Manifest, build_manifest, write_manifest


def write_batch_report(
    publisher: Publisher,
    location: BatchLocation,
    records: Iterable[ImageRecord | Mapping[str, Any]],
    prices: PriceTable | Mapping[str, Any] | None = None,
    *,
    reader: Callable[[str], bytes] | None = None,
    title: str | None = None,
    generated_at: datetime | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``manifest.json``, ``manifest.csv``, ``index.html`` (with ``thumbs/``) and ``contact_sheet.png``.

    The manifest is written first: it is the audit record, and it must exist even if an image
    cannot be read back for its thumbnail.

    :param publisher: where the batch folder is.
    :param location: the batch folder (dag, run, task, map index).
    :param records: every image of the batch (dropped and superseded ones included: they were paid for).
    :param prices: the price table used (default: the built-in table).
    :param reader: reads an image's bytes from its URI for the thumbnails (default: ``publisher.get`` for
        images under the publisher, :func:`~airflow_provider_flux2.storage.uri_reader` for others, e.g.
        dropped images left in staging).
    :param title: the gallery's heading (default: ``dag / run / task``).
    :param generated_at: when the report is made (default: now).
    :param context: extra top-level manifest fields (e.g. the checks applied).
    :return: ``{"manifest_uri", "manifest_csv_uri", "gallery_uri", "contact_sheet_uri"}``.
    """
    title = title or " / ".join(location.parts())
    base_context = {
        "dag_id": location.dag_id,
        "run_id": location.run_id,
        "task_id": location.task_id,
        "map_index": location.map_index,
        "folder_uri": publisher.folder_uri(location),
    }
    manifest = build_manifest(records, prices, generated_at=generated_at, context={**base_context, **(context or {})})
    manifest_uri, manifest_csv_uri = write_manifest(publisher, location, manifest)
    cards, thumbs = _write_thumbnails(publisher, location, manifest, reader or _reader_for(publisher))
    page = render_gallery(manifest, cards, title).encode("utf-8")
    gallery_uri = publisher.put_named(location, GALLERY_HTML, page, "text/html; charset=utf-8")
    sheet = contact_sheet_png(manifest, thumbs, title=title)
    contact_sheet_uri = publisher.put_named(location, CONTACT_SHEET_PNG, sheet, "image/png")
    return {
        "manifest_uri": manifest_uri,
        "manifest_csv_uri": manifest_csv_uri,
        "gallery_uri": gallery_uri,
        "contact_sheet_uri": contact_sheet_uri,
    }


#: Thumbnails made at once (each reads one image back, decodes it and writes a small JPEG).
THUMBNAIL_WORKERS = 8
#: What the thumbnail workers may hold at once, as the largest image's bytes plus 4 bytes a pixel decoded.
THUMBNAIL_MEMORY = 512 * 1024 * 1024


def thumbnail_workers(rows: Iterable[Mapping[str, Any]]) -> int:
    """Thumbnails made at once: :data:`THUMBNAIL_WORKERS`, fewer for large images (see :data:`THUMBNAIL_MEMORY`)."""
    largest = max((int(row.get("width") or 0) * int(row.get("height") or 0) for row in rows), default=0)
    return image_workers(largest, THUMBNAIL_WORKERS, THUMBNAIL_MEMORY)


def _write_thumbnails(
    publisher: Publisher, location: BatchLocation, manifest: Manifest, reader: Callable[[str], bytes]
) -> tuple[list[Card], list[bytes | None]]:
    """One thumbnail per row, made concurrently (reading back, decoding and writing overlap), in row order."""
    folder = publisher.folder_uri(location)

    def one(row: Mapping[str, Any]) -> tuple[Card, bytes | None]:
        made = thumbnail_jpeg(_read(reader, row.get("uri")))
        if made is None:
            return Card(row), None
        data, size = made
        name = thumb_name(row)
        publisher.put_named(location, name, data, "image/jpeg")
        return Card(row, thumb=name, thumb_size=size, link=relative_link(folder, row.get("uri"))), data

    workers = thumbnail_workers(manifest.rows)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flux-thumbs") as pool:
        made = list(pool.map(one, manifest.rows))
    return [card for card, _ in made], [data for _, data in made]


def _reader_for(publisher: Publisher) -> Callable[[str], bytes]:
    others = uri_reader(aws_conn_id=getattr(publisher, "aws_conn_id", None))

    def read(uri: str) -> bytes:
        return publisher.get(uri) if uri.startswith(publisher.base_uri + "/") else others(uri)

    return read


def _read(reader: Callable[[str], bytes], uri: str | None) -> bytes | None:
    if not uri:
        return None
    try:
        return reader(uri)
    except FileNotFoundError:
        return None  # shown as "no image"; the manifest row still says where it should have been
