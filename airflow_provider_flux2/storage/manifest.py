"""The batch manifest: ``manifest.json`` and ``manifest.csv`` beside the images.

One row per image — every :class:`~airflow_provider_flux2.models.ImageRecord` field, its check
verdicts, its final URI and what it was billed — and a summary whose money is the exact ``Decimal``
sum of the rows.

The cost rule: every image counts at its ``cost_usd`` — what the generate step recorded as billed
(the API's cost for a run that succeeded, ``0`` for one the API did not bill) — except records whose
run ``failed`` or is still ``pending``, which count 0 whatever they carry, because the API never
bills a failed run and a pending one has no final figure. So an image dropped by a quality check,
or superseded by a regeneration, was paid for and stays in the total (``dropped_cost_usd`` and
``superseded_cost_usd`` say how much of the total bought images that were not delivered); so does a
run that succeeded but was moderated or skipped for its NSFW flag.

Runflow Sentinel's evaluations (the quality step's ``sentinel=True``) are billed apart from the images:
each row carries its evaluation's verdict (``sentinel``: ``sentinel.*`` columns in the CSV) and what the
API billed for it (``evaluation_cost_usd``); the summary's ``total_cost_usd`` is the images' cost
(``generation_cost_usd``) plus the evaluations' (``evaluation_cost_usd``), exactly.

A row is *superseded* when a regeneration replaced it: it is ``dropped`` and a later attempt of the
same index is in the batch. A row that is ``dropped`` with no later attempt was dropped for good.
The summary counts the two apart, so ``dropped`` is the number of images the batch lost.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import ImageRecord, resolve_variant
from airflow_provider_flux2.pricing import PriceTable, billed_cost, usd
from airflow_provider_flux2.quality.sentinel import evaluation_cost
from airflow_provider_flux2.storage.base import BatchLocation, Publisher

MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"
MANIFEST_VERSION = 1
COST_RULE = (
    "Each image counts at its cost_usd (what the API billed), dropped, moderated and skipped images included: "
    "they were paid for. Failed and pending runs count 0: the API does not bill a failed run. "
    "Sentinel evaluations count at what the API billed for each (evaluation_cost_usd), in the total too."
)
# Spreadsheets run a cell that starts with one of these as a formula; prompts are user text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def is_billed(record: ImageRecord) -> bool:
    """Whether this image cost anything."""
    return billed_cost(record) > 0


#: The model of a batch made with more than one model (``summary["models"]`` lists them).
MIXED_MODELS = "mixed"


def outcome_of(record: ImageRecord, *, superseded: bool = False) -> str:
    """``passed``, ``failed_checks`` (succeeded but failed a check), ``superseded`` (dropped and replaced
    by a regeneration), or the record's status.
    """
    if record.status == "succeeded":
        return "failed_checks" if any(not v.passed for v in record.checks) else "passed"
    if superseded and record.status == "dropped":
        return "superseded"
    return record.status


def superseded_rows(records: Iterable[ImageRecord]) -> set[tuple[int, int]]:
    """``(index, attempt)`` of the dropped records that a later attempt of the same index replaced."""
    batch = list(records)
    latest: dict[int, int] = {}
    for record in batch:
        latest[record.index] = max(record.attempt, latest.get(record.index, record.attempt))
    return {(r.index, r.attempt) for r in batch if r.status == "dropped" and r.attempt < latest[r.index]}


@dataclass(frozen=True)
class Manifest:
    """A batch's rows and summary, ready to be written as JSON and CSV."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, **self.context, "summary": self.summary, "images": self.rows}

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False).encode("utf-8")

    def to_csv(self) -> bytes:
        flat = [_flatten(row) for row in self.rows]
        columns = _columns(flat)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="raise", lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
        return out.getvalue().encode("utf-8")


def build_manifest(
    records: Iterable[ImageRecord | Mapping[str, Any]],
    prices: PriceTable | Mapping[str, Any] | None = None,
    *,
    generated_at: datetime | None = None,
    context: Mapping[str, Any] | None = None,
) -> Manifest:
    """Rows and summary of a batch.

    :param records: every image of the batch, superseded and dropped ones included (they were paid for).
    :param prices: the table the batch was priced with (default: :class:`PriceTable` defaults), or its
        ``as_dict()``; the summary lists the prices of the models in the batch.
    :param generated_at: when the manifest is made (default: now, UTC).
    :param context: extra top-level fields, e.g. ``{"dag_id": ..., "run_id": ..., "checks": [...]}``.
    """
    batch = sorted(
        (r if isinstance(r, ImageRecord) else ImageRecord.model_validate(r) for r in records),
        key=lambda r: (r.index, r.attempt),
    )
    replaced = superseded_rows(batch)
    rows = [_row(record, superseded=(record.index, record.attempt) in replaced) for record in batch]
    summary = _summary(batch, rows, _prices_dict(prices), generated_at or datetime.now(timezone.utc))
    return Manifest(rows=rows, summary=summary, context=dict(context or {}))


def _row(record: ImageRecord, *, superseded: bool) -> dict[str, Any]:
    row = record.to_xcom()
    failed = [v.check for v in record.checks if not v.passed]
    row.update(
        # The item's own id (a SKU, a row key) from the prompt source, where people look for it first.
        item_id=(record.extra or {}).get("id"),
        outcome=outcome_of(record, superseded=superseded),
        checks_passed=(not failed) if record.checks else None,
        failed_checks=failed,
        billed=is_billed(record),
        billed_cost_usd=usd(billed_cost(record)),
        evaluation_cost_usd=usd(evaluation_cost(record)),
    )
    return row


def _summary(
    batch: list[ImageRecord], rows: list[dict[str, Any]], prices: dict[str, Any], generated_at: datetime
) -> dict[str, Any]:
    outcomes = Counter(row["outcome"] for row in rows)
    billed = [r for r in batch if is_billed(r)]
    models = sorted({r.model for r in batch})
    return {
        "generated_at": generated_at.isoformat(),
        # Rows, not delivered images: every attempt that was made, superseded and dropped ones
        # included, because each was (or could have been) paid for. Delivered images are ``passed``.
        "count": len(rows),
        "passed": outcomes["passed"],
        "failed": outcomes["failed_checks"] + outcomes["failed"] + outcomes["moderated"],
        "dropped": outcomes["dropped"],
        "superseded": outcomes["superseded"],
        "regenerated": sum(1 for r in batch if r.attempt > 1),
        "outcomes": dict(sorted(outcomes.items())),
        "billed": len(billed),
        "total_billed_mp": sum(r.billed_mp for r in billed),
        # Summed from the rows' own strings, so the total is the rows' sum by construction.
        "total_cost_usd": usd(Decimal(_rows_cost(rows)) + Decimal(_rows_cost(rows, "evaluation_cost_usd"))),
        "generation_cost_usd": _rows_cost(rows),
        "evaluation_cost_usd": _rows_cost(rows, "evaluation_cost_usd"),
        "evaluated": sum(1 for r in batch if r.sentinel is not None and r.sentinel.evaluation_id),
        "dropped_cost_usd": _rows_cost(row for row in rows if row["outcome"] == "dropped"),
        "superseded_cost_usd": _rows_cost(row for row in rows if row["outcome"] == "superseded"),
        "estimated_cost_usd": usd(sum((Decimal(r.estimated_cost_usd) for r in batch), Decimal("0"))),
        "model": _batch_model(models),
        "models": models,
        "prices": {key: prices[key] for key in (m if m in prices else _model_id(m) for m in models) if key in prices},
        "cost_rule": COST_RULE,
    }


def _rows_cost(rows: Iterable[Mapping[str, Any]], column: str = "billed_cost_usd") -> str:
    return usd(sum((Decimal(row.get(column) or "0") for row in rows), Decimal("0")))


def _batch_model(models: list[str]) -> str | None:
    """The batch's one model; ``"mixed"`` when it used several, ``None`` when it is empty."""
    if not models:
        return None
    return models[0] if len(models) == 1 else MIXED_MODELS


def _model_id(model: str) -> str:
    try:
        return resolve_variant(model).model_id
    except FluxValidationError:
        return model  # a model the table does not know: listed without a price


def _prices_dict(prices: PriceTable | Mapping[str, Any] | None) -> dict[str, Any]:
    if prices is None:
        return PriceTable().as_dict()
    if isinstance(prices, PriceTable):
        return prices.as_dict()
    return dict(prices)


# --------------------------------------------------------------------------------------------------
# CSV flattening
# --------------------------------------------------------------------------------------------------


def _flatten(row: Mapping[str, Any]) -> dict[str, str]:
    """One CSV line: scalars as text, nested fields as JSON, checks as three columns per check, Sentinel's
    verdict as ``sentinel.*`` columns (its issues and strengths joined with ``; ``)."""
    flat: dict[str, str] = {}
    for key, value in row.items():
        if key == "checks":
            continue
        if key == "sentinel":
            for name, v in (value or {}).items():
                flat[f"sentinel.{name}"] = _cell("; ".join(v) if isinstance(v, list) else v)
        elif key == "timings":
            flat.update({f"timings.{name}": _cell(v) for name, v in value.items()})
        elif key == "failed_checks":
            flat[key] = ";".join(value)
        else:
            flat[key] = _cell(value)
    for verdict in row.get("checks", []):
        name = verdict["check"]
        flat[f"check.{name}"] = "pass" if verdict["passed"] else "fail"
        flat[f"check.{name}.reason"] = _cell(verdict["reason"])
        flat[f"check.{name}.value"] = "" if verdict["value"] is None else json.dumps(verdict["value"])
    return flat


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text  # shown as text by spreadsheets, never evaluated
    return text


def _columns(rows: list[dict[str, str]]) -> list[str]:
    """Record fields first, then ``timings.*``, ``sentinel.*`` and ``check.*``; each group in order of first
    appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))

    def group(column: str) -> int:
        prefixes = ("timings.", "sentinel.", "check.")
        return next((n + 1 for n, prefix in enumerate(prefixes) if column.startswith(prefix)), 0)

    return sorted(columns, key=group)  # sorted() is stable: first-appearance order holds within a group


def write_manifest(publisher: Publisher, location: BatchLocation, manifest: Manifest) -> tuple[str, str]:
    """Write ``manifest.json`` and ``manifest.csv`` into the batch folder; return their URIs."""
    json_uri = publisher.put_named(location, MANIFEST_JSON, manifest.to_json(), "application/json")
    csv_uri = publisher.put_named(location, MANIFEST_CSV, manifest.to_csv(), "text/csv; charset=utf-8")
    return json_uri, csv_uri
