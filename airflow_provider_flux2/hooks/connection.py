"""The ``flux2`` connection: every field and extra parsed and validated where it is read.

A wrong value fails here, when the connection is read and before anything is sent, with a
:class:`FluxValidationError` that names the extra, the value and what is allowed. The API key is
checked too, but never shown: its value appears in no message.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import Variant, resolve_variant
from airflow_provider_flux2.pricing import PriceTable, to_usd

log = logging.getLogger(__name__)

MB = 1024 * 1024

#: The connection extras the hook reads.
CONNECTION_EXTRAS = (
    "model",
    "organization_id",
    "timeout",
    "request_deadline",
    "download_deadline",
    "max_attempts",
    "retry_base_delay",
    "retry_max_delay",
    "max_download_mb",
    "max_response_mb",
    "max_redirects",
    "allow_plain_http",
    "prices",
    "edit_models",
    "max_task_spend_usd",
    "max_requests_per_second",
    "adaptive_rate_limit",
    "sentinel_price_usd",
)
#: Other names people write for them.
EXTRA_ALIASES = {"retries": "max_retries", "max_retries": "max_retries", "price_overrides": "prices"}

#: Defaults of the numeric extras.
DEFAULT_TIMEOUT = 30.0
DEFAULT_REQUEST_DEADLINE = 120.0
DEFAULT_DOWNLOAD_DEADLINE = 300.0
DEFAULT_MAX_DOWNLOAD_MB = 128.0
DEFAULT_MAX_RESPONSE_MB = 16.0


@dataclass(frozen=True)
class FluxConnectionConfig:
    """What the hook reads from its Airflow connection (the API key is kept out of ``repr``).

    :param timeout: seconds for connecting and for each read (httpx's per-operation timeout).
    :param request_deadline: seconds one API call may take in all (connect and every read); a server
        that drips its answer is cut off here, however often it sends a byte.
    :param download_deadline: the same for one image download (redirects included).
    :param max_response_bytes: the largest API response read, counted after decompression.
    :param max_download_bytes: the largest image downloaded.
    :param max_redirects: redirects followed on a download (each checked like the first URL).
    """

    base_url: str
    api_key: str = field(repr=False)
    model: Variant
    organization_id: str | None
    timeout: float
    retry: protocol.RetryPolicy
    prices: PriceTable
    max_download_bytes: int
    conn_id: str
    request_deadline: float = DEFAULT_REQUEST_DEADLINE
    download_deadline: float = DEFAULT_DOWNLOAD_DEADLINE
    max_response_bytes: int = int(DEFAULT_MAX_RESPONSE_MB * MB)
    max_redirects: int = protocol.MAX_REDIRECTS
    allow_plain_http: bool = False
    #: The most one task may spend when it sets no ``budget_usd`` of its own (``max_task_spend_usd``).
    max_task_spend: Decimal | None = None
    #: Where reference images go, by variant (``edit_models``: what ``flux2 doctor`` recorded).
    edit_models: Mapping[str, str] = field(default_factory=dict)
    #: One Sentinel evaluation's price (``sentinel_price_usd``), instead of the API's job classes.
    sentinel_price: Decimal | None = None
    #: The organisation's request-rate limit when known (``max_requests_per_second``); else learned from 429s.
    max_requests_per_second: float | None = None
    #: Whether a 429 slows this connection's requests down (``adaptive_rate_limit``, default true).
    adaptive_rate_limit: bool = True

    @property
    def secrets(self) -> tuple[str, ...]:
        """What :func:`protocol.redact` removes from anything a server sends."""
        return (self.api_key,)

    @property
    def plain_http_hosts(self) -> tuple[str, ...]:
        """Hosts besides loopback that downloads may reach over plain http: the API's own, if allowed."""
        host = urlsplit(self.base_url).hostname
        return (host,) if self.allow_plain_http and host else ()

    @classmethod
    def from_connection(cls, conn: Any, conn_id: str) -> FluxConnectionConfig:
        extra = connection_extras(conn, conn_id)
        return cls.build(
            api_key=conn.password or "",
            base_url=base_url_of(conn.host, conn.port, conn_id),
            extra=extra,
            conn_id=conn_id,
        )

    @classmethod
    def build(
        cls, *, api_key: str, base_url: str | None, extra: Mapping[str, Any], conn_id: str
    ) -> FluxConnectionConfig:
        api_key = check_api_key(api_key, conn_id)
        plain_http = _flag(extra.get("allow_plain_http"), "allow_plain_http")
        base = check_base_url((base_url or protocol.DEFAULT_BASE_URL).rstrip("/"), conn_id, allow_plain_http=plain_http)
        unknown = sorted(set(extra) - set(CONNECTION_EXTRAS) - set(EXTRA_ALIASES))
        if unknown:
            log.warning(
                "Connection %r: ignoring unknown extra(s) %s; known: %s", conn_id, unknown, ", ".join(CONNECTION_EXTRAS)
            )
        # Empty form fields arrive as null or "": they mean "the default".
        extra = {EXTRA_ALIASES.get(k, k): v for k, v in extra.items() if v is not None and v != ""}
        if "max_retries" in extra:  # retries after the first attempt
            extra.setdefault("max_attempts", _integer(extra.pop("max_retries"), "max_retries", 0, 19) + 1)
        base_delay = _number(extra.get("retry_base_delay", 1.0), "retry_base_delay", 0.0, 600.0)
        retry = protocol.RetryPolicy(
            max_attempts=_integer(extra.get("max_attempts", 5), "max_attempts", 1, 20),
            base=base_delay,
            cap=_number(extra.get("retry_max_delay", max(32.0, base_delay)), "retry_max_delay", base_delay, 3600.0),
        )
        return cls(
            base_url=base,
            api_key=api_key,
            model=_model(extra.get("model")),
            organization_id=_organization(extra.get("organization_id")),
            timeout=_number(extra.get("timeout", DEFAULT_TIMEOUT), "timeout", 0.001, 3600.0, open_low=True),
            request_deadline=_number(
                extra.get("request_deadline", DEFAULT_REQUEST_DEADLINE), "request_deadline", 0.001, 86400.0
            ),
            download_deadline=_number(
                extra.get("download_deadline", DEFAULT_DOWNLOAD_DEADLINE), "download_deadline", 0.001, 86400.0
            ),
            retry=retry,
            prices=_prices(extra.get("prices")),
            max_download_bytes=int(
                _number(extra.get("max_download_mb", DEFAULT_MAX_DOWNLOAD_MB), "max_download_mb", 0.001, 4096.0) * MB
            ),
            max_response_bytes=int(
                _number(extra.get("max_response_mb", DEFAULT_MAX_RESPONSE_MB), "max_response_mb", 0.001, 1024.0) * MB
            ),
            max_redirects=_integer(extra.get("max_redirects", protocol.MAX_REDIRECTS), "max_redirects", 0, 10),
            allow_plain_http=plain_http,
            conn_id=conn_id,
            max_task_spend=(
                to_usd(extra["max_task_spend_usd"], "max_task_spend_usd") if "max_task_spend_usd" in extra else None
            ),
            edit_models=_edit_models(extra.get("edit_models")),
            max_requests_per_second=(
                _number(extra["max_requests_per_second"], "max_requests_per_second", 0.01, 10000.0, open_low=True)
                if "max_requests_per_second" in extra
                else None
            ),
            adaptive_rate_limit=(
                _flag(extra["adaptive_rate_limit"], "adaptive_rate_limit") if "adaptive_rate_limit" in extra else True
            ),
            sentinel_price=(
                to_usd(extra["sentinel_price_usd"], "sentinel_price_usd") if "sentinel_price_usd" in extra else None
            ),
        )


def connection_extras(conn: Any, conn_id: str) -> dict[str, Any]:
    """The connection's extras as a dict; text that is not a JSON object fails naming the connection."""
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else (conn.extra or {})
    if isinstance(extra, str):
        try:
            extra = json.loads(extra or "{}")
        except ValueError:
            extra = None
    if not isinstance(extra, Mapping):
        raise FluxValidationError(
            field=f"connection {conn_id!r} extra", value=conn.extra, allowed="a JSON object of options"
        )
    return dict(extra)


def base_url_of(host: str | None, port: Any, conn_id: str = "") -> str:
    """``host`` may be a full URL (``http://127.0.0.1:8787``) or a bare host name (https assumed)."""
    if not host:
        return protocol.DEFAULT_BASE_URL
    host = host.strip()
    url = host if "://" in host else f"https://{host}"
    if port not in (None, ""):
        number = _integer(port, f"connection {conn_id!r} port", 1, 65535)
        if f":{number}" not in url.split("://", 1)[1]:
            url = f"{url.rstrip('/')}:{number}"
    return url


def check_base_url(url: str, conn_id: str, *, allow_plain_http: bool = False) -> str:
    """The API base URL: ``https`` (plain ``http`` only to loopback, i.e. the emulator, unless the
    connection sets ``allow_plain_http`` for an emulator in a container network), a valid host."""
    problem = protocol.base_url_problem(url, allow_plain_http=allow_plain_http)
    if problem is not None:
        raise FluxValidationError(
            field=f"connection {conn_id!r} host",
            value=protocol.url_for_humans(url) if "://" in url else url,
            allowed=(
                "an https:// URL with a valid host name (http:// only to loopback, or with the extra "
                f"allow_plain_http for an emulator on a private network): {problem}"
            ),
        )
    return url


def check_api_key(api_key: str, conn_id: str) -> str:
    """The key, stripped; empty or not sendable in a header fails (without ever showing it)."""
    key = (api_key or "").strip()
    field_name = f"connection {conn_id!r} password"
    if not key:
        raise FluxValidationError(
            field=field_name,
            value="(empty)",
            allowed="the Runflow API key (rf_live_...) in the connection's password / API Key field",
        )
    if any(not (0x21 <= ord(c) <= 0x7E) for c in key):
        # httpx would refuse it with an error that quotes the header, key included.
        raise FluxValidationError(
            field=field_name, value="(hidden)", allowed="an API key of printable ASCII without spaces"
        )
    return key


def _flag(value: Any, name: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise FluxValidationError(field=name, value=value, allowed="true or false")


def _number(value: Any, name: str, low: float, high: float, *, open_low: bool = False) -> float:
    allowed = f"a number of {'more than 0' if open_low else f'at least {low:g}'} and at most {high:g}"
    if isinstance(value, bool):
        raise FluxValidationError(field=name, value=value, allowed=allowed)
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise FluxValidationError(field=name, value=value, allowed=allowed) from None
    if not math.isfinite(number) or number < low or number > high:
        raise FluxValidationError(field=name, value=value, allowed=allowed)
    return number


def _integer(value: Any, name: str, low: int, high: int) -> int:
    allowed = f"a whole number {low}..{high}"
    if isinstance(value, bool):
        raise FluxValidationError(field=name, value=value, allowed=allowed)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not low <= value <= high:
        raise FluxValidationError(field=name, value=value, allowed=allowed)
    return value


def _model(value: Any) -> Variant:
    if value is not None and not isinstance(value, (str, Variant)):
        return resolve_variant(repr(value))  # refused, naming the value
    return resolve_variant(value)


def _organization(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise FluxValidationError(field="organization_id", value=value, allowed="a text id")
    text = str(value).strip()
    if not text or any(not (0x20 <= ord(c) <= 0x7E) for c in text):
        raise FluxValidationError(
            field="organization_id", value=value, allowed="printable ASCII (it is sent as the X-Organization-Id header)"
        )
    return text


def _prices(value: Any) -> PriceTable:
    if value is None:
        return PriceTable()
    allowed = 'a JSON object of prices by model, like {"pro": "0.03"} or {"pro": {"first_mp": "0.03"}}'
    value = _json_object(value, "prices", allowed)
    for name in value:
        try:
            resolve_variant(name)
        except FluxValidationError as error:
            raise FluxValidationError(field=f"prices.{name}", value=name, allowed=error.allowed) from None
    try:
        return PriceTable().with_overrides(value)
    except FluxValidationError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise FluxValidationError(field="prices", value=value, allowed=f"{allowed} ({error})") from None


_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)+$")


def _edit_models(value: Any) -> dict[str, str]:
    """The ``edit_models`` extra: variant → the model that takes its reference images (the doctor's record)."""
    allowed = 'a JSON object of model ids by variant, like {"pro": "black-forest-labs/flux-2-pro"}'
    if value is None:
        return {}
    routes = {}
    value = _json_object(value, "edit_models", allowed)
    for name, model in value.items():
        variant = resolve_variant(name)
        if not isinstance(model, str) or not _MODEL_ID.match(model.strip().lower()):
            raise FluxValidationError(
                field=f"edit_models.{name}", value=model, allowed="a model id like owner/slug/edit"
            )
        routes[variant.value] = model.strip().lower()
    return routes


def _json_object(value: Any, field: str, allowed: str) -> Mapping[str, Any]:
    """A JSON-object extra, given as an object or (in a connection URI) as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise FluxValidationError(field=field, value=value, allowed=allowed) from None
    if not isinstance(value, Mapping):
        raise FluxValidationError(field=field, value=value, allowed=allowed)
    return value
