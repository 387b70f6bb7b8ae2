"""Pydantic models for what crosses the wire and what the pipeline records.

Field names follow the Runflow protocol (``../docs/protocol.md`` in the design notes):
``prompt``, ``image_size``, ``output_format``, ``safety_tolerance``, ``enable_safety_checker``,
``seed``, ``sync_mode``, ``image_urls``; flex adds ``num_inference_steps`` and ``guidance_scale``.
Every validation failure is turned into :class:`~airflow_provider_flux2.exceptions.FluxValidationError`
naming the field, the bad value and what is allowed, before any request is sent.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.urls import image_url_problem

# --------------------------------------------------------------------------------------------------
# Models (variants)
# --------------------------------------------------------------------------------------------------

MODEL_OWNER = "black-forest-labs"


class Variant(str, Enum):
    """The FLUX 2 family as sold on Runflow."""

    PRO = "pro"
    FLEX = "flex"
    MAX = "max"
    TURBO = "turbo"
    KLEIN_4B = "klein-4b"
    KLEIN_9B = "klein-9b"

    @property
    def model_id(self) -> str:
        return f"{MODEL_OWNER}/flux-2-{self.value}"

    @property
    def klein(self) -> bool:
        """The distilled [klein] models: own step/guidance ranges, at most 4 MP out, 4 references."""
        return self in (Variant.KLEIN_4B, Variant.KLEIN_9B)


DEFAULT_VARIANT = Variant.PRO
MODEL_IDS: dict[str, Variant] = {v.model_id: v for v in Variant}

# --------------------------------------------------------------------------------------------------
# Where reference images go (the routing table)
# --------------------------------------------------------------------------------------------------

#: The model that receives a variant's requests with reference images (``image_urls``), the one place
#: that says so. Runflow serves image editing as separate models where it documents one
#: (docs.runflow.io/models/black-forest-labs/flux-2-klein-4b/edit, .../flux-2-klein-9b/edit); for
#: pro, flex, max and turbo no edit model is documented, so references go to the text-to-image model,
#: unverified until ``flux2 doctor`` has sent one (its record, the connection's ``edit_models`` extra,
#: wins over this table). A correction is one line here.
EDIT_MODELS: dict[Variant, str | None] = {
    Variant.PRO: None,
    Variant.FLEX: None,
    Variant.MAX: None,
    Variant.TURBO: None,
    Variant.KLEIN_4B: f"{MODEL_OWNER}/flux-2-klein-4b/edit",
    Variant.KLEIN_9B: f"{MODEL_OWNER}/flux-2-klein-9b/edit",
}
#: Every edit model id Runflow documents, and the variant it edits with.
EDIT_MODEL_IDS: dict[str, Variant] = {model: variant for variant, model in EDIT_MODELS.items() if model}
#: An edit model that bills one flat price per image (klein 4B edit: "$0.005 per image, 1024x1024"),
#: always answering a 1024×1024 JPEG and taking ``steps`` where the others take ``num_inference_steps``.
FLAT_EDIT_MODELS = frozenset({f"{MODEL_OWNER}/flux-2-klein-4b/edit"})
FLAT_EDIT_SIZE = (1024, 1024)
#: The documented input fields of the flat edit model (its page: prompt, image_urls 1..4, seed, steps).
FLAT_EDIT_FIELDS = ("prompt", "image_urls", "seed", "steps")


def is_edit_model(model: str | Variant | None) -> bool:
    return isinstance(model, str) and model.strip().lower() in EDIT_MODEL_IDS


def target_model(variant: Variant, has_references: bool, routes: dict[str, str] | None = None) -> tuple[str, bool]:
    """``(model id, verified)``: where a request of ``variant`` goes, and whether a page or a doctor's
    record says references go there.

    :param routes: the doctor's record (variant short name or model id → the model that accepted a
        reference), read from the connection's ``edit_models`` extra; it wins over :data:`EDIT_MODELS`.
    """
    if not has_references:
        return variant.model_id, True
    recorded = _recorded_route(variant, routes or {})
    if recorded is not None:
        return recorded, True
    documented = EDIT_MODELS.get(variant)
    return (documented, True) if documented else (variant.model_id, False)


def _recorded_route(variant: Variant, routes: dict[str, str]) -> str | None:
    for name in (variant.value, variant.model_id):
        if routes.get(name):
            return str(routes[name]).strip().lower()
    return None


def resolve_variant(model: str | Variant | None) -> Variant:
    """Accept ``"pro"``, ``"flux-2-pro"`` or ``"black-forest-labs/flux-2-pro"`` (and the others); an
    edit model id (``black-forest-labs/flux-2-klein-4b/edit``) stands for the variant it edits with."""
    if model is None or model == "":
        return DEFAULT_VARIANT
    if isinstance(model, Variant):
        return model
    name = str(model).strip().lower()
    if name in MODEL_IDS:
        return MODEL_IDS[name]
    if name in EDIT_MODEL_IDS:
        return EDIT_MODEL_IDS[name]
    if name.endswith("/edit") and name.removesuffix("/edit") in MODEL_IDS:  # a route the doctor recorded
        return MODEL_IDS[name.removesuffix("/edit")]
    short = name.removeprefix(f"{MODEL_OWNER}/").removeprefix("flux-2-").removeprefix("flux.2-")
    try:
        return Variant(short)
    except ValueError:
        allowed = ", ".join(v.model_id for v in Variant)
        short_names = ", ".join(v.value for v in Variant)
        raise FluxValidationError(
            field="model", value=model, allowed=f"one of {allowed} (or the short names {short_names})"
        ) from None


# --------------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------------

PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_SIZE = "landscape_4_3"
MIN_SIDE = 64
MAX_SIDE = 4096
_SIZE_TEXT = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
SIZE_ALLOWED = (
    f"one of the presets {', '.join(PRESETS)}, or {{width, height}} / 'WIDTHxHEIGHT' "
    f"with each side an integer {MIN_SIDE}..{MAX_SIDE}"
)


class CustomSize(BaseModel):
    """A custom output size; any integer side in 64..4096 (the seed prices 1920×1080)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(ge=MIN_SIDE, le=MAX_SIDE, strict=True)
    height: int = Field(ge=MIN_SIDE, le=MAX_SIDE, strict=True)


ImageSize = str | CustomSize


def normalize_image_size(value: Any) -> str | CustomSize:
    """Turn a preset name, ``{"width", "height"}``, ``(w, h)`` or ``"1920x1080"`` into the wire form."""
    if isinstance(value, CustomSize):
        return value
    if value is None:
        return DEFAULT_SIZE
    if isinstance(value, str):
        if value in PRESETS:
            return value
        match = _SIZE_TEXT.match(value)
        if match:
            return _custom(int(match.group(1)), int(match.group(2)))
        raise FluxValidationError(field="image_size", value=value, allowed=SIZE_ALLOWED)
    if isinstance(value, dict):
        if set(value) != {"width", "height"}:
            raise FluxValidationError(field="image_size", value=value, allowed=SIZE_ALLOWED)
        return _custom(value["width"], value["height"])
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return _custom(value[0], value[1])
    raise FluxValidationError(field="image_size", value=value, allowed=SIZE_ALLOWED)


def _custom(width: Any, height: Any) -> CustomSize:
    for side_name, side in (("width", width), ("height", height)):
        if isinstance(side, bool) or not isinstance(side, int) or not MIN_SIDE <= side <= MAX_SIDE:
            raise FluxValidationError(
                field=f"image_size.{side_name}",
                value=side,
                allowed=f"an integer {MIN_SIDE}..{MAX_SIDE}",
            )
    return CustomSize(width=width, height=height)


def size_of(image_size: str | CustomSize | dict[str, int] | None) -> tuple[int, int]:
    """Width and height in pixels of a (normalised or raw) ``image_size``."""
    size = normalize_image_size(image_size)
    if isinstance(size, CustomSize):
        return size.width, size.height
    return PRESETS[size]


# --------------------------------------------------------------------------------------------------
# Prompts and colours
# --------------------------------------------------------------------------------------------------

MAX_PROMPT_CHARS = 10_000
MAX_REFERENCE_IMAGES = 8
HEX_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")


def canonical_prompt(prompt: str | dict[str, Any]) -> str:
    """A JSON-structured prompt is serialised canonically (sorted keys, compact) so it hashes stably."""
    if isinstance(prompt, dict):
        return json.dumps(prompt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return prompt


def normalize_colour(value: Any, field: str = "colors") -> str:
    if not isinstance(value, str) or not HEX_COLOUR.match(value.strip()):
        raise FluxValidationError(field=field, value=value, allowed="HEX colours written #RRGGBB")
    return value.strip().upper()


def normalize_colours(value: Any) -> list[str]:
    """The ``colors`` parameter: one ``#RRGGBB`` or a list of them, upper-cased."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)):
        raise FluxValidationError(field="colors", value=value, allowed="a HEX colour #RRGGBB or a list of them")
    return [normalize_colour(v) for v in values]


def check_prompt_colours(prompt: Any, path: str = "prompt") -> None:
    """In a JSON prompt, every ``#...`` value under a colour key (``color_palette``, ``colors``,
    ``background_colour``...) must be a valid ``#RRGGBB``; named colours ("navy") are left alone."""
    if isinstance(prompt, dict):
        for key, value in prompt.items():
            here = f"{path}.{key}"
            if "colo" in str(key).lower():
                for i, entry in enumerate(value if isinstance(value, list) else [value]):
                    if isinstance(entry, str) and entry.strip().startswith("#"):
                        normalize_colour(entry, f"{here}.{i}" if isinstance(value, list) else here)
            check_prompt_colours(value, here)
    elif isinstance(prompt, list):
        for i, entry in enumerate(prompt):
            check_prompt_colours(entry, f"{path}.{i}")


def apply_colours(prompt: str | dict[str, Any], colours: list[str]) -> str | dict[str, Any]:
    """Put a validated HEX palette into the prompt, the way the model reads colours.

    A JSON prompt gets a ``color_palette`` key; a text prompt gets a trailing palette sentence.
    """
    if not colours:
        return prompt
    if isinstance(prompt, dict):
        return {**prompt, "color_palette": colours}
    return f"{prompt.rstrip()} Colour palette: {', '.join(colours)}."


# --------------------------------------------------------------------------------------------------
# The request input (wire form)
# --------------------------------------------------------------------------------------------------

OutputFormat = Literal["jpeg", "png"]


SAFETY_TOLERANCES = ("1", "2", "3", "4", "5")
FLEX_STEPS = (1, 50)
FLEX_GUIDANCE = (1.5, 10.0)
# FLUX.2 [klein] 4B/9B as Runflow's model pages list them (docs.runflow.io/models/black-forest-labs/
# flux-2-klein-4b, -9b): steps 1..50 (default 4, distilled), guidance 0..20, up to 4 MP out, up to
# 4 reference images, no safety_tolerance (enable_safety_checker only).
KLEIN_STEPS = (1, 50)
KLEIN_GUIDANCE = (0.0, 20.0)
KLEIN_MAX_REFERENCES = 4
KLEIN_MAX_PIXELS = 2048 * 2048


class FluxInput(BaseModel):
    """The ``input`` object of a create-run request, with the protocol's field names.

    Build it with :func:`build_input` (which also takes ``colors``) or construct a variant's own
    class (:class:`FluxProInput`, :class:`FluxFlexInput`, :class:`FluxMaxInput`,
    :class:`FluxTurboInput`); either way every error is a :class:`FluxValidationError`.
    """

    model_config = ConfigDict(extra="forbid")
    #: The variant this input is for (``None``: whichever the caller names, pro by default).
    variant: ClassVar[Variant | None] = None
    #: What the variant accepts where the family differs (``None``: the parameter is refused).
    steps_range: ClassVar[tuple[int, int] | None] = FLEX_STEPS
    guidance_range: ClassVar[tuple[float, float] | None] = FLEX_GUIDANCE
    max_references: ClassVar[int] = MAX_REFERENCE_IMAGES
    max_output_pixels: ClassVar[int | None] = None

    def __init__(self, **data: Any) -> None:
        _check_flex_only(self.variant, data)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise validation_error_from(exc, data) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        if isinstance(obj, dict):
            _check_flex_only(cls.variant, obj)
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise validation_error_from(exc, obj if isinstance(obj, dict) else {}) from None

    prompt: str
    image_size: str | CustomSize = DEFAULT_SIZE
    output_format: OutputFormat = "jpeg"
    safety_tolerance: str = "2"
    enable_safety_checker: bool = True
    seed: int | None = None
    sync_mode: bool = False
    image_urls: list[str] | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, dict):
            check_prompt_colours(value)
            value = canonical_prompt(value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be a non-empty string or a JSON object")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"must be at most {MAX_PROMPT_CHARS} characters (got {len(value)})")
        return value

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return normalize_image_size(value)

    @field_validator("safety_tolerance", mode="before")
    @classmethod
    def _tolerance(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be one of '1'..'5'")
        if isinstance(value, int):
            value = str(value)
        if value not in SAFETY_TOLERANCES:
            raise ValueError("must be one of '1'..'5'")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value < 2**32:
            raise ValueError("must be an integer 0..4294967295")
        return value

    @field_validator("image_urls")
    @classmethod
    def _urls(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) > cls.max_references:
            raise FluxValidationError(
                field="image_urls",
                value=f"{len(value)} images",
                allowed=f"at most {cls.max_references} reference images{_on(cls.variant)}",
            )
        for url in value:
            problem = image_url_problem(url)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("num_inference_steps")
    @classmethod
    def _steps(cls, value: int | None) -> int | None:
        low, high = cls.steps_range or FLEX_STEPS
        if value is not None and not low <= value <= high:
            raise FluxValidationError(
                field="num_inference_steps", value=value, allowed=f"an integer {low}..{high}{_on(cls.variant)}"
            )
        return value

    @field_validator("guidance_scale")
    @classmethod
    def _guidance(cls, value: float | None) -> float | None:
        low, high = cls.guidance_range or FLEX_GUIDANCE
        if value is not None and not low <= value <= high:
            raise FluxValidationError(
                field="guidance_scale", value=value, allowed=f"a number {low}..{high}{_on(cls.variant)}"
            )
        return value

    @model_validator(mode="after")
    def _output_pixels(self) -> FluxInput:
        limit = type(self).max_output_pixels
        if limit is not None and self.width * self.height > limit:
            raise FluxValidationError(
                field="image_size",
                value=f"{self.width}x{self.height}",
                allowed=f"at most {limit:,} pixels (4 MP, e.g. 2048x2048){_on(self.variant)}",
            )
        return self

    #: Pixel sizes of ``image_urls`` measured before the run (``None`` where unknown), same order.
    _reference_sizes: list[tuple[int, int] | None] | None = PrivateAttr(default=None)

    @property
    def reference_sizes(self) -> list[tuple[int, int] | None] | None:
        return self._reference_sizes

    def with_references(self, urls: list[str], sizes: list[tuple[int, int] | None]) -> FluxInput:
        """A copy to send: ``image_urls`` replaced by what the API can fetch, their sizes kept for pricing."""
        copy = self.model_copy(update={"image_urls": urls})
        copy._reference_sizes = list(sizes)
        return copy

    @property
    def width(self) -> int:
        return size_of(self.image_size)[0]

    @property
    def height(self) -> int:
        return size_of(self.image_size)[1]

    def to_wire(self) -> dict[str, Any]:
        """The JSON ``input`` object, without fields left unset (the API applies its defaults)."""
        return self.model_dump(mode="json", exclude_none=True)


# Messages for fields whose allowed values are a fixed list; pydantic's own wording for the rest.
_ALLOWED: dict[str, str] = {
    "output_format": "'jpeg' or 'png'",
    "safety_tolerance": "'1'..'5' (1 strictest; integers are accepted)",
    "enable_safety_checker": "true or false",
    "sync_mode": "true or false",
    "seed": "an integer 0..4294967295",
    "image_size": SIZE_ALLOWED,
    "num_inference_steps": f"an integer {FLEX_STEPS[0]}..{FLEX_STEPS[1]} "
    f"(flex; klein {KLEIN_STEPS[0]}..{KLEIN_STEPS[1]})",
    "guidance_scale": f"a number {FLEX_GUIDANCE[0]}..{FLEX_GUIDANCE[1]} "
    f"(flex; klein {KLEIN_GUIDANCE[0]}..{KLEIN_GUIDANCE[1]})",
    "image_urls": f"a list of at most {MAX_REFERENCE_IMAGES} references: http(s) or data:image/ URLs, "
    "s3://bucket/key or local files",
    "prompt": f"a non-empty string (at most {MAX_PROMPT_CHARS} characters) or a JSON object",
}
_FLEX_ONLY = ("num_inference_steps", "guidance_scale")


def _on(variant: Variant | None) -> str:
    return f" on {variant.model_id}" if variant is not None else ""


GENERATION_PARAMS = (*FluxInput.model_fields, "colors")


class FluxProInput(FluxInput):
    """FLUX 2 [pro]: the default variant."""

    variant: ClassVar[Variant | None] = Variant.PRO


class FluxFlexInput(FluxInput):
    """FLUX 2 [flex]: adds ``num_inference_steps`` and ``guidance_scale``."""

    variant: ClassVar[Variant | None] = Variant.FLEX


class FluxMaxInput(FluxInput):
    """FLUX 2 [max]."""

    variant: ClassVar[Variant | None] = Variant.MAX


class FluxTurboInput(FluxInput):
    """FLUX 2 [turbo]."""

    variant: ClassVar[Variant | None] = Variant.TURBO


class _KleinInput(FluxInput):
    """FLUX.2 [klein]: flex-like tuning with its own ranges, at most 4 MP out and 4 references.

    Runflow's klein pages list no ``safety_tolerance`` (only ``enable_safety_checker``), so it is
    left off the wire and refused when given.
    """

    steps_range: ClassVar[tuple[int, int] | None] = KLEIN_STEPS
    guidance_range: ClassVar[tuple[float, float] | None] = KLEIN_GUIDANCE
    max_references: ClassVar[int] = KLEIN_MAX_REFERENCES
    max_output_pixels: ClassVar[int | None] = KLEIN_MAX_PIXELS

    safety_tolerance: str | None = None  # type: ignore[assignment]


class FluxKlein4BInput(_KleinInput):
    """FLUX.2 [klein] 4B: the cheapest variant (distilled, 4 steps by default)."""

    variant: ClassVar[Variant | None] = Variant.KLEIN_4B


class FluxKlein9BInput(_KleinInput):
    """FLUX.2 [klein] 9B."""

    variant: ClassVar[Variant | None] = Variant.KLEIN_9B


#: The input model of each variant.
INPUT_MODELS: dict[Variant, type[FluxInput]] = {
    Variant.PRO: FluxProInput,
    Variant.FLEX: FluxFlexInput,
    Variant.MAX: FluxMaxInput,
    Variant.TURBO: FluxTurboInput,
    Variant.KLEIN_4B: FluxKlein4BInput,
    Variant.KLEIN_9B: FluxKlein9BInput,
}
#: Variants that take ``num_inference_steps`` and ``guidance_scale``.
TUNABLE_VARIANTS = (Variant.FLEX, Variant.KLEIN_4B, Variant.KLEIN_9B)


def _check_flex_only(variant: Variant | None, params: dict[str, Any]) -> None:
    if variant is None:
        return
    if variant not in TUNABLE_VARIANTS:
        for name in _FLEX_ONLY:
            if params.get(name) is not None:
                klein = " and ".join(v.model_id for v in TUNABLE_VARIANTS if v.klein)
                raise FluxValidationError(
                    field=name,
                    value=params[name],
                    allowed=f"only with the flex variant ({Variant.FLEX.model_id}) or klein ({klein}); "
                    f"not with {variant.model_id}",
                )
    if variant.klein and params.get("safety_tolerance") is not None:
        raise FluxValidationError(
            field="safety_tolerance",
            value=params["safety_tolerance"],
            allowed=f"nothing on {variant.model_id} (it takes enable_safety_checker only)",
        )


def validation_error_from(error: ValidationError, data: dict[str, Any]) -> FluxValidationError:
    """Turn pydantic's error into ours: field, bad value, what is allowed (first error; all in details)."""
    for item in error.errors():
        ours = (item.get("ctx") or {}).get("error")
        if isinstance(ours, FluxValidationError):  # raised by one of our validators: already precise
            return ours
    details = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "input"
        top = str(item["loc"][0]) if item["loc"] else "input"
        value = data.get(top, item.get("input"))
        if item["type"] == "extra_forbidden":
            allowed = f"one of the parameters {', '.join(GENERATION_PARAMS)}"
        else:
            allowed = _ALLOWED.get(top, item["msg"])
        details.append({"field": loc, "value": value, "allowed": allowed, "msg": item["msg"]})
    first = details[0]
    return FluxValidationError(field=first["field"], value=first["value"], allowed=first["allowed"], details=details)


def build_input(variant: Variant | str | None = None, **params: Any) -> FluxInput:
    """Validate generation parameters for a variant and return the wire ``input``.

    Accepts the protocol's fields plus ``colors`` (a list of ``#RRGGBB``, woven into the prompt).
    """
    variant = resolve_variant(variant)
    params = {k: v for k, v in params.items() if v is not None}
    colours = normalize_colours(params.pop("colors", None))
    _check_flex_only(variant, params)
    if "image_size" in params:
        # Normalised here so an error names the exact side (image_size.width) and its range.
        params["image_size"] = normalize_image_size(params["image_size"])
    if "prompt" in params and colours:
        params["prompt"] = apply_colours(params["prompt"], colours)
    if "prompt" not in params:
        raise FluxValidationError(field="prompt", value=None, allowed=_ALLOWED["prompt"])
    return INPUT_MODELS[variant].model_validate(params)  # the prompt validator checks JSON colours


def for_route(target: str, request: FluxInput) -> FluxInput:
    """``request`` as the model ``target`` takes it, refused (naming the field) where it cannot.

    The flat-priced klein 4B edit model answers a 1024×1024 JPEG and documents no size, format or
    guidance input: a request that asks for another size or format, or sets ``guidance_scale``, is
    refused before anything is sent; one that left them at their defaults is priced and verified as
    1024×1024 JPEG.
    """
    if target not in FLAT_EDIT_MODELS:
        return request
    given = request.model_fields_set
    width, height = FLAT_EDIT_SIZE
    if "image_size" in given and (request.width, request.height) != FLAT_EDIT_SIZE:
        raise FluxValidationError(
            field="image_size",
            value=f"{request.width}x{request.height}",
            allowed=f"{width}x{height} (square_hd) with reference images on {target} (it answers {width}x{height})",
        )
    if "output_format" in given and request.output_format != "jpeg":
        raise FluxValidationError(
            field="output_format", value=request.output_format, allowed=f"'jpeg' with reference images on {target}"
        )
    if request.guidance_scale is not None:
        raise FluxValidationError(
            field="guidance_scale", value=request.guidance_scale, allowed=f"nothing with reference images on {target}"
        )
    if (request.width, request.height) == FLAT_EDIT_SIZE and request.output_format == "jpeg":
        return request
    routed = request.model_copy(update={"image_size": "square_hd", "output_format": "jpeg"})
    routed._reference_sizes = request.reference_sizes
    return routed


def wire_for(target: str, wire: dict[str, Any]) -> dict[str, Any]:
    """The ``input`` object for ``target``: the flat klein 4B edit model takes only its documented
    fields, with ``steps`` for ``num_inference_steps``; every other model takes the input as built."""
    if target not in FLAT_EDIT_MODELS:
        return wire
    out = {k: wire[k] for k in FLAT_EDIT_FIELDS if k in wire}
    if wire.get("num_inference_steps") is not None:
        out["steps"] = wire["num_inference_steps"]
    return out


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


class RunStatus(str, Enum):
    """A run's ``status_code``, read tolerantly (see :meth:`parse`).

    The documented lifecycle is ``queued → dispatching → running → succeeded | failed | canceled``
    (plus ``partial_succeeded``); callback events and batch counters spell ``cancelled``. Anything
    else the API may add later is :attr:`UNKNOWN`: not finished, so the run is polled again.
    """

    QUEUED = "queued"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    PARTIAL_SUCCEEDED = "partial_succeeded"
    #: A status outside the documented set (or none at all): not finished.
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @classmethod
    def _missing_(cls, value: object) -> RunStatus:
        # ``RunStatus("cancelled")``, ``RunStatus("SUCCEEDED")`` and ``RunStatus("paused")`` all work: one
        # reader for the wire, the event rows and the emulator.
        return cls.parse(value)

    @classmethod
    def parse(cls, value: object) -> RunStatus:
        """The status a wire value stands for: case and the British ``cancelled`` are forgiven; an
        undocumented value is :attr:`UNKNOWN` (logged once per value and process)."""
        text = str(value).strip().lower() if isinstance(value, str) else ""
        text = _STATUS_SPELLINGS.get(text, text)
        for member in cls:
            if member.value == text:
                return member
        if value is not None and text not in _UNKNOWN_SEEN:
            _UNKNOWN_SEEN.add(text)
            _log.warning(
                "The API reported status %r, which is not a documented run status; treated as not finished",
                str(value)[:40],
            )
        return cls.UNKNOWN


TERMINAL_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.PARTIAL_SUCCEEDED})
_STATUS_SPELLINGS = {"cancelled": "canceled"}
_UNKNOWN_SEEN: set[str] = set()
_log = logging.getLogger(__name__)


def _status(value: Any) -> RunStatus:
    return value if isinstance(value, RunStatus) else RunStatus.parse(value)


def parse_money(value: Any) -> Decimal | None:
    """A reported amount (``cost``, ``balance``) as an exact Decimal: a decimal string or a JSON number.

    ``None`` or ``""`` is "not reported". A value that is not a finite, non-negative number is refused
    (``ValueError``), so a cost of ``"-1"`` or ``"NaN"`` never reaches a record, a manifest or a budget.
    A JSON number is read from its shortest text (``0.045``, never the float's binary expansion).
    """
    if value is None or value == "":
        return None
    if isinstance(value, Decimal):
        amount: Decimal | None = value
    elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
        amount = None
    else:
        try:
            amount = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
        except InvalidOperation:
            amount = None
    if amount is None or not amount.is_finite() or amount < 0:
        raise ValueError(f"{str(value)[:40]!r} is not a non-negative decimal amount")
    return amount


class OutputImage(BaseModel):
    """One output image, whatever shape the API used to describe it."""

    model_config = ConfigDict(extra="ignore")

    url: str
    content_type: str | None = None
    width: int | None = None
    height: int | None = None


class RunOutput(BaseModel):
    """The normalised ``output`` of a succeeded run."""

    model_config = ConfigDict(extra="ignore")

    images: list[OutputImage] = Field(default_factory=list)
    seed: int | None = None
    has_nsfw_concepts: list[bool] = Field(default_factory=list)
    prompt: str | None = None  # the upsampled prompt, when the API returns it

    @property
    def nsfw(self) -> bool:
        return any(self.has_nsfw_concepts)


def _opaque_id(value: Any) -> Any:
    """Ids are opaque strings (UUIDs on the real API); a number is read as its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class Run(BaseModel):
    """A run object from ``POST .../runs`` or ``GET /v1/runs/{id}`` (output normalised).

    Read tolerantly: unknown fields are ignored, optional ones may be missing, ``status_code`` is an
    open string (:meth:`RunStatus.parse`), ``cost`` a decimal string or a number (:func:`parse_money`),
    and the failure stage is read from ``failure_stage_code`` (API reference) or ``failure_stage``
    (errors page).
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    status_code: RunStatus = RunStatus.UNKNOWN
    input: dict[str, Any] | None = None
    output: RunOutput | None = None
    cost: Decimal | None = None
    cost_breakdown: Any = None
    duration_ms: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    metadata: dict[str, Any] | None = None
    client_ref: str | None = None
    batch_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    failure_stage_code: str | None = None
    current_evaluation_summary: dict[str, Any] | None = None
    #: The API's request id (``X-Request-Id``) of the response this run object came from.
    request_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("failure_stage_code") is None and data.get("failure_stage"):
            data = {**data, "failure_stage_code": data["failure_stage"]}
        return data

    _id = field_validator("id", "batch_id", mode="before")(_opaque_id)

    @field_validator("status_code", mode="before")
    @classmethod
    def _status_code(cls, value: Any) -> RunStatus:
        return _status(value)

    @field_validator("cost", mode="before")
    @classmethod
    def _cost(cls, value: Any) -> Decimal | None:
        return parse_money(value)

    # A field of an unexpected type is dropped, not fatal: the run's id, status and cost are what matter.
    @field_validator("input", "metadata", "current_evaluation_summary", mode="before")
    @classmethod
    def _object(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else None

    @field_validator(
        "created_at",
        "started_at",
        "completed_at",
        "client_ref",
        "failure_code",
        "failure_message",
        "failure_stage_code",
        "request_id",
        mode="before",
    )
    @classmethod
    def _text(cls, value: Any) -> Any:
        return value if isinstance(value, str) else None

    @field_validator("duration_ms", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def terminal(self) -> bool:
        return self.status_code.terminal

    @property
    def quality_score(self) -> float | None:
        """Runflow's Sentinel score (``current_evaluation_summary.score``), when the run has one."""
        score = (self.current_evaluation_summary or {}).get("score")
        return float(score) if isinstance(score, (int, float)) else None


class BatchItem(BaseModel):
    """One entry of a batch's lean ``items[]``: the item's own id is not the run's."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    sequence_index: int | None = None
    run_id: str | None = None
    status_code: RunStatus = RunStatus.UNKNOWN
    client_ref: str | None = None

    _ids = field_validator("id", "run_id", mode="before")(_opaque_id)

    @field_validator("status_code", mode="before")
    @classmethod
    def _status_code(cls, value: Any) -> RunStatus:
        return _status(value)


class Batch(BaseModel):
    """A batch object. Its own ``status_code`` is an open string and only informative: whether the
    batch is done is decided from its items (:attr:`terminal`)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status_code: str | None = None
    items_total: int | None = None
    items_succeeded: int | None = None
    items_failed: int | None = None
    created_at: str | None = None
    items: list[BatchItem] = Field(default_factory=list)

    _id = field_validator("id", mode="before")(_opaque_id)

    @field_validator("status_code", "created_at", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return value if isinstance(value, str) else None

    @field_validator("items_total", "items_succeeded", "items_failed", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @field_validator("items", mode="before")
    @classmethod
    def _items(cls, value: Any) -> Any:
        return [item for item in value if isinstance(item, (dict, BatchItem))] if isinstance(value, list) else []

    @property
    def terminal(self) -> bool:
        """Every item is finished (an empty item list is not a finished batch)."""
        return bool(self.items) and all(item.status_code.terminal for item in self.items)


# --------------------------------------------------------------------------------------------------
# What the pipeline records about one image
# --------------------------------------------------------------------------------------------------


def utc_now_iso() -> str:
    """Now, as the ISO-8601 UTC text every ``Timings`` field holds."""
    return datetime.now(timezone.utc).isoformat()


class Timings(BaseModel):
    """ISO-8601 UTC instants; ``finished_at`` is the API's, the others are ours."""

    model_config = ConfigDict(extra="allow")

    submitted_at: str | None = None
    finished_at: str | None = None
    detected_at: str | None = None
    stored_at: str | None = None


class CheckVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check: str
    passed: bool
    reason: str = ""
    value: Any = None


class SentinelVerdict(BaseModel):
    """What Runflow Sentinel said of one image, as the quality step recorded it (money as a decimal string).

    :param status: the evaluation's status (``completed``, ``failed``, or what it was left at).
    :param passed: the gate's verdict (``overall_passed`` and/or the minimum score); ``None`` when the
        gate only records verdicts.
    :param overall_passed: the API's yes/no (``None``: no verdict emitted).
    :param score: the API's ``weighted_pass_rate`` (0–1).
    :param cost_usd: what the API billed for the evaluation (``None``: nothing reported).
    """

    model_config = ConfigDict(extra="forbid")

    evaluation_id: str | None = None
    status: str
    passed: bool | None = None
    overall_passed: bool | None = None
    score: float | None = None
    top_issues: list[str] = Field(default_factory=list)
    top_strengths: list[str] = Field(default_factory=list)
    cost_usd: str | None = None
    failure_code: str | None = None
    job_class: str | None = None
    idempotency_key: str | None = None


ImageStatus = Literal["pending", "succeeded", "failed", "moderated", "skipped", "dropped"]


class ImageRecord(BaseModel):
    """Everything the pipeline learns about one image; what XCom and the manifest carry (no bytes)."""

    model_config = ConfigDict(extra="forbid")

    index: int
    model: str
    prompt: str
    upsampled_prompt: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    width: int
    height: int
    output_format: str = "jpeg"
    billed_mp: int
    cost_usd: str
    estimated_cost_usd: str
    api_cost_usd: str | None = None
    run_id: str | None = None
    batch_id: str | None = None
    request_id: str | None = None
    client_ref: str | None = None
    idempotency_key: str | None = None
    status: ImageStatus = "pending"
    failure_code: str | None = None
    failure_message: str | None = None
    nsfw: bool = False
    quality_score: float | None = None
    uri: str | None = None
    content_type: str | None = None
    content_hash: str | None = None
    size_bytes: int | None = None
    attempt: int = 1
    regenerated_from: str | None = None
    source_hash: str | None = None
    checks: list[CheckVerdict] = Field(default_factory=list)
    #: Runflow Sentinel's evaluation of this image (the quality step's ``sentinel=True``).
    sentinel: SentinelVerdict | None = None
    timings: Timings = Field(default_factory=Timings)
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cost_strings(self) -> ImageRecord:
        # Money travels as decimal strings so JSON never rounds it through a float.
        for name in ("cost_usd", "estimated_cost_usd"):
            value = getattr(self, name)
            if not re.match(r"^\d+(\.\d+)?$", value):
                raise ValueError(f"{name} must be a decimal string, got {value!r}")
        return self

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def records_from_xcom(value: Any) -> list[ImageRecord]:
    """Records as XCom delivers them: a list of dicts, or — from a mapped upstream — a list of lists."""
    records: list[ImageRecord] = []
    for item in value or []:
        if isinstance(item, (list, tuple)):
            records.extend(records_from_xcom(item))
        else:
            records.append(item if isinstance(item, ImageRecord) else ImageRecord.model_validate(item))
    return records
