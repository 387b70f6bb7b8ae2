"""The emulator's configuration: one validated model, set at start-up and updated partially at run time.

Every key can be given to :class:`~airflow_provider_flux2.emulator.Emulator` as a keyword argument,
to ``python -m airflow_provider_flux2.emulator --config '{...}'``, or changed while serving with
``POST /_emulator/config`` (an unknown key or a bad value answers 422). ``POST /_emulator/reset``
restores the start-up values.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from airflow_provider_flux2.models import Variant, resolve_variant
from airflow_provider_flux2.pricing import PriceTable, to_usd

Profile = Literal["fast", "realistic"]
Phase = Literal["queued", "dispatching", "running", "cold_start"]

DEFAULT_MODERATION_MARKER = "NSFW_TEST"
#: In an evaluation's task description or prompt, this fails Sentinel's verdict (``…_ONCE``: only the first image).
DEFAULT_SENTINEL_FAIL_MARKER = "SENTINEL_FAIL"
#: What one Sentinel evaluation costs in the emulator (Runflow's job classes carry the real price).
DEFAULT_EVALUATION_PRICE = Decimal("0.010")
DEFAULT_CALLBACK_SECRET = "emulator-callback-secret"


class EmulatorConfig(BaseModel):
    """What the emulator does; see ``docs/emulator.md`` for each key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Profile = "fast"
    time_scale: float = Field(1.0, ge=0)
    url_ttl: float = Field(600.0, gt=0)
    latency: dict[Phase, float] | None = None
    cold_start_fraction: float = Field(0.2, ge=0, le=1)
    fleet_size: int | None = Field(None, ge=1)
    #: Runflow's documented limits (concepts/rate-limits), off by default. ``rate_limit_rps``: requests a
    #: second per API key (a token bucket of ``rate_limit_burst``; past it 429 RATE_LIMITED, with no
    #: headers unless ``rate_limit_retry_after``); ``model_concurrency``: runs of one model generating at
    #: once (the rest wait in ``queued``, their latency clock starting when they leave the queue). Both
    #: are in the emulator's own seconds: ``time_scale`` 0.1 allows ten times the requests a real second.
    rate_limit_rps: float | None = Field(None, gt=0)
    rate_limit_burst: int = Field(10, ge=1)
    rate_limit_retry_after: bool = False
    model_concurrency: int | None = Field(None, ge=1)
    moderation_marker: str = Field(DEFAULT_MODERATION_MARKER, min_length=1)
    moderation_mode: Literal["flag", "fail"] = "flag"
    credit_usd: Decimal | None = None
    disabled_models: list[str] = Field(default_factory=list)
    batch_unsupported_models: list[str] = Field(default_factory=list)
    prices: dict[str, Any] | None = None
    callback_secret: str = Field(DEFAULT_CALLBACK_SECRET, min_length=1)
    callback_max_attempts: int = Field(5, ge=1, le=20)
    callback_retry_base: float = Field(0.2, ge=0)
    callback_timeout: float = Field(5.0, gt=0)
    random_seed: int | None = None
    #: The most items a page of ``GET /v1/batches/{id}/items`` holds, whatever ``limit`` asks (small,
    #: so every batch of more than 5 crosses a page and the provider must follow ``next_pq``).
    items_page_size: int = Field(5, ge=1, le=500)
    #: Seconds a create spends before answering, holding its Idempotency-Key (a racing create is a 409).
    create_delay: float = Field(0.0, ge=0)
    #: Seconds an Idempotency-Key is remembered (``None``: for ever). Runflow documents no retention:
    #: past it, a create sent again under the same key makes — and bills — a new run.
    key_retention: float | None = Field(None, gt=0)
    #: The price of one Sentinel evaluation (``standard``), billed when it completes.
    evaluation_price_usd: Decimal = DEFAULT_EVALUATION_PRICE
    #: Seconds an evaluation takes in all (``None``: the profile's, tens of seconds when realistic).
    evaluation_seconds: float | None = Field(None, ge=0)
    #: Text in an evaluation's task description or prompt that fails its verdict (see emulator/evaluations.py).
    sentinel_fail_marker: str = Field(DEFAULT_SENTINEL_FAIL_MARKER, min_length=1)

    @field_validator("latency")
    @classmethod
    def _latency(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for phase, seconds in (value or {}).items():
            if seconds < 0:
                raise ValueError(f"{phase} must be a non-negative number of seconds")
        return value

    @field_validator("credit_usd", mode="before")
    @classmethod
    def _credit(cls, value: Any) -> Decimal | None:
        # Parsed by the pricing module so 0.1 means exactly ten cents, never a binary float.
        return None if value is None or value == "" else to_usd(value, "credit_usd")

    @field_validator("evaluation_price_usd", mode="before")
    @classmethod
    def _evaluation_price(cls, value: Any) -> Decimal:
        return to_usd(value, "evaluation_price_usd")

    @field_validator("disabled_models", "batch_unsupported_models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        return [resolve_variant(name).model_id for name in value]

    @field_validator("prices")
    @classmethod
    def _prices(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        PriceTable().with_overrides(value)  # raises FluxValidationError (a ValueError) on a bad table
        return value

    @field_serializer("credit_usd", "evaluation_price_usd")
    def _money_text(self, value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    def price_table(self) -> PriceTable:
        return PriceTable().with_overrides(self.prices)

    def is_disabled(self, variant: Variant) -> bool:
        return variant.model_id in self.disabled_models

    def supports_batches(self, variant: Variant) -> bool:
        return variant.model_id not in self.batch_unsupported_models

    def updated(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with ``changes`` applied (validated as a whole; raises :class:`ConfigError`)."""
        return parse_config({**self.model_dump(), **changes})

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ConfigError(ValueError):
    """A configuration value was refused; ``errors`` are in the API's 422 ``errors[]`` shape."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


def parse_config(values: Mapping[str, Any]) -> EmulatorConfig:
    """Validate a full set of configuration values.

    :param values: configuration keys and values; missing keys take their defaults.
    :raises ConfigError: naming every refused key.
    """
    try:
        return EmulatorConfig.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(
            [
                {
                    "loc": ["config", *err["loc"]],
                    "msg": "unknown configuration key" if err["type"] == "extra_forbidden" else err["msg"],
                    "input": _json_safe(err.get("input")),
                }
                for err in exc.errors()
            ]
        ) from None


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


CONFIG_KEYS = tuple(EmulatorConfig.model_fields)
