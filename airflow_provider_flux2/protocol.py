"""The Runflow wire protocol without I/O: build requests, parse responses, map errors.

``FluxHook``'s sync and async clients and ``FluxGenerationTrigger`` all go through these functions;
only the sending differs. Points where public sources disagree are decided here, once:

* [choice] the request id is read from ``X-Request-Id`` (or ``Runflow-Request-Id``).
* [choice] a succeeded run's output may come in three shapes; :func:`normalize_output` accepts all.
* [choice] reference images (``@`` in a prompt) travel as ``input.image_urls``.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import random
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from pydantic import ValidationError

from airflow_provider_flux2.exceptions import (
    FluxAPIError,
    FluxAuthError,
    FluxConflictError,
    FluxConnectionError,
    FluxInsufficientCreditError,
    FluxModerationError,
    FluxNotFoundError,
    FluxRateLimitError,
    FluxRunFailedError,
    FluxServerError,
    FluxValidationError,
)
from airflow_provider_flux2.models import (
    Batch,
    FluxInput,
    OutputImage,
    Run,
    RunOutput,
    RunStatus,
    Variant,
    parse_money,
    resolve_variant,
    wire_for,
)
from airflow_provider_flux2.urls import (  # the URL and host policy, re-exported where it was first written
    base_url_problem as base_url_problem,
)
from airflow_provider_flux2.urls import (
    download_url_problem as download_url_problem,
)
from airflow_provider_flux2.urls import (
    is_loopback_host as is_loopback_host,
)
from airflow_provider_flux2.urls import (
    is_valid_host as is_valid_host,
)
from airflow_provider_flux2.urls import (
    url_for_humans as url_for_humans,
)

DEFAULT_BASE_URL = "https://api.runflow.io"
REQUEST_ID_HEADERS = ("x-request-id", "runflow-request-id", "request-id")
#: A submission's answer whose ``created_at`` is this many seconds older than the moment it was sent
#: is a replay of an earlier submission under the same key: no header says so (protocol.md), so the
#: documented ``created_at`` does. Generous enough for ordinary clock skew; a misjudged replay only
#: moves one poll.
REPLAY_AGE = 30.0
#: ``GET /v1/batches/{id}/items`` is cursor-paginated (``limit`` up to 500): the page size asked for.
ITEMS_PAGE_LIMIT = 500
#: Pages of one batch's items followed at most (a batch has at most 100 items: one page, normally).
MAX_ITEM_PAGES = 50
MAX_CLIENT_REF = 255
MAX_BATCH_ITEMS = 100
MODERATION_CODES = frozenset({"CONTENT_MODERATED", "NSFW_CONTENT_DETECTED"})


@dataclass(frozen=True)
class ApiRequest:
    """One HTTP request to make, relative to the connection's base URL (auth is added by the client)."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None  # the run this request is about, named in errors
    list_ok: bool = False  # whether the answer may be a JSON list (batch items) rather than an object

    def url(self, base_url: str) -> str:
        if "://" in self.path:  # an absolute URL (output downloads)
            return self.path.split("?", 1)[0]
        return base_url.rstrip("/") + self.path


@dataclass(frozen=True)
class WireInput:
    """An input already in its wire form (what a trigger carries in its kwargs); sent exactly as it is."""

    wire: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return dict(self.wire)


#: What the request builders accept as an ``input``.
AnyInput = FluxInput | WireInput


# --------------------------------------------------------------------------------------------------
# Identity: one image, one Idempotency-Key
# --------------------------------------------------------------------------------------------------


def request_hash(model: Variant | str | None, request: FluxInput) -> str:
    """Stable hash of what is asked for (model and canonical input)."""
    body = {"model": model_path(model), "input": request.to_wire()}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def idempotency_key(identity: Mapping[str, Any], req_hash: str) -> str:
    """The key for one image: its Airflow identity (dag, task, run, map index, item) and its request.

    Same identity and same request → same key, so a retried submit is replayed by the API instead
    of being billed again; a changed request gets a new key instead of a 409.
    """
    parts = [str(identity.get(k, "")) for k in ("dag_id", "task_id", "run_id", "map_index", "item")]
    digest = hashlib.sha256("\x1f".join([*parts, req_hash]).encode()).hexdigest()
    return f"flux2-{digest[:48]}"


def client_ref(identity: Mapping[str, Any], req_hash: str) -> str:
    """A readable reference (≤255 chars) that still ends with the request hash."""
    parts = [str(identity.get(k, "")) for k in ("dag_id", "run_id", "task_id", "map_index", "item")]
    tail = f"/{req_hash[:12]}"
    text = "/".join(parts)
    return text[: MAX_CLIENT_REF - len(tail)] + tail


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def auth_headers(api_key: str, organization_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {api_key}"}
    if organization_id:
        headers["X-Organization-Id"] = organization_id
    return headers


def health() -> ApiRequest:
    return ApiRequest("GET", "/v1/health")


def parse_balance(data: Any) -> Decimal | None:
    """The ``balance`` (a decimal string) of ``GET /v1/billing/balance``; ``None`` when unreadable."""
    try:
        return parse_money(data.get("balance")) if isinstance(data, dict) else None
    except ValueError:
        return None


def health_ok(data: Any) -> bool:
    """Whether a 2xx ``/v1/health`` body says the API is up. Its body is undocumented (Runflow's own
    tools read ``{"status": "ok"}`` and ``{"ok": true}``): a 2xx is healthy unless the body says otherwise."""
    if not isinstance(data, dict):
        return True
    if data.get("ok") is False:
        return False
    status = data.get("status")
    return not isinstance(status, str) or status.strip().lower() in ("ok", "healthy", "pass", "up")


def probe_run_id() -> str:
    """A well-formed run id no run has (ids are UUIDs: a malformed one may be a 422, not a 404)."""
    return str(uuid.uuid4())


def model_path(model: Variant | str | None) -> str:
    """The model id a request goes to: a variant's text-to-image model, or the full id given (an edit
    model, or a route the doctor recorded)."""
    if isinstance(model, str) and "/" in model:
        return model.strip().lower()
    return resolve_variant(model).model_id


def create_run(
    model: Variant | str | None,
    request: AnyInput,
    *,
    idempotency_key: str,
    client_ref: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    callback_url: str | None = None,
) -> ApiRequest:
    target = model_path(model)
    body: dict[str, Any] = {"input": wire_for(target, request.to_wire())}
    if metadata:
        body["metadata"] = dict(metadata)
    if callback_url:
        body["callback_url"] = callback_url
    if client_ref:
        body["client_ref"] = client_ref[:MAX_CLIENT_REF]
    return ApiRequest(
        "POST",
        f"/v1/models/{target}/runs",
        json=body,
        headers={"Idempotency-Key": idempotency_key},
    )


def create_batch(
    model: Variant | str | None,
    items: list[tuple[AnyInput, str]],
    *,
    idempotency_key: str,
    metadata: Mapping[str, Any] | None = None,
    callback_url: str | None = None,
) -> ApiRequest:
    """A batch of ``(input, client_ref)`` pairs (at most 100)."""
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise FluxValidationError(
            field="batch", value=len(items), allowed=f"1..{MAX_BATCH_ITEMS} items per batch request"
        )
    target = model_path(model)
    body: dict[str, Any] = {
        "input": [{**wire_for(target, request.to_wire()), "client_ref": ref[:MAX_CLIENT_REF]} for request, ref in items]
    }
    if metadata:
        body["metadata"] = dict(metadata)
    if callback_url:
        body["callback_url"] = callback_url
    return ApiRequest(
        "POST",
        f"/v1/models/{target}/batches",
        json=body,
        headers={"Idempotency-Key": idempotency_key},
    )


def get_run(run_id: str) -> ApiRequest:
    return ApiRequest("GET", f"/v1/runs/{run_id}", run_id=run_id)


def get_batch(batch_id: str) -> ApiRequest:
    return ApiRequest("GET", f"/v1/batches/{batch_id}")


def get_batch_items(batch_id: str, *, cursor: str | None = None, limit: int = ITEMS_PAGE_LIMIT) -> ApiRequest:
    """One page of a batch's items: ``limit`` per page, the next page by the cursor ``pq``."""
    query = {"limit": str(limit), **({"pq": cursor} if cursor else {})}
    return ApiRequest("GET", f"/v1/batches/{batch_id}/items?{urlencode(query)}", list_ok=True)


def get_balance() -> ApiRequest:
    """The organisation's credit balance (``GET /v1/billing/balance``)."""
    return ApiRequest("GET", "/v1/billing/balance")


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def request_id_of(headers: Mapping[str, str]) -> str | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in REQUEST_ID_HEADERS:
        if lowered.get(name):
            return lowered[name]
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _json(body: bytes | str | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | None,
    *,
    run_id: str | None = None,
    secrets: Sequence[str] = (),
) -> FluxAPIError | FluxValidationError:
    """Map an error response (the envelope ``{"code", "message", "errors"}``) to a typed exception.

    ``secrets`` (the API key) are redacted from everything the server sent before it is read.
    """
    body, headers = redact(body, secrets), redact_headers(headers, secrets)
    data = redact(_json(body), secrets)  # again once parsed: JSON may spell the key with \u escapes
    envelope = data if isinstance(data, dict) else {}
    code = envelope.get("code")
    message = envelope.get("message")
    if message is None and not envelope:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
        message = text[:300] or None
    errors = envelope.get("errors")
    request_id = request_id_of(headers)
    if status == 422 or code == "VALIDATION_ERROR":
        return _api_validation_error(status, code, message, errors, request_id)
    common: dict[str, Any] = {
        "status_code": status,
        "code": code,
        "message": message,
        "request_id": request_id,
        "run_id": run_id,
        "errors": errors if isinstance(errors, list) else None,
    }
    if status in (401, 403):
        return FluxAuthError(**common)
    if status == 402:
        return FluxInsufficientCreditError(**common)
    if status == 404:
        return FluxNotFoundError(**common)
    if status == 409:
        return FluxConflictError(**common)
    if status == 429:
        return FluxRateLimitError(retry_after=parse_retry_after(_header(headers, "retry-after")), **common)
    if status >= 500:
        return FluxServerError(**common)
    return FluxAPIError(**common)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _api_validation_error(
    status: int, code: str | None, message: str | None, errors: Any, request_id: str | None
) -> FluxValidationError:
    details = []
    for err in errors if isinstance(errors, list) else []:
        if not isinstance(err, dict):
            continue
        raw_loc = err.get("loc")
        loc = [str(p) for p in raw_loc] if isinstance(raw_loc, list) else ([str(raw_loc)] if raw_loc else [])
        if loc and loc[0] == "input":
            loc = loc[1:]
        details.append({"field": ".".join(loc) or "input", "value": err.get("input"), "allowed": err.get("msg")})
    first = details[0] if details else {"field": "input", "value": None, "allowed": message or "a valid request"}
    return FluxValidationError(
        field=str(first["field"]),
        value=first["value"],
        allowed=str(first["allowed"]),
        details=details or None,
        status_code=status,
        code=code or "VALIDATION_ERROR",
        request_id=request_id,
        api_message=message,
    )


def check_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | None,
    *,
    run_id: str | None = None,
    secrets: Sequence[str] = (),
    list_ok: bool = True,
) -> Any:
    """Return the decoded JSON of a 2xx response; raise the typed error for anything else.

    The response's request id (``X-Request-Id``) is added as ``request_id`` to the object, or to
    each entry of an item list, that does not carry one, so a run read from it remembers which
    request reported it. A 2xx body that is not a JSON object or list is an error naming that id.
    ``secrets`` are redacted from the body and headers first (see :func:`redact`).
    """
    if not 200 <= status < 300:
        raise error_from_response(status, headers, body, run_id=run_id, secrets=secrets)
    headers = redact_headers(headers, secrets)
    request_id = request_id_of(headers)
    raw = body.encode() if isinstance(body, str) else (body or b"")
    data = redact(parse_json_body(raw, request_id=request_id, status=status, run_id=run_id), secrets)
    if not isinstance(data, dict) and not (list_ok and isinstance(data, list)):
        raise FluxAPIError(
            status_code=status,
            code="BAD_RESPONSE",
            message=f"expected a JSON object, got {_short_repr(data)}",
            request_id=request_id,
            run_id=run_id,
        )
    return _with_request_id(data, request_id)


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_request_id(data: Any, request_id: str | None) -> Any:
    if request_id is None:
        return data
    # The header's id wins: a run object's own ``request_id`` (documented, its creating request) is not
    # the response that reported this state, which is the one an error report must name.
    entries = data if isinstance(data, list) else [data]
    for key in _LIST_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), list):
            entries = [data, *data[key]]
            break
    for entry in entries:
        if isinstance(entry, dict):
            entry["request_id"] = request_id
    return data


def normalize_output(raw: Any) -> RunOutput | None:
    """Accept the three documented output shapes: ``outputs``, ``images`` and ``image_urls``."""
    if not isinstance(raw, dict) or not raw:  # a run not (yet) succeeded shows ``output: {}``
        return None
    images: list[OutputImage] = []
    for entry in raw.get("outputs") or []:
        if isinstance(entry, dict) and entry.get("url") and entry.get("type", "image") == "image":
            images.append(OutputImage.model_validate(entry))
    if not images:
        for entry in raw.get("images") or []:
            if isinstance(entry, dict) and entry.get("url"):
                images.append(OutputImage.model_validate(entry))
            elif isinstance(entry, str):
                images.append(OutputImage(url=entry))
    if not images:
        images = [OutputImage(url=u) for u in raw.get("image_urls") or [] if isinstance(u, str)]
    nsfw = raw.get("has_nsfw_concepts") or []
    return RunOutput(
        images=images,
        seed=raw.get("seed") if isinstance(raw.get("seed"), int) else None,
        has_nsfw_concepts=[bool(x) for x in nsfw] if isinstance(nsfw, list) else [bool(nsfw)],
        prompt=raw.get("prompt") if isinstance(raw.get("prompt"), str) else None,
    )


def parse_run(data: Any) -> Run:
    """A run object, with its output normalised."""
    if not isinstance(data, dict):
        raise FluxAPIError(
            status_code=200, code="BAD_RESPONSE", message=f"expected a run object, got {_short_repr(data, 200)}"
        )
    payload = dict(data)
    request_id = payload.get("request_id") if isinstance(payload.get("request_id"), str) else None
    run_id = payload.get("id") if isinstance(payload.get("id"), str) else None
    try:
        payload["output"] = normalize_output(payload.get("output"))
        return Run.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc") or ()) or "run"
        if where == "cost":  # the one check of a reported cost (models.parse_money)
            raise FluxAPIError(
                status_code=200,
                code="BAD_COST",
                message=f"the API reported a cost of {str(payload.get('cost'))[:40]!r} for run {run_id}; "
                "expected a non-negative decimal",
                request_id=request_id,
                run_id=run_id,
            ) from None
        raise FluxAPIError(
            status_code=200,
            code="BAD_RESPONSE",
            message=f"unreadable run object: {where}: {first['msg']}",
            request_id=request_id,
            run_id=run_id,
        ) from None
    except (TypeError, ValueError) as exc:  # a hostile output shape (e.g. "outputs": 7)
        raise FluxAPIError(
            status_code=200,
            code="BAD_RESPONSE",
            message=f"unreadable run object: {type(exc).__name__}",
            request_id=request_id,
            run_id=run_id,
        ) from None


def parse_batch(data: Any) -> Batch:
    request_id = data.get("request_id") if isinstance(data, dict) else None
    try:
        return Batch.model_validate(data)
    except ValidationError as exc:
        raise FluxAPIError(
            status_code=200,
            code="BAD_RESPONSE",
            message=f"unreadable batch object: {exc.errors()[0]['msg']}",
            request_id=request_id if isinstance(request_id, str) else None,
        ) from None


#: Where a list endpoint's entries stand in its answer (a bare list is read too).
_LIST_KEYS = ("data", "items", "results")
#: Where its next cursor stands: a token, or a link whose query carries ``pq``.
_NEXT_KEYS = ("next_pq", "next_cursor", "next")


@dataclass(frozen=True)
class ItemsPage:
    """One page of ``GET /v1/batches/{id}/items``: the items' runs and the cursor of the next page."""

    runs: list[Run]
    next: str | None = None


def parse_batch_items(data: Any) -> ItemsPage:
    """A page of batch items, in the documented shape or a tolerant reading of it.

    Each item has its own ``id`` (not the run's), a ``run_id``, an ``error`` object and the whole run
    nested under ``run``; the nested run is preferred, the item's own fields fill what it lacks. The
    list stands under ``data`` (or ``items``, or is the body itself); the next page's cursor under
    ``next_pq`` or ``next`` (a token or a link carrying ``pq``). An item without a run yet is skipped.
    """
    items: Any = data
    if isinstance(data, dict):
        items = next((data[k] for k in _LIST_KEYS if k in data), None)
    request_id = data.get("request_id") if isinstance(data, dict) else None
    if items is not None and not isinstance(items, list):
        raise FluxAPIError(
            status_code=200,
            code="BAD_RESPONSE",
            message=f"expected a list of batch items, got {type(items).__name__}",
            request_id=request_id if isinstance(request_id, str) else None,
        )
    runs = [parse_run(run) for run in (_item_run(item) for item in items or []) if run is not None]
    return ItemsPage(runs=runs, next=_next_cursor(data))


def _item_run(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    raw = item.get("run")
    nested: dict[str, Any] = raw if isinstance(raw, dict) else {}
    run = {k: v for k, v in item.items() if k not in ("id", "run", "error")}
    run.update({k: v for k, v in nested.items() if v is not None})
    run_id = nested.get("id") or item.get("run_id")
    if not run_id:
        return None
    run["id"] = run_id
    error = item.get("error")
    if isinstance(error, dict):  # {"code", "message", "stage"}: fills what the run itself does not say
        for ours, theirs in (("failure_code", "code"), ("failure_message", "message"), ("failure_stage_code", "stage")):
            if run.get(ours) is None and isinstance(error.get(theirs), str):
                run[ours] = error[theirs]
    return run


def _next_cursor(data: Any) -> str | None:
    if not isinstance(data, dict) or data.get("has_more") is False:
        return None
    for key in _NEXT_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value:
            if "?" in value or value.startswith(("/", "http")):  # a link: its pq is the cursor
                found = parse_qs(urlsplit(value).query).get("pq")
                return found[0] if found else None
            return value
    return None


def next_items_request(batch_id: str, page: ItemsPage, seen: set[str]) -> ApiRequest | None:
    """The request for the page after ``page``, or ``None`` when it was the last (or a cursor repeats)."""
    if page.next is None or page.next in seen or len(seen) >= MAX_ITEM_PAGES:
        return None
    seen.add(page.next)
    return get_batch_items(batch_id, cursor=page.next)


def was_replayed(data: Any, sent_at: float) -> bool:
    """Whether a submission's answer replays an earlier submission under the same key: its documented
    ``created_at`` is older than the moment it was sent (by :data:`REPLAY_AGE`). No header is relied on."""
    created = parse_instant(data.get("created_at")) if isinstance(data, dict) else None
    return created is not None and created < sent_at - REPLAY_AGE


def parse_instant(value: Any) -> float | None:
    """An ISO-8601 instant (``2026-01-02T03:04:05.678Z``) as epoch seconds; ``None`` when unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def failure_of(run: Run) -> FluxRunFailedError | None:
    """The error a terminal, unsuccessful run stands for (moderation is its own type)."""
    if run.status_code not in (RunStatus.FAILED, RunStatus.CANCELED):
        return None
    kind = FluxModerationError if (run.failure_code or "") in MODERATION_CODES else FluxRunFailedError
    return kind(
        run_id=run.id,
        status=run.status_code.value,
        failure_code=run.failure_code,
        failure_message=run.failure_message,
        stage=run.failure_stage_code,
    )


# --------------------------------------------------------------------------------------------------
# Retry policy (one predicate, one delay function; the hook applies them to sync and async alike)
# --------------------------------------------------------------------------------------------------


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may go away by itself: 429, 408, 5xx and network errors; other 4xx never do.

    The one rule for "try again later", used by the hook (retry a request), the window (poll or
    submit again) and collection (fetch an image again). It accepts raw ``httpx`` errors and the
    hook's wrapped ones (:class:`FluxConnectionError`, which covers request time-outs). Retrying a
    POST is safe because every submission carries an ``Idempotency-Key``: the API replays the first
    response instead of creating (and billing) a second run.
    """
    if isinstance(error, (FluxRateLimitError, FluxServerError, FluxConnectionError)):
        return True
    if isinstance(error, FluxAPIError):
        return error.status_code == 408
    return _is_transport_error(error)


def _is_transport_error(error: BaseException) -> bool:
    """An ``httpx.TransportError`` (a network failure), told by its class without importing httpx:
    this module stays free of I/O libraries, so the window that uses it is too."""
    return any(cls.__name__ == "TransportError" and cls.__module__.startswith("httpx") for cls in type(error).__mro__)


def batch_unsupported(error: BaseException) -> bool:
    """A 422 to a batch request that names no item: the model has no batch endpoint (send single runs).

    A 422 that points at an item (``errors[].loc`` = ``["input", 3, ...]``) is a real input error.
    """
    if not isinstance(error, FluxValidationError):
        return False
    return not any(str(d.get("field", "")).split(".")[0].isdigit() for d in error.details)


#: Tries of a create that answers 409 (a race with an earlier create under the same key, which the
#: next try replays); a 409 past them is a key reused with a different body, raised.
CONFLICT_ATTEMPTS = 4


def is_conflict_race(error: BaseException, request: ApiRequest, attempt: int) -> bool:
    """Whether a 409 to ``request`` is worth sending again under the same key: it is a create carrying
    an ``Idempotency-Key`` and has tried fewer than :data:`CONFLICT_ATTEMPTS` times."""
    return isinstance(error, FluxConflictError) and "Idempotency-Key" in request.headers and attempt < CONFLICT_ATTEMPTS


#: Each backoff delay is lengthened by up to this fraction, at random, so clients do not retry in step.
JITTER = 0.25


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff plus jitter: ``base`` seconds doubling to ``cap`` (1 s → 32 s by default),
    each delay lengthened by up to :data:`JITTER` at random; ``max_attempts`` in all."""

    max_attempts: int = 5
    base: float = 1.0
    cap: float = 32.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int, error: BaseException, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``; ``Retry-After`` wins when the API sent one."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(float(retry_after), self.max_retry_after)
        delay = min(self.cap, self.base * 2 ** (attempt - 1))
        return delay + delay * JITTER * (rng or random).random()


# --------------------------------------------------------------------------------------------------
# Hardening: redaction, URL policy, bounded bodies, reported costs (sans-I/O; the hook applies them)
# --------------------------------------------------------------------------------------------------

#: Text put where a secret was.
REDACTED = "***"
#: At most this many redirects are followed on a download, each checked like the first URL.
MAX_REDIRECTS = 3
#: The encodings the clients ask for; a body in any other is refused rather than handed to a decoder.
ACCEPT_ENCODING = "gzip, deflate"
#: Decompress at most this many bytes per step, so a bomb never expands beyond the cap plus this.
_INFLATE_STEP = 64 * 1024


def redact(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` with every secret (and ``Bearer <secret>``) replaced by ``***``, recursively.

    The one redaction step: applied to whatever a server sent (bodies, messages, ``errors[]``,
    header values) before it can reach an exception, a log line, a trigger event or a record.
    A server that echoes the request's ``Authorization`` header must not make the key readable.
    """
    secrets = [s for s in secrets if s]
    if not secrets:
        return value
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
        redacted = redact(text, secrets)
        return value if redacted == text else redacted.encode()
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            if secret in value:
                value = value.replace(f"Bearer {secret}", f"Bearer {REDACTED}").replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    return value


def redact_headers(headers: Mapping[str, str], secrets: Sequence[str]) -> dict[str, str]:
    """Response headers with secrets redacted from their values (a request id may echo anything)."""
    return {k: redact(v, secrets) for k, v in headers.items()}


class BodyTooLargeError(Exception):
    """A response body passed its cap (after decompression)."""


class BodyDecodingError(Exception):
    """A response body is not in the encoding it declares (or in one we did not ask for)."""


class CappedBody:
    """Collect a response body from raw (still encoded) chunks, inflating at most ``limit`` bytes.

    Feed it :meth:`feed` with what the socket gave; :meth:`finish` returns the decoded body. A gzip
    bomb stops as soon as its output passes ``limit``: inflation goes in steps of 64 KiB, so memory
    stays within the cap plus one step whatever the compression ratio.
    """

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._chunks: list[bytes] = []
        codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        self._decoders: list[Any] = []
        for coding in reversed(codings):  # the last coding applied is undone first
            if coding in ("gzip", "x-gzip"):
                self._decoders.append(zlib.decompressobj(16 + zlib.MAX_WBITS))
            elif coding == "deflate":
                self._decoders.append(_DeflateDecoder())
            else:
                raise BodyDecodingError(f"unsupported Content-Encoding {coding!r} (asked for {ACCEPT_ENCODING})")

    def feed(self, raw: bytes) -> None:
        self._take(self._inflate(0, raw))

    def finish(self) -> bytes:
        self._take(self._flush(0))
        return b"".join(self._chunks)

    def _take(self, pieces: Iterator[bytes]) -> None:
        for piece in pieces:
            self.size += len(piece)
            if self.size > self.limit:
                raise BodyTooLargeError(f"more than {self.limit} bytes")
            self._chunks.append(piece)

    def _inflate(self, level: int, data: bytes) -> Iterator[bytes]:
        if level == len(self._decoders):
            if data:
                yield data
            return
        decoder = self._decoders[level]
        try:
            while data:
                out = decoder.decompress(data, _INFLATE_STEP)
                data = decoder.unconsumed_tail
                yield from self._inflate(level + 1, out)
                if decoder.eof and data:
                    data = b""  # trailing garbage after the stream: ignored, as browsers do
        except zlib.error as error:
            raise BodyDecodingError(f"corrupt compressed body ({error})") from None

    def _flush(self, level: int) -> Iterator[bytes]:
        if level == len(self._decoders):
            return
        try:
            tail = self._decoders[level].flush(_INFLATE_STEP)
        except zlib.error as error:
            raise BodyDecodingError(f"corrupt compressed body ({error})") from None
        yield from self._inflate(level + 1, tail)
        yield from self._flush(level + 1)


class _DeflateDecoder:
    """``deflate`` as servers send it: zlib-wrapped, or (wrongly, but commonly) raw."""

    def __init__(self) -> None:
        self._inner: Any = None
        self._first = b""

    @property
    def eof(self) -> bool:
        return bool(self._inner is not None and self._inner.eof)

    @property
    def unconsumed_tail(self) -> bytes:
        return b"" if self._inner is None else self._inner.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._inner is None:
            self._first += data
            if len(self._first) < 2:
                return b""
            data, self._first = self._first, b""
            zlib_wrapped = (data[0] & 0x0F) == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            self._inner = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        return self._inner.decompress(data, max_length)

    def flush(self, length: int) -> bytes:
        return b"" if self._inner is None else self._inner.flush(length)


def parse_json_body(body: bytes, *, request_id: str | None, status: int, run_id: str | None = None) -> Any:
    """A 2xx body as JSON; anything else is a typed error naming the response's request id."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise FluxAPIError(
            status_code=status,
            code="BAD_RESPONSE",
            message=f"the response is not JSON ({type(error).__name__}: {str(error)[:120]})",
            request_id=request_id,
            run_id=run_id,
        ) from None
