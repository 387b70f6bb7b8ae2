"""Today's chunked operator (before generation core v2), kept runnable as a benchmark baseline.

A verbatim copy of ``operators/flux.py`` and ``triggers/flux.py`` as they were at the end of wave 1:
the worker submits whole chunks, defers to a read-only trigger until enough runs finish to top the
window up, and comes back to the worker for each chunk (many worker entries per batch). The
benchmarks compare it with :class:`~airflow_provider_flux2.operators.flux.FluxGenerateImageOperator`;
nothing else should use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.triggers.base import BaseTrigger, TriggerEvent

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1: the Task SDK exposes conf from 3.2 on
    from airflow.configuration import conf  # type: ignore[assignment]

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import (
    FluxAPIError,
    FluxConnectionError,
    FluxError,
    FluxImageError,
    FluxModerationError,
    FluxRateLimitError,
    FluxRunFailedError,
    FluxServerError,
    FluxTimeoutError,
    FluxValidationError,
)
from airflow_provider_flux2.hooks.flux import (
    BatchEntry,
    FluxHook,
    Submission,
    adaptive_poll_interval,
    expected_duration,
)
from airflow_provider_flux2.models import (
    GENERATION_PARAMS,
    Batch,
    FluxInput,
    ImageRecord,
    Run,
    RunStatus,
    Timings,
    Variant,
    build_input,
    resolve_variant,
    utc_now_iso,
)
from airflow_provider_flux2.pricing import Budget, CostEstimate, ItemCost, estimate, usd
from airflow_provider_flux2.storage import BatchLocation, content_hash, publisher_for
from airflow_provider_flux2.storage.publish import object_metadata
from airflow_provider_flux2.storage.report import write_batch_report

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

    from airflow_provider_flux2.storage.base import Publisher

ModerationPolicy = Literal["fail", "skip", "record"]
FailurePolicy = Literal["fail", "record"]
STATE_VERSION = 1
log = logging.getLogger(__name__)
#: The folder under ``$AIRFLOW_HOME`` used when neither ``output_uri`` nor ``[flux2] default_output_uri`` is set.
DEFAULT_OUTPUT_FOLDER = "flux2-images"
XCOM_STATE = "flux_state"
XCOM_RUN_IDS = "flux_run_ids"
XCOM_GALLERY = "flux_gallery_url"
XCOM_MANIFEST = "flux_manifest_uri"
STATE_KEY = "flux/state"
#: Collecting one finished image (download, verify, store) is tried this many times across cycles.
MAX_COLLECT_ATTEMPTS = 3
COLLECT_RETRYABLE = (FluxConnectionError, FluxServerError, FluxRateLimitError, FluxImageError, OSError)
#: Per-item keys that describe an item rather than generate it; they are kept on its record.
ITEM_META = ("id", "source_hash", "extra")


class BaselineImagesLink(BaseOperatorLink):
    """ "FLUX images": the gallery of the task's stored output (or its folder)."""

    name = "FLUX images"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        uri = XCom.get_value(key=XCOM_GALLERY, ti_key=ti_key)
        return browsable_url(uri) if uri else ""


def browsable_url(uri: str) -> str:
    """A link a browser can open: S3 URIs go to the S3 console; file URIs stay as they are."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={folder}"
    return uri


@dataclass(frozen=True)
class PlannedImage:
    """One image of the plan: validated request, price and identity."""

    index: int
    variant: Variant
    request: FluxInput
    prompt: str
    params: dict[str, Any]
    idempotency_key: str
    client_ref: str
    request_hash: str
    meta: dict[str, Any] = field(default_factory=dict)  # per-item id / source_hash / extra, kept on the record

    def entry(self, attempt: int) -> BatchEntry:
        return BatchEntry(self.request, self.client_ref, resubmission_key(self.idempotency_key, attempt))


def planned_image(
    identity: dict[str, Any],
    index: int,
    variant: Variant,
    request: FluxInput,
    item: str | int | None = None,
    meta: dict[str, Any] | None = None,
) -> PlannedImage:
    """An image of a plan, with the keys that make its submission idempotent.

    :param identity: the task's Airflow identity (dag, task, run, map index).
    :param item: what tells this image apart inside the task (default: its index).
    """
    req_hash = protocol.request_hash(variant, request)
    item_identity = {**identity, "item": index if item is None else item}
    return PlannedImage(
        index=index,
        variant=variant,
        request=request,
        prompt=request.prompt,
        params={k: v for k, v in request.to_wire().items() if k != "prompt"},
        idempotency_key=protocol.idempotency_key(item_identity, req_hash),
        client_ref=protocol.client_ref(item_identity, req_hash),
        request_hash=req_hash,
        meta=dict(meta or {}),
    )


def is_moderated(run: Run, failure: FluxRunFailedError | None) -> bool:
    """Moderated: failed with a moderation code, or succeeded with the NSFW flag (a blacked-out image)."""
    if isinstance(failure, FluxModerationError):
        return True
    return run.status_code == RunStatus.SUCCEEDED and run.output is not None and run.output.nsfw


def record_for_run(
    image: PlannedImage,
    item_cost: ItemCost,
    run: Run,
    *,
    attempt: int,
    batch_id: str | None,
    submitted_at: str | None,
    seen: dict[str, Any],
    log: Any,
) -> ImageRecord:
    """What the API said about one finished run, next to what we planned (status set by the caller).

    The cost is the API's when it reports one (that is what is billed) and the estimate otherwise;
    a run that did not succeed costs nothing. A mismatch is logged as a warning naming the run.
    """
    billed = run.status_code == RunStatus.SUCCEEDED
    api_cost = run.cost
    if api_cost is not None and billed and api_cost != item_cost.cost:
        log.warning(
            "Run %s (image %d) was billed $%s by the API; the estimate was $%s",
            run.id,
            image.index,
            usd(api_cost),
            usd(item_cost.cost),
        )
    cost = (api_cost if api_cost is not None else item_cost.cost) if billed else Decimal("0")
    output = run.output
    return ImageRecord(
        index=image.index,
        model=image.variant.model_id,
        prompt=image.prompt,
        upsampled_prompt=output.prompt if output else None,
        params=image.params,
        seed=(output.seed if output and output.seed is not None else image.request.seed),
        width=image.request.width,
        height=image.request.height,
        output_format=image.request.output_format,
        billed_mp=item_cost.billed_mp,
        cost_usd=usd(cost),
        estimated_cost_usd=usd(item_cost.cost),
        api_cost_usd=usd(api_cost) if api_cost is not None else None,
        run_id=run.id,
        batch_id=batch_id,
        request_id=run.request_id,
        client_ref=image.client_ref,
        idempotency_key=resubmission_key(image.idempotency_key, attempt),
        failure_code=run.failure_code,
        failure_message=run.failure_message,
        nsfw=bool(output and output.nsfw),
        quality_score=run.quality_score,
        attempt=attempt,
        source_hash=image.meta.get("source_hash"),
        extra={k: v for k, v in image.meta.items() if k != "source_hash"},
        timings=Timings(
            submitted_at=submitted_at,
            finished_at=run.completed_at or seen.get("completed_at"),
            detected_at=seen.get("detected_at"),
        ),
    )


def store_run_image(
    hook: FluxHook, publisher: Publisher, location: BatchLocation, run: Run, image: PlannedImage, record: ImageRecord
) -> None:
    """Download a succeeded run's image, verify it, store it under its deterministic key; fill the record."""
    downloaded = hook.download(
        run, width=image.request.width, height=image.request.height, output_format=image.request.output_format
    )
    digest = content_hash(downloaded.data)
    record.content_hash = digest
    record.content_type = downloaded.content_type
    record.size_bytes = downloaded.size_bytes
    record.uri = publisher.put_image(
        location, image.index, downloaded.data, downloaded.content_type, object_metadata(record), digest
    )
    record.timings.stored_at = utc_now_iso()


def resubmission_key(key: str, attempt: int) -> str:
    """Attempt 1 uses the image's key; a failed (unbilled) run is resubmitted under a derived one.

    Deterministic, so a task retry walks the same chain and re-attaches instead of paying again.
    """
    return key if attempt <= 1 else f"{key}-r{attempt}"


@dataclass(frozen=True)
class Plan:
    images: list[PlannedImage]
    estimate: CostEstimate
    chunk_size: int
    digest: str

    @property
    def chunks(self) -> int:
        return -(-len(self.images) // self.chunk_size)

    def chunk(self, number: int) -> list[PlannedImage]:
        return self.images[number * self.chunk_size : (number + 1) * self.chunk_size]


class BaselineChunkedOperator(BaseOperator):
    """Generate one or many images with FLUX 2 and store them; returns small records, never bytes.

    :param prompt: one prompt (text, or a dict for a JSON-structured prompt).
    :param prompts: many prompts: strings, or dicts with ``prompt`` and per-item parameters.
    :param model: ``pro`` (default from the connection), ``flex``, ``max``, ``turbo`` or a full model id.
    :param image_size: a preset, ``{"width", "height"}`` or ``"WxH"`` (default ``landscape_4_3``).
    :param output_format: ``jpeg`` or ``png``.
    :param seed: seed for reproducible output (per-item seeds override it).
    :param safety_tolerance: ``"1"``..``"5"``.
    :param enable_safety_checker: let the API flag NSFW output.
    :param image_urls: reference images (at most 8).
    :param colors: HEX colours (``#RRGGBB``) woven into the prompt.
    :param num_inference_steps: flex only.
    :param guidance_scale: flex only.
    :param flux_conn_id: the ``flux2`` connection.
    :param output_uri: where images go: ``file:///abs/path`` or ``s3://bucket/prefix``.
    :param aws_conn_id: Airflow AWS connection for ``s3://`` (else boto3's default chain).
    :param deferrable: wait on the triggerer instead of holding a worker slot.
    :param max_in_flight: most runs at the API at once (the window).
    :param batch_size: images per submit request (default ``max_in_flight // 2``); 1 means single runs.
    :param use_batches: use the batch endpoint when the model supports it.
    :param poll_interval: shortest pause between polls (seconds); the real interval adapts.
    :param timeout: seconds the whole task may wait for its runs.
    :param budget_usd: refuse the plan if its estimated cost is over this.
    :param on_moderation: ``fail`` (after storing the rest), ``skip`` (leave moderated images out;
        skip the task if nothing is left) or ``record`` (keep them, marked ``moderated``).
    :param on_run_failure: ``fail`` or ``record`` for runs that still fail after ``resubmit_failed``.
    :param resubmit_failed: times a failed (unbilled, non-moderation) run is submitted again.
    :param progress_interval: at most one progress line per this many seconds.
    :param write_manifest: write ``manifest.json``/``.csv`` and the gallery beside the images.
    :param prompt_source: where the prompts came from (``s3://…/catalogue.csv``, ``file:///…``), for lineage.
    """

    template_fields: Sequence[str] = (
        "prompt",
        "prompts",
        "model",
        "image_size",
        "output_format",
        "seed",
        "safety_tolerance",
        "image_urls",
        "colors",
        "num_inference_steps",
        "guidance_scale",
        "output_uri",
        "budget_usd",
        "prompt_source",
        "aws_conn_id",
    )
    template_fields_renderers = {"prompts": "json", "prompt": "json"}
    operator_extra_links = (BaselineImagesLink(),)
    ui_color = "#f3e8ff"

    _PARAM_NAMES: ClassVar[tuple[str, ...]] = GENERATION_PARAMS

    def __init__(
        self,
        *,
        prompt: str | dict[str, Any] | None = None,
        prompts: list[str | dict[str, Any]] | None = None,
        model: str | None = None,
        image_size: str | dict[str, int] | None = None,
        output_format: str | None = None,
        seed: int | None = None,
        safety_tolerance: str | int | None = None,
        enable_safety_checker: bool | None = None,
        sync_mode: bool | None = None,
        image_urls: list[str] | None = None,
        colors: list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        flux_conn_id: str = FluxHook.default_conn_name,
        output_uri: str | None = None,
        aws_conn_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_in_flight: int = 8,
        batch_size: int | None = None,
        use_batches: bool = True,
        poll_interval: float = 2.0,
        timeout: float = 6 * 60 * 60,
        budget_usd: str | float | Decimal | None = None,
        on_moderation: ModerationPolicy = "fail",
        on_run_failure: FailurePolicy = "fail",
        resubmit_failed: int = 2,
        progress_interval: float = 5.0,
        write_manifest: bool = True,
        prompt_source: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt_source = prompt_source
        self.prompt = prompt
        self.prompts = prompts
        self.model = model
        self.image_size = image_size
        self.output_format = output_format
        self.seed = seed
        self.safety_tolerance = safety_tolerance
        self.enable_safety_checker = enable_safety_checker
        self.sync_mode = sync_mode
        self.image_urls = image_urls
        self.colors = colors
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.flux_conn_id = flux_conn_id
        self.output_uri = output_uri
        self.aws_conn_id = aws_conn_id
        self.deferrable = deferrable
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.use_batches = use_batches
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.budget_usd = budget_usd
        self.on_moderation = on_moderation
        self.on_run_failure = on_run_failure
        self.resubmit_failed = resubmit_failed
        self.progress_interval = progress_interval
        self.write_manifest = write_manifest
        _check_choice("on_moderation", on_moderation, ("fail", "skip", "record"))
        _check_choice("on_run_failure", on_run_failure, ("fail", "record"))
        if max_in_flight < 1:
            raise FluxValidationError(field="max_in_flight", value=max_in_flight, allowed="an integer >= 1")
        if batch_size is not None and not 1 <= batch_size <= protocol.MAX_BATCH_ITEMS:
            raise FluxValidationError(
                field="batch_size", value=batch_size, allowed=f"an integer 1..{protocol.MAX_BATCH_ITEMS}"
            )

    @cached_property
    def hook(self) -> FluxHook:
        return FluxHook(self.flux_conn_id)

    # -- the story ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> list[dict[str, Any]]:
        plan = self.plan(context)
        state = self._resume(context, plan, fresh_try=True)
        return self._advance(context, plan, state, event=None)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Resume after the trigger fired; the progress comes back from XCom (and task_state_store)."""
        plan = self.plan(context)
        state = self._resume(context, plan, fresh_try=False)
        return self._advance(context, plan, state, event=event or {})

    # -- 1. plan --------------------------------------------------------------------------------------

    def plan(self, context: Context) -> Plan:
        """Validate and price every item; refuse the plan if it is over budget. Sends nothing."""
        items = self._items()
        default_variant = resolve_variant(self.model) if self.model else self.hook.default_model
        identity = task_identity(context)
        images = []
        for index, (item, meta) in enumerate(items):
            variant = resolve_variant(item.pop("model", None) or default_variant)
            try:
                request = build_input(variant, **item)
            except FluxValidationError as error:
                if len(items) > 1:
                    error.args = (f"prompts[{index}]: {error.args[0]}",)
                raise
            images.append(planned_image(identity, index, variant, request, meta=meta))
        cost = estimate([(i.variant, i.request) for i in images], self.hook.prices)
        budget = Budget.of(self.budget_usd)
        if budget is not None:
            budget.check(cost)
        chunk = self.batch_size or (max(1, self.max_in_flight // 2) if self.use_batches else 1)
        chunk = min(chunk, self.max_in_flight)
        digest = hashlib.sha256("".join(i.request_hash for i in images).encode()).hexdigest()[:16]
        return Plan(images=images, estimate=cost, chunk_size=chunk, digest=digest)

    def _items(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """``(generation params, meta)`` per item; meta (``id``, ``source_hash``, ``extra``) rides on the record."""
        if (self.prompt is None) == (self.prompts is None):
            raise FluxValidationError(
                field="prompt/prompts", value=None, allowed="exactly one of prompt (one image) or prompts (a list)"
            )
        raw = [self.prompt] if self.prompts is None else list(self.prompts)
        if not raw:
            raise FluxValidationError(field="prompts", value=[], allowed="a non-empty list of prompts")
        shared = {
            "image_size": self.image_size,
            "output_format": self.output_format,
            "seed": self.seed,
            "safety_tolerance": self.safety_tolerance,
            "enable_safety_checker": self.enable_safety_checker,
            "sync_mode": self.sync_mode,
            "image_urls": self.image_urls,
            "colors": self.colors,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
        }
        items = []
        for index, entry in enumerate(raw):
            meta: dict[str, Any] = {}
            if isinstance(entry, dict) and "prompt" in entry:
                unknown = set(entry) - set(self._PARAM_NAMES) - {"model", *ITEM_META}
                if unknown:
                    raise FluxValidationError(
                        field=f"prompts[{index}].{sorted(unknown)[0]}",
                        value=entry[sorted(unknown)[0]],
                        allowed=f"per-item keys {', '.join((*self._PARAM_NAMES, 'model', *ITEM_META))}",
                    )
                meta = {k: entry[k] for k in ("id", "source_hash") if entry.get(k) is not None}
                meta.update(entry.get("extra") or {})
                item = {**shared, **{k: v for k, v in entry.items() if k not in ITEM_META}}
            else:
                item = {**shared, "prompt": entry}
            items.append(({k: v for k, v in item.items() if v is not None}, meta))
        return items

    # -- 2. progress ------------------------------------------------------------------------------------

    def _resume(self, context: Context, plan: Plan, *, fresh_try: bool) -> dict[str, Any]:
        """Progress of this task: from this try's XCom, else an earlier try's task_state_store, else new."""
        ti = context["ti"]
        state: Any = None
        if not fresh_try:
            state = ti.xcom_pull(task_ids=ti.task_id, key=XCOM_STATE, map_indexes=ti.map_index)
        store = context.get("task_state_store")
        if state is None and store is not None:
            state = store.get(STATE_KEY)
            if state is not None:
                self.log.info(
                    "Resuming from an earlier try: %d chunk(s) submitted, %d stored; re-attaching to runs in flight",
                    state["next_chunk"],
                    len(state["done_chunks"]),
                )
        if state is not None and fresh_try:
            state["end_time"] = time.time() + self.timeout  # a new try gets its own deadline
        if state is not None and state.get("plan") != plan.digest:
            self.log.warning("The recorded progress belongs to a different plan (inputs changed); starting over")
            state = None
        if state is None:
            state = {
                "version": STATE_VERSION,
                "plan": plan.digest,
                "started_at": time.time(),
                "end_time": time.time() + self.timeout,
                "next_chunk": 0,
                "inflight": {},  # index → {run_id, batch_id, attempt, submitted_at}
                "records": {},  # index → record of images not yet flushed with their chunk
                "done_chunks": [],
                "stats": {"done": 0, "failed": 0, "moderated": 0, "cost": "0", "billed_mp": 0},
                "last_progress": 0.0,
            }
        return state

    def _save(self, context: Context, state: dict[str, Any]) -> None:
        """Record progress before any wait: XCom for this try, task_state_store across tries (3.3+)."""
        ti = context["ti"]
        ti.xcom_push(key=XCOM_STATE, value=state)
        run_ids = {int(i): f["run_id"] for i, f in state["inflight"].items()}
        ti.xcom_push(key=XCOM_RUN_IDS, value=run_ids)
        store = context.get("task_state_store")
        if store is not None:
            store.set(STATE_KEY, state)

    def _save_chunk_records(self, context: Context, chunk: int, records: list[dict[str, Any]]) -> None:
        key = f"flux_records_{chunk:05d}"
        context["ti"].xcom_push(key=key, value=records)
        store = context.get("task_state_store")
        if store is not None:
            store.set(f"flux/records/{chunk:05d}", list(records))

    def _load_chunk_records(self, context: Context, chunk: int) -> list[dict[str, Any]]:
        # task_state_store first: after a retry it holds the chunks of earlier tries, which this
        # try's XCom does not (and a missing XCom is logged as an error by the Task SDK).
        store = context.get("task_state_store")
        records: Any = store.get(f"flux/records/{chunk:05d}") if store is not None else None
        if records is None:
            ti = context["ti"]
            records = ti.xcom_pull(task_ids=ti.task_id, key=f"flux_records_{chunk:05d}", map_indexes=ti.map_index)
        if records is None:
            raise FluxError(f"Records of chunk {chunk} are missing from XCom and task_state_store")
        return records

    # -- 3..5. the window ---------------------------------------------------------------------------

    def _advance(
        self, context: Context, plan: Plan, state: dict[str, Any], event: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        publisher = self._publisher()
        location = task_location(context)
        if event is None:
            # The extra link resolves from the first deferral on: the folder now, the gallery at the end.
            context["ti"].xcom_push(key=XCOM_GALLERY, value=publisher.folder_uri(location))
        while True:
            if event:
                self._absorb(context, plan, state, event, publisher, location)
            self._top_up(context, plan, state)
            self._flush_chunks(context, plan, state)
            self._log_progress(plan, state)
            self._save(context, state)
            if not state["inflight"]:
                return self._finish(context, plan, state, publisher, location)
            trigger = self._trigger(plan, state)
            if self.deferrable:
                self.defer(
                    trigger=trigger,
                    method_name="execute_complete",
                    timeout=timedelta(seconds=max(60.0, state["end_time"] - time.time() + 300)),
                )
            event = wait_in_worker(
                self.hook,
                trigger.watch(),
                end_time=trigger.end_time,
                poll_interval=trigger.poll_interval,
                expected_seconds=trigger.expected_seconds,
                log=self.log,
                started_at=trigger.started_at,
            )

    def _top_up(self, context: Context, plan: Plan, state: dict[str, Any]) -> None:
        """Submit whole chunks while the window has room; record each submission at once."""
        while state["next_chunk"] < plan.chunks:
            images = plan.chunk(state["next_chunk"])
            if len(state["inflight"]) + len(images) > self.max_in_flight:
                return
            submitted_at = utc_now_iso()
            if len({image.variant for image in images}) == 1:
                submission = self.hook.submit_batch(
                    [image.entry(1) for image in images],
                    model=images[0].variant,
                    batch_key=_batch_key(images),
                    metadata=run_metadata(context),
                    use_batch_endpoint=self.use_batches,
                )
            else:  # a batch request carries one model; a mixed chunk goes as single runs
                submission = self._submit_singles(context, images)
            for image, run_id in zip(images, submission.run_ids, strict=True):
                state["inflight"][str(image.index)] = {
                    "run_id": run_id,
                    "batch_id": submission.batch_id,
                    "attempt": 1,
                    "submitted_at": submitted_at,
                }
            state["next_chunk"] += 1
            # Recorded before anything else can fail: a retry re-attaches to these runs.
            self._save(context, state)

    def _submit_singles(self, context: Context, images: list[PlannedImage]) -> Submission:
        runs = [
            self.hook.submit(
                image.request,
                model=image.variant,
                idempotency_key=image.idempotency_key,
                client_ref=image.client_ref,
                metadata=run_metadata(context),
            )
            for image in images
        ]
        return Submission(run_ids=[r.id for r in runs])

    def _trigger(self, plan: Plan, state: dict[str, Any]) -> BaselineWaitTrigger:
        batches: dict[str, list[str]] = {}
        runs: list[str] = []
        largest = 0.0
        for index, flight in state["inflight"].items():
            if flight["batch_id"]:
                batches.setdefault(flight["batch_id"], []).append(flight["run_id"])
            else:
                runs.append(flight["run_id"])
            request = plan.images[int(index)].request
            largest = max(largest, expected_duration(request.width, request.height))
        oldest = min(f["submitted_at"] for f in state["inflight"].values())
        return BaselineWaitTrigger(
            flux_conn_id=self.flux_conn_id,
            batches=batches,
            runs=runs,
            min_finished=self._min_finished(plan, state),
            end_time=state["end_time"],
            poll_interval=self.poll_interval,
            expected_seconds=largest,
            started_at=datetime.fromisoformat(oldest).timestamp(),
        )

    def _min_finished(self, plan: Plan, state: dict[str, Any]) -> int:
        """Finished runs needed before the next chunk fits in the window (or all, at the tail)."""
        inflight = len(state["inflight"])
        if state["next_chunk"] >= plan.chunks:
            return max(1, min(inflight, self.max_in_flight // 2 or 1))
        next_size = len(plan.chunk(state["next_chunk"]))
        return max(1, min(inflight, inflight + next_size - self.max_in_flight))

    def _absorb(
        self,
        context: Context,
        plan: Plan,
        state: dict[str, Any],
        event: dict[str, Any],
        publisher: Publisher,
        location: BatchLocation,
    ) -> None:
        """Collect every finished run of an event; raise on a timeout or a polling error."""
        finished = event.get("finished") or {}
        by_run = {f["run_id"]: index for index, f in state["inflight"].items()}
        runs = self._read_finished([run_id for run_id in finished if run_id in by_run], state)
        for run_id, seen in finished.items():
            index = by_run.get(run_id)
            if index is not None:
                self._collect(context, plan, state, index, seen, publisher, location, runs.get(run_id))
        status = event.get("status")
        if status == "timeout":
            self._save(context, state)
            raise FluxTimeoutError(
                f"{event.get('message')} (timeout {self.timeout:.0f}s); progress is recorded, "
                "a retry re-attaches to these runs",
                run_ids=list(event.get("pending") or []),
            )
        if status == "error":
            self._save(context, state)
            raise FluxError(f"Waiting for FLUX runs failed: {event.get('message')}")

    def _read_finished(self, run_ids: list[str], state: dict[str, Any]) -> dict[str, Run]:
        """Finished runs read in as few requests as the API allows: one ``/items`` read per batch.

        Reading now (not at poll time) gets fresh output URLs, the cost, the seed and any failure.
        A run of a batch with a single finished run is read alone (``/items`` returns the whole batch).
        """
        batch_of = {f["run_id"]: f["batch_id"] for f in state["inflight"].values() if f["batch_id"]}
        by_batch: dict[str, list[str]] = {}
        for run_id in run_ids:
            if run_id in batch_of:
                by_batch.setdefault(batch_of[run_id], []).append(run_id)
        runs: dict[str, Run] = {}
        for batch_id, members in by_batch.items():
            if len(members) > 1:
                items = {run.id: run for run in self.hook.get_batch_items(batch_id)}
                runs.update({run_id: items[run_id] for run_id in members if run_id in items})
        return runs

    def _collect(
        self,
        context: Context,
        plan: Plan,
        state: dict[str, Any],
        index: str,
        seen: dict[str, Any],
        publisher: Publisher,
        location: BatchLocation,
        run: Run | None = None,
    ) -> None:
        """Turn one finished run into a record: download, verify, store (or resubmit)."""
        flight = state["inflight"][index]
        image = plan.images[int(index)]
        if run is None or not run.terminal:
            run = self.hook.get_run(flight["run_id"])  # fresh URL, cost, seed, failure details
        failure = protocol.failure_of(run)
        moderated = is_moderated(run, failure)
        if failure is not None and not moderated and flight["attempt"] <= self.resubmit_failed:
            self._resubmit(context, state, image, flight, failure)
            return
        record = record_for_run(
            image,
            plan.estimate.items[image.index],
            run,
            attempt=flight["attempt"],
            batch_id=flight.get("batch_id"),
            submitted_at=flight.get("submitted_at"),
            seen=seen,
            log=self.log,
        )
        if run.status_code == RunStatus.SUCCEEDED and not (moderated and self.on_moderation == "skip"):
            try:
                store_run_image(self.hook, publisher, location, run, image, record)
            except COLLECT_RETRYABLE as error:
                # One image's bad luck (URLs expiring, a flaky store) must not fail a 1,000-image try:
                # the run stays in flight, already finished, and is collected again on the next cycle.
                flight["collect_failures"] = flight.get("collect_failures", 0) + 1
                if flight["collect_failures"] >= MAX_COLLECT_ATTEMPTS:
                    raise
                self.log.warning(
                    "Could not fetch or store image %d of run %s (%s); trying again on the next cycle (%d of %d)",
                    image.index,
                    run.id,
                    error,
                    flight["collect_failures"],
                    MAX_COLLECT_ATTEMPTS,
                )
                return
        if moderated:
            record.status = "skipped" if self.on_moderation == "skip" else "moderated"
            state["stats"]["moderated"] += 1
        elif failure is not None:
            record.status = "failed"
            state["stats"]["failed"] += 1
        else:
            record.status = "succeeded"
            state["stats"]["done"] += 1
        stats = state["stats"]
        stats["cost"] = str(Decimal(stats["cost"]) + Decimal(record.cost_usd))
        if Decimal(record.cost_usd) > 0:
            stats["billed_mp"] += record.billed_mp
        state["records"][index] = record.to_xcom()
        del state["inflight"][index]

    def _resubmit(
        self,
        context: Context,
        state: dict[str, Any],
        image: PlannedImage,
        flight: dict[str, Any],
        failure: FluxRunFailedError,
    ) -> None:
        attempt = flight["attempt"] + 1
        self.log.warning(
            "Run %s of image %d failed (%s); submitting it again (attempt %d, not billed twice: failed runs are free)",
            flight["run_id"],
            image.index,
            failure.failure_code,
            attempt,
        )
        entry = image.entry(attempt)
        run = self.hook.submit(
            entry.request,
            model=image.variant,
            idempotency_key=entry.idempotency_key,
            client_ref=entry.client_ref,
            metadata=run_metadata(context),
        )
        state["inflight"][str(image.index)] = {
            "run_id": run.id,
            "batch_id": None,
            "attempt": attempt,
            "submitted_at": utc_now_iso(),
            "previous_run_ids": [*flight.get("previous_run_ids", []), flight["run_id"]],
        }
        self._save(context, state)

    def _flush_chunks(self, context: Context, plan: Plan, state: dict[str, Any]) -> None:
        """A chunk whose every image has a record is written out once and dropped from the state."""
        for chunk in range(state["next_chunk"]):
            if chunk in state["done_chunks"]:
                continue
            indices = [str(i.index) for i in plan.chunk(chunk)]
            if all(i in state["records"] for i in indices):
                self._save_chunk_records(context, chunk, [state["records"].pop(i) for i in indices])
                state["done_chunks"].append(chunk)

    def _log_progress(self, plan: Plan, state: dict[str, Any]) -> None:
        """``37/200 done · 2 failed · $1.11 of $6.00 budget · ETA 3m10s · 8 in flight``, every few seconds.

        Money here is rounded to the cent for reading; the final summary and the records keep the
        exact figures.
        """
        now = time.time()
        if now - state["last_progress"] < self.progress_interval:
            return
        state["last_progress"] = now
        stats = state["stats"]
        total = len(plan.images)
        finished = stats["done"] + stats["failed"] + stats["moderated"]
        elapsed = now - state["started_at"]
        limit = Budget.of(self.budget_usd)
        spent = f"${_cents(Decimal(stats['cost']))}"
        spent += f" of ${_cents(limit.limit)} budget" if limit is not None else " spent"
        eta = ""
        if 0 < finished < total and elapsed > 0:
            eta = f" · ETA {_duration((total - finished) * elapsed / finished)}"
        moderated = f" · {stats['moderated']} moderated" if stats["moderated"] else ""
        self.log.info(
            "%d/%d done · %d failed · %s%s · %d in flight%s",
            finished,
            total,
            stats["failed"],
            spent,
            eta,
            len(state["inflight"]),
            moderated,
        )

    # -- 6. finish ----------------------------------------------------------------------------------------

    def _finish(
        self, context: Context, plan: Plan, state: dict[str, Any], publisher: Publisher, location: BatchLocation
    ) -> list[dict[str, Any]]:
        records = [r for chunk in range(plan.chunks) for r in self._load_chunk_records(context, chunk)]
        stats = state["stats"]
        failures: dict[str, int] = {}
        for record in records:
            if record["status"] in ("failed", "moderated", "skipped"):
                kind = record.get("failure_code") or ("NSFW_FLAGGED" if record.get("nsfw") else "UNKNOWN")
                failures[kind] = failures.get(kind, 0) + 1
        self.log.info(
            "Finished %d image(s): %d stored, failures by kind %s, %d MP billed, $%s (estimate $%s) in %s",
            len(records),
            sum(1 for r in records if r.get("uri")),
            failures or "none",
            stats["billed_mp"],
            usd(Decimal(stats["cost"])),
            usd(plan.estimate.total),
            _duration(time.time() - state["started_at"]),
        )
        self._write_report(context, publisher, location, records)
        self._raise_for_outcome(records)
        kept = [r for r in records if r["status"] != "skipped"]
        if not kept and self.on_moderation == "skip":
            from airflow.exceptions import AirflowSkipException

            raise AirflowSkipException("Every image was moderated; on_moderation='skip'")
        return kept

    def _write_report(
        self, context: Context, publisher: Publisher, location: BatchLocation, records: list[dict[str, Any]]
    ) -> None:
        ti = context["ti"]
        folder = publisher.folder_uri(location)
        gallery = folder
        if self.write_manifest:
            uris = write_batch_report(publisher, location, records, self.hook.prices)
            gallery = uris["gallery_uri"]
            ti.xcom_push(key=XCOM_MANIFEST, value=uris["manifest_uri"])
            self.log.info("Manifest: %s · gallery: %s", uris["manifest_uri"], gallery)
        ti.xcom_push(key=XCOM_GALLERY, value=gallery)

    def _raise_for_outcome(self, records: list[dict[str, Any]]) -> None:
        moderated = [r for r in records if r["status"] == "moderated"]
        failed = [r for r in records if r["status"] == "failed"]
        if moderated and self.on_moderation == "fail":
            first = moderated[0]
            raise FluxModerationError(
                run_id=first["run_id"],
                status="moderated",
                failure_code=first.get("failure_code") or "NSFW_FLAGGED",
                failure_message=f"{len(moderated)} image(s) moderated: "
                + ", ".join(f"#{r['index']} (run {r['run_id']})" for r in moderated)
                + "; the others are stored. Set on_moderation='skip' or 'record' to accept this.",
            )
        if failed and self.on_run_failure == "fail":
            first = failed[0]
            raise FluxRunFailedError(
                run_id=first["run_id"],
                status="failed",
                failure_code=first.get("failure_code"),
                failure_message=f"{len(failed)} image(s) failed after resubmission: "
                + ", ".join(f"#{r['index']} (run {r['run_id']}: {r.get('failure_code')})" for r in failed),
            )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage: the prompt source (when given) in, the task's image folder out."""
        from airflow_provider_flux2.lineage import lineage

        location = BatchLocation(
            dag_id=task_instance.dag_id,
            run_id=task_instance.run_id,
            task_id=task_instance.task_id,
            map_index=_map_index(task_instance),
        )
        output = self._publisher().folder_uri(location)
        return lineage(inputs=[self.prompt_source] if self.prompt_source else [], outputs=[output])

    def _publisher(self) -> Publisher:
        return output_publisher(self.output_uri, self.aws_conn_id)


#: Polls that may fail in a row (after the hook's own retries) before the wait is given up.
MAX_CONSECUTIVE_POLL_FAILURES = 5
#: The deadline of a trigger built with neither ``end_time`` nor ``timeout``.
DEFAULT_WAIT_TIMEOUT = 3600.0


def _is_permanent_poll_error(error: BaseException) -> bool:
    """Whether a polling error cannot succeed on a later poll (auth, not found, bad request)."""
    if isinstance(error, FluxValidationError):
        return True
    return isinstance(error, FluxAPIError) and 400 <= error.status_code < 500 and error.status_code not in (408, 429)


@dataclass
class RunWatch:
    """Which runs are awaited and which have finished: the bookkeeping shared by trigger and operator.

    :param batches: batch id → the run ids it holds that are awaited (polled with one request each).
    :param runs: run ids polled one by one (single runs, resubmissions, batch fallback).
    :param min_finished: how many finished runs make the wait worth ending.
    :param flush_after: end the wait this long after the first finish, even below ``min_finished``,
        so finished images are fetched before their URLs expire.
    """

    batches: dict[str, list[str]]
    runs: list[str]
    min_finished: int = 1
    flush_after: float = 300.0
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    first_finish_at: float | None = None

    @property
    def awaited(self) -> list[str]:
        ids = [r for ids in self.batches.values() for r in ids] + list(self.runs)
        return [r for r in ids if r not in self.finished]

    def batches_to_poll(self) -> list[str]:
        return [b for b, ids in self.batches.items() if any(r not in self.finished for r in ids)]

    def runs_to_poll(self) -> list[str]:
        return [r for r in self.runs if r not in self.finished]

    def observe(self, run_id: str, status: RunStatus, completed_at: str | None = None) -> None:
        self.statuses[run_id] = status.value
        if status.terminal and run_id not in self.finished:
            self.finished[run_id] = {
                "status": status.value,
                "completed_at": completed_at,
                "detected_at": utc_now_iso(),
            }
            if self.first_finish_at is None:
                self.first_finish_at = time.time()

    def observe_batch(self, batch: Batch) -> None:
        wanted = set(self.batches.get(batch.id, []))
        for item in batch.items:
            if item.run_id in wanted:
                self.observe(item.run_id, item.status_code)

    def observe_run(self, run: Run) -> None:
        self.observe(run.id, run.status_code, run.completed_at)

    def ready(self) -> bool:
        if not self.awaited:
            return True
        if len(self.finished) >= self.min_finished:
            return True
        return self.first_finish_at is not None and time.time() - self.first_finish_at >= self.flush_after

    def pending_statuses(self) -> list[str]:
        return [self.statuses.get(r, RunStatus.QUEUED.value) for r in self.awaited]

    def event(self, status: str, message: str) -> dict[str, Any]:
        return {"status": status, "message": message, "finished": self.finished, "pending": self.awaited}


class BaselineWaitTrigger(BaseTrigger):
    """Wait for one or many FLUX runs (as batches and/or single runs) until enough have finished.

    :param flux_conn_id: the ``flux2`` connection (default ``flux2_default``).
    :param batches: batch id → awaited run ids of that batch.
    :param runs: run ids awaited one by one (``run_ids`` is accepted as another name for it).
    :param min_finished: yield once this many runs have finished (the operator passes its free
        window slots); by default all of them.
    :param end_time: wall-clock deadline (epoch seconds). Wall-clock is used deliberately: the trigger
        is serialized and may resume in another triggerer process, where a monotonic clock means nothing.
    :param timeout: instead of ``end_time``: seconds from now (default one hour); turned into an
        ``end_time`` at construction, so a rebuilt trigger keeps the same deadline.
    :param poll_interval: the shortest pause between polls; the actual one adapts to the runs' status.
    :param expected_seconds: the expected generation time of the largest image, for the interval.
    :param flush_after: yield this long after the first run finished even below ``min_finished``
        (default 300 s when ``min_finished`` is set, never when waiting for all runs).
    :param started_at: when the oldest awaited run was submitted (epoch seconds), so the interval
        follows the runs' age rather than the age of this wait (a task defers many times).
    """

    def __init__(
        self,
        *,
        flux_conn_id: str = FluxHook.default_conn_name,
        batches: dict[str, list[str]] | None = None,
        runs: list[str] | None = None,
        run_ids: list[str] | None = None,
        min_finished: int | None = None,
        end_time: float | None = None,
        timeout: float | None = None,
        poll_interval: float = 5.0,
        expected_seconds: float = 10.0,
        flush_after: float | None = None,
        started_at: float | None = None,
    ) -> None:
        super().__init__()
        self.flux_conn_id = flux_conn_id
        self.batches = {k: list(v) for k, v in (batches or {}).items()}
        self.runs = list(dict.fromkeys([*(runs or []), *(run_ids or [])]))
        if not self.batches and not self.runs:
            raise FluxValidationError(field="runs", value=runs, allowed="at least one run id (or a batch)")
        self.min_finished = min_finished
        if end_time is None:
            end_time = time.time() + (DEFAULT_WAIT_TIMEOUT if timeout is None else float(timeout))
        self.end_time = end_time
        self.poll_interval = poll_interval
        self.expected_seconds = expected_seconds
        self.flush_after = flush_after
        self.started_at = started_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "flux_conn_id": self.flux_conn_id,
                "batches": self.batches,
                "runs": self.runs,
                "min_finished": self.min_finished,
                "end_time": self.end_time,
                "poll_interval": self.poll_interval,
                "expected_seconds": self.expected_seconds,
                "flush_after": self.flush_after,
                "started_at": self.started_at,
            },
        )

    def watch(self) -> RunWatch:
        awaited = len(self.runs) + sum(len(ids) for ids in self.batches.values())
        if self.min_finished is None:
            min_finished, flush_after = awaited, self.flush_after if self.flush_after is not None else math.inf
        else:
            min_finished, flush_after = self.min_finished, self.flush_after if self.flush_after is not None else 300.0
        return RunWatch(batches=self.batches, runs=self.runs, min_finished=min_finished, flush_after=flush_after)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until enough runs finish; yield exactly one event and return."""
        hook = FluxHook(self.flux_conn_id)
        try:
            payload = await watch_runs(
                self.watch(),
                get_batch=hook.aget_batch,
                get_run=hook.aget_run,
                end_time=self.end_time,
                poll_interval=self.poll_interval,
                expected_seconds=self.expected_seconds,
                sleep=asyncio.sleep,
                log=self.log,
                started_at=self.started_at,
            )
        finally:
            await hook.aclose()
        yield TriggerEvent(payload)

    async def on_kill(self) -> None:
        """Airflow >= 3.3 calls this when the deferred task is killed: say which runs are abandoned.

        Runflow has no cancel endpoint for a run, so the runs finish (and bill) on their own; the ids
        are logged so a person can find their results. Best effort: never raises.
        """
        try:
            abandoned = self.watch().awaited
            self.log.warning(
                "Task killed while waiting; %d FLUX run(s) left running at the API: %s",
                len(abandoned),
                ", ".join(abandoned),
            )
        except Exception as error:
            self.log.warning("on_kill could not list the abandoned runs: %s", error)


async def watch_runs(
    watch: RunWatch,
    *,
    get_batch: Callable[[str], Any],
    get_run: Callable[[str], Any],
    end_time: float,
    poll_interval: float,
    expected_seconds: float,
    sleep: Callable[[float], Any],
    log: Any,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Drive ``watch`` until it is ready, the deadline passes, or polling fails for good.

    ``get_batch``/``get_run`` may be coroutines (the trigger) or plain functions (the operator's
    synchronous path); the bookkeeping and the decisions are the same.
    """
    started = time.time() if started_at is None else started_at
    failures = 0
    while True:
        try:
            await _poll_once(watch, get_batch, get_run)
        except Exception as error:
            if _is_permanent_poll_error(error):
                return watch.event("error", f"Polling runs {', '.join(watch.awaited)} failed: {error}")
            failures += 1
            if failures >= MAX_CONSECUTIVE_POLL_FAILURES:
                return watch.event(
                    "error",
                    f"Polling failed {failures} times in a row ({error}); runs still awaited: "
                    f"{', '.join(watch.awaited)}",
                )
            log.warning("Polling FLUX runs failed (%s); will poll again", error)
        else:
            failures = 0
        if watch.ready():
            return watch.event("success", f"{len(watch.finished)} run(s) finished; {len(watch.awaited)} awaited")
        now = time.time()
        if now >= end_time:
            return watch.event("timeout", f"Runs {', '.join(watch.awaited)} did not finish before the deadline")
        interval = adaptive_poll_interval(
            watch.pending_statuses(), base=poll_interval, elapsed=now - started, expected=expected_seconds
        )
        result = sleep(max(0.0, min(interval, end_time - now)))
        if asyncio.iscoroutine(result):
            await result


def wait_in_worker(
    hook: FluxHook,
    watch: RunWatch,
    *,
    end_time: float,
    poll_interval: float,
    expected_seconds: float,
    log: Any,
    started_at: float | None = None,
) -> dict[str, Any]:
    """The trigger's wait, run in the worker with the hook's sync client (non-deferrable tasks)."""
    return asyncio.run(
        watch_runs(
            watch,
            get_batch=hook.get_batch,
            get_run=hook.get_run,
            end_time=end_time,
            poll_interval=poll_interval,
            expected_seconds=expected_seconds,
            sleep=time.sleep,
            log=log,
            started_at=started_at,
        )
    )


async def _poll_once(watch: RunWatch, get_batch: Callable[[str], Any], get_run: Callable[[str], Any]) -> None:
    for batch_id in watch.batches_to_poll():
        watch.observe_batch(await _maybe_await(get_batch(batch_id)))
    for run_id in watch.runs_to_poll():
        watch.observe_run(await _maybe_await(get_run(run_id)))


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


# -- small pure pieces ---------------------------------------------------------------------------------


def output_publisher(output_uri: str | None, aws_conn_id: str | None) -> Publisher:
    """Where an operator stores images: its ``output_uri``, else ``[flux2] default_output_uri``, else
    the folder ``$AIRFLOW_HOME/flux2-images`` on the worker (logged as a warning: fine on one machine,
    not where workers do not share a disk)."""
    uri = output_uri or conf.get("flux2", "default_output_uri", fallback=None)
    if not uri:
        from airflow.configuration import AIRFLOW_HOME

        uri = Path(AIRFLOW_HOME, DEFAULT_OUTPUT_FOLDER).resolve().as_uri()
        log.warning(
            "No output_uri and no [flux2] default_output_uri: storing images in %s on this worker; "
            "set one of them to s3://bucket/prefix when workers do not share a disk",
            uri,
        )
    return publisher_for(uri, aws_conn_id=aws_conn_id)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise FluxValidationError(field=name, value=value, allowed=" | ".join(allowed))


def _map_index(ti: Any) -> int:
    return -1 if ti.map_index is None else int(ti.map_index)


def task_identity(context: Context) -> dict[str, Any]:
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "map_index": ti.map_index}


def task_location(context: Context) -> BatchLocation:
    ti = context["ti"]
    return BatchLocation(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=_map_index(ti))


def run_metadata(context: Context) -> dict[str, Any]:
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "map_index": ti.map_index}


def _batch_key(images: list[PlannedImage]) -> str:
    """A batch's Idempotency-Key: fixed by its images' keys (chunks are fixed by index, not timing)."""
    digest = hashlib.sha256("\x1f".join(i.idempotency_key for i in images).encode()).hexdigest()
    return f"flux2-batch-{digest[:43]}"


def _cents(amount: Decimal) -> str:
    """``1.11`` for a progress line; exact amounts stay in records, manifests and the summary."""
    return f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):.2f}"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


__all__ = ["BaselineChunkedOperator", "BaselineWaitTrigger"]
