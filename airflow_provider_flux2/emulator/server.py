"""The emulator's HTTP surface: the Runflow protocol under ``/v1``, files under ``/_files``, and the
control surface under ``/_emulator`` (a Starlette app, served by uvicorn).

Each API request goes the same way: count it, check the Bearer key, learn what it is about (its
prompts and model, for the fault plan's ``match``), ask the fault plan, then handle it (or not, or
lose the answer). Runs are never advanced by a loop: their status is derived from the clock, and
only callbacks need a background task.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airflow_provider_flux2.emulator.config import ConfigError
from airflow_provider_flux2.emulator.evaluations import (
    JOB_CLASSES,
    MAX_IMAGE_BYTES,
    EvaluationRecord,
    ImageStats,
    data_uri_bytes,
    evaluation_object,
    image_stats,
    job_classes_object,
    statuses_object,
)
from airflow_provider_flux2.emulator.faults import Fault, FaultPlan, PlanError
from airflow_provider_flux2.emulator.images import ImageSpec, cache_status, render, resize_cache
from airflow_provider_flux2.emulator.state import (
    ORG_ID,
    BatchRecord,
    EmulatorState,
    InsufficientCreditError,
    RunRecord,
    RunSpec,
    StoredResponse,
    is_uuid,
    iso,
)
from airflow_provider_flux2.emulator.wire import (
    batch_items_entry,
    batch_object,
    callback_payload,
    check_presigned,
    envelope,
    file_path,
    presign,
    run_object,
    sign_callback,
)
from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.image_header import header_size
from airflow_provider_flux2.models import (
    EDIT_MODEL_IDS,
    EDIT_MODELS,
    FLAT_EDIT_FIELDS,
    FLAT_EDIT_MODELS,
    KLEIN_MAX_REFERENCES,
    MODEL_IDS,
    RunStatus,
    Variant,
    build_input,
    canonical_prompt,
)
from airflow_provider_flux2.pricing import usd
from airflow_provider_flux2.protocol import MAX_BATCH_ITEMS, MAX_CLIENT_REF
from airflow_provider_flux2.references import HEADER_BYTES, MAX_HEADER_BYTES
from airflow_provider_flux2.urls import is_storage_reference

log = logging.getLogger(__name__)

# The creation response shows the run as it was accepted (queued), whatever the latency model says
# about the next microsecond: the protocol's create answers ``status_code: "queued"``.
_ACCEPTED = 1e-6


#: The protocol's error code for each status an injected fault can answer with.
STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_CREDIT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL",
    502: "INTERNAL",
    503: "MODEL_UNAVAILABLE",
}


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def error(
    status: int,
    code: str,
    message: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(envelope(code, message, errors), status_code=status, headers=headers)


class RequestError(Exception):
    """A request the API refuses; turned into the error envelope."""

    def __init__(self, status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        super().__init__(message)

    def response(self) -> JSONResponse:
        return error(self.status, self.code, self.message, self.errors)


def _invalid(loc: list[Any], msg: str, value: Any = None) -> RequestError:
    return RequestError(422, "VALIDATION_ERROR", f"Invalid {'.'.join(map(str, loc))}: {msg}", [_err(loc, msg, value)])


def _err(loc: list[Any], msg: str, value: Any) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "input": _json_safe(value)}


def _json_safe(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


# --------------------------------------------------------------------------------------------------
# Middleware and special responses
# --------------------------------------------------------------------------------------------------


class RequestIdMiddleware:
    """Give every response an ``X-Request-Id``, including errors the app did not expect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Caught here rather than by Starlette's outermost handler so the 500 keeps its request id.
            log.exception("Emulator error in request %s", request_id)
            if started:
                raise
            await error(500, "INTERNAL", f"emulator error (request {request_id})")(scope, receive, send_with_id)


class DroppedResponse(Response):
    """Start a response, send part of its body, then close the connection.

    The client sees headers promising ``Content-Length`` bytes and then end-of-file, which httpx
    reports as ``RemoteProtocolError`` (a transport error, retried like a 5xx).
    """

    def __init__(self, original: Response | None = None) -> None:
        if original is not None and isinstance(original.body, bytes) and original.body:
            self._status, self._payload, self._raw = original.status_code, original.body, original.raw_headers
        else:
            # Only the first half is ever sent: the client cannot parse it, whatever it says.
            payload = json.dumps(envelope("INTERNAL", "The connection was dropped (emulated drop)")).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            self._status, self._payload, self._raw = 200, payload, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self._status, "headers": self._raw})
        await send({"type": "http.response.body", "body": self._payload[: len(self._payload) // 2], "more_body": True})
        await _close_connection(receive)


async def _close_connection(receive: Receive) -> None:
    # uvicorn's receive is a method of its request cycle, which holds the transport: closing it
    # ends the connection cleanly (uvicorn then sees a client disconnect and logs nothing). Under
    # another server, returning mid-response makes the server close the connection itself.
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return
    transport.close()
    for _ in range(100):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.001)


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a request is about: for the handlers, and for the fault plan's ``match``."""

    prompts: list[str] = field(default_factory=list)
    variant: Variant | None = None
    model_id: str | None = None  # the model in a create's path (an edit model, or the variant's)
    raw: bytes = b""
    body: Any = None
    body_ok: bool = True
    run: RunRecord | None = None
    batch: BatchRecord | None = None
    throttle: int | None = None  # bytes per second, set by a slow_download fault
    evaluation: EvaluationRecord | None = None


Handler = Callable[[Request, Context], Awaitable[Response]]


class EmulatorApp:
    """The Starlette application around one :class:`EmulatorState`.

    :param state: the emulator's memory.
    """

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.tasks: set[asyncio.Task[None]] = set()
        self._abort: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        routes = [
            Route("/v1/health", self.health, methods=["GET"]),
            # Model ids are slash paths, possibly deeper than owner/slug (…/flux-2-klein-4b/edit).
            Route("/v1/models/{model:path}/runs", self.create_run, methods=["POST"]),
            Route("/v1/models/{model:path}/batches", self.create_batch, methods=["POST"]),
            Route("/v1/runs/{run_id}", self.get_run, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/items", self.get_batch_items, methods=["GET"]),
            Route("/v1/billing/balance", self.get_balance, methods=["GET"]),
            Route("/v1/evaluations", self.create_evaluation, methods=["POST"]),
            Route("/v1/evaluations/job-classes", self.list_job_classes, methods=["GET"]),
            Route("/v1/evaluations/statuses", self.evaluation_statuses, methods=["GET"]),
            Route("/v1/evaluations/{evaluation_id}", self.get_evaluation, methods=["GET"]),
            Route("/_files/{run_id}/{name}", self.download, methods=["GET"]),
            Route("/_emulator/ledger", self.ledger, methods=["GET"]),
            Route("/_emulator/stats", self.stats, methods=["GET"]),
            Route("/_emulator/reset", self.reset, methods=["POST"]),
            Route("/_emulator/forget-keys", self.forget_keys, methods=["POST"]),
            Route("/_emulator/config", self.config, methods=["GET", "POST"]),
            Route("/_emulator/faults", self.faults, methods=["GET", "POST", "DELETE"]),
            Route("/_emulator/prerender", self.prerender, methods=["POST"]),
        ]
        self.app = Starlette(
            routes=routes,
            middleware=[Middleware(RequestIdMiddleware)],
            exception_handlers={HTTPException: self._http_exception},
            lifespan=self._lifespan,
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        yield
        self.abort_background()

    # -- background work and interruptible waits -----------------------------------------------------

    def _abort_event(self) -> asyncio.Event:
        if self._abort is None:
            self._abort = asyncio.Event()
        return self._abort

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, unless a reset or shutdown interrupts; returns whether it was interrupted."""
        try:
            await asyncio.wait_for(self._abort_event().wait(), timeout=max(0.0, seconds))
        except asyncio.TimeoutError:
            return False
        return True

    def abort_background(self) -> None:
        """Wake every stall and slow download and cancel pending callbacks (on reset and shutdown)."""
        self._abort_event().set()
        self._abort = asyncio.Event()
        for task in list(self.tasks):
            task.cancel()

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- the request pipeline --------------------------------------------------------------------------

    async def _serve(
        self,
        request: Request,
        endpoint: str,
        handle: Handler,
        about: Callable[[Request], Awaitable[Context]] | None = None,
        *,
        auth: bool = True,
    ) -> Response:
        self.state.count(endpoint)
        if auth and (denied := self._unauthorized(request)) is not None:
            return denied
        if auth and not self.state.take_token(_key_digest(request)):
            headers = {"Retry-After": "1"} if self.state.config.rate_limit_retry_after else None
            return error(429, "RATE_LIMITED", "Too many requests for this organisation; slow down", headers=headers)
        context = await about(request) if about else Context()
        fault = self.state.plan.select(endpoint, "request", context.prompts, context.variant)
        if fault is None:
            return await handle(request, context)
        ids = {"run_id": context.run.id} if context.run else {}
        self.state.record_fault(endpoint, fault, **ids)
        return await self._apply(fault, lambda: handle(request, context), context)

    async def _apply(self, fault: Fault, handle: Callable[[], Awaitable[Response]], context: Context) -> Response:
        """Answer a request the way ``fault`` says (``phase: after`` handles it first)."""
        if fault.kind == "url_expired":
            return error(403, "URL_EXPIRED", "The output URL has expired; fetch the run again for a fresh one")
        if fault.kind == "slow_download":
            context.throttle = int(fault.params["bytes_per_second"])
            return await handle()
        if fault.phase == "after":
            response = await handle()
            if fault.kind == "stall":
                await self._sleep(float(fault.params["seconds"]))
                return response
            return DroppedResponse(response) if fault.kind == "drop" else self._fault_response(fault)
        if fault.kind == "stall":
            await self._sleep(float(fault.params["seconds"]))
            return error(503, "MODEL_UNAVAILABLE", "The request stalled and was not processed (emulated stall)")
        return DroppedResponse() if fault.kind == "drop" else self._fault_response(fault)

    @staticmethod
    def _fault_response(fault: Fault) -> Response:
        status = {"rate_limit": 429}.get(fault.kind, int(fault.params.get("status", 500)))
        code = (
            fault.params.get("code") or STATUS_CODES.get(status) or ("INTERNAL" if status >= 500 else f"HTTP_{status}")
        )
        message = fault.params.get("message") or f"Emulated {fault.kind.replace('_', ' ')} (HTTP {status})"
        retry_after = fault.params.get("retry_after")
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        return error(status, code, message, headers=headers)

    def _unauthorized(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return error(401, "UNAUTHORIZED", "Missing API key: send 'Authorization: Bearer <api key>'")
        expected = self.state.api_key
        if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
            return error(401, "UNAUTHORIZED", "Invalid API key")
        return None

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "BAD_REQUEST")
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return error(status, code, f"{detail}: {request.method} {request.url.path}")

    # -- what a request is about -------------------------------------------------------------------------

    async def _about_create(self, request: Request) -> Context:
        model_id = str(request.path_params["model"]).lower()
        variant = MODEL_IDS.get(model_id) or EDIT_MODEL_IDS.get(model_id)
        context = Context(variant=variant, model_id=model_id, raw=await request.body())
        try:
            context.body = json.loads(context.raw) if context.raw else None
        except (ValueError, UnicodeDecodeError):
            context.body_ok = False
        entries = context.body.get("input") if isinstance(context.body, dict) else None
        entries = entries if isinstance(entries, list) else [entries]
        context.prompts = [_prompt_text(entry) for entry in entries if isinstance(entry, dict)]
        return context

    async def _about_run(self, request: Request) -> Context:
        run = self.state.runs.get(request.path_params["run_id"])
        return Context(prompts=[run.request.prompt], variant=run.variant, run=run) if run else Context()

    async def _about_batch(self, request: Request) -> Context:
        batch = self.state.batches.get(request.path_params["batch_id"])
        if batch is None:
            return Context()
        prompts = [self.state.runs[run_id].request.prompt for run_id in batch.run_ids]
        return Context(prompts=prompts, variant=batch.variant, batch=batch)

    # -- /v1 ---------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        async def handle(request: Request, context: Context) -> Response:
            return JSONResponse({"status": "ok"})

        return await self._serve(request, "health", handle, auth=False)

    async def create_run(self, request: Request) -> Response:
        return await self._serve(request, "create_run", self._create_run, self._about_create)

    async def create_batch(self, request: Request) -> Response:
        return await self._serve(request, "create_batch", self._create_batch, self._about_create)

    async def get_run(self, request: Request) -> Response:
        return await self._serve(request, "get_run", self._get_run, self._about_run)

    async def get_batch(self, request: Request) -> Response:
        return await self._serve(request, "get_batch", self._get_batch, self._about_batch)

    async def get_batch_items(self, request: Request) -> Response:
        return await self._serve(request, "get_batch_items", self._get_batch_items, self._about_batch)

    async def get_balance(self, request: Request) -> Response:
        return await self._serve(request, "get_balance", self._get_balance)

    async def download(self, request: Request) -> Response:
        return await self._serve(request, "download", self._download, self._about_run, auth=False)

    async def create_evaluation(self, request: Request) -> Response:
        return await self._serve(request, "create_evaluation", self._create_evaluation, self._about_evaluation_create)

    async def get_evaluation(self, request: Request) -> Response:
        return await self._serve(request, "get_evaluation", self._get_evaluation, self._about_evaluation)

    async def list_job_classes(self, request: Request) -> Response:
        async def handle(request: Request, context: Context) -> Response:
            return JSONResponse(job_classes_object(self.state.config))

        return await self._serve(request, "list_job_classes", handle)

    async def evaluation_statuses(self, request: Request) -> Response:
        async def handle(request: Request, context: Context) -> Response:
            return JSONResponse(statuses_object())

        return await self._serve(request, "evaluation_statuses", handle)

    # -- Sentinel evaluations (emulator/evaluations.py decides them) -----------------------------------

    async def _about_evaluation_create(self, request: Request) -> Context:
        context = Context(raw=await request.body())
        try:
            context.body = json.loads(context.raw) if context.raw else None
        except (ValueError, UnicodeDecodeError):
            context.body_ok = False
        if isinstance(context.body, dict):
            texts = (context.body.get("generation_prompt"), context.body.get("task_description"))
            context.prompts = [" ".join(t for t in texts if isinstance(t, str))]
        return context

    async def _about_evaluation(self, request: Request) -> Context:
        record = self.state.evaluations.get(request.path_params["evaluation_id"])
        return Context(prompts=[record.prompt], evaluation=record) if record else Context()

    async def _create_evaluation(self, request: Request, context: Context) -> Response:
        """``POST /v1/evaluations``: validated, replayed under a known key, the image read and measured
        (a ``data:`` URI, or a loopback URL fetched as the API would), the balance pre-flighted → 202."""
        key = request.headers.get("idempotency-key") or None
        try:
            if not context.body_ok:
                raise RequestError(400, "BAD_REQUEST", "The request body is not valid JSON")
            replay = self._replay(key, request, context)
            if replay is not None:
                return replay
            with self._creating(key):
                body = _evaluation_request(context.body)
                stats, problem = await self._read_image(str(body["generated_image_url"]))
                if self.state.config.create_delay:
                    await self._sleep(self.state.config.create_delay)
                self.state.check_credit(self.state.config.evaluation_price_usd)
                record = self.state.create_evaluation(body, stats=stats, problem=problem, idempotency_key=key)
                payload = evaluation_object(record, record.created, iso, ORG_ID)
                self._remember(key, request, context, payload, status=202)
        except RequestError as exc:
            return exc.response()
        except InsufficientCreditError as exc:
            return error(402, "INSUFFICIENT_CREDIT", f"Insufficient credit: {exc}")
        return JSONResponse(payload, status_code=202)

    async def _get_evaluation(self, request: Request, context: Context) -> Response:
        evaluation_id = request.path_params["evaluation_id"]
        if not is_uuid(evaluation_id):
            return _not_a_uuid("evaluation_id", evaluation_id)
        if context.evaluation is None:
            return error(404, "EVALUATION_NOT_FOUND", f"No evaluation {evaluation_id!r}")
        return JSONResponse(evaluation_object(context.evaluation, self.state.clock(), iso, ORG_ID))

    async def _read_image(self, url: str) -> tuple[ImageStats | None, str | None]:
        """The image's statistics, and why it could not be read; ``(None, None)`` for an image not ours to
        fetch (a host other than loopback, a ``runflow://`` asset): judged from the prompt alone."""
        data: bytes | None = None
        if url.startswith("data:"):
            data = data_uri_bytes(url)
            if data is None:
                return None, "the data: URI is not base64"
        elif url.startswith(("http://", "https://")) and httpx.URL(url).host in _LOOPBACK_HOSTS:
            try:
                async with (
                    httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=True, trust_env=False) as client,
                    client.stream("GET", url) as response,
                ):
                    if response.status_code != 200:
                        return None, f"fetching the image answered HTTP {response.status_code}"
                    chunks = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > MAX_IMAGE_BYTES:
                            return None, f"the image is larger than {MAX_IMAGE_BYTES} bytes"
                        chunks.append(chunk)
                    data = b"".join(chunks)
            except httpx.HTTPError as exc:
                return None, f"the image could not be fetched ({type(exc).__name__})"
        if data is None:
            return None, None
        stats = await anyio.to_thread.run_sync(image_stats, data)
        return (stats, None) if stats is not None else (None, "the bytes are not an image")

    async def _create_run(self, request: Request, context: Context) -> Response:
        key = request.headers.get("idempotency-key") or None
        try:
            variant = self._model_for(context, batch=False)
            replay = self._replay(key, request, context)
            if replay is not None:
                return replay
            with self._creating(key):
                spec = self._run_spec(variant, context, request, key)
                await _measure_references(spec, ["input"])
                if self.state.config.create_delay:
                    await self._sleep(self.state.config.create_delay)
                self.state.check_credit(self.state.price_of(spec))
                run = self.state.create_run(spec)
                body = run_object(run, run.timeline.created - _ACCEPTED)
                self._remember(key, request, context, body)
        except RequestError as exc:
            return exc.response()
        except InsufficientCreditError as exc:
            return error(402, "INSUFFICIENT_CREDIT", f"Insufficient credit: {exc}")
        self._callback_later(run)
        return JSONResponse(body, status_code=201)

    async def _create_batch(self, request: Request, context: Context) -> Response:
        key = request.headers.get("idempotency-key") or None
        try:
            variant = self._model_for(context, batch=True)
            replay = self._replay(key, request, context)
            if replay is not None:
                return replay
            with self._creating(key):
                specs, metadata, callback_url = self._batch_specs(variant, context, request, key)
                for index, spec in enumerate(specs):
                    await _measure_references(spec, ["input", index])
                if self.state.config.create_delay:
                    await self._sleep(self.state.config.create_delay)
                self.state.check_credit(sum((self.state.price_of(spec) for spec in specs), Decimal("0")))
                batch = self.state.create_batch(
                    variant, specs, metadata=metadata, callback_url=callback_url, idempotency_key=key
                )
                body = batch_object(self.state, batch, batch.created - _ACCEPTED)
                self._remember(key, request, context, body)
        except RequestError as exc:
            return exc.response()
        except InsufficientCreditError as exc:
            return error(402, "INSUFFICIENT_CREDIT", f"Insufficient credit: {exc}")
        for run_id in batch.run_ids:
            self._callback_later(self.state.runs[run_id])
        return JSONResponse(body, status_code=201)

    @contextlib.contextmanager
    def _creating(self, key: str | None) -> Iterator[None]:
        """Hold ``key`` while its create is processed: a second create under it meanwhile is the 409 the
        errors page describes ("usually a duplicate create or a race: refetch and retry")."""
        if key is None:
            yield
            return
        if key in self.state.creating:
            raise RequestError(409, "CONFLICT", "A request with this Idempotency-Key is still being processed")
        self.state.creating.add(key)
        try:
            yield
        finally:
            self.state.creating.discard(key)

    async def _get_run(self, request: Request, context: Context) -> Response:
        if not is_uuid(request.path_params["run_id"]):
            return _not_a_uuid("run_id", request.path_params["run_id"])
        if context.run is None:
            return error(404, "RUN_NOT_FOUND", f"No run {request.path_params['run_id']!r}")
        now = self.state.clock()
        url = await self._output_url(context.run, now, str(request.base_url))
        return JSONResponse(run_object(context.run, now, url))

    async def _get_batch(self, request: Request, context: Context) -> Response:
        if not is_uuid(request.path_params["batch_id"]):
            return _not_a_uuid("batch_id", request.path_params["batch_id"])
        if context.batch is None:
            return error(404, "BATCH_NOT_FOUND", f"No batch {request.path_params['batch_id']!r}")
        return JSONResponse(batch_object(self.state, context.batch, self.state.clock()))

    async def _get_batch_items(self, request: Request, context: Context) -> Response:
        """The documented, cursor-paginated list: ``limit`` (1..500) and ``pq`` in, ``items``, ``next_pq``
        and ``prev_pq`` out; each item with its own id and the whole run nested under ``run``."""
        if not is_uuid(request.path_params["batch_id"]):
            return _not_a_uuid("batch_id", request.path_params["batch_id"])
        if context.batch is None:
            return error(404, "BATCH_NOT_FOUND", f"No batch {request.path_params['batch_id']!r}")
        try:
            # A server may answer fewer items than asked: the page size caps every page, so a client that
            # does not follow ``next_pq`` loses items here as it would on the real API.
            limit = min(
                _page_limit(request.query_params.get("limit"), MAX_PAGE_LIMIT), self.state.config.items_page_size
            )
            offset = _cursor_offset(request.query_params.get("pq"))
        except RequestError as exc:
            return exc.response()
        now = self.state.clock()
        run_ids = context.batch.run_ids
        items = []
        for run_id in run_ids[offset : offset + limit]:
            run = self.state.runs[run_id]
            items.append(batch_items_entry(run, now, await self._output_url(run, now, str(request.base_url))))
        after = offset + limit
        return JSONResponse(
            {
                "items": items,
                "next_pq": _cursor(after) if after < len(run_ids) else None,
                "prev_pq": _cursor(max(0, offset - limit)) if offset > 0 else None,
            }
        )

    async def _get_balance(self, request: Request, context: Context) -> Response:
        """``GET /v1/billing/balance``: ``credit_usd`` less what is spent or spoken for, as a decimal string.
        With no ``credit_usd`` the emulator has no balance to show: 404, as an API without the endpoint."""
        balance = self.state.balance()
        if balance is None:
            return error(404, "NOT_FOUND", "No credit balance: start the emulator with credit_usd to serve one")
        stamp = iso(self.state.clock())
        return JSONResponse(
            {
                "id": BALANCE_ID,
                "org_id": ORG_ID,
                "balance": usd(balance),
                "low_balance_threshold": "5.000",
                "low_balance_notified_at": None,
                "created_at": stamp,
                "updated_at": stamp,
            }
        )

    async def _download(self, request: Request, context: Context) -> Response:
        now = self.state.clock()
        problem = check_presigned(self.state.url_secret, request.url.path, request.query_params, now)
        if problem == "URL_EXPIRED":
            return error(403, "URL_EXPIRED", "The output URL has expired; fetch the run again for a fresh one")
        if problem is not None:
            return error(403, "PERMISSION_DENIED", "The output URL's signature is not valid")
        run = context.run
        if run is None or request.url.path != file_path(run) or run.status(now) is not RunStatus.SUCCEEDED:
            return error(404, "FILE_NOT_FOUND", f"No output at {request.url.path}")
        spec = run.image_spec()
        data = await anyio.to_thread.run_sync(render, spec)
        headers = {"Content-Length": str(len(data)), "Cache-Control": "private, no-transform"}
        if context.throttle:
            return StreamingResponse(
                self._trickle(data, context.throttle), media_type=spec.content_type, headers=headers
            )
        return Response(data, media_type=spec.content_type, headers=headers)

    async def _trickle(self, data: bytes, bytes_per_second: int) -> AsyncIterator[bytes]:
        # Ten chunks a second; a reset or shutdown ends the body early (the client sees a short read).
        step = max(1, bytes_per_second // 10)
        for offset in range(0, len(data), step):
            yield data[offset : offset + step]
            if offset + step < len(data) and await self._sleep(step / bytes_per_second):
                return

    # -- validation, idempotency, outputs, callbacks ---------------------------------------------------

    def _model_for(self, context: Context, *, batch: bool) -> Variant:
        variant = context.variant
        if variant is None:
            known = ", ".join(MODEL_IDS)
            raise RequestError(404, "MODEL_NOT_FOUND", f"Unknown model; this API serves {known}")
        if self.state.config.is_disabled(variant):
            raise RequestError(403, "PERMISSION_DENIED", f"This API key may not use {variant.model_id}")
        if batch and not self.state.config.supports_batches(variant):
            msg = f"{variant.model_id} does not support batch requests; submit single runs"
            raise RequestError(422, "VALIDATION_ERROR", msg, [_err(["model"], msg, variant.model_id)])
        if not context.body_ok:
            raise RequestError(400, "BAD_REQUEST", "The request body is not valid JSON")
        return variant

    @staticmethod
    def _fingerprint(request: Request, context: Context) -> str:
        canonical = json.dumps(context.body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{request.method} {request.url.path}\n{canonical}".encode()).hexdigest()

    def _replay(self, key: str | None, request: Request, context: Context) -> Response | None:
        """The stored response for a repeated ``Idempotency-Key``, or a 409 if the body changed."""
        stored = self.state.idempotency.get(key) if key else None
        retention = self.state.config.key_retention
        if stored is not None and retention is not None and self.state.clock() - stored.at > retention:
            del self.state.idempotency[key or ""]  # past the key's retention: a new create
            stored = None
        if stored is None:
            return None
        if stored.fingerprint != self._fingerprint(request, context):
            raise RequestError(409, "CONFLICT", "This Idempotency-Key was already used with a different request body")
        # The real API marks no replay (protocol.md): the same body, the same ids, nothing more.
        return JSONResponse(stored.body, status_code=stored.status)

    def _remember(
        self, key: str | None, request: Request, context: Context, body: dict[str, Any], *, status: int = 201
    ) -> None:
        if key:
            self.state.idempotency[key] = StoredResponse(
                self._fingerprint(request, context), status, body, at=self.state.clock()
            )

    def _run_spec(self, variant: Variant, context: Context, request: Request, key: str | None) -> RunSpec:
        body = context.body
        if not isinstance(body, dict):
            raise _invalid(["body"], "a JSON object with an 'input' object", body)
        return RunSpec(
            variant=variant,
            model_id=context.model_id or variant.model_id,
            request=_validated_input(variant, body.get("input"), ["input"], context.model_id),
            base_url=str(request.base_url),
            metadata=_metadata(body.get("metadata")),
            callback_url=_callback_url(body.get("callback_url")),
            client_ref=_client_ref(body.get("client_ref"), ["client_ref"]),
            idempotency_key=key,
        )

    def _batch_specs(
        self, variant: Variant, context: Context, request: Request, key: str | None
    ) -> tuple[list[RunSpec], dict[str, Any] | None, str | None]:
        body = context.body
        if not isinstance(body, dict):
            raise _invalid(["body"], "a JSON object with an 'input' list", body)
        items = body.get("input")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
            count = len(items) if isinstance(items, list) else items
            raise _invalid(["input"], f"a list of 1..{MAX_BATCH_ITEMS} input objects", count)
        metadata = _metadata(body.get("metadata"))
        callback_url = _callback_url(body.get("callback_url"))
        specs, errors = [], []
        for index, item in enumerate(items):
            loc: list[Any] = ["input", index]
            fields = dict(item) if isinstance(item, dict) else item
            try:
                ref = (
                    _client_ref(fields.pop("client_ref", None), [*loc, "client_ref"])
                    if isinstance(fields, dict)
                    else None
                )
                specs.append(
                    RunSpec(
                        variant=variant,
                        model_id=context.model_id or variant.model_id,
                        request=_validated_input(variant, fields, loc, context.model_id),
                        base_url=str(request.base_url),
                        metadata=metadata,
                        callback_url=callback_url,
                        client_ref=ref,
                        idempotency_key=key,
                    )
                )
            except RequestError as exc:
                errors.extend(exc.errors or [])
        if errors:
            raise RequestError(422, "VALIDATION_ERROR", f"{len(errors)} invalid field(s) in the batch", errors)
        return specs, metadata, callback_url

    async def _output_url(self, run: RunRecord, now: float, base_url: str) -> str | None:
        """A fresh presigned URL (or a ``data:`` URI with ``sync_mode``) for a succeeded run."""
        if run.status(now) is not RunStatus.SUCCEEDED:
            return None
        if run.request.sync_mode:
            spec = run.image_spec()
            data = await anyio.to_thread.run_sync(render, spec)
            return f"data:{spec.content_type};base64,{base64.b64encode(data).decode()}"
        return presign(self.state.url_secret, base_url, file_path(run), now + self.state.config.url_ttl)

    def _callback_later(self, run: RunRecord) -> None:
        if run.callback_url:
            self._spawn(self._deliver(run))

    async def _deliver(self, run: RunRecord) -> None:
        """POST the run's terminal state to its ``callback_url``, retrying with exponential backoff."""
        if await self._sleep(run.timeline.end - self.state.clock()):
            return
        config = self.state.config
        now = max(self.state.clock(), run.timeline.end)
        payload = callback_payload(run, now, await self._output_url(run, now, run.base_url))
        raw = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Runflow-Signature": sign_callback(config.callback_secret, raw),
            "Runflow-Request-Id": new_request_id(),
            "User-Agent": "flux2-emulator-callbacks",
        }
        async with httpx.AsyncClient(timeout=config.callback_timeout, trust_env=False) as client:
            for attempt in range(1, config.callback_max_attempts + 1):
                status, problem, started = None, None, self.state.clock()
                try:
                    status = (await client.post(str(run.callback_url), content=raw, headers=headers)).status_code
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                delivered = status is not None and 200 <= status < 300
                last = delivered or attempt == config.callback_max_attempts
                delay = None if last else config.callback_retry_base * 2 ** (attempt - 1) * config.time_scale
                self.state.callbacks.append(
                    {
                        "run_id": run.id,
                        "url": run.callback_url,
                        "event": payload["event"],
                        "attempt": attempt,
                        "status": status,
                        "error": problem,
                        "delivered": delivered,
                        "request_id": headers["Runflow-Request-Id"],
                        "at": iso(started),  # when the attempt was sent
                        "next_attempt_in": delay,
                    }
                )
                if delay is None or await self._sleep(delay):
                    return

    # -- /_emulator (no auth: the control surface of a local test double) ------------------------------

    async def ledger(self, request: Request) -> Response:
        return JSONResponse(self.state.ledger())

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats())

    async def reset(self, request: Request) -> Response:
        self.abort_background()
        self.state.reset()
        return JSONResponse({"status": "reset", "config": self.state.config.as_json()})

    async def forget_keys(self, request: Request) -> Response:
        """Forget every Idempotency-Key (runs, batches and the ledger stay): the API's key retention ran
        out. A create sent again under a forgotten key makes — and bills — a new run."""
        return JSONResponse({"forgotten": self.state.forget_keys()})

    async def config(self, request: Request) -> Response:
        if request.method == "POST":
            changes = await _json_object(request)
            if isinstance(changes, Response):
                return changes
            try:
                self.state.configure(changes)
            except ConfigError as exc:
                return error(422, "VALIDATION_ERROR", f"Invalid configuration: {exc}", exc.errors)
        return JSONResponse(self.state.config.as_json())

    async def prerender(self, request: Request) -> Response:
        """Render images into the cache before a benchmark times anything.

        The real API renders an image while its run is ``running``; the emulator renders it when its
        URL is fetched, which would put image synthesis into every download a benchmark times. Body:
        ``{"images": [{"prompt", "seed", "width", "height", "output_format"}], "cache_mb": 1024}``
        (``cache_mb`` optional: how much the cache may hold from now on).
        """
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        try:
            specs = [_prerender_spec(entry) for entry in body.get("images") or []]
            cache_mb = body.get("cache_mb")
            if cache_mb is not None and (not isinstance(cache_mb, int) or isinstance(cache_mb, bool) or cache_mb < 1):
                raise ValueError("cache_mb: a whole number of MiB, at least 1")
        except (ValueError, TypeError, KeyError) as exc:
            return error(422, "VALIDATION_ERROR", f"Invalid prerender request: {exc}")
        if cache_mb is not None:
            resize_cache(cache_mb * 1024 * 1024)
        limiter = anyio.CapacityLimiter(os.cpu_count() or 1)  # Pillow lets go of the GIL while it draws

        async def one(spec: ImageSpec) -> None:
            await anyio.to_thread.run_sync(render, spec, limiter=limiter)

        async with anyio.create_task_group() as group:
            for spec in specs:
                group.start_soon(one, spec)
        return JSONResponse({"rendered": len(specs), **cache_status()})

    async def faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.state.plan = FaultPlan()
        elif request.method == "POST":
            plan = await _json_object(request)
            if isinstance(plan, Response):
                return plan
            try:
                self.state.plan = FaultPlan.parse(plan)
            except PlanError as exc:
                return error(422, "VALIDATION_ERROR", f"Invalid fault plan: {exc}", exc.errors)
        return JSONResponse(self.state.plan.describe())


# --------------------------------------------------------------------------------------------------
# Request-body checks (pure)
# --------------------------------------------------------------------------------------------------


#: The balance record's id (one organisation).
BALANCE_ID = "0b7d3c2a-9e41-4f6b-8d25-6a1c0e9f3b74"


def _not_a_uuid(name: str, value: str) -> Response:
    """A path id that is not a UUID: the API types them ``string<uuid>`` and answers 422."""
    return error(
        422,
        "VALIDATION_ERROR",
        f"{name} must be a UUID",
        [_err(["path", name], "a valid UUID", value)],
    )


def _page_limit(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE_LIMIT:
        raise _invalid(["query", "limit"], f"an integer 1..{MAX_PAGE_LIMIT}", value)
    return int(value)


def _cursor(offset: int) -> str:
    """An opaque cursor (``pq``): the offset, encoded so nobody mistakes it for a page number."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _cursor_offset(value: str | None) -> int:
    if not value:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))["o"]
    except (ValueError, KeyError, TypeError):
        raise _invalid(["query", "pq"], "a cursor from next_pq or prev_pq", value) from None
    if not isinstance(offset, int) or offset < 0:
        raise _invalid(["query", "pq"], "a cursor from next_pq or prev_pq", value)
    return offset


#: The largest page a list endpoint serves (concepts/requests: ``limit`` up to 500).
MAX_PAGE_LIMIT = 500


def _prompt_text(entry: dict[str, Any]) -> str:
    prompt = entry.get("prompt")
    return canonical_prompt(prompt) if isinstance(prompt, (str, dict)) else ""


# The API takes typed JSON: a quoted seed, a "yes" for a boolean or a number for safety_tolerance
# (a string "1".."5") is a 422, not coerced as the provider's own models do for values that come
# from templates.
_WIRE_TYPES = {
    "seed": "integer",
    "num_inference_steps": "integer",
    "guidance_scale": "number",
    "enable_safety_checker": "boolean",
    "sync_mode": "boolean",
    "safety_tolerance": "string",
    "output_format": "string",
}
_ALLOWED_TYPES = {
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "string": "a string",
}


def _has_wire_type(value: Any, expected: str) -> bool:
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "string":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (expected == "number" and isinstance(value, float))


def _validated_input(variant: Variant, fields: Any, loc: list[Any], model_id: str | None = None) -> Any:
    """The input through the provider's own validation; its errors become the 422 ``errors[]``.

    Edit models (``…/edit``) require ``image_urls``; the flat klein 4B edit model takes only its
    documented fields (``prompt``, ``image_urls``, ``seed``, ``steps``) and answers 1024×1024 JPEG.
    The klein text-to-image models take no ``image_urls``: their references go to the edit models.
    """
    if not isinstance(fields, dict):
        raise _invalid(loc, "an object with the generation parameters (prompt, image_size, ...)", fields)
    model_id = model_id or variant.model_id
    if model_id in EDIT_MODEL_IDS and not fields.get("image_urls"):
        raise _invalid([*loc, "image_urls"], f"1..{KLEIN_MAX_REFERENCES} reference image URLs ({model_id})", None)
    if variant.klein and model_id == variant.model_id and fields.get("image_urls"):
        raise _invalid([*loc, "image_urls"], f"nothing: reference images go to {EDIT_MODELS[variant]}", None)
    if model_id in FLAT_EDIT_MODELS:
        for name in fields:
            if name not in FLAT_EDIT_FIELDS:
                raise _invalid([*loc, name], f"one of {', '.join(FLAT_EDIT_FIELDS)} ({model_id})", fields[name])
        steps = fields.get("steps")
        fields = {k: v for k, v in fields.items() if k != "steps"}
        fields.update({"image_size": "square_hd", "output_format": "jpeg"})
        if steps is not None:
            fields["num_inference_steps"] = steps
    if "variant" in fields:
        raise _invalid([*loc, "variant"], "not a generation parameter (the model is in the URL)", fields["variant"])
    for name, expected in _WIRE_TYPES.items():
        value = fields.get(name)
        if value is not None and not _has_wire_type(value, expected):
            allowed = f"{_ALLOWED_TYPES[expected]} (JSON {expected}, got {type(value).__name__})"
            raise _invalid([*loc, name], allowed, value)
    for index, url in enumerate(fields.get("image_urls") or []):
        if is_storage_reference(url):  # the provider resolves these; the API can only fetch URLs
            raise _invalid([*loc, "image_urls", index], "an http(s) URL or a data:image/ URI", url)
    try:
        return build_input(variant, **fields)
    except FluxValidationError as exc:
        errors = [_err([*loc, *_field_parts(d["field"])], d["allowed"], d.get("value")) for d in exc.details]
        raise RequestError(422, "VALIDATION_ERROR", str(exc), errors) from None


#: Reference URLs on these hosts (moto's presigned URLs in tests, a local file server) are fetched
#: and measured as the real API would; others are priced at the 1 MP minimum without a fetch, so
#: the emulator never reaches the internet.
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


async def _measure_references(spec: RunSpec, loc: list[Any]) -> None:
    """Fetch loopback references with a ranged read, as the API would; size them for the price."""
    urls = list(spec.request.image_urls or [])
    if not any(httpx.URL(url).host in _LOOPBACK_HOSTS for url in urls if url.startswith("http")):
        return
    sizes: list[tuple[int, int] | None] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=True, trust_env=False) as client:
        for index, url in enumerate(urls):
            if not url.startswith("http") or httpx.URL(url).host not in _LOOPBACK_HOSTS:
                sizes.append(None)
                continue
            shown = url.split("?", 1)[0]
            head = b""
            try:  # a ranged read; a server that ignores the range is cut off after the header's worth
                async with client.stream("GET", url, headers={"Range": f"bytes=0-{HEADER_BYTES - 1}"}) as response:
                    async for chunk in response.aiter_bytes():
                        head += chunk
                        if len(head) >= MAX_HEADER_BYTES:
                            break
            except httpx.HTTPError as exc:
                msg = f"a reference the API can fetch ({type(exc).__name__})"
                raise _invalid([*loc, "image_urls", index], msg, shown) from None
            size = header_size(head) if response.status_code in (200, 206) else None
            if size is None:
                msg = f"a reference the API can fetch and read (HTTP {response.status_code})"
                raise _invalid([*loc, "image_urls", index], msg, shown)
            sizes.append(size)
    spec.request = spec.request.with_references(urls, sizes)


_IMAGE_FORMS = "an https:// URL, runflow://assets/{uuid} or a data:image/ URI"


def _evaluation_image(value: Any, loc: list[Any]) -> str:
    if not isinstance(value, str) or not (
        value.startswith(("https://", "http://", "runflow://assets/"))
        or (value.startswith("data:image/") and "," in value)
    ):
        shown = value[:40] if isinstance(value, str) else value
        raise _invalid(loc, _IMAGE_FORMS, shown)
    return value


def _evaluation_request(body: Any) -> dict[str, Any]:
    """A ``POST /v1/evaluations`` body checked as the API reference types it: ``generated_image_url`` and
    ``task_type`` required, up to four references, ``run_id`` a UUID, a known ``job_class``."""
    if not isinstance(body, dict):
        raise _invalid(["body"], "a JSON object with generated_image_url and task_type", body)
    out = dict(body)
    out["generated_image_url"] = _evaluation_image(body.get("generated_image_url"), ["generated_image_url"])
    task_type = body.get("task_type")
    if not isinstance(task_type, str) or not task_type.strip():
        raise _invalid(["task_type"], "a non-empty string", task_type)
    for name in ("task_description", "generation_prompt", "evaluation_instructions"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _invalid([name], "a string", body[name])
    references = body.get("reference_images") or []
    if not isinstance(references, list) or len(references) > 4:
        raise _invalid(["reference_images"], "a list of at most 4 objects {url, kind, description}", references)
    for index, reference in enumerate(references):
        if not isinstance(reference, dict):
            raise _invalid(["reference_images", index], "an object {url, kind, description}", reference)
        _evaluation_image(reference.get("url"), ["reference_images", index, "url"])
    run_id = body.get("run_id")
    if run_id is not None and not (isinstance(run_id, str) and is_uuid(run_id)):
        raise _invalid(["run_id"], "a run id (UUID)", run_id)
    out["client_ref"] = _client_ref(body.get("client_ref"), ["client_ref"])
    job_class = body.get("job_class") or "standard"
    if job_class not in JOB_CLASSES:
        raise _invalid(["job_class"], f"one of {', '.join(JOB_CLASSES)}", job_class)
    out["job_class"] = job_class
    out["callback_url"] = _callback_url(body.get("callback_url"))
    return out


def _field_parts(dotted: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in dotted.split(".") if part]


def _client_ref(value: Any, loc: list[Any]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CLIENT_REF:
        raise _invalid(loc, f"a string of at most {MAX_CLIENT_REF} characters", value)
    return value


def _metadata(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise _invalid(["metadata"], "a JSON object", value)
    return value


def _callback_url(value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and value.startswith(("http://", "https://"))):
        raise _invalid(["callback_url"], "an http(s) URL", value)
    return value


def _prerender_spec(entry: Any) -> ImageSpec:
    if not isinstance(entry, dict):
        raise ValueError(f"images: objects with prompt, seed, width, height, output_format; got {entry!r}")
    fmt = entry.get("output_format", "jpeg")
    width, height, seed = int(entry["width"]), int(entry["height"]), int(entry["seed"])
    if fmt not in ("jpeg", "png") or not (64 <= width <= 4096 and 64 <= height <= 4096):
        raise ValueError(f"images: jpeg or png, 64..4096 pixels a side; got {entry!r}")
    return ImageSpec(prompt=str(entry["prompt"]), seed=seed, width=width, height=height, fmt=fmt)


async def _json_object(request: Request) -> dict[str, Any] | Response:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return error(400, "BAD_REQUEST", "The request body is not valid JSON")
    if not isinstance(body, dict):
        return error(422, "VALIDATION_ERROR", "Expected a JSON object", [_err(["body"], "a JSON object", body)])
    return body


def _key_digest(request: Request) -> str:
    """The request's API key, as a digest (the rate limit is per key; the key itself is never kept)."""
    return hashlib.sha256(request.headers.get("authorization", "").encode()).hexdigest()[:16]
