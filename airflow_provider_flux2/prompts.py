"""Prompt sources: catalogue rows from CSV/JSON/JSONL (local or S3), prompts from a template, and
change detection against the last published manifest.

The nightly refresh pays only for products whose catalogue row changed: each row is hashed, the
hash travels on the image's record (``source_hash``) into the manifest, and the next run compares.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import ImageRecord


def parse_rows(data: bytes, name: str) -> list[dict[str, Any]]:
    """Rows of a ``.csv`` (header row), ``.json`` (a list of objects) or ``.jsonl`` document."""
    text = data.decode("utf-8-sig")
    suffix = name.rsplit(".", 1)[-1].lower()
    if suffix == "csv":
        return [dict(row) for row in csv.DictReader(io.StringIO(text))]
    if suffix in ("jsonl", "ndjson"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif suffix == "json":
        rows = json.loads(text)
    else:
        raise FluxValidationError(field="catalogue", value=name, allowed="a .csv, .json or .jsonl document")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise FluxValidationError(field="catalogue", value=name, allowed="a list of objects (one per product)")
    return rows


def read_rows(uri: str, reader: Callable[[str], bytes]) -> list[dict[str, Any]]:
    """Catalogue rows from a URI read with ``reader`` (e.g. :func:`~airflow_provider_flux2.storage.uri_reader`)."""
    return parse_rows(reader(uri), uri)


def row_hash(row: Mapping[str, Any]) -> str:
    """A stable hash of a catalogue row: key order and surrounding whitespace do not change it."""
    canonical = {str(k).strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def render_prompt(template: str, row: Mapping[str, Any]) -> str:
    """``template`` with ``{column}`` fields filled from the row; a missing column is a clear error."""
    needed = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    missing = sorted(needed - set(row))
    if missing:
        raise FluxValidationError(
            field="prompt_template",
            value=template,
            allowed=f"columns present in the row (missing: {', '.join(missing)})",
        )
    return template.format_map({k: ("" if v is None else v) for k, v in row.items()})


def split_colours(value: Any) -> list[str]:
    """``"#1A2B3C; #FFFFFF"`` (or a list) → ``["#1A2B3C", "#FFFFFF"]``."""
    if not value:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).replace(",", ";").split(";") if part.strip()]


@dataclass(frozen=True)
class RefreshPlan:
    """What a refresh must generate, and what it carries forward unchanged from the last manifest.

    :param items: prompt items for ``FluxGenerateImageOperator(prompts=...)`` (with ``id`` and ``source_hash``).
    :param carried: records of unchanged products, from the last manifest (cost 0 in this run).
    """

    items: list[dict[str, Any]] = field(default_factory=list)
    carried: list[dict[str, Any]] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "to_generate": len(self.items),
            "new": len(self.new),
            "changed": len(self.changed),
            "unchanged": len(self.unchanged),
        }


def previous_images(manifest: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Published rows of a manifest by item id (``extra.id``): the images a refresh can keep."""
    rows = (manifest or {}).get("images") or []
    kept = {}
    for row in rows:
        item_id = (row.get("extra") or {}).get("id")
        if item_id is not None and row.get("status") == "succeeded" and row.get("uri") and row.get("source_hash"):
            kept[str(item_id)] = row
    return kept


def plan_refresh(
    rows: Iterable[Mapping[str, Any]],
    *,
    template: str,
    previous_manifest: Mapping[str, Any] | None = None,
    key: str = "sku",
    size_column: str | None = "size",
    colours_column: str | None = "colours",
) -> RefreshPlan:
    """Prompt items for rows that are new or changed since ``previous_manifest``; carry the rest.

    :param rows: catalogue rows; ``key`` identifies a product across runs.
    :param template: a prompt template with ``{column}`` fields.
    :param previous_manifest: the last published manifest (``None`` on the first run: everything is new).
    :param size_column: a column holding the image size (preset or ``WxH``), when present.
    :param colours_column: a column holding HEX colours (``#RRGGBB`` separated by ``;``), when present.
    """
    previous = previous_images(previous_manifest)
    plan = RefreshPlan()
    seen: set[str] = set()
    for number, row in enumerate(rows, 1):
        item_id = str(row.get(key) or "").strip()
        if not item_id:
            raise FluxValidationError(field=f"row {number}.{key}", value=row.get(key), allowed="a non-empty product id")
        if item_id in seen:
            raise FluxValidationError(field=f"row {number}.{key}", value=item_id, allowed="unique product ids")
        seen.add(item_id)
        digest = row_hash(row)
        old = previous.get(item_id)
        if old is not None and old["source_hash"] == digest:
            plan.unchanged.append(item_id)
            plan.carried.append(old)
            continue
        (plan.changed if old is not None else plan.new).append(item_id)
        item: dict[str, Any] = {"prompt": render_prompt(template, row), "id": item_id, "source_hash": digest}
        if size_column and row.get(size_column):
            item["image_size"] = str(row[size_column]).strip()
        if colours_column and split_colours(row.get(colours_column)):
            item["colors"] = split_colours(row.get(colours_column))
        plan.items.append(item)
    from_run = (previous_manifest or {}).get("run_id")
    # Carried images follow the generated ones, so indices stay unique within the batch.
    plan.carried[:] = [_carried(row, len(plan.items) + n, from_run) for n, row in enumerate(plan.carried)]
    return plan


def _carried(row: Mapping[str, Any], index: int, from_run: str | None) -> dict[str, Any]:
    """A manifest row as a record of this run: same image and URI, nothing billed again."""
    fields = {k: row[k] for k in ImageRecord.model_fields if k in row}
    fields.update(index=index, cost_usd="0.000")
    fields["extra"] = {**(row.get("extra") or {}), "carried_from": from_run}
    return ImageRecord.model_validate(fields).to_xcom()


def prompt_items(value: Any, *, template: str | None = None, id_column: str | None = None) -> list[Any]:
    """What a ``@task.flux2`` function returned, as ``FluxGenerateImageOperator(prompts=...)`` items.

    ``value`` is one prompt (a string, or a dict with ``prompt``) or an iterable of prompts and rows:
    dicts, SQLAlchemy rows, named tuples, dataclasses, or a pandas DataFrame (one row per image). A row
    without a ``prompt`` key is rendered through ``template`` (``{column}`` fields); ``id_column``
    names the column that identifies it (the record's ``id``), and its hash becomes ``source_hash``.

    :raises FluxValidationError: naming the entry and what is accepted.
    """
    if isinstance(value, (str, Mapping)) or _row_mapping(value) is not None:
        value = [value]
    elif hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame
        value = value.to_dict(orient="records")
    if value is None or not isinstance(value, Iterable):
        raise FluxValidationError(
            field="return value", value=value, allowed="a prompt, a dict, or a list of prompts, dicts or rows"
        )
    items: list[Any] = []
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            items.append(entry)
            continue
        row = entry if isinstance(entry, Mapping) else _row_mapping(entry)
        if row is None:
            raise FluxValidationError(
                field=f"return value[{index}]",
                value=entry,
                allowed="a prompt string, a dict, or a row with named columns (a plain tuple has no column names)",
            )
        row = {str(k): v for k, v in row.items()}
        if "prompt" in row:
            items.append(row)
            continue
        if template is None:
            raise FluxValidationError(
                field=f"return value[{index}]",
                value=entry,
                allowed="a row with a 'prompt' column, or prompt_template= on the decorator to build one",
            )
        item: dict[str, Any] = {"prompt": render_prompt(template, row), "source_hash": row_hash(row)}
        if id_column is not None:
            if row.get(id_column) in (None, ""):
                raise FluxValidationError(
                    field=f"return value[{index}].{id_column}", value=row.get(id_column), allowed="a non-empty id"
                )
            item["id"] = str(row[id_column])
        items.append(item)
    return items


def _row_mapping(entry: Any) -> Mapping[str, Any] | None:
    """The columns of a row-like object (SQLAlchemy ``Row``, named tuple, dataclass), else ``None``."""
    if hasattr(entry, "_mapping"):
        return dict(entry._mapping)
    if isinstance(entry, tuple) and hasattr(entry, "_asdict"):
        return dict(entry._asdict())
    if dataclasses.is_dataclass(entry) and not isinstance(entry, type):
        return dataclasses.asdict(entry)
    return None
