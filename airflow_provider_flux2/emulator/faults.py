"""Fault plans: which request, or which created run, misbehaves and how.

A plan is ``{"seed": 7, "rules": [rule, ...]}``. Each rule names an ``endpoint`` (or ``"*"``), a
``fault`` kind with its parameters, and when it fires: with a ``probability`` (drawn from the
plan's seeded random source), on the next ``count`` matching requests, or following a
``sequence`` consumed one element per matching request; ``after`` skips that many matching
requests first, and ``match`` narrows the requests (or batch items) a rule sees. Rules are tried in
order; the first that fires wins and later rules do not see that request.

Request-level kinds (``rate_limit``, ``server_error``, ``http_error``, ``drop``, ``stall``, and on downloads
``url_expired``, ``slow_download``) are decided once per HTTP request. Run-level kinds
(``run_failure``, ``moderation``, ``nsfw``, ``blank_image``, ``duplicate_image``, ``low_score``)
are decided once per created run, so on ``create_batch`` once per item. On ``create_evaluation``,
``run_failure`` (the evaluation ends ``failed``) and ``low_score`` (a failing verdict) are decided
once per created evaluation; a ``"*"`` rule never reaches evaluations with a run-level kind.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from airflow_provider_flux2.models import Variant, resolve_variant

EndpointName = Literal[
    "create_run",
    "create_batch",
    "get_run",
    "get_batch",
    "get_batch_items",
    "download",
    "health",
    "create_evaluation",
    "get_evaluation",
    "list_job_classes",
    "*",
]
ENDPOINTS = tuple(name for name in get_args(EndpointName) if name != "*")
CREATE_ENDPOINTS = ("create_run", "create_batch")
HTTP_KINDS = frozenset({"rate_limit", "server_error", "http_error", "drop", "stall"})
DOWNLOAD_KINDS = frozenset({"url_expired", "slow_download"})
RUN_KINDS = frozenset({"run_failure", "moderation", "nsfw", "blank_image", "duplicate_image", "low_score"})
#: Run-level kinds that also decide how an evaluation ends (on ``create_evaluation``).
EVALUATION_KINDS = frozenset({"run_failure", "low_score"})
KINDS = HTTP_KINDS | DOWNLOAD_KINDS | RUN_KINDS
Category = Literal["request", "run"]


# --------------------------------------------------------------------------------------------------
# Parameters of each kind (unknown parameters are refused, so a typo does not pass silently)
# --------------------------------------------------------------------------------------------------


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _HttpParams(_Params):
    # "after": the request is handled (a run created and billed) and then the response is lost.
    phase: Literal["before", "after"] = "before"


class RateLimitParams(_HttpParams):
    retry_after: float | None = Field(None, ge=0)


class ServerErrorParams(_HttpParams):
    status: Literal[500, 502, 503] = 500


class HttpErrorParams(_HttpParams):
    """Any error status with the envelope: for the codes no other kind produces (400, 408, 404, ...)."""

    status: int = Field(500, ge=400, le=599)
    code: str | None = None  # None: the protocol's code for the status
    message: str | None = None
    retry_after: float | None = Field(None, ge=0)


class DropParams(_HttpParams):
    pass


class StallParams(_HttpParams):
    seconds: float = Field(30.0, ge=0)


class RunFailureParams(_Params):
    code: str = "INTERNAL_ERROR"
    message: str = "The model failed to generate an image (emulated failure)"
    stage: str = "GENERATION"


class ModerationParams(_Params):
    message: str = "The output was withheld by content moderation (emulated)"
    stage: str = "OUTPUT_MODERATION"


class DuplicateImageParams(_Params):
    of_prompt: str | None = None
    of_seed: int | None = Field(None, ge=0)


class LowScoreParams(_Params):
    score: float = Field(0.1, ge=0, le=1)


class SlowDownloadParams(_Params):
    bytes_per_second: int = Field(65_536, ge=1)


PARAMS: dict[str, type[_Params]] = {
    "rate_limit": RateLimitParams,
    "server_error": ServerErrorParams,
    "http_error": HttpErrorParams,
    "drop": DropParams,
    "stall": StallParams,
    "run_failure": RunFailureParams,
    "moderation": ModerationParams,
    "nsfw": _Params,
    "blank_image": _Params,
    "duplicate_image": DuplicateImageParams,
    "low_score": LowScoreParams,
    "url_expired": _Params,
    "slow_download": SlowDownloadParams,
}


@dataclass(frozen=True)
class Fault:
    """One fault to apply: its kind, its validated parameters, and the rule that fired it."""

    kind: str
    params: Mapping[str, Any]
    rule: int

    @property
    def phase(self) -> str:
        return str(self.params.get("phase", "before"))

    def describe(self) -> dict[str, Any]:
        return {"fault": self.kind, "rule": self.rule, **self.params}


# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------


class _Match(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_contains: str | None = None
    model: str | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return None if value is None else resolve_variant(value).model_id


class _RuleSpec(BaseModel):
    # Extra keys are the fault's parameters (``retry_after``, ``status``, ``phase``, ...).
    model_config = ConfigDict(extra="allow")

    endpoint: EndpointName = "*"
    fault: str | None = None
    probability: float | None = Field(None, ge=0, le=1)
    count: int | None = Field(None, ge=0)
    sequence: list[str | dict[str, Any]] | None = None
    after: int = Field(0, ge=0)
    match: _Match | None = None


class _PlanSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    rules: list[_RuleSpec] = Field(default_factory=list)


class PlanError(ValueError):
    """A fault plan was refused; ``errors`` are in the API's 422 ``errors[]`` shape."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


@dataclass
class Rule:
    """A compiled rule; ``seen`` counts the matching requests (or items) it has been asked about."""

    index: int
    endpoint: str
    category: Category
    steps: list[Fault | None] | None
    fault: Fault | None
    probability: float | None
    count: int | None
    after: int
    prompt_contains: str | None
    model: str | None
    seen: int = 0

    def applies(self, endpoint: str, category: Category) -> bool:
        if category != self.category:
            return False
        if self.endpoint == "*":
            return self.category == "request" or endpoint in CREATE_ENDPOINTS
        return self.endpoint == endpoint

    def matches(self, prompts: Sequence[str], model: str | None) -> bool:
        if self.model is not None and model != self.model:
            return False
        if self.prompt_contains is None:
            return True
        needle = self.prompt_contains.lower()
        return any(needle in prompt.lower() for prompt in prompts)

    def draw(self, rng: random.Random) -> Fault | None:
        """Consume one matching request and return the fault to apply to it, if any."""
        position = self.seen - self.after
        self.seen += 1
        if position < 0:
            return None
        if self.steps is not None:
            return self.steps[position] if position < len(self.steps) else None
        if self.count is not None:
            return self.fault if position < self.count else None
        if self.probability is not None:
            return self.fault if rng.random() < self.probability else None
        return self.fault  # no trigger given: every matching request


@dataclass
class FaultPlan:
    """The active plan: its rules, their counters, and the seeded random source."""

    rules: list[Rule] = field(default_factory=list)
    seed: int | None = None
    source: dict[str, Any] = field(default_factory=lambda: {"seed": None, "rules": []})

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def parse(cls, data: Any) -> FaultPlan:
        """Validate and compile a plan.

        :param data: the JSON plan ``{"seed": ..., "rules": [...]}``.
        :raises PlanError: naming every refused rule field.
        """
        try:
            spec = _PlanSpec.model_validate(data)
        except ValidationError as exc:
            raise PlanError(_errors(exc, [])) from None
        errors: list[dict[str, Any]] = []
        rules = []
        for index, rule in enumerate(spec.rules):
            try:
                rules.append(_compile(index, rule))
            except PlanError as exc:
                errors.extend(exc.errors)
        if errors:
            raise PlanError(errors)
        return cls(rules=rules, seed=spec.seed, source=spec.model_dump(mode="json", exclude_none=True))

    def select(
        self, endpoint: str, category: Category, prompts: Sequence[str] = (), model: Variant | None = None
    ) -> Fault | None:
        """The fault for one request (``request``) or one created run (``run``), if a rule fires.

        :param endpoint: the endpoint's name (``create_run``, ``download``, ...).
        :param category: ``request`` for HTTP-level kinds, ``run`` for run-level kinds.
        :param prompts: the prompts the request is about, for ``match.prompt_contains``.
        :param model: the model the request is about, for ``match.model``.
        """
        model_id = model.model_id if model is not None else None
        for rule in self.rules:
            if rule.applies(endpoint, category) and rule.matches(prompts, model_id):
                fault = rule.draw(self.rng)
                if fault is not None:
                    return fault
        return None

    def describe(self) -> dict[str, Any]:
        return {**self.source, "seen": [rule.seen for rule in self.rules]}


def _compile(index: int, spec: _RuleSpec) -> Rule:
    loc = ["rules", index]
    triggers = [name for name in ("probability", "count", "sequence") if getattr(spec, name) is not None]
    if len(triggers) > 1:
        raise PlanError([_error([*loc, triggers[1]], "give only one of probability, count or sequence")])
    extra = dict(spec.model_extra or {})
    fault: Fault | None = None
    steps: list[Fault | None] | None = None
    if spec.sequence is not None:
        if spec.fault is not None:
            raise PlanError([_error([*loc, "fault"], "give either fault or sequence, not both")])
        steps = [_step(index, [*loc, "sequence", i], element, extra) for i, element in enumerate(spec.sequence)]
        kinds = {step.kind for step in steps if step is not None}
    elif spec.fault is None:
        raise PlanError([_error([*loc, "fault"], f"a fault kind is required: one of {', '.join(sorted(KINDS))}")])
    else:
        fault = _fault(index, [*loc, "fault"], spec.fault, extra)
        kinds = {fault.kind}
    category = _category(loc, spec.endpoint, kinds)
    return Rule(
        index=index,
        endpoint=spec.endpoint,
        category=category,
        steps=steps,
        fault=fault,
        probability=spec.probability,
        count=spec.count,
        after=spec.after,
        prompt_contains=spec.match.prompt_contains if spec.match else None,
        model=spec.match.model if spec.match else None,
    )


def _step(rule: int, loc: list[Any], element: str | dict[str, Any], defaults: dict[str, Any]) -> Fault | None:
    """One sequence element: ``"ok"``, a kind, or ``{"fault": kind, ...params}``."""
    if element == "ok":
        return None
    if isinstance(element, str):
        kind, params = element, {}
    else:
        params = dict(element)
        kind = params.pop("fault", None)
        if kind == "ok":
            return None
    if kind not in PARAMS:
        raise PlanError([_error(loc, f"unknown fault kind {kind!r}: one of ok, {', '.join(sorted(KINDS))}")])
    # Rule-level parameters apply to every element of the sequence that accepts them.
    accepted = {k: v for k, v in defaults.items() if k in PARAMS[kind].model_fields}
    return _fault(rule, loc, kind, {**accepted, **params})


def _fault(rule: int, loc: list[Any], kind: Any, params: dict[str, Any]) -> Fault:
    if kind not in PARAMS:
        raise PlanError([_error(loc, f"unknown fault kind {kind!r}: one of {', '.join(sorted(KINDS))}")])
    try:
        validated = PARAMS[kind].model_validate(params)
    except ValidationError as exc:
        raise PlanError(_errors(exc, loc[:-1] if loc[-1] == "fault" else loc)) from None
    return Fault(kind=kind, params=validated.model_dump(), rule=rule)


def _category(loc: list[Any], endpoint: str, kinds: set[str]) -> Category:
    if not kinds:
        return "request"  # a sequence of only "ok": never fires
    if kinds <= RUN_KINDS:
        if endpoint == "create_evaluation":
            if not kinds <= EVALUATION_KINDS:
                msg = f"{sorted(kinds - EVALUATION_KINDS)} do not apply to evaluations: use run_failure or low_score"
                raise PlanError([_error([*loc, "fault"], msg)])
            return "run"
        if endpoint not in (*CREATE_ENDPOINTS, "*"):
            raise PlanError(
                [_error([*loc, "endpoint"], f"{sorted(kinds)} apply to created runs: use create_run or create_batch")]
            )
        return "run"
    if kinds & RUN_KINDS:
        raise PlanError([_error(loc, "do not mix run-level and request-level kinds in one rule; use two rules")])
    if kinds & DOWNLOAD_KINDS and endpoint != "download":
        raise PlanError([_error([*loc, "endpoint"], f"{sorted(kinds & DOWNLOAD_KINDS)} need endpoint 'download'")])
    return "request"


def _error(loc: list[Any], msg: str) -> dict[str, Any]:
    return {"loc": ["faults", *loc], "msg": msg, "input": None}


def _errors(exc: ValidationError, prefix: list[Any]) -> list[dict[str, Any]]:
    return [
        {"loc": ["faults", *prefix, *err["loc"]], "msg": err["msg"], "input": _plain(err.get("input"))}
        for err in exc.errors()
    ]


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool, list, dict)) else str(value)
