"""The JSON the emulator serves: run, batch and callback objects, error envelopes, presigned URLs.

Pure functions of a record and an instant; the server supplies the output URL (a presigned link or
a ``data:`` URI) because minting one needs the request's base URL or a rendered image.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from airflow_provider_flux2.emulator.images import EXTENSIONS
from airflow_provider_flux2.emulator.state import ORG_ID, BatchRecord, EmulatorState, RunRecord, iso, model_uuid
from airflow_provider_flux2.models import RunStatus
from airflow_provider_flux2.pricing import usd

CALLBACK_EVENTS = {
    RunStatus.SUCCEEDED: "run.completed",
    RunStatus.FAILED: "run.failed",
    RunStatus.CANCELED: "run.cancelled",
}


def envelope(code: str, message: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The protocol's error body: ``{"code", "message", "errors"}``."""
    return {"code": code, "message": message, "errors": errors}


# --------------------------------------------------------------------------------------------------
# Presigned file URLs
# --------------------------------------------------------------------------------------------------


def file_path(run: RunRecord) -> str:
    return f"/_files/{run.id}/output-0.{EXTENSIONS[run.request.output_format]}"


def _signature(secret: bytes, path: str, expires: str, nonce: str) -> str:
    return hmac.new(secret, f"{path}\n{expires}\n{nonce}".encode(), hashlib.sha256).hexdigest()


def presign(secret: bytes, base_url: str, path: str, expires_at: float) -> str:
    """A URL for ``path`` that answers until ``expires_at`` (epoch seconds, millisecond precision).

    A random nonce makes every minted URL distinct, as a real presigned URL is, even twice in a millisecond.
    """
    expires, nonce = f"{expires_at:.3f}", secrets.token_hex(6)
    signature = _signature(secret, path, expires, nonce)
    query = urlencode({"X-Emulator-Algorithm": "HMAC-SHA256", "nonce": nonce, "expires": expires, "sig": signature})
    return f"{base_url.rstrip('/')}{path}?{query}"


def check_presigned(secret: bytes, path: str, query: Mapping[str, str], now: float) -> str | None:
    """``None`` when the URL is valid, else the error code: ``URL_INVALID`` or ``URL_EXPIRED``."""
    expires, nonce, sig = query.get("expires"), query.get("nonce", ""), query.get("sig")
    if not expires or not sig or not hmac.compare_digest(_signature(secret, path, expires, nonce), sig):
        return "URL_INVALID"
    try:
        deadline = float(expires)
    except ValueError:
        return "URL_INVALID"
    return "URL_EXPIRED" if now > deadline else None


# --------------------------------------------------------------------------------------------------
# Runs and batches
# --------------------------------------------------------------------------------------------------


def run_object(run: RunRecord, now: float, output_url: str | None = None) -> dict[str, Any]:
    """A run as ``GET /v1/runs/{id}`` shows it at ``now``, in the API reference's shape (fields the
    provider does not read included, none of the emulator's own).

    :param run: the run.
    :param now: the instant its status is derived for.
    :param output_url: the output's URL (presigned or ``data:``), needed once it has succeeded.
    """
    status = run.status(now)
    timeline = run.timeline
    started = now >= timeline.start
    ended = status.terminal
    succeeded = status is RunStatus.SUCCEEDED
    return {
        "id": run.id,
        "flow_id": None,
        "model_id": model_uuid(run.model_id),
        "comfyui_workflow_id": None,
        "target_type": "model",
        "target_version": None,
        "org_id": ORG_ID,
        "status_code": status.value,
        "source_code": "api",
        "input": run.request.to_wire(),
        "output": _output(run, output_url) if succeeded else None,
        "context": {},
        "duration_ms": round((timeline.end - timeline.start) * 1000) if ended else None,
        "cost": usd(run.cost) if succeeded else ("0" if ended else None),
        "cost_breakdown": _cost_breakdown(run) if succeeded else None,
        "nodes_total": 1,
        "nodes_completed": 1 if ended else 0,
        "resolved_template_id": None,
        "batch_id": run.batch_id,
        "client_ref": run.client_ref,
        "jurisdiction_code": None,
        "flow_version_id": None,
        "request_id": None,
        "created_by": None,
        "created_at": iso(timeline.created),
        "started_at": iso(timeline.start) if started else None,
        "completed_at": iso(timeline.end) if ended else None,
        "callback_url": run.callback_url,
        "metadata": run.metadata,
        "has_logs": False,
        "has_node_runs": False,
        "links": {},
        "failure_code": run.outcome.failure_code if ended else None,
        "failure_message": run.outcome.failure_message if ended else None,
        "failure_stage_code": run.outcome.failure_stage if ended else None,
        "current_evaluation_summary": (
            {"passed": run.outcome.score >= 0.5, "status_code": "completed", "score": run.outcome.score}
            if succeeded
            else None
        ),
    }


def _output(run: RunRecord, url: str | None) -> dict[str, Any]:
    spec = run.image_spec()
    return {
        "outputs": [
            {"type": "image", "url": url, "content_type": spec.content_type, "width": spec.width, "height": spec.height}
        ],
        "seed": run.seed,
        "has_nsfw_concepts": [run.outcome.nsfw],
        "prompt": run.upsampled_prompt,
    }


def _cost_breakdown(run: RunRecord) -> dict[str, Any]:
    extra_mp = run.billed_mp - 1 + run.reference_mp
    return {
        "currency": "USD",
        "output_megapixels": run.billed_mp,
        "reference_megapixels": run.reference_mp,
        "first_megapixel": usd(run.price.first_mp),
        "extra_megapixels": extra_mp,
        "extra_megapixel_price": usd(run.price.extra_mp),
        "total": usd(run.cost),
    }


def batch_item(run: RunRecord, now: float) -> dict[str, Any]:
    """One entry of a batch's lean ``items[]``: the item's own id, not the run's."""
    return {
        "id": run.item_id,
        "sequence_index": run.sequence_index,
        "run_id": run.id,
        "status_code": run.status(now).value,
        "client_ref": run.client_ref,
    }


def batch_object(state: EmulatorState, batch: BatchRecord, now: float) -> dict[str, Any]:
    """A batch as ``GET /v1/batches/{id}`` shows it: its own status is an open string, its counters and
    the lean ``items[]`` for polling."""
    status, succeeded, failed = state.batch_status(batch, now)
    runs = [state.runs[run_id] for run_id in batch.run_ids]
    ended = status.terminal
    billed = sum((run.cost for run in runs if run.billed(now)), Decimal("0"))
    return {
        "id": batch.id,
        "org_id": ORG_ID,
        "target_type_code": "model",
        "target_type": "model",
        "target_id": model_uuid(batch.model_id),
        "status_code": status.value,
        "source_code": "api",
        "items_total": len(runs),
        "items_succeeded": succeeded,
        "items_failed": failed,
        "items_cancelled": 0,
        "resolved_template_id": None,
        "cost": usd(billed),
        "output": {},
        "metadata": batch.metadata,
        "callback_url": batch.callback_url,
        "duration_ms": None,
        "failure_code": None,
        "failure_message": None,
        "failure_stage_code": None,
        "created_by": None,
        "created_at": iso(batch.created),
        "started_at": iso(min(run.timeline.start for run in runs)) if runs and now >= runs[0].timeline.start else None,
        "completed_at": iso(max(run.timeline.end for run in runs)) if ended and runs else None,
        "links": {},
        "items": [batch_item(run, now) for run in runs],
    }


def batch_items_entry(run: RunRecord, now: float, output_url: str | None) -> dict[str, Any]:
    """One entry of ``GET /v1/batches/{id}/items``: the item (its own id), its live state, an ``error``
    object for a failed run, and the whole run nested under ``run``."""
    full = run_object(run, now, output_url)
    failed = run.status(now) is RunStatus.FAILED
    return {
        "id": run.item_id,
        "batch_id": run.batch_id,
        "sequence_index": run.sequence_index,
        "run_id": run.id,
        "created_at": full["created_at"],
        "client_ref": run.client_ref,
        "status_code": full["status_code"],
        "input": full["input"],
        "cost": full["cost"],
        "output": full["output"],
        "error": ({"code": run.outcome.failure_code, "message": run.outcome.failure_message} if failed else None),
        "started_at": full["started_at"],
        "completed_at": full["completed_at"],
        "run": full,
    }


def callback_payload(run: RunRecord, now: float, output_url: str | None) -> dict[str, Any]:
    """The body POSTed to ``callback_url`` when a run ends."""
    status = run.status(now)
    full = run_object(run, now, output_url)
    return {
        "event": CALLBACK_EVENTS.get(status, f"run.{status.value}"),
        "run_id": run.id,
        "status": status.value,
        "output": full["output"],
        "duration_ms": full["duration_ms"],
        "created_at": full["created_at"],
        "completed_at": full["completed_at"],
        "metadata": run.metadata,
    }


def sign_callback(secret: str, raw_body: bytes) -> str:
    """``Runflow-Signature``: hex HMAC-SHA256 of the raw body with the callback secret."""
    return hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
