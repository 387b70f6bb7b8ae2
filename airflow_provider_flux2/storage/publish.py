"""Publish a checked batch: copy each passing image to its deterministic key with its object metadata."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from airflow_provider_flux2.models import ImageRecord
from airflow_provider_flux2.storage.base import CONTENT_TYPES, EXTENSIONS, BatchLocation, Publisher, content_hash
from airflow_provider_flux2.storage.naming import name_fields, safe_segment

#: The metadata key holding an object's SHA-256, so a retry can tell an object it already stored.
CONTENT_SHA256 = "content-sha256"


def object_metadata(record: ImageRecord) -> dict[str, str]:
    """The metadata stored with an image object: enough to trace and price it without the manifest.

    The prompt itself is not stored (S3 allows 2 KB of metadata, and prompts may be private); its
    SHA-256 is, so an object can be matched to its manifest row.
    """
    values: dict[str, Any] = {
        "prompt-sha256": hashlib.sha256(record.prompt.encode("utf-8")).hexdigest(),
        "seed": record.seed,
        "model": record.model,
        "billed-mp": record.billed_mp,
        "cost-usd": record.cost_usd,
        "index": record.index,
        "attempt": record.attempt,
        "run-id": record.run_id,
    }
    return {key: str(value) for key, value in values.items() if value is not None}


def content_type_of(record: ImageRecord) -> str:
    """The record's content type, or the one its ``output_format`` implies."""
    return record.content_type or CONTENT_TYPES.get(record.output_format.lower(), "application/octet-stream")


def is_publishable(record: ImageRecord) -> bool:
    """A succeeded image with a stored source that failed none of its checks."""
    return record.status == "succeeded" and bool(record.uri) and all(v.passed for v in record.checks)


def publish_records(
    records: Iterable[ImageRecord | Mapping[str, Any]],
    publisher: Publisher,
    location: BatchLocation,
    *,
    reader: Callable[[str], bytes],
) -> list[ImageRecord]:
    """Copy every publishable image to ``publisher`` under ``location``; return the batch with final URIs.

    Images that are not publishable (failed, dropped, failing a check) keep their record unchanged,
    so the manifest written after this still shows where they were. An image already under the
    destination (stored there by the generate step, or published by an earlier run) is not copied again,
    nor one an earlier try of this task published before the store failed (same key, same SHA-256):
    a retry uploads only what is missing.

    :param reader: reads an image's bytes from its current URI (e.g. the staging publisher's ``get``).
    """
    batch = [r if isinstance(r, ImageRecord) else ImageRecord.model_validate(r) for r in records]
    return [_publish(record, publisher, location, reader) if is_publishable(record) else record for record in batch]


def _publish(
    record: ImageRecord, publisher: Publisher, location: BatchLocation, reader: Callable[[str], bytes]
) -> ImageRecord:
    assert record.uri is not None
    ctype = content_type_of(record)
    # Already under this destination (the generate step stored straight there, or an earlier run
    # published it and the batch carries it forward): nothing to read, nothing to copy.
    if record.uri.startswith(publisher.base_uri + "/"):
        return record
    data = reader(record.uri)
    digest = content_hash(data)
    uri = publisher.image_uri(location, record.index, digest, ctype, name_fields(record))
    if not _holds(publisher, uri, digest):
        publisher.put(uri, data, ctype, {**object_metadata(record), CONTENT_SHA256: digest})
    stored_at = datetime.now(timezone.utc).isoformat()
    return record.model_copy(
        update={
            "uri": uri,
            "content_hash": digest,
            "content_type": ctype,
            "size_bytes": len(data),
            "timings": record.timings.model_copy(update={"stored_at": stored_at}),
        }
    )


def _holds(publisher: Publisher, uri: str, digest: str) -> bool:
    """Whether ``uri`` already holds these bytes, by the SHA-256 stored with it."""
    try:
        return publisher.head(uri).metadata.get(CONTENT_SHA256) == digest
    except Exception:  # missing, or the store will not say (a write-only policy): store it, same key
        return False


#: The index of a "latest" prefix: item id → where its current image came from.
LATEST_INDEX = "latest.json"


def publish_latest(
    records: Iterable[ImageRecord | Mapping[str, Any]],
    latest: Publisher,
    *,
    reader: Callable[[str], bytes],
    run_id: str | None = None,
) -> dict[str, str]:
    """Keep one stable object per item id under ``latest``: ``{latest}/{id}.{ext}`` is always its current image.

    Only publishable records with an id count; an image whose bytes are already there is not copied
    again. ``latest.json`` beside them maps every id ever published to its current object, the dated
    copy it came from and when — items that left the catalogue keep their last image.

    :returns: ``{item id: latest URI}`` of what this batch updated.
    """
    import json

    index_uri = f"{latest.base_uri}/{LATEST_INDEX}"
    try:
        index: dict[str, Any] = json.loads(latest.get(index_uri))
    except FileNotFoundError:
        index = {}
    updated: dict[str, str] = {}
    for record in (r if isinstance(r, ImageRecord) else ImageRecord.model_validate(r) for r in records):
        item_id = (record.extra or {}).get("id")
        if not is_publishable(record) or item_id in (None, "") or record.uri is None:
            continue
        ctype = content_type_of(record)
        ext = EXTENSIONS.get(ctype, "bin")
        uri = f"{latest.base_uri}/{safe_segment(str(item_id))}.{ext}"
        digest = record.content_hash
        if digest is None or not latest.exists(uri) or latest.head(uri).metadata.get(CONTENT_SHA256) != digest:
            data = reader(record.uri)
            digest = content_hash(data)
            latest.put(uri, data, ctype, {**object_metadata(record), CONTENT_SHA256: digest, "item-id": item_id})
            updated[str(item_id)] = uri
        index[str(item_id)] = {
            "uri": uri,
            "source_uri": record.uri,
            "content_hash": digest,
            "run_id": run_id if str(item_id) in updated else index.get(str(item_id), {}).get("run_id", run_id),
            "updated_at": datetime.now(timezone.utc).isoformat()
            if str(item_id) in updated
            else index.get(str(item_id), {}).get("updated_at"),
        }
    latest.put(index_uri, json.dumps(index, indent=2, sort_keys=True).encode("utf-8"), "application/json")
    return updated
