"""FluxHook: the connection, the HTTP clients and the retry policy for the Runflow FLUX 2 API.

Requests are built and responses parsed by :mod:`airflow_provider_flux2.protocol`; this module only
does the I/O, once synchronously (operators, CLI) and once asynchronously (the trigger).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
from airflow.sdk import BaseHook
from PIL import Image, UnidentifiedImageError

from airflow_provider_flux2 import metrics, protocol
from airflow_provider_flux2.exceptions import (
    FluxAPIError,
    FluxAuthError,
    FluxConnectionError,
    FluxError,
    FluxImageError,
    FluxModerationError,
    FluxNotFoundError,
    FluxRequestTimeoutError,
    FluxTimeoutError,
    FluxValidationError,
)
from airflow_provider_flux2.models import (
    Batch,
    FluxInput,
    Run,
    RunStatus,
    Variant,
    build_input,
    resolve_variant,
)
from airflow_provider_flux2.pricing import PriceTable, billed_megapixels, estimate

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_provider_flux2.pricing import CostEstimate, PlanItem

#: Output URLs answer these when they have expired; the run is re-read for a fresh URL.
EXPIRED_URL_STATUSES = frozenset({403, 404, 410})
DEFAULT_MAX_DOWNLOAD_BYTES = 128 * 1024 * 1024
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


#: The connection extras the hook reads.
CONNECTION_EXTRAS = (
    "model",
    "organization_id",
    "timeout",
    "max_attempts",
    "retry_base_delay",
    "retry_max_delay",
    "max_download_mb",
    "prices",
)
#: Other names people write for them.
EXTRA_ALIASES = {"retries": "max_retries", "max_retries": "max_retries", "price_overrides": "prices"}


@dataclass(frozen=True)
class FluxConnectionConfig:
    """What the hook reads from its Airflow connection (the API key is kept out of ``repr``)."""

    base_url: str
    api_key: str = field(repr=False)
    model: Variant
    organization_id: str | None
    timeout: float
    retry: protocol.RetryPolicy
    prices: PriceTable
    max_download_bytes: int
    conn_id: str

    @classmethod
    def from_connection(cls, conn: Any, conn_id: str) -> FluxConnectionConfig:
        extra = _extras(conn)
        api_key = (conn.password or "").strip()
        if not api_key:
            raise FluxValidationError(
                field=f"connection {conn_id!r} password",
                value="(empty)",
                allowed="the Runflow API key (rf_live_...) in the connection's password / API Key field",
            )
        return cls.build(api_key=api_key, base_url=_base_url(conn.host, conn.port), extra=extra, conn_id=conn_id)

    @classmethod
    def build(
        cls, *, api_key: str, base_url: str | None, extra: Mapping[str, Any], conn_id: str
    ) -> FluxConnectionConfig:
        unknown = sorted(set(extra) - set(CONNECTION_EXTRAS) - set(EXTRA_ALIASES))
        if unknown:
            logging.getLogger(__name__).warning(
                "Connection %r: ignoring unknown extra(s) %s; known: %s", conn_id, unknown, ", ".join(CONNECTION_EXTRAS)
            )
        # Empty form fields arrive as null or "": they mean "the default".
        extra = {EXTRA_ALIASES.get(k, k): v for k, v in extra.items() if v is not None and v != ""}
        if isinstance(extra.get("prices"), str):  # a connection URI carries it as JSON text
            try:
                extra["prices"] = json.loads(extra["prices"])
            except ValueError:
                raise FluxValidationError(
                    field="prices", value=extra["prices"], allowed='a JSON object like {"pro": "0.03"}'
                ) from None
        if "max_retries" in extra:  # retries after the first attempt
            extra.setdefault("max_attempts", int(extra.pop("max_retries")) + 1)
        retry = protocol.RetryPolicy(
            max_attempts=int(extra.get("max_attempts", 5)),
            base=float(extra.get("retry_base_delay", 1.0)),
            cap=float(extra.get("retry_max_delay", 32.0)),
        )
        if retry.max_attempts < 1:
            raise FluxValidationError(field="max_attempts", value=retry.max_attempts, allowed="an integer >= 1")
        return cls(
            base_url=(base_url or protocol.DEFAULT_BASE_URL).rstrip("/"),
            api_key=api_key,
            model=resolve_variant(extra.get("model")),
            organization_id=extra.get("organization_id") or None,
            timeout=float(extra.get("timeout", 30.0)),
            retry=retry,
            prices=PriceTable().with_overrides(extra.get("prices")),
            max_download_bytes=int(float(extra.get("max_download_mb", 128)) * 1024 * 1024),
            conn_id=conn_id,
        )


def _extras(conn: Any) -> dict[str, Any]:
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else (conn.extra or {})
    if isinstance(extra, str):
        extra = json.loads(extra or "{}")
    return dict(extra or {})


def _base_url(host: str | None, port: int | None) -> str:
    """``host`` may be a full URL (``http://127.0.0.1:8787``) or a bare host name (https assumed)."""
    if not host:
        return protocol.DEFAULT_BASE_URL
    url = host if "://" in host else f"https://{host}"
    if port and f":{port}" not in url.split("://", 1)[1]:
        url = f"{url.rstrip('/')}:{port}"
    return url


@dataclass(frozen=True)
class DownloadedImage:
    """Verified bytes of one output image (kept in memory only until stored)."""

    data: bytes = field(repr=False)
    content_type: str
    width: int
    height: int
    format: str
    url: str = field(repr=False)

    @property
    def size_bytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Submission:
    """What one submit produced: a batch id (when the batch endpoint was used) and run ids in order."""

    run_ids: list[str]
    batch_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "run_ids": list(self.run_ids)}


@dataclass(frozen=True)
class BatchEntry:
    """One image of a batch submit: its input, its client_ref and its own Idempotency-Key."""

    request: FluxInput
    client_ref: str
    idempotency_key: str


def adaptive_poll_interval(
    statuses: Iterable[RunStatus | str], *, base: float, elapsed: float, expected: float
) -> float:
    """Seconds until the next poll: slow while runs queue or have long to go, ``base`` near their end.

    :param base: the shortest pause (the operator's ``poll_interval``); never polled faster.
    :param elapsed: seconds since the oldest awaited run was submitted.
    :param expected: the expected generation time of the largest image awaited (``expected_duration``).

    A queue is polled every ``2 × base`` (or ``expected / 2``, at most ``4 × base``): a cold start takes
    5–10 s. A running batch far from its expected end is polled every half of the time left (at most
    ``4 × base``); within ``2 × base`` of it, every ``base``.
    """
    states = {RunStatus(s) for s in statuses}
    if not states:
        return base
    if states <= {RunStatus.QUEUED}:
        return min(4 * base, max(2 * base, expected / 2))
    remaining = expected - elapsed
    if remaining > 2 * base:
        return min(4 * base, remaining / 2)
    return base


def expected_duration(width: int, height: int) -> float:
    """A rough guess of generation time (s) for polling: a few seconds plus ~1.5 s per megapixel."""
    return 4.0 + 1.5 * billed_megapixels(width, height)


class FluxHook(BaseHook):
    """Talks to the Runflow API for FLUX 2: validated requests, retries, downloads, prices.

    The API key is the connection's password; the host is the base URL (``https://api.runflow.io``
    when empty); extras: ``model``, ``organization_id``, ``timeout``, ``max_attempts``,
    ``retry_base_delay``, ``retry_max_delay``, ``max_download_mb``, ``prices``.

    :param flux_conn_id: Airflow connection id (type ``flux2``).
    :param api_key: use this key instead of a connection (for scripts; never logged).
    :param base_url: with ``api_key``: the API's base URL.
    :param extra: with ``api_key``: the options a connection would carry in its extras.
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
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        self.flux_conn_id = flux_conn_id
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
        from wtforms import IntegerField, StringField

        widgets = {}
        for name, spec in _connection_type_info()["conn-fields"].items():
            kind = IntegerField if "integer" in spec["schema"]["type"] else StringField
            widgets[name] = kind(
                lazy_gettext(spec["label"]), widget=BS3TextFieldWidget(), description=spec.get("description", "")
            )
        return widgets

    @property
    def config(self) -> FluxConnectionConfig:
        if self._config is None:
            conn = self.get_connection(self.flux_conn_id)
            _mask(conn.password)
            self._config = FluxConnectionConfig.from_connection(conn, self.flux_conn_id)
        return self._config

    async def aconfig(self) -> FluxConnectionConfig:
        """The config, read without blocking the event loop (the triggerer's)."""
        if self._config is None:
            getter = getattr(BaseHook, "aget_connection", None)
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
            self._client = httpx.Client(**self._client_kwargs(self.config))
        return self._client

    async def aget_conn(self) -> httpx.AsyncClient:
        """The async client (one per hook and event loop, reused)."""
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(**self._client_kwargs(await self.aconfig()))
        return self._aclient

    @cached_property
    def _download_client(self) -> httpx.Client:
        # Output URLs are presigned and may live on another host: never send them the API key.
        return httpx.Client(timeout=httpx.Timeout(self.config.timeout), follow_redirects=True)

    @staticmethod
    def _client_kwargs(config: FluxConnectionConfig) -> dict[str, Any]:
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
        """Seconds to wait before retrying ``request``, or ``None`` when ``error`` must be raised."""
        policy = self.config.retry
        if not protocol.is_retryable(error) or attempt >= policy.max_attempts:
            return None
        delay = policy.delay(attempt, error)
        self.log.warning(
            "%s %s failed (%s); attempt %d of %d, retrying in %.2fs",
            request.method,
            request.path.split("?", 1)[0],  # never a presigned URL's signature
            _describe(error),
            attempt,
            policy.max_attempts,
            delay,
        )
        metrics.retried(error)
        return delay

    def _final_error(self, request: protocol.ApiRequest, attempt: int, error: BaseException) -> BaseException:
        if isinstance(error, FluxAuthError):
            return error.with_hint(
                f"Check the API key in Airflow connection {self.config.conn_id!r} (the key itself is never shown)"
            )
        if isinstance(error, httpx.TimeoutException):
            return FluxRequestTimeoutError(
                f"The FLUX API did not answer in time: {_describe(error)}",
                attempts=attempt,
                url=request.url(self.config.base_url),
            )
        if isinstance(error, httpx.TransportError):
            return FluxConnectionError(
                f"Could not reach the FLUX API: {_describe(error)}",
                attempts=attempt,
                url=request.url(self.config.base_url),
            )
        return error

    def _call(self, request: protocol.ApiRequest) -> Any:
        client = self.get_conn()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = client.request(request.method, request.path, json=request.json, headers=request.headers)
                return protocol.check_response(
                    response.status_code, response.headers, response.content, run_id=request.run_id
                )
            except (FluxAPIError, FluxValidationError, httpx.TransportError) as error:
                delay = self._next_delay(request, attempt, error)
                if delay is None:
                    raise self._final_error(request, attempt, error) from error
                time.sleep(delay)

    async def _acall(self, request: protocol.ApiRequest) -> Any:
        client = await self.aget_conn()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await client.request(
                    request.method, request.path, json=request.json, headers=request.headers
                )
                return protocol.check_response(
                    response.status_code, response.headers, response.content, run_id=request.run_id
                )
            except (FluxAPIError, FluxValidationError, httpx.TransportError) as error:
                delay = self._next_delay(request, attempt, error)
                if delay is None:
                    raise self._final_error(request, attempt, error) from error
                await asyncio.sleep(delay)

    # -- API ----------------------------------------------------------------------------------------

    def health(self) -> bool:
        return (self._call(protocol.health()) or {}).get("status") == "ok"

    def test_connection(self) -> tuple[bool, str]:
        """Health, then an authenticated read (a 404 for an unknown run proves the key works)."""
        try:
            if not self.health():
                return False, f"{self.config.base_url} answered, but /v1/health is not ok"
            with contextlib.suppress(FluxNotFoundError):
                self._call(protocol.get_run("flux2-connection-test"))
            return True, f"Connected to {self.config.base_url}; the API key is accepted"
        except FluxError as error:
            # `airflow connections test` prints through rich, which takes "[request id …]" for markup
            # and drops it: parentheses keep the request id in the CLI and the UI alike.
            return False, str(error).replace("[", "(").replace("]", ")")

    def build_request(self, model: Variant | str | None = None, **params: Any) -> tuple[Variant, FluxInput]:
        """Validate parameters (raising :class:`FluxValidationError` before any money is spent)."""
        variant = resolve_variant(model) if model else self.default_model
        return variant, build_input(variant, **params)

    def estimate(self, requests: Iterable[PlanItem], *, model: Variant | str | None = None) -> CostEstimate:
        """Price a plan with this connection's prices (see :func:`~airflow_provider_flux2.pricing.estimate`)."""
        return estimate(requests, self.prices, model=model)

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
        key = idempotency_key or f"flux2-{uuid.uuid4().hex}"
        run = protocol.parse_run(
            self._call(
                protocol.create_run(
                    variant,
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
            variant.value,
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
        batch_key = batch_key or f"flux2-batch-{uuid.uuid4().hex}"
        prepared: list[BatchEntry] = [
            entry
            if isinstance(entry, BatchEntry)
            else BatchEntry(
                request=self._as_input(entry, variant, {})[1],
                client_ref=f"{batch_key}-{index}",
                idempotency_key=f"{batch_key}-{index}",
            )
            for index, entry in enumerate(entries)
        ]
        if not prepared:
            raise FluxValidationError(field="entries", value=[], allowed="at least one image to submit")
        if use_batch_endpoint and len(prepared) > 1:
            try:
                data = self._call(
                    protocol.create_batch(
                        variant,
                        [(e.request, e.client_ref) for e in prepared],
                        idempotency_key=batch_key,
                        metadata=metadata,
                    )
                )
            except FluxValidationError as error:
                if _points_at_item(error):
                    raise
                self.log.info("Model %s answered 422 to a batch (%s); submitting single runs", variant.value, error)
            else:
                batch = protocol.parse_batch(data)
                items = sorted(batch.items, key=lambda i: i.sequence_index)
                run_ids = [item.run_id or "" for item in items]
                if len(run_ids) != len(prepared) or not all(run_ids):
                    raise FluxAPIError(
                        status_code=201,
                        code="BAD_RESPONSE",
                        message=f"batch {batch.id} lists {len(run_ids)} runs for {len(prepared)} inputs",
                    )
                self.log.info("Submitted batch %s with %d runs (%s)", batch.id, len(run_ids), variant.value)
                return Submission(run_ids=run_ids, batch_id=batch.id)
        runs = [
            self.submit(
                e.request,
                model=variant,
                idempotency_key=e.idempotency_key,
                client_ref=e.client_ref,
                metadata=metadata,
            )
            for e in prepared
        ]
        return Submission(run_ids=[r.id for r in runs])

    def get_run(self, run_id: str) -> Run:
        return protocol.parse_run(self._call(protocol.get_run(run_id)))

    async def aget_run(self, run_id: str) -> Run:
        return protocol.parse_run(await self._acall(protocol.get_run(run_id)))

    def get_batch(self, batch_id: str) -> Batch:
        return protocol.parse_batch(self._call(protocol.get_batch(batch_id)))

    async def aget_batch(self, batch_id: str) -> Batch:
        return protocol.parse_batch(await self._acall(protocol.get_batch(batch_id)))

    def get_batch_items(self, batch_id: str) -> list[Run]:
        return protocol.parse_batch_items(self._call(protocol.get_batch_items(batch_id)))

    def wait(self, run_id: str | Run, *, timeout: float = 600.0, poll_interval: float = 2.0) -> Run:
        """Poll one run (its id, or a :class:`Run`) until it is terminal and return it.

        The interval follows the run's status (see ``adaptive_poll_interval``); past ``timeout``
        seconds, :class:`FluxTimeoutError`. A failed run is returned, not raised: see ``protocol.failure_of``.
        """
        run_id = run_id.id if isinstance(run_id, Run) else run_id
        deadline = time.time() + timeout
        started = time.time()
        while True:
            run = self.get_run(run_id)
            if run.terminal:
                return run
            if time.time() >= deadline:
                raise FluxTimeoutError(
                    f"Run {run_id} still {run.status_code.value} after {timeout:g}s", run_ids=[run_id]
                )
            width, height = _size_of_run(run)
            interval = adaptive_poll_interval(
                [run.status_code],
                base=poll_interval,
                elapsed=time.time() - started,
                expected=expected_duration(width, height),
            )
            time.sleep(max(0.0, min(interval, deadline - time.time())))

    def download(
        self,
        run: Run | str,
        *,
        width: int | None = None,
        height: int | None = None,
        output_format: str | None = None,
        index: int = 0,
        refreshes: int = 2,
    ) -> DownloadedImage:
        """Fetch a succeeded run's image, streamed and size-capped, and verify it is what was asked for.

        ``run`` is a :class:`Run` or a run id (read first). The expected size and format default to
        what the run's own ``input`` asked for. An expired URL (403/404/410) is refreshed by reading
        the run again, up to ``refreshes`` times.
        """
        if isinstance(run, str):
            run = self.get_run(run)
        if width is None or height is None:
            width, height = _size_of_run(run, strict=True)
        output_format = output_format or str((run.input or {}).get("output_format") or "jpeg")
        for attempt in range(refreshes + 1):
            output = run.output
            if output is None or len(output.images) <= index:
                raise FluxImageError(f"Run has no output image #{index}", run_id=run.id)
            url = output.images[index].url
            try:
                data, content_type = self._fetch(url, run.id)
            except _ExpiredURL:
                if attempt == refreshes:
                    raise FluxImageError(
                        f"Output URL still expired after {refreshes} refreshes", run_id=run.id
                    ) from None
                self.log.info("Output URL of run %s has expired; reading the run again for a fresh one", run.id)
                run = self.get_run(run.id)
                continue
            return verify_image(
                data, content_type, width=width, height=height, output_format=output_format, url=url, run_id=run.id
            )
        raise AssertionError("unreachable")

    def _fetch(self, url: str, run_id: str) -> tuple[bytes, str]:
        if url.startswith("data:"):
            return _decode_data_uri(url, run_id)
        request = protocol.ApiRequest("GET", url, run_id=run_id)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._stream(url, run_id)
            except (FluxAPIError, httpx.TransportError) as error:
                delay = self._next_delay(request, attempt, error)
                if delay is None:
                    raise self._final_error(request, attempt, error) from error
                time.sleep(delay)

    def _stream(self, url: str, run_id: str) -> tuple[bytes, str]:
        limit = self.config.max_download_bytes
        with self._download_client.stream("GET", url) as response:
            if response.status_code in EXPIRED_URL_STATUSES:
                raise _ExpiredURL()
            if response.status_code >= 400:
                response.read()
                raise protocol.error_from_response(
                    response.status_code, response.headers, response.content, run_id=run_id
                )
            declared = int(response.headers.get("content-length") or 0)
            if declared > limit:
                raise FluxImageError(f"Image of {declared} bytes exceeds the {limit}-byte cap", run_id=run_id)
            chunks, total = [], 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > limit:
                    raise FluxImageError(f"Image exceeds the {limit}-byte download cap", run_id=run_id)
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("content-type", "")

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
        **params: Any,
    ) -> tuple[Run, DownloadedImage]:
        """Submit, wait and download one image; raises the run's failure (moderation included).

        An output the safety checker flagged (``has_nsfw_concepts``: a blacked-out image) raises
        :class:`FluxModerationError` too, unless ``allow_nsfw`` (the run is billed either way).
        """
        variant, request = self.build_request(model, prompt=prompt, **params)
        run = self.submit(request, model=variant, idempotency_key=idempotency_key, client_ref=client_ref)
        run = self.wait(run.id, timeout=timeout, poll_interval=poll_interval)
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


def _connection_type_info() -> dict[str, Any]:
    """The ``flux2`` connection type as declared in the provider info (one source for every Airflow version)."""
    from airflow_provider_flux2.get_provider_info import get_provider_info

    return next(c for c in get_provider_info()["connection-types"] if c["connection-type"] == FluxHook.conn_type)


class _ExpiredURL(Exception):
    """An output URL answered 403/404/410."""


def _points_at_item(error: FluxValidationError) -> bool:
    """Whether a batch 422 names an item's field (a real input error) rather than the batch itself."""
    return any(str(d.get("field", "")).split(".")[0].isdigit() for d in error.details)


def _size_of_run(run: Run, *, strict: bool = False) -> tuple[int, int]:
    """The size a run asked for (the API's default when its input does not say)."""
    from airflow_provider_flux2.models import DEFAULT_SIZE, size_of

    try:
        return size_of((run.input or {}).get("image_size") or DEFAULT_SIZE)
    except FluxValidationError:
        if strict:
            raise
        return size_of(DEFAULT_SIZE)


def _decode_data_uri(url: str, run_id: str) -> tuple[bytes, str]:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise FluxImageError("Unsupported data: URI (not base64)", run_id=run_id)
    try:
        return base64.b64decode(payload, validate=True), header[5:].split(";")[0]
    except binascii.Error as error:
        raise FluxImageError(f"Undecodable data: URI ({error})", run_id=run_id) from None


def verify_image(
    data: bytes,
    content_type: str,
    *,
    width: int,
    height: int,
    output_format: str,
    url: str = "",
    run_id: str | None = None,
) -> DownloadedImage:
    """Decode the bytes (Pillow, with its decompression-bomb guard) and check size and format."""
    want = PIL_FORMATS.get(output_format, output_format.upper())
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            found_format, size = image.format, image.size
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise FluxImageError(f"Downloaded bytes are not a readable image ({error})", run_id=run_id) from None
    if found_format != want:
        raise FluxImageError(f"Expected a {want} image, got {found_format}", run_id=run_id)
    if size != (width, height):
        raise FluxImageError(f"Expected {width}x{height}, got {size[0]}x{size[1]}", run_id=run_id)
    declared = content_type.split(";")[0].strip().lower()
    expected_type = f"image/{output_format}"
    if declared and declared not in (expected_type, "application/octet-stream", "binary/octet-stream"):
        raise FluxImageError(f"Expected content type {expected_type}, got {declared}", run_id=run_id)
    return DownloadedImage(
        data=data, content_type=expected_type, width=width, height=height, format=output_format, url=url
    )


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
