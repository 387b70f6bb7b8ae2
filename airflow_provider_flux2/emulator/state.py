"""What the emulator remembers: runs, batches, idempotent responses, faults, statistics and money.

Everything here is plain data and synchronous code, used from the server's event loop only (the
control helpers of :class:`~airflow_provider_flux2.emulator.Emulator` go over HTTP, so no other
thread touches it). A run's whole future is decided at creation (its timeline from the latency
model and the fleet, its outcome from the prompt, the configuration and the fault plan), so its
status, the ledger and the statistics are derived from the clock when asked.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from airflow_provider_flux2.emulator.config import EmulatorConfig
from airflow_provider_flux2.emulator.evaluations import (
    EvaluationRecord,
    ImageStats,
    asset_url,
    decide_verdict,
    evaluation_phases,
    reference_echo,
)
from airflow_provider_flux2.emulator.faults import Fault, FaultPlan
from airflow_provider_flux2.emulator.images import ImageSpec, Style
from airflow_provider_flux2.emulator.schedule import Fleet, Timeline, peak_overlap, sample_phases
from airflow_provider_flux2.models import FluxInput, RunStatus, Variant
from airflow_provider_flux2.pricing import Price, billed_megapixels, reference_megapixels, usd

MODERATED = "CONTENT_MODERATED"


def new_id() -> str:
    """Resource ids are UUIDs, as the API's (``string<uuid>`` path parameters)."""
    return str(uuid.uuid4())


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


#: The emulated organisation (``org_id`` on runs, batches and the balance).
ORG_ID = "5f0c6a1e-7a31-4c1b-9a0e-0f1a2b3c4d5e"


def model_uuid(model_id: str) -> str:
    """A model's ``model_id`` as the API shows it on a run: a UUID, stable per model."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://api.runflow.io/v1/models/{model_id}"))


def iso(instant: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    text = datetime.fromtimestamp(instant, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------
# What the model "does" with a prompt
# --------------------------------------------------------------------------------------------------

_LIGHT = ("soft natural light", "golden-hour light", "crisp studio lighting", "dramatic rim light", "overcast light")
_DETAIL = ("rich textures", "fine detail", "a shallow depth of field", "balanced colours", "clean lines")


def _hash(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


def upsample(variant: Variant, prompt: str) -> str:
    """The prompt as the model rewrote it: pro, max and turbo upsample; flex and klein keep it as given."""
    if variant is Variant.FLEX or variant.klein:
        return prompt
    digest = _hash("upsample", prompt)
    light, detail = _LIGHT[digest[0] % len(_LIGHT)], _DETAIL[digest[1] % len(_DETAIL)]
    return f"{prompt.rstrip().rstrip('.')}, rendered in {light} with {detail}, coherent composition, high fidelity."


def evaluation_score(prompt: str, seed: int) -> float:
    """Sentinel's score for an ordinary output: a stable value in 0.62..0.98."""
    digest = _hash("score", prompt, seed)
    return round(0.62 + int.from_bytes(digest[:2], "big") / 65535 * 0.36, 3)


@dataclass(frozen=True)
class Outcome:
    """How a run ends, decided when it is created."""

    render_prompt: str
    render_seed: int
    score: float
    style: Style = "normal"
    nsfw: bool = False
    failure_code: str | None = None
    failure_message: str | None = None
    failure_stage: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.failure_code is None


def decide_outcome(
    config: EmulatorConfig,
    request: FluxInput,
    seed: int,
    fault: Fault | None,
    duplicate_of: tuple[str, int] | None,
) -> Outcome:
    """The outcome of a run from its input, the moderation rule and a run-level fault.

    :param config: the emulator's configuration (``moderation_marker``, ``moderation_mode``).
    :param request: the validated input.
    :param seed: the run's seed.
    :param fault: the run-level fault that fired for this run, if any.
    :param duplicate_of: the (prompt, seed) a ``duplicate_image`` fault copies.
    """
    kind = fault.kind if fault else None
    params = fault.params if fault else {}
    base = Outcome(render_prompt=request.prompt, render_seed=seed, score=evaluation_score(request.prompt, seed))
    if kind == "run_failure":
        return _failed(base, params["code"], params["message"], params["stage"])
    flagged = config.moderation_marker.lower() in request.prompt.lower()
    refused = flagged and (config.moderation_mode == "fail" or not request.enable_safety_checker)
    if kind == "moderation" or refused:
        message = params.get("message", "The output was withheld by content moderation")
        return _failed(base, MODERATED, message, params.get("stage", "OUTPUT_MODERATION"))
    if kind == "nsfw" or flagged:
        return Outcome(base.render_prompt, seed, base.score, style="black", nsfw=True)
    if kind == "blank_image":
        return Outcome(base.render_prompt, seed, base.score, style="blank")
    if kind == "duplicate_image" and duplicate_of is not None:
        return Outcome(duplicate_of[0], duplicate_of[1], base.score, style="duplicate")
    if kind == "low_score":
        return Outcome(base.render_prompt, seed, float(params["score"]))
    return base


def _failed(base: Outcome, code: str, message: str, stage: str) -> Outcome:
    return Outcome(
        base.render_prompt,
        base.render_seed,
        base.score,
        failure_code=code,
        failure_message=message,
        failure_stage=stage,
    )


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One run: its request, its decided timeline and outcome, and its price."""

    id: str
    variant: Variant
    request: FluxInput
    seed: int
    upsampled_prompt: str
    timeline: Timeline
    outcome: Outcome
    price: Price
    billed_mp: int
    reference_mp: int
    base_url: str
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    client_ref: str | None = None
    idempotency_key: str | None = None
    batch_id: str | None = None
    item_id: str | None = None
    sequence_index: int | None = None
    fault: Fault | None = None
    #: The model the run was sent to (an edit model for reference images); the variant's by default.
    model_id: str = ""

    def __post_init__(self) -> None:
        self.model_id = self.model_id or self.variant.model_id

    @property
    def cost(self) -> Decimal:
        """What the run costs if it succeeds (failed runs are not billed)."""
        return self.price.cost(self.billed_mp, self.reference_mp)

    @property
    def width(self) -> int:
        return self.request.width

    @property
    def height(self) -> int:
        return self.request.height

    def status(self, now: float) -> RunStatus:
        phase = self.timeline.phase_at(now)
        if phase != "ended":
            return RunStatus(phase)
        return RunStatus.SUCCEEDED if self.outcome.succeeded else RunStatus.FAILED

    def billed(self, now: float) -> bool:
        return self.outcome.succeeded and now >= self.timeline.end

    def image_spec(self) -> ImageSpec:
        return ImageSpec(
            prompt=self.outcome.render_prompt,
            seed=self.outcome.render_seed,
            width=self.width,
            height=self.height,
            fmt=self.request.output_format,
            style=self.outcome.style,
        )


@dataclass
class BatchRecord:
    id: str
    variant: Variant
    run_ids: list[str]
    created: float
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    idempotency_key: str | None = None
    model_id: str = ""

    def __post_init__(self) -> None:
        self.model_id = self.model_id or self.variant.model_id


@dataclass(frozen=True)
class StoredResponse:
    """The first response to an ``Idempotency-Key``, replayed for the same body."""

    fingerprint: str
    status: int
    body: dict[str, Any]
    at: float = 0.0  # when the key was first answered (the emulator's clock)


class InsufficientCreditError(Exception):
    def __init__(self, cost: Decimal, remaining: Decimal) -> None:
        self.cost = cost
        self.remaining = remaining
        super().__init__(f"this request costs ${usd(cost)} but only ${usd(remaining)} of credit remains")


# --------------------------------------------------------------------------------------------------
# The state
# --------------------------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """What a caller asks for one run (the request body, validated)."""

    variant: Variant
    request: FluxInput
    base_url: str
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    client_ref: str | None = None
    idempotency_key: str | None = None
    #: The model in the request's path (an edit model for reference images); the variant's by default.
    model_id: str = ""

    def __post_init__(self) -> None:
        self.model_id = self.model_id or self.variant.model_id


@dataclass
class EmulatorState:
    """All of the emulator's memory; :meth:`reset` returns it to the start-up state.

    :param startup_config: the configuration restored by :meth:`reset`.
    :param api_key: the only accepted Bearer token, or ``None`` to accept any non-empty one.
    :param clock: epoch seconds (``time.time``; tests of the state may pass their own).
    """

    startup_config: EmulatorConfig
    api_key: str | None = None
    clock: Callable[[], float] = time.time
    # Signs output URLs; kept across resets so a URL minted before a reset still verifies.
    url_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.config = self.startup_config
        self.runs: dict[str, RunRecord] = {}
        self.batches: dict[str, BatchRecord] = {}
        self.evaluations: dict[str, EvaluationRecord] = {}
        #: ``SENTINEL_FAIL_ONCE``: the images (by digest) failed for each prompt.
        self.failed_once: dict[str, set[str]] = {}
        self.idempotency: dict[str, StoredResponse] = {}
        #: Keys of creates still being processed: a second create under one of them is a 409 (a race).
        self.creating: set[str] = set()
        self.plan = FaultPlan()
        self.requests: Counter[str] = Counter()
        self.faults_fired: list[dict[str, Any]] = []
        self.callbacks: list[dict[str, Any]] = []
        self.fleet = Fleet(self.config.fleet_size)
        #: ``model_concurrency``: one fleet per model id.
        self.model_fleets: dict[str, Fleet] = {}
        #: ``rate_limit_rps``: API key digest → (tokens, when last filled).
        self.buckets: dict[str, tuple[float, float]] = {}
        self.rate_limited = 0
        self.rng = random.Random(self.config.random_seed)

    def _fleet(self, model_id: str) -> Fleet:
        """Where a new run of ``model_id`` waits for a slot: its model's fleet under ``model_concurrency``."""
        if self.config.model_concurrency is None:
            return self.fleet
        fleet = self.model_fleets.get(model_id)
        if fleet is None or fleet.size != self.config.model_concurrency:
            now = self.clock()
            busy = [r.timeline.end for r in self.runs.values() if r.model_id == model_id and r.timeline.end > now]
            fleet = self.model_fleets[model_id] = Fleet(self.config.model_concurrency, busy)
        return fleet

    def take_token(self, key: str) -> bool:
        """One request of API key ``key`` under ``rate_limit_rps``: ``False`` when it is over the limit."""
        rps = self.config.rate_limit_rps
        if rps is None:
            return True
        rate = rps / self.config.time_scale if self.config.time_scale > 0 else float("inf")
        burst = float(self.config.rate_limit_burst)
        now = self.clock()
        tokens, at = self.buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            self.rate_limited += 1
            return False
        self.buckets[key] = (tokens - 1.0, now)
        return True

    def forget_keys(self) -> int:
        """Forget every stored Idempotency-Key (Runflow documents no retention for them); returns how many."""
        forgotten = len(self.idempotency)
        self.idempotency.clear()
        return forgotten

    # -- configuration and faults -----------------------------------------------------------------

    def configure(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """Apply a partial configuration update (raises ``ConfigError``, leaving the old one)."""
        new = self.config.updated(changes)
        if new.fleet_size != self.config.fleet_size:
            now = self.clock()
            self.fleet = Fleet(new.fleet_size, [r.timeline.end for r in self.runs.values() if r.timeline.end > now])
        if "random_seed" in changes:
            self.rng = random.Random(new.random_seed)
        self.config = new
        return new

    def count(self, endpoint: str) -> None:
        self.requests[endpoint] += 1

    def record_fault(self, endpoint: str, fault: Fault, **about: Any) -> None:
        self.faults_fired.append({"endpoint": endpoint, "at": iso(self.clock()), **fault.describe(), **about})

    # -- money ---------------------------------------------------------------------------------------

    def committed(self) -> Decimal:
        """The cost of every run (and evaluation) that has succeeded or will: credit already spoken for."""
        runs = sum((r.cost for r in self.runs.values() if r.outcome.succeeded), Decimal("0"))
        return runs + sum((e.price for e in self.evaluations.values() if e.verdict.completed), Decimal("0"))

    def check_credit(self, cost: Decimal) -> None:
        """Refuse a request when ``credit_usd`` is set and ``cost`` is more than what remains."""
        if self.config.credit_usd is None:
            return
        remaining = max(Decimal("0"), self.config.credit_usd - self.committed())
        if cost > remaining:
            raise InsufficientCreditError(cost, remaining)

    def balance(self) -> Decimal | None:
        """The organisation's credit balance: ``credit_usd`` less what succeeded or will (``None``: unset)."""
        if self.config.credit_usd is None:
            return None
        return max(Decimal("0"), self.config.credit_usd - self.committed())

    def price_of(self, spec: RunSpec) -> Decimal:
        price = self.config.price_table().price(spec.model_id)
        return price.cost(
            billed_megapixels(spec.request.width, spec.request.height),
            reference_megapixels(spec.request.image_urls, spec.request.reference_sizes),
        )

    # -- creation ------------------------------------------------------------------------------------

    def create_run(
        self,
        spec: RunSpec,
        *,
        endpoint: str = "create_run",
        batch_id: str | None = None,
        sequence_index: int | None = None,
        previous: RunRecord | None = None,
    ) -> RunRecord:
        """Create one run: pick its seed, decide its outcome (faults included) and schedule it.

        :param spec: the validated request.
        :param endpoint: the endpoint that creates it (for the fault plan's rules).
        :param batch_id: the batch it belongs to.
        :param sequence_index: its position in the batch.
        :param previous: the run before it (what ``duplicate_image`` copies by default).
        """
        now = self.clock()
        request = spec.request
        seed = request.seed if request.seed is not None else self.rng.randrange(2**32)
        fault = self.plan.select(endpoint, "run", [request.prompt], spec.variant)
        outcome = decide_outcome(self.config, request, seed, fault, self._duplicate_source(fault, seed, previous))
        price = self.config.price_table().price(spec.model_id)
        billed_mp = billed_megapixels(request.width, request.height)
        phases = sample_phases(self.config, billed_mp, self.rng)
        run = RunRecord(
            id=new_id(),
            variant=spec.variant,
            model_id=spec.model_id,
            request=request,
            seed=seed,
            upsampled_prompt=upsample(spec.variant, request.prompt),
            timeline=self._fleet(spec.model_id).place(now, phases),
            outcome=outcome,
            price=price,
            billed_mp=billed_mp,
            reference_mp=reference_megapixels(request.image_urls, request.reference_sizes),
            base_url=spec.base_url,
            metadata=spec.metadata,
            callback_url=spec.callback_url,
            client_ref=spec.client_ref,
            idempotency_key=spec.idempotency_key,
            batch_id=batch_id,
            item_id=new_id() if batch_id else None,
            sequence_index=sequence_index,
            fault=fault,
        )
        self.runs[run.id] = run
        if fault is not None:
            self.record_fault(endpoint, fault, run_id=run.id)
        return run

    def create_batch(
        self,
        variant: Variant,
        specs: list[RunSpec],
        *,
        metadata: dict[str, Any] | None,
        callback_url: str | None,
        idempotency_key: str | None,
    ) -> BatchRecord:
        """Create a batch: one run per item, in order, each a full run."""
        batch = BatchRecord(
            id=new_id(),
            variant=variant,
            model_id=specs[0].model_id if specs else "",
            run_ids=[],
            created=self.clock(),
            metadata=metadata,
            callback_url=callback_url,
            idempotency_key=idempotency_key,
        )
        previous = None
        for index, spec in enumerate(specs):
            previous = self.create_run(
                spec, endpoint="create_batch", batch_id=batch.id, sequence_index=index, previous=previous
            )
            batch.run_ids.append(previous.id)
        self.batches[batch.id] = batch
        return batch

    def create_evaluation(
        self,
        body: dict[str, Any],
        *,
        stats: ImageStats | None,
        idempotency_key: str | None,
        problem: str | None = None,
    ) -> EvaluationRecord:
        """Create one evaluation: decide its verdict (markers, image statistics, a fault) and schedule it."""
        now = self.clock()
        texts = [str(body.get("generation_prompt") or ""), str(body.get("task_description") or "")]
        fault = self.plan.select("create_evaluation", "run", [" ".join(texts)], None)
        once = f"{self.config.sentinel_fail_marker}_once".lower() in " ".join(texts).lower()
        key, digest = "\x1f".join(texts), stats.digest if stats else ""
        failed_before = once and (key not in self.failed_once or digest in self.failed_once[key])
        verdict = decide_verdict(
            self.config,
            task_type=str(body.get("task_type") or ""),
            texts=texts,
            stats=stats,
            fault=fault,
            failed_before=failed_before,
            problem=problem,
        )
        if once and verdict.overall_passed is False:
            self.failed_once.setdefault(key, set()).add(digest)
        pending, running = evaluation_phases(self.config, self.rng)
        record = EvaluationRecord(
            id=new_id(),
            body=body,
            created=now,
            start=now + pending,
            end=now + pending + running,
            verdict=verdict,
            price=self.config.evaluation_price_usd,
            job_class=str(body.get("job_class") or "standard"),
            idempotency_key=idempotency_key,
            stats=stats,
            fault=fault,
            echo_url=asset_url(str(body.get("generated_image_url") or "")),
            references=reference_echo(list(body.get("reference_images") or [])),
        )
        self.evaluations[record.id] = record
        if fault is not None:
            self.record_fault("create_evaluation", fault, evaluation_id=record.id)
        return record

    def _duplicate_source(self, fault: Fault | None, seed: int, previous: RunRecord | None) -> tuple[str, int] | None:
        """The (prompt, seed) a ``duplicate_image`` fault renders: ``of_prompt``, else the run before."""
        if fault is None or fault.kind != "duplicate_image":
            return None
        of_prompt = fault.params.get("of_prompt")
        if of_prompt is not None:
            if fault.params.get("of_seed") is not None:
                return of_prompt, int(fault.params["of_seed"])
            earlier = [r for r in self.runs.values() if r.request.prompt == of_prompt]
            return of_prompt, earlier[-1].outcome.render_seed if earlier else seed
        source = previous or (next(reversed(self.runs.values())) if self.runs else None)
        if source is None:
            return None
        return source.outcome.render_prompt, source.outcome.render_seed

    # -- views ---------------------------------------------------------------------------------------

    def batch_status(self, batch: BatchRecord, now: float) -> tuple[RunStatus, int, int]:
        """The batch's status and its counts of succeeded and failed items."""
        statuses = [self.runs[run_id].status(now) for run_id in batch.run_ids]
        succeeded = sum(s is RunStatus.SUCCEEDED for s in statuses)
        failed = sum(s is RunStatus.FAILED for s in statuses)
        if succeeded + failed < len(statuses):
            started = any(s is not RunStatus.QUEUED for s in statuses)
            return (RunStatus.RUNNING if started else RunStatus.QUEUED), succeeded, failed
        if failed == 0:
            return RunStatus.SUCCEEDED, succeeded, failed
        if succeeded == 0:
            return RunStatus.FAILED, succeeded, failed
        return RunStatus.PARTIAL_SUCCEEDED, succeeded, failed

    def ledger(self) -> dict[str, Any]:
        """Every billed run, in the order they were billed, and the total."""
        now = self.clock()
        billed = sorted((r for r in self.runs.values() if r.billed(now)), key=lambda r: r.timeline.end)
        entries: list[dict[str, Any]] = [
            {
                "kind": "run",
                "run_id": run.id,
                "idempotency_key": run.idempotency_key,
                "client_ref": run.client_ref,
                "batch_id": run.batch_id,
                "model": run.model_id,
                "width": run.width,
                "height": run.height,
                "billed_mp": run.billed_mp,
                "reference_mp": run.reference_mp,
                "cost": usd(run.cost),
                "created_at": iso(run.timeline.created),
                "billed_at": iso(run.timeline.end),
                "latency_s": round(run.timeline.latency, 4),
            }
            for run in billed
        ]
        evaluated = sorted((e for e in self.evaluations.values() if e.billed(now)), key=lambda e: e.end)
        entries += [
            {
                "kind": "evaluation",
                "evaluation_id": evaluation.id,
                "idempotency_key": evaluation.idempotency_key,
                "client_ref": evaluation.client_ref,
                "job_class": evaluation.job_class,
                "cost": usd(evaluation.price),
                "billed_at": iso(evaluation.end),
            }
            for evaluation in evaluated
        ]
        entries.sort(key=lambda entry: str(entry["billed_at"]))
        total = sum((run.cost for run in billed), Decimal("0")) + sum((e.price for e in evaluated), Decimal("0"))
        credit = self.config.credit_usd
        return {
            "entries": entries,
            "total_cost": usd(total),
            "credit_usd": None if credit is None else usd(credit),
            "remaining_credit_usd": None if credit is None else usd(max(Decimal("0"), credit - self.committed())),
        }

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        statuses = Counter(run.status(now).value for run in self.runs.values())
        return {
            "requests": dict(self.requests),
            "runs_created": len(self.runs),
            "batches_created": len(self.batches),
            "runs_by_status": dict(statuses),
            "evaluations_created": len(self.evaluations),
            "evaluations_by_status": dict(Counter(e.status(now) for e in self.evaluations.values())),
            "max_concurrent_runs": peak_overlap((r.timeline.created, r.timeline.end) for r in self.runs.values()),
            "max_running_runs": peak_overlap((r.timeline.start, r.timeline.end) for r in self.runs.values()),
            "max_running_by_model": {
                model: peak_overlap(
                    (r.timeline.start, r.timeline.end) for r in self.runs.values() if r.model_id == model
                )
                for model in sorted({r.model_id for r in self.runs.values()})
            },
            "rate_limited": self.rate_limited,
            "faults_fired": list(self.faults_fired),
            "callbacks": list(self.callbacks),
        }
