"""FluxHook: the connection, the HTTP clients and the retry policy for the Runflow FLUX 2 API.

Requests are built and responses parsed by :mod:`airflow_provider_flux2.protocol`; this module only
does the I/O, once synchronously (operators, CLI) and once asynchronously (the trigger).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
from airflow.sdk import BaseHook

import airflow_provider_flux2.hooks.download as image_download
import airflow_provider_flux2.hooks.transport as transport
from airflow_provider_flux2 import metrics, protocol, ratelimit, sentinel
from airflow_provider_flux2.exceptions import (
    BudgetOverrunError,
    FluxAPIError,
    FluxAuthError,
    FluxConflictError,
    FluxConnectionError,
    FluxConnectionNotFoundError,
    FluxError,
    FluxImageError,
    FluxModerationError,
    FluxNotFoundError,
    FluxRateLimitError,
    FluxRequestTimeoutError,
    FluxTimeoutError,
    FluxValidationError,
)
from airflow_provider_flux2.hooks.connection import (
    CONNECTION_EXTRAS,
    EXTRA_ALIASES,
    FluxConnectionConfig,
)
from airflow_provider_flux2.loops import run_window
from airflow_provider_flux2.models import (
    Batch,
    FluxInput,
    Run,
    Variant,
    build_input,
    resolve_variant,
)
from airflow_provider_flux2.pricing import Budget, PriceTable, estimate, routed
from airflow_provider_flux2.window import BatchEntry as BatchEntry
from airflow_provider_flux2.window import JobSpec, Window
from airflow_provider_flux2.window import Submission as Submission
from airflow_provider_flux2.window import adaptive_poll_interval as adaptive_poll_interval
from airflow_provider_flux2.window import expected_duration as expected_duration

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_provider_flux2.pricing import CostEstimate, PlanItem
    from airflow_provider_flux2.references import ReferenceResolver

__all__ = ["CONNECTION_EXTRAS", "EXTRA_ALIASES", "FluxConnectionConfig", "FluxHook"]


class FluxHook(BaseHook):
    """Talks to the Runflow API for FLUX 2: validated requests, retries, downloads, prices.

    The API key is the connection's password; the host is the base URL (``https://api.runflow.io``
    when empty); extras: ``model``, ``organization_id``, ``timeout``, ``max_attempts``,
    ``retry_base_delay``, ``retry_max_delay``, ``max_download_mb``, ``prices``.

    :param flux_conn_id: Airflow connection id (type ``flux2``).
    :param api_key: use this key instead of a connection (for scripts; never logged).
    :param base_url: with ``api_key``: the API's base URL.
    :param extra: with ``api_key``: the options a connection would carry in its extras.
    :param aws_conn_id: Airflow AWS connection for ``s3://`` reference images (else boto3's chain).

    Reference images may be written as the team stores them (``s3://bucket/key``, a local path or
    ``file://``): :meth:`submit`, :meth:`submit_batch`, :meth:`generate` and :meth:`estimate`
    measure them and send a presigned URL or a ``data:`` URI (see
    :class:`~airflow_provider_flux2.references.ReferenceResolver`).
    """

    conn_name_attr = "flux_conn_id"
    default_conn_name = "flux2_default"
    conn_type = "flux2"
    hook_name = "FLUX 2 (Runflow)"

    def __init__(
        self,
        flux_conn_id: str = default_conn_name,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        extra: Mapping[str, Any] | None = None,
        aws_conn_id: str | None = None,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        self.flux_conn_id = flux_conn_id
        self.aws_conn_id = aws_conn_id
        self._resolver: ReferenceResolver | None = None
        self._config: FluxConnectionConfig | None = None
        if api_key:
            _mask(api_key)
            self._config = FluxConnectionConfig.build(
                api_key=api_key, base_url=base_url, extra=extra or {}, conn_id="(api_key argument)"
            )
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None

    # -- connection -------------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form's behaviour, for Airflow 3.1 (3.2+ reads it from the provider info)."""
        return dict(_connection_type_info()["ui-field-behaviour"])

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra fields of the form, for Airflow 3.1 with its FAB UI (3.2+ reads ``conn-fields``)."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, StringField

        widgets: dict[str, Any] = {}
        for name, spec in _connection_type_info()["conn-fields"].items():
            label, description = lazy_gettext(spec["label"]), spec.get("description", "")
            if "boolean" in spec["schema"]["type"]:
                widgets[name] = BooleanField(label, description=description)
                continue
            kind = IntegerField if "integer" in spec["schema"]["type"] else StringField
            widgets[name] = kind(label, widget=BS3TextFieldWidget(), description=description)
        return widgets

    @property
    def config(self) -> FluxConnectionConfig:
        if self._config is None:
            with _connection_lookup(self.flux_conn_id):
                conn = self.get_connection(self.flux_conn_id)
            _mask(conn.password)
            self._config = FluxConnectionConfig.from_connection(conn, self.flux_conn_id)
        return self._config

    async def aconfig(self) -> FluxConnectionConfig:
        """The config, read without blocking the event loop (the triggerer's)."""
        if self._config is None:
            getter = getattr(BaseHook, "aget_connection", None)
            with _connection_lookup(self.flux_conn_id):
                if getter is not None:
                    conn = await getter(self.flux_conn_id)
                else:  # Airflow < 3.1 has no async connection lookup
                    conn = await asyncio.to_thread(self.get_connection, self.flux_conn_id)
            _mask(conn.password)
            self._config = FluxConnectionConfig.from_connection(conn, self.flux_conn_id)
        return self._config

    def get_conn(self) -> httpx.Client:
        """The sync client (one per hook, reused)."""
        if self._client is None:
            self._client = transport.client(**self._client_kwargs(self.config))
        return self._client

    async def aget_conn(self) -> httpx.AsyncClient:
        """The async client (one per hook and event loop, reused)."""
        if self._aclient is None:
            # Building a client loads the CA bundle (tens of ms of blocking I/O): never on the event loop.
            kwargs = self._client_kwargs(await self.aconfig())
            self._aclient = await asyncio.to_thread(transport.async_client, **kwargs)
        return self._aclient

    @cached_property
    def _download_client(self) -> httpx.Client:
        # Output URLs are presigned and may live on another host: never send them the API key.
        # Redirects are followed by ``_stream``, one checked hop at a time.
        return transport.client(timeout=httpx.Timeout(self.config.timeout), follow_redirects=False)

    @staticmethod
    def _client_kwargs(config: FluxConnectionConfig) -> dict[str, Any]:
        transport.register_secret(config.api_key)
        return {
            "base_url": config.base_url,
            "headers": {
                **protocol.auth_headers(config.api_key, config.organization_id),
                "User-Agent": "airflow-provider-flux2",
            },
            "timeout": httpx.Timeout(config.timeout),
            "follow_redirects": False,
        }

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if "_download_client" in self.__dict__:
            self._download_client.close()
            del self.__dict__["_download_client"]

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    @property
    def prices(self) -> PriceTable:
        return self.config.prices

    @property
    def default_model(self) -> Variant:
        return self.config.model

    # -- the retry loop, once for sync and once for async --------------------------------------

    def _next_delay(self, request: protocol.ApiRequest, attempt: int, error: BaseException) -> float | None:
        """Seconds to wait before retrying ``request``, or ``None`` when ``error`` must be raised.

        One policy for the sync and the async client (and for downloads). POSTs are retried too, which
        is safe only because every submission carries an ``Idempotency-Key``: if the first attempt did
        reach the API and only its answer was lost, the retry is replayed (same run, billed once).
        """
        policy = self.config.retry
        race = protocol.is_conflict_race(error, request, attempt)
        if not race and (not protocol.is_transient(error) or attempt >= policy.max_attempts):
            return None
        delay = policy.delay(attempt, error)
        self.log.warning(
            "%s %s failed (%s); attempt %d of %d, retrying in %.2fs",
            request.method,
            protocol.url_for_humans(request.path) if "://" in request.path else request.path,  # never a signature
            self._describe(error),
            attempt,
            policy.max_attempts,
            delay,
        )
        metrics.retried(error)
        return delay

    def _final_error(self, request: protocol.ApiRequest, attempt: int, error: BaseException) -> BaseException:
        if isinstance(error, FluxConflictError) and "Idempotency-Key" in request.headers:
            body = request.json or {}
            refs = [str(i.get("client_ref")) for i in body.get("input") or [] if isinstance(i, dict)]
            job = body.get("client_ref") or ", ".join(refs[:5]) or "?"
            return error.with_hint(
                f"Idempotency-Key {request.headers['Idempotency-Key']} (job {job}) was already used with a "
                f"different request body; still 409 after {attempt} tries. A changed request gets a new key: "
                "was the same task identity sent with other inputs?"
            )
        if isinstance(error, FluxAuthError):
            return error.with_hint(
                f"Check the API key in Airflow connection {self.config.conn_id!r} (the key itself is never shown)"
            )
        if isinstance(error, httpx.TimeoutException):
            return FluxRequestTimeoutError(
                f"The FLUX API did not answer in time: {self._describe(error)}",
                attempts=attempt,
                url=protocol.url_for_humans(request.url(self.config.base_url)),
            )
        if isinstance(error, httpx.TransportError):
            return FluxConnectionError(
                f"Could not reach the FLUX API: {self._describe(error)}",
                attempts=attempt,
                url=protocol.url_for_humans(request.url(self.config.base_url)),
            )
        return error

    def _describe(self, error: BaseException) -> str:
        """An error as text for a log line or message, with the key redacted (httpx may quote headers)."""
        return str(protocol.redact(_describe(error), self.config.secrets))

    # -- one bounded exchange: a total deadline, a body cap after decompression, redaction ---------

    def _checked(self, response: httpx.Response, body: bytes, request: protocol.ApiRequest) -> Any:
        return protocol.check_response(
            response.status_code,
            response.headers,
            body,
            run_id=request.run_id,
            secrets=self.config.secrets,
            list_ok=request.list_ok,
        )

    def _body_error(self, response: httpx.Response, error: Exception) -> FluxAPIError:
        """A body too large or undecodable, as a typed error naming the response's request id."""
        too_large = isinstance(error, protocol.BodyTooLargeError)
        return FluxAPIError(
            status_code=response.status_code,
            code="RESPONSE_TOO_LARGE" if too_large else "BAD_ENCODING",
            message=(
                f"the response body is larger than the {self.config.max_response_bytes}-byte cap "
                f"(connection extra max_response_mb): {error}"
                if too_large
                else str(error)
            ),
            request_id=protocol.request_id_of(protocol.redact_headers(response.headers, self.config.secrets)),
            run_id=None,
        )

    def _exchange(self, client: httpx.Client, request: protocol.ApiRequest, seconds: float) -> Any:
        with (
            transport.deadline(seconds),
            client.stream(request.method, request.path, json=request.json, headers=request.headers) as response,
        ):
            try:
                body = transport.read_body(response, self.config.max_response_bytes)
            except (protocol.BodyTooLargeError, protocol.BodyDecodingError) as error:
                raise self._body_error(response, error) from None
        return self._checked(response, body, request)

    async def _aexchange(self, client: httpx.AsyncClient, request: protocol.ApiRequest, seconds: float) -> Any:
        with transport.deadline(seconds):
            async with transport.astream(
                client, request.method, request.path, json=request.json, headers=request.headers
            ) as response:
                try:
                    body = await transport.aread_body(response, self.config.max_response_bytes)
                except (protocol.BodyTooLargeError, protocol.BodyDecodingError) as error:
                    raise self._body_error(response, error) from None
        return self._checked(response, body, request)

    def _attempt_seconds(self, request: protocol.ApiRequest, attempt: int, deadline: float | None) -> float:
        """How long the next attempt may take: ``request_deadline``, or less when the caller's nears."""
        seconds = self.config.request_deadline
        if deadline is not None:
            seconds = min(seconds, deadline - time.time())
            if seconds <= 0:
                raise self._past_deadline(request, attempt - 1)
        return seconds

    def _pause(self, request: protocol.ApiRequest, attempt: int, error: Exception, deadline: float | None) -> float:
        """Seconds to wait before the next attempt; raises when there is none (or it would pass ``deadline``)."""
        delay = self._next_delay(request, attempt, error)
        if delay is None:
            raise self._final_error(request, attempt, error) from error
        if deadline is not None and time.time() + delay >= deadline:
            raise self._past_deadline(request, attempt) from error
        return delay

    def _past_deadline(self, request: protocol.ApiRequest, attempts: int) -> FluxRequestTimeoutError:
        return FluxRequestTimeoutError(
            "The wait's deadline passed before the FLUX API answered",
            attempts=attempts,
            url=protocol.url_for_humans(request.url(self.config.base_url)),
        )

    @property
    def limiter(self) -> ratelimit.AdaptiveRateLimiter:
        """The process's request-rate limiter for this connection (shared by every hook on it)."""
        config = self.config
        return ratelimit.limiter_for(
            config.conn_id, config.base_url, config.max_requests_per_second, adaptive=config.adaptive_rate_limit
        )

    def _turn(self, request: protocol.ApiRequest, attempt: int, deadline: float | None) -> float:
        """Seconds to wait for the rate limiter's token before this attempt (refused past ``deadline``)."""
        wait = self.limiter.reserve(time.time())
        if wait and deadline is not None and time.time() + wait >= deadline:
            raise self._past_deadline(request, attempt - 1)
        return wait

    def _outcome(self, error: BaseException | None, sent_at: float) -> None:
        """Tell the limiter how the API answered (to a request sent at ``sent_at``): a 429 cuts the rate,
        any other answer lets it grow."""
        if isinstance(error, FluxRateLimitError):
            self.limiter.throttled(time.time(), sent_at=sent_at)
        elif error is None or isinstance(error, (FluxAPIError, FluxValidationError)):
            self.limiter.answered(time.time())

    def _call(self, request: protocol.ApiRequest, *, deadline: float | None = None) -> Any:
        """Send ``request`` with retries; ``deadline`` (wall-clock epoch seconds) bounds every attempt
        and every pause, so a wait's poll never outlives the wait. Every attempt waits its turn at the
        connection's rate limiter first."""
        client = self.get_conn()
        attempt = 0
        while True:
            attempt += 1
            if wait := self._turn(request, attempt, deadline):
                time.sleep(wait)
            sent_at = time.time()
            seconds = self._attempt_seconds(request, attempt, deadline)
            try:
                result = self._exchange(client, request, seconds)
            except (FluxAPIError, FluxValidationError, httpx.TransportError) as error:
                self._outcome(error, sent_at)
                time.sleep(self._pause(request, attempt, error, deadline))
                continue
            self._outcome(None, sent_at)
            return result

    async def _acall(self, request: protocol.ApiRequest, *, deadline: float | None = None) -> Any:
        """The async twin of :meth:`_call` (the trigger passes its ``end_time`` as ``deadline``)."""
        client = await self.aget_conn()
        attempt = 0
        while True:
            attempt += 1
            if wait := self._turn(request, attempt, deadline):
                await asyncio.sleep(wait)
            sent_at = time.time()
            seconds = self._attempt_seconds(request, attempt, deadline)
            try:
                result = await self._aexchange(client, request, seconds)
            except (FluxAPIError, FluxValidationError, httpx.TransportError) as error:
                self._outcome(error, sent_at)
                await asyncio.sleep(self._pause(request, attempt, error, deadline))
                continue
            self._outcome(None, sent_at)
            return result

    # -- API ----------------------------------------------------------------------------------------

    def health(self) -> bool:
        """Whether ``/v1/health`` answers 2xx with a body that does not say otherwise (see ``protocol.health_ok``)."""
        return protocol.health_ok(self._call(protocol.health()))

    def test_connection(self) -> tuple[bool, str]:
        """Health, then an authenticated read (a 404 for an unknown run proves the key works)."""
        try:
            if not self.health():
                return False, f"{self.config.base_url} answered, but /v1/health is not ok"
            with contextlib.suppress(FluxNotFoundError):
                self._call(protocol.get_run(protocol.probe_run_id()))
            return True, f"Connected to {self.config.base_url}; the API key is accepted"
        except FluxError as error:
            # `airflow connections test` prints through rich, which takes "[request id …]" for markup
            # and drops it: parentheses keep the request id in the CLI and the UI alike.
            return False, str(error).replace("[", "(").replace("]", ")")

    def get_balance(self) -> Decimal | None:
        """The organisation's credit balance (``GET /v1/billing/balance``), or ``None`` where the API has
        no such endpoint, refuses this key for it, or answers something unreadable (said once per
        connection and process; a planning step goes on without it)."""
        try:
            balance = protocol.parse_balance(self._call(protocol.get_balance()))
        except (FluxAuthError, FluxNotFoundError, FluxValidationError) as error:
            _say_once(
                self.log,
                self.config.conn_id,
                "The credit balance cannot be read on connection %r (%s); plans are not checked against it",
                self.config.conn_id,
                error,
            )
            return None
        if balance is None:
            _say_once(
                self.log,
                self.config.conn_id,
                "Connection %r: /v1/billing/balance answered no readable balance; plans are not checked against it",
                self.config.conn_id,
            )
        return balance

    def build_request(self, model: Variant | str | None = None, **params: Any) -> tuple[Variant, FluxInput]:
        """Validate parameters (raising :class:`FluxValidationError` before any money is spent)."""
        variant = resolve_variant(model) if model else self.default_model
        return variant, build_input(variant, **params)

    def estimate(self, requests: Iterable[PlanItem], *, model: Variant | str | None = None) -> CostEstimate:
        """Price a plan with this connection's prices (see :func:`~airflow_provider_flux2.pricing.estimate`);
        storage references are measured through :attr:`aws_conn_id`."""
        return estimate(requests, self.prices, model=model, references=self.references, routes=self.config.edit_models)

    @property
    def references(self) -> ReferenceResolver:
        """The resolver of this hook's storage references (one read and one signature per reference)."""
        if self._resolver is None:
            from airflow_provider_flux2.references import ReferenceResolver

            self._resolver = ReferenceResolver(aws_conn_id=self.aws_conn_id)
        return self._resolver

    def route(self, model: Variant | str, request: FluxInput) -> tuple[str, FluxInput]:
        """The model ``request`` goes to (an edit model for reference images, by the routing table and the
        connection's ``edit_models`` record; a full model id is taken as named) and the request as that
        model takes it."""
        target, routed_request, _ = routed(model, request, self.config.edit_models)
        return target, routed_request

    def _sendable(self, request: FluxInput) -> FluxInput:
        """``request`` with its ``s3://`` and local references made fetchable (presigned, inlined)."""
        from airflow_provider_flux2.references import is_storage_reference

        if not any(is_storage_reference(url) for url in request.image_urls or ()):
            return request
        return self.references.resolve(request)[0]

    def _as_input(
        self,
        request: FluxInput | Mapping[str, Any] | str | None,
        model: Variant | str | None,
        params: Mapping[str, Any],
    ) -> tuple[Variant, FluxInput]:
        """A validated input from a :class:`FluxInput`, a mapping of parameters or a prompt (+ params)."""
        if isinstance(request, FluxInput):
            if params:
                raise FluxValidationError(
                    field=next(iter(params)), value=params, allowed="no extra parameters beside a built FluxInput"
                )
            variant = resolve_variant(model) if model else (request.variant or self.default_model)
            if request.variant is not None and variant is not request.variant:
                raise FluxValidationError(
                    field="model",
                    value=variant.model_id,
                    allowed=f"{request.variant.model_id}, the variant this input was built for",
                )
            return variant, request
        fields = dict(request) if isinstance(request, Mapping) else {"prompt": request} if request is not None else {}
        named = fields.pop("model", None)  # a mapping may name its model; the argument wins
        return self.build_request(model or named, **fields, **params)

    def submit(
        self,
        request: FluxInput | Mapping[str, Any] | str | None = None,
        *,
        model: Variant | str | None = None,
        idempotency_key: str | None = None,
        client_ref: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        **params: Any,
    ) -> Run:
        """Create one run. Every attempt reuses one ``Idempotency-Key``, so a retry is never billed twice.

        ``request`` is a :class:`FluxInput` (from :meth:`build_request`), a mapping of generation
        parameters, or a prompt; ``params`` are more generation parameters (``image_size=...``).
        Anything invalid raises :class:`FluxValidationError` before a request is sent.
        """
        variant, request = self._as_input(request, model, params)
        target, request = self.route(model or variant, self._sendable(request))
        key = idempotency_key or f"flux2-{uuid.uuid4().hex}"
        run = protocol.parse_run(
            self._call(
                protocol.create_run(
                    target,
                    request,
                    idempotency_key=key,
                    client_ref=client_ref,
                    metadata=metadata,
                    callback_url=callback_url,
                )
            )
        )
        self.log.info(
            "Submitted run %s (%s, %sx%s, client_ref %s)",
            run.id,
            target,
            request.width,
            request.height,
            client_ref,
        )
        return run

    def submit_batch(
        self,
        entries: Sequence[BatchEntry | FluxInput | Mapping[str, Any] | str],
        *,
        model: Variant | str | None = None,
        batch_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        use_batch_endpoint: bool = True,
    ) -> Submission:
        """Submit several images with one batch request, or one run each when the model has no batches.

        ``entries`` are :class:`BatchEntry` objects (input, client_ref, Idempotency-Key), or inputs
        (a :class:`FluxInput`, a mapping of parameters, or a prompt) whose keys derive from
        ``batch_key`` (random when not given: pass a stable one to make a resubmission safe).
        A 422 that does not point at an item means the model does not support batches: fall back to
        single runs, each with its own Idempotency-Key.
        """
        variant = resolve_variant(model) if model else self.default_model
        named: Variant | str = model or variant
        batch_key = batch_key or f"flux2-batch-{uuid.uuid4().hex}"
        prepared: list[BatchEntry] = []
        targets: list[str] = []  # where each entry goes: a BatchEntry is sent as given, an input is routed
        for index, entry in enumerate(entries):
            if isinstance(entry, BatchEntry):
                prepared.append(entry)
                targets.append(protocol.model_path(named))
                continue
            target, request = self.route(named, self._sendable(self._as_input(entry, variant, {})[1]))
            prepared.append(BatchEntry(request, f"{batch_key}-{index}", f"{batch_key}-{index}"))
            targets.append(target)
        if not prepared:
            raise FluxValidationError(field="entries", value=[], allowed="at least one image to submit")
        if len(set(targets)) > 1:  # a batch carries one model: entries routed apart go one run each
            sent = [self.submit_one(e, model=t, metadata=metadata) for e, t in zip(prepared, targets, strict=True)]
            return Submission(run_ids=[s.run_ids[0] for s in sent])
        target = targets[0]
        if use_batch_endpoint and len(prepared) > 1:
            # Refused outside the ``try``: a batch we will not build (over 100 items) is not "unsupported".
            if len(prepared) > protocol.MAX_BATCH_ITEMS:
                raise FluxValidationError(
                    field="entries", value=len(prepared), allowed=f"at most {protocol.MAX_BATCH_ITEMS} items per batch"
                )
            try:
                return self.create_batch(prepared, model=target, batch_key=batch_key, metadata=metadata)
            except FluxValidationError as error:
                if not protocol.batch_unsupported(error):
                    raise
                self.log.info("Model %s answered 422 to a batch (%s); submitting single runs", target, error)
        sent = [self.submit_one(e, model=target, metadata=metadata) for e in prepared]
        return Submission(run_ids=[s.run_ids[0] for s in sent])

    def create_batch(
        self, entries: Sequence[BatchEntry], *, model: Variant | str, batch_key: str, metadata: Mapping[str, Any] | None
    ) -> Submission:
        """One batch request, no fallback (a 422 is raised: see ``protocol.batch_unsupported``)."""
        request = protocol.create_batch(
            model, [(e.request, e.client_ref) for e in entries], idempotency_key=batch_key, metadata=metadata
        )
        sent_at = time.time()
        return self._submission(self._call(request), len(entries), model, sent_at)

    async def acreate_batch(
        self, entries: Sequence[BatchEntry], *, model: Variant | str, batch_key: str, metadata: Mapping[str, Any] | None
    ) -> Submission:
        request = protocol.create_batch(
            model, [(e.request, e.client_ref) for e in entries], idempotency_key=batch_key, metadata=metadata
        )
        sent_at = time.time()
        return self._submission(await self._acall(request), len(entries), model, sent_at)

    def _submission(self, data: Any, expected: int, model: Variant | str, sent_at: float) -> Submission:
        batch = protocol.parse_batch(data)
        items = sorted(batch.items, key=lambda i: (i.sequence_index is None, i.sequence_index or 0))
        run_ids = [item.run_id or "" for item in items]
        if len(run_ids) != expected or not all(run_ids):
            raise FluxAPIError(
                status_code=201,
                code="BAD_RESPONSE",
                message=f"batch {batch.id} lists {len(run_ids)} runs for {expected} inputs",
            )
        replayed = protocol.was_replayed(data, sent_at)
        self.log.info(
            "%s batch %s with %d runs (%s)",
            "Replayed" if replayed else "Submitted",
            batch.id,
            len(run_ids),
            protocol.model_path(model),
        )
        return Submission(run_ids=run_ids, batch_id=batch.id, replayed=replayed)

    def submit_one(
        self, entry: BatchEntry, *, model: Variant | str, metadata: Mapping[str, Any] | None = None
    ) -> Submission:
        """Create one run under the entry's own Idempotency-Key (the input is sent as it is)."""
        request = protocol.create_run(
            model, entry.request, idempotency_key=entry.idempotency_key, client_ref=entry.client_ref, metadata=metadata
        )
        sent_at = time.time()
        return self._run_submitted(self._call(request), entry, model, sent_at)

    async def asubmit(
        self, entry: BatchEntry, *, model: Variant | str, metadata: Mapping[str, Any] | None = None
    ) -> Submission:
        """The async twin of :meth:`submit_one` (the trigger)."""
        request = protocol.create_run(
            model, entry.request, idempotency_key=entry.idempotency_key, client_ref=entry.client_ref, metadata=metadata
        )
        sent_at = time.time()
        return self._run_submitted(await self._acall(request), entry, model, sent_at)

    def _run_submitted(self, data: Any, entry: BatchEntry, model: Variant | str, sent_at: float) -> Submission:
        """The one reading of a created run, for both twins: its id, and whether the API replayed it."""
        run = protocol.parse_run(data)
        replayed = protocol.was_replayed(data, sent_at)
        self.log.info(
            "%s run %s (%s, client_ref %s)",
            "Replayed" if replayed else "Submitted",
            run.id,
            protocol.model_path(model),
            entry.client_ref,
        )
        return Submission(run_ids=[run.id], replayed=replayed)

    # -- Sentinel evaluations (requests built and parsed by ``sentinel``) ---------------------------

    def evaluation_price(self, job_class: str = sentinel.DEFAULT_JOB_CLASS) -> Decimal | None:
        """What one evaluation of ``job_class`` costs: the connection's ``sentinel_price_usd``, else the
        price ``GET /v1/evaluations/job-classes`` lists (``None`` when it lists none for the class)."""
        if self.config.sentinel_price is not None:
            return self.config.sentinel_price
        return sentinel.job_class_price(self._call(sentinel.get_job_classes()), job_class)

    def submit_evaluation(self, entry: BatchEntry) -> Submission:
        """Submit one evaluation under the entry's own Idempotency-Key (its input is the request body;
        local images are sent inline as ``data:`` URIs, read now so nothing large is kept)."""
        sent_at = time.time()
        data = self._call(sentinel.create_evaluation(self._evaluable(entry), idempotency_key=entry.idempotency_key))
        return self._evaluation_submitted(data, entry, sent_at)

    async def asubmit_evaluation(self, entry: BatchEntry) -> Submission:
        """The async twin of :meth:`submit_evaluation` (the trigger); a local image is read off the loop."""
        body = await asyncio.to_thread(self._evaluable, entry)
        sent_at = time.time()
        data = await self._acall(sentinel.create_evaluation(body, idempotency_key=entry.idempotency_key))
        return self._evaluation_submitted(data, entry, sent_at)

    def _evaluable(self, entry: BatchEntry) -> dict[str, Any]:
        from airflow_provider_flux2.references import ReferenceResolver, reference_kind

        resolver = ReferenceResolver(aws_conn_id=self.aws_conn_id)  # one per request: no data: URI is kept
        return sentinel.with_image_urls(
            entry.request.to_wire(),
            lambda url, where: resolver.wire_url(url, where) if reference_kind(url) == "file" else url,
        )

    def _evaluation_submitted(self, data: Any, entry: BatchEntry, sent_at: float) -> Submission:
        evaluation = sentinel.parse_evaluation(data)
        replayed = protocol.was_replayed(data, sent_at)
        self.log.info(
            "%s evaluation %s (client_ref %s)", "Replayed" if replayed else "Submitted", evaluation.id, entry.client_ref
        )
        return Submission(run_ids=[evaluation.id], replayed=replayed)

    def get_evaluation(self, evaluation_id: str, *, deadline: float | None = None) -> sentinel.Evaluation:
        """Read an evaluation; ``deadline`` (epoch seconds) bounds the read and its retries."""
        return sentinel.parse_evaluation(self._call(sentinel.get_evaluation(evaluation_id), deadline=deadline))

    async def aget_evaluation(self, evaluation_id: str, *, deadline: float | None = None) -> sentinel.Evaluation:
        """The async twin of :meth:`get_evaluation`."""
        return sentinel.parse_evaluation(await self._acall(sentinel.get_evaluation(evaluation_id), deadline=deadline))

    def get_run(self, run_id: str, *, deadline: float | None = None) -> Run:
        """Read a run; ``deadline`` (epoch seconds) bounds the read and its retries."""
        return protocol.parse_run(self._call(protocol.get_run(run_id), deadline=deadline))

    async def aget_run(self, run_id: str, *, deadline: float | None = None) -> Run:
        """Read a run; ``deadline`` (epoch seconds) bounds the read and its retries."""
        return protocol.parse_run(await self._acall(protocol.get_run(run_id), deadline=deadline))

    def get_batch(self, batch_id: str, *, deadline: float | None = None) -> Batch:
        """Read a batch; ``deadline`` (epoch seconds) bounds the read and its retries."""
        return protocol.parse_batch(self._call(protocol.get_batch(batch_id), deadline=deadline))

    async def aget_batch(self, batch_id: str, *, deadline: float | None = None) -> Batch:
        """Read a batch; ``deadline`` (epoch seconds) bounds the read and its retries."""
        return protocol.parse_batch(await self._acall(protocol.get_batch(batch_id), deadline=deadline))

    def get_batch_items(self, batch_id: str, *, deadline: float | None = None) -> list[Run]:
        """Read a batch's items with their outputs, following every page; ``deadline`` (epoch seconds)
        bounds the reads and their retries."""
        request: protocol.ApiRequest | None = protocol.get_batch_items(batch_id)
        runs: list[Run] = []
        seen: set[str] = set()
        while request is not None:
            page = protocol.parse_batch_items(self._call(request, deadline=deadline))
            runs.extend(page.runs)
            request = protocol.next_items_request(batch_id, page, seen)
        return runs

    async def aget_batch_items(self, batch_id: str, *, deadline: float | None = None) -> list[Run]:
        """The async twin of :meth:`get_batch_items`."""
        request: protocol.ApiRequest | None = protocol.get_batch_items(batch_id)
        runs: list[Run] = []
        seen: set[str] = set()
        while request is not None:
            page = protocol.parse_batch_items(await self._acall(request, deadline=deadline))
            runs.extend(page.runs)
            request = protocol.next_items_request(batch_id, page, seen)
        return runs

    def wait(self, run_id: str | Run, *, timeout: float = 600.0, poll_interval: float = 2.0) -> Run:
        """Wait for one run (its id, or a :class:`Run`) until it is terminal and return it.

        The run is awaited through the same window and loop as a task's runs (the poll interval follows
        its status; an API that does not answer is waited for until the deadline); past ``timeout``
        seconds, :class:`FluxTimeoutError`. A failed run is returned, not raised: see ``protocol.failure_of``.
        """
        run_id = run_id.id if isinstance(run_id, Run) else run_id
        now = time.time()
        spec = JobSpec(index=0, model="", key=run_id, ref=run_id, input=None, cost=Decimal("0"))
        window = Window([spec], max_in_flight=1, chunk_size=1, end_time=now + timeout, poll_interval=poll_interval)
        window.reattach(0, run_id, submitted_at=now)
        run_window(self, window, metadata=None, logger=self.log, progress_interval=-1)
        # The run as it ends (one read more: the window keeps states, not run objects); a run the API
        # does not know raises here, as the window's own read did.
        run = self.get_run(run_id, deadline=time.time() + min(self.config.request_deadline, 10.0))
        if not run.terminal:
            raise FluxTimeoutError(f"Run {run_id} still {run.status_code.value} after {timeout:g}s", run_ids=[run_id])
        return run

    def download(
        self,
        run: Run | str,
        *,
        width: int | None = None,
        height: int | None = None,
        output_format: str | None = None,
        index: int = 0,
        refreshes: int = 2,
    ) -> image_download.DownloadedImage:
        """Fetch a succeeded run's image, streamed and size-capped, and verify it is what was asked for.

        ``run`` is a :class:`Run` or a run id (read first). The expected size and format default to
        what the run's own ``input`` asked for. An expired URL (403/404/410) is refreshed by reading
        the run again, up to ``refreshes`` times.
        """
        if isinstance(run, str):
            run = self.get_run(run)
        if width is None or height is None:
            width, height = image_download.size_of_run(run, strict=True)
        output_format = output_format or str((run.input or {}).get("output_format") or "jpeg")
        for attempt in range(refreshes + 1):
            output = run.output
            if output is None or len(output.images) <= index:
                raise FluxImageError(f"Run has no output image #{index}", run_id=run.id)
            url = output.images[index].url
            try:
                data, content_type = image_download.fetch(
                    self._download_client, self.config, url, run.id, lambda r, n, e: self._pause(r, n, e, None)
                )
            except image_download.ExpiredURL:
                if attempt == refreshes:
                    raise FluxImageError(
                        f"Output URL still expired after {refreshes} refreshes", run_id=run.id
                    ) from None
                self.log.info("Output URL of run %s has expired; reading the run again for a fresh one", run.id)
                run = self.get_run(run.id)
                continue
            return image_download.verify_image(
                data, content_type, width=width, height=height, output_format=output_format, url=url, run_id=run.id
            )
        raise AssertionError("unreachable")

    def generate(
        self,
        prompt: str | dict[str, Any],
        *,
        model: Variant | str | None = None,
        idempotency_key: str | None = None,
        client_ref: str | None = None,
        timeout: float = 600.0,
        poll_interval: float = 2.0,
        allow_nsfw: bool = False,
        budget_usd: str | Decimal | None = None,
        **params: Any,
    ) -> tuple[Run, image_download.DownloadedImage]:
        """Submit, wait and download one image; raises the run's failure (moderation included).

        An output the safety checker flagged (``has_nsfw_concepts``: a blacked-out image) raises
        :class:`FluxModerationError` too, unless ``allow_nsfw`` (the run is billed either way).
        With ``budget_usd``, the estimate is checked before submitting and the cost the API reports
        before downloading (:class:`BudgetOverrunError` when the API billed more than the budget).
        """
        variant, request = self.build_request(model, prompt=prompt, **params)
        target, request = self.route(variant, self._sendable(request))  # measured, fetchable, routed
        budget = Budget.of(budget_usd)
        if budget is not None:
            budget.check(self.estimate([(target, request)]))
        run = self.submit(request, model=target, idempotency_key=idempotency_key, client_ref=client_ref)
        run = self.wait(run.id, timeout=timeout, poll_interval=poll_interval)
        check_reported_spend(run, budget)
        failure = protocol.failure_of(run)
        if failure is not None:
            raise failure
        if run.output is not None and run.output.nsfw and not allow_nsfw:
            raise FluxModerationError(
                run_id=run.id,
                status=run.status_code.value,
                failure_code="NSFW_FLAGGED",
                failure_message="the safety checker flagged the output and blacked it out (billed)",
            )
        image = self.download(run, width=request.width, height=request.height, output_format=request.output_format)
        return run, image


def check_reported_spend(run: Run, budget: Budget | None, *, spent: Decimal = Decimal("0")) -> None:
    """Raise :class:`BudgetOverrunError` when ``spent`` plus the run's reported cost passes ``budget``."""
    cost = run.cost
    if budget is not None and cost is not None and spent + cost > budget.limit:
        raise BudgetOverrunError(reported=spent + cost, limit=budget.limit, scope=budget.scope, run_id=run.id)


_SAID: set[str] = set()


def _say_once(log: Any, key: str, message: str, *args: Any) -> None:
    """Log a warning once per ``key`` and process (a missing endpoint is news once, not every task)."""
    if key in _SAID:
        return
    _SAID.add(key)
    log.warning(message, *args)


def _connection_type_info() -> dict[str, Any]:
    """The ``flux2`` connection type as declared in the provider info (one source for every Airflow version)."""
    from airflow_provider_flux2.get_provider_info import get_provider_info

    return next(c for c in get_provider_info()["connection-types"] if c["connection-type"] == FluxHook.conn_type)


@contextlib.contextmanager
def _connection_lookup(conn_id: str) -> Iterator[None]:
    """A connection that does not exist is a permanent, typed error (a trigger must not retry it)."""
    from airflow.exceptions import AirflowNotFoundException

    try:
        yield
    except AirflowNotFoundException:
        raise FluxConnectionNotFoundError(conn_id) from None


def _describe(error: BaseException) -> str:
    if isinstance(error, httpx.TransportError):
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return str(error)


def _mask(secret: str | None) -> None:
    """Register the key with Airflow's secrets masker so it is redacted from every log line."""
    if not secret:
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - airflow.sdk.log exists on every supported version
        return
    mask_secret(secret)
