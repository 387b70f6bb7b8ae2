"""Bounded HTTP: a total deadline on every exchange and a cap on every body, for sync and async clients.

httpx's timeouts apply to each socket operation: a server that sends one byte a second never trips
them and holds the request (and a trigger's poll) forever. Here every connect, TLS handshake, read
and write of an exchange gets at most the time left before the exchange's deadline, so the whole
exchange — connect and all reads — ends by then. The deadline is set per exchange with
:func:`deadline` and read by the network streams httpcore uses; it is a context variable, so the
sync client (one thread) and the async client (one task) each see their own.

Bodies are read raw and inflated here (:class:`~airflow_provider_flux2.protocol.CappedBody`), so a
gzip bomb stops at the cap instead of expanding in memory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

from airflow_provider_flux2 import protocol

#: httpx's and httpcore's loggers: at DEBUG they print response headers, which a hostile server fills.
_HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
_SECRETS: set[str] = set()


class _RedactingFilter(logging.Filter):
    """Redact registered keys from httpx/httpcore log records (their DEBUG lines quote headers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            text = record.getMessage()
            redacted = protocol.redact(text, tuple(_SECRETS))
            if redacted != text:
                record.msg, record.args = redacted, ()
        return True


_FILTER = _RedactingFilter()


def register_secret(secret: str) -> None:
    """Keep ``secret`` out of httpx's and httpcore's log lines in this process."""
    if not secret:
        return
    _SECRETS.add(secret)
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


#: ``time.monotonic()`` by which the current exchange must be over; ``None`` when unbounded.
_DEADLINE: ContextVar[float | None] = ContextVar("flux2_exchange_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Bound every socket operation inside the block to end within ``seconds`` from now (in all)."""
    at = time.monotonic() + max(0.0, seconds)
    current = _DEADLINE.get()
    token = _DEADLINE.set(at if current is None else min(at, current))
    try:
        yield at
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline (``None`` outside one)."""
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()


def _clamp(timeout: float | None, kind: type[Exception]) -> float | None:
    left = remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise kind("the exchange's total deadline has passed")
    return left if timeout is None else min(timeout, left)


class _SyncStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _SyncStream(
            self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _SyncBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        clamped = _clamp(timeout, httpcore.ConnectTimeout)
        return _SyncStream(self._inner.connect_tcp(host, port, clamped, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return _SyncStream(
            self._inner.connect_unix_socket(path, _clamp(timeout, httpcore.ConnectTimeout), socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        inner = await self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout))
        return _AsyncStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        clamped = _clamp(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.connect_tcp(host, port, clamped, local_address, socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        clamped = _clamp(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.connect_unix_socket(path, clamped, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _install(client: httpx.Client | httpx.AsyncClient) -> None:
    """Put the deadline-aware network backend under every transport of ``client`` (proxies included).

    httpx exposes no option for a network backend, so its connection pools' backend is replaced;
    ``tests/hostile`` proves the effect (a dripping server is cut off), so an httpx change that
    breaks this fails there, not in production.
    """
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            continue
        if isinstance(client, httpx.AsyncClient):
            if not isinstance(backend, _AsyncBackend):
                pool._network_backend = _AsyncBackend(backend)  # type: ignore[union-attr]
        elif not isinstance(backend, _SyncBackend):
            pool._network_backend = _SyncBackend(backend)  # type: ignore[union-attr]


def client(**kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` whose exchanges honour :func:`deadline`; it asks only for gzip/deflate."""
    headers = {"Accept-Encoding": protocol.ACCEPT_ENCODING, **kwargs.pop("headers", {})}
    made = httpx.Client(headers=headers, **kwargs)
    _install(made)
    return made


def async_client(**kwargs: Any) -> httpx.AsyncClient:
    """The async twin of :func:`client`."""
    headers = {"Accept-Encoding": protocol.ACCEPT_ENCODING, **kwargs.pop("headers", {})}
    made = httpx.AsyncClient(headers=headers, **kwargs)
    _install(made)
    return made


def _check_declared(response: httpx.Response, limit: int) -> None:
    declared = response.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise protocol.BodyTooLargeError(f"{declared} bytes declared, more than {limit}")


def read_body(response: httpx.Response, limit: int) -> bytes:
    """The decoded body of a streamed response, at most ``limit`` bytes after decompression.

    Raises :class:`protocol.BodyTooLargeError` / :class:`protocol.BodyDecodingError`, and
    ``httpx.ReadTimeout`` when the deadline passes between two chunks.
    """
    _check_declared(response, limit)
    body = protocol.CappedBody(response.headers.get("content-encoding"), limit)
    for raw in response.iter_raw():
        _clamp(None, httpx.ReadTimeout)
        body.feed(raw)
    return body.finish()


async def aread_body(response: httpx.Response, limit: int) -> bytes:
    """The async twin of :func:`read_body`."""
    _check_declared(response, limit)
    body = protocol.CappedBody(response.headers.get("content-encoding"), limit)
    async for raw in response.aiter_raw():
        _clamp(None, httpx.ReadTimeout)
        body.feed(raw)
    return body.finish()


@contextlib.asynccontextmanager
async def astream(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
    """``client.stream`` (kept here so the async path reads like the sync one)."""
    async with client.stream(method, url, **kwargs) as response:
        yield response
