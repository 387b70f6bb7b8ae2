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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
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
    resolve_variant,
)

DEFAULT_BASE_URL = "https://api.runflow.io"
REQUEST_ID_HEADERS = ("x-request-id", "runflow-request-id", "request-id")
#: [choice] A response replayed for a repeated ``Idempotency-Key`` may say so in this header (the
#: emulator does; Stripe-style APIs do). It only makes the window poll a replayed run at once.
REPLAYED_HEADER = "idempotent-replayed"
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
    body = {"model": resolve_variant(model).model_id, "input": request.to_wire()}
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


def create_run(
    model: Variant | str | None,
    request: AnyInput,
    *,
    idempotency_key: str,
    client_ref: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    callback_url: str | None = None,
) -> ApiRequest:
    body: dict[str, Any] = {"input": request.to_wire()}
    if metadata:
        body["metadata"] = dict(metadata)
    if callback_url:
        body["callback_url"] = callback_url
    if client_ref:
        body["client_ref"] = client_ref[:MAX_CLIENT_REF]
    return ApiRequest(
        "POST",
        f"/v1/models/{resolve_variant(model).model_id}/runs",
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
    body: dict[str, Any] = {
        "input": [{**request.to_wire(), "client_ref": ref[:MAX_CLIENT_REF]} for request, ref in items]
    }
    if metadata:
        body["metadata"] = dict(metadata)
    if callback_url:
        body["callback_url"] = callback_url
    return ApiRequest(
        "POST",
        f"/v1/models/{resolve_variant(model).model_id}/batches",
        json=body,
        headers={"Idempotency-Key": idempotency_key},
    )


def get_run(run_id: str) -> ApiRequest:
    return ApiRequest("GET", f"/v1/runs/{run_id}", run_id=run_id)


def get_batch(batch_id: str) -> ApiRequest:
    return ApiRequest("GET", f"/v1/batches/{batch_id}")


def get_batch_items(batch_id: str) -> ApiRequest:
    return ApiRequest("GET", f"/v1/batches/{batch_id}/items")


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
    except (ValueError, UnicodeDecodeError):
        return None


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes | str | None, *, run_id: str | None = None
) -> FluxAPIError | FluxValidationError:
    """Map an error response (the envelope ``{"code", "message", "errors"}``) to a typed exception."""
    data = _json(body)
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
        loc = [str(p) for p in err.get("loc") or []]
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
    status: int, headers: Mapping[str, str], body: bytes | str | None, *, run_id: str | None = None
) -> Any:
    """Return the decoded JSON of a 2xx response; raise the typed error for anything else.

    The response's request id (``X-Request-Id``) is added as ``request_id`` to the object, or to
    each entry of an item list, that does not carry one, so a run read from it remembers which
    request reported it.
    """
    if 200 <= status < 300:
        data = _with_request_id(_json(body), request_id_of(headers))
        if isinstance(data, dict) and (_header(headers, REPLAYED_HEADER) or "").lower() == "true":
            data["replayed"] = True
        return data
    raise error_from_response(status, headers, body, run_id=run_id)


def _with_request_id(data: Any, request_id: str | None) -> Any:
    if request_id is None:
        return data
    entries = data if isinstance(data, list) else [data]
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        entries = [data, *data["items"]]
    for entry in entries:
        if isinstance(entry, dict):
            entry.setdefault("request_id", request_id)
    return data


def normalize_output(raw: Any) -> RunOutput | None:
    """Accept the three documented output shapes: ``outputs``, ``images`` and ``image_urls``."""
    if not isinstance(raw, dict):
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
        raise FluxAPIError(status_code=200, code="BAD_RESPONSE", message=f"expected a run object, got {data!r:.200}")
    payload = dict(data)
    payload["output"] = normalize_output(payload.get("output"))
    try:
        return Run.model_validate(payload)
    except ValidationError as exc:
        raise FluxAPIError(
            status_code=200,
            code="BAD_RESPONSE",
            message=f"unreadable run object: {exc.errors()[0]['msg']}",
            run_id=payload.get("id"),
        ) from None


def parse_batch(data: Any) -> Batch:
    try:
        return Batch.model_validate(data)
    except ValidationError as exc:
        raise FluxAPIError(
            status_code=200, code="BAD_RESPONSE", message=f"unreadable batch object: {exc.errors()[0]['msg']}"
        ) from None


def parse_batch_items(data: Any) -> list[Run]:
    """``GET /v1/batches/{id}/items``: a list (or ``{"items": [...]}``) of run-like objects."""
    items = data.get("items") if isinstance(data, dict) else data
    runs = []
    for item in items or []:
        if isinstance(item, dict):
            run = dict(item)
            run["id"] = run.get("run_id") or run.get("id")
            runs.append(parse_run(run))
    return runs


def was_replayed(data: Any) -> bool:
    """Whether a submission's response was a replay of an earlier one (see :data:`REPLAYED_HEADER`)."""
    return isinstance(data, dict) and data.get("replayed") is True


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
    return isinstance(error, httpx.TransportError)


def batch_unsupported(error: BaseException) -> bool:
    """A 422 to a batch request that names no item: the model has no batch endpoint (send single runs).

    A 422 that points at an item (``errors[].loc`` = ``["input", 3, ...]``) is a real input error.
    """
    if not isinstance(error, FluxValidationError):
        return False
    return not any(str(d.get("field", "")).split(".")[0].isdigit() for d in error.details)


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
