"""FluxGenerateImageOperator: plan → defer → collect → report.

The story of a task:

1. **Plan** (:meth:`execute`) — validate every item, price the batch, check the budget, log one plan
   line; over budget → fail, nothing sent.
2. **Defer once** — :class:`~airflow_provider_flux2.triggers.flux.FluxGenerationTrigger` runs the
   window on the triggerer: submits, polls one request per batch, tops up the moment slots free,
   resubmits failed runs, stops at the budget, and fires once when every job is terminal. A
   non-deferrable task runs the same window in the worker.
3. **Collect** (:meth:`execute_complete`) — every finished job at once in a bounded pool: one
   ``/items`` read per batch (fresh URLs), download, verify, store.
4. **Report** — manifest and gallery beside the images, one small record per image as the return value.

A batch enters a worker twice. Every image's ``Idempotency-Key`` derives from its Airflow identity and
its request, so a retry, a cleared task or a rebuilt trigger replays the runs instead of paying again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1: the Task SDK exposes conf from 3.2 on
    from airflow.configuration import conf  # type: ignore[assignment]

from airflow_provider_flux2 import links, metrics, protocol
from airflow_provider_flux2.arguments import (
    DEFAULT_ON_FAILURE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    VARIANT_ONLY,
    check_operator_arguments,
    is_templated,
    renamed_argument,
)
from airflow_provider_flux2.exceptions import (
    FluxError,
    FluxModerationError,
    FluxRunFailedError,
    FluxTimeoutError,
    FluxValidationError,
    RunningBudgetError,
)
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.jobs import (
    ITEM_META,
    Collected,
    FailurePolicy,
    ModerationPolicy,
    Plan,
    Progress,
    check_balance,
    collect,
    default_chunk_size,
    earlier_runs,
    merge_item,
    new_job,
    output_publisher,
    run_metadata,
    task_identity,
    task_location,
)
from airflow_provider_flux2.jobs import records as records_of
from airflow_provider_flux2.loops import run_window
from airflow_provider_flux2.models import GENERATION_PARAMS, ImageRecord, build_input, resolve_variant
from airflow_provider_flux2.outputs import STATE_KEY, XCOM_GALLERY, XCOM_MANIFEST, FluxImagesLink
from airflow_provider_flux2.pricing import Budget, billed_total, cents, estimate, usd
from airflow_provider_flux2.references import ReferenceResolver
from airflow_provider_flux2.storage import BatchLocation
from airflow_provider_flux2.storage.report import write_batch_report
from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger
from airflow_provider_flux2.window import JobState, duration, log_kill, rows_of

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_flux2.storage.base import Publisher

#: Past the deadline, the task waits this much longer for the trigger's event before Airflow gives up.
DEFER_GRACE = 300.0


class FluxGenerateImageOperator(BaseOperator):
    """Generate one or many images with FLUX 2 and store them; returns small records, never bytes.

    :param prompt: one prompt (text, or a dict for a JSON-structured prompt).
    :param prompts: many prompts: strings, or dicts with ``prompt`` and per-item parameters.
    :param model: ``pro`` (default from the connection), ``flex``, ``max``, ``turbo`` or a full model id.
    :param image_size: a preset, ``{"width", "height"}`` or ``"WxH"`` (default ``landscape_4_3``).
    :param output_format: ``jpeg`` or ``png``.
    :param seed: seed for reproducible output (per-item seeds override it).
    :param safety_tolerance: ``"1"``..``"5"``.
    :param enable_safety_checker: let the API flag NSFW output.
    :param image_urls: reference images (at most 8; klein 4): http(s) or ``data:`` URLs,
        ``s3://bucket/key`` (sent presigned, through ``aws_conn_id``) or local files (sent inline,
        up to 4 MiB); each priced at its real size, read from its header while planning.
    :param colors: HEX colours (``#RRGGBB``) woven into the prompt.
    :param num_inference_steps: flex and klein only.
    :param guidance_scale: flex and klein only.
    :param flux_conn_id: the ``flux2`` connection.
    :param output_uri: where images go: ``file:///abs/path`` or ``s3://bucket/prefix``.
    :param aws_conn_id: Airflow AWS connection for ``s3://`` (else boto3's default chain).
    :param deferrable: wait on the triggerer instead of holding a worker slot.
    :param max_in_flight: most runs at the API at once (the window).
    :param batch_size: images per batch request (default ``max_in_flight // 4``); 1 means single runs.
    :param use_batches: use the batch endpoint when the model supports it.
    :param poll_interval: shortest pause between polls (seconds); the real interval adapts.
    :param timeout: seconds the whole task may wait for its runs.
    :param budget_usd: refuse the plan if its estimated cost is over this, and stop submitting if the
        spend the API reports would pass it (default: the connection's ``max_task_spend_usd``).
    :param on_budget_stop: ``fail`` (after storing what was made) or ``record`` (keep the images not
        sent as ``pending`` records) when the running budget stopped the submissions.
    :param durable: re-attach a retry to the runs an earlier try paid for (the same keys; the
        default). ``False``: every try starts over under new keys, and pays again.
    :param on_moderation: ``fail`` (after storing the rest), ``skip`` (leave moderated images out;
        skip the task if nothing is left) or ``record`` (keep them, marked ``moderated``).
    :param on_failure: ``fail`` (after storing the rest) or ``record`` (keep them, marked ``failed``) for
        runs that still fail after ``resubmit_failed``. The same name as the quality step's policy.
    :param on_run_failure: deprecated name of ``on_failure``.
    :param resubmit_failed: times a failed (unbilled, non-moderation) run is submitted again.
    :param progress_interval: at most one progress line per this many seconds.
    :param write_manifest: write ``manifest.json``/``.csv`` and the gallery beside the images.
    :param prompt_source: where the prompts came from (``s3://…/catalogue.csv``, ``file:///…``), for lineage.
    :param output_name_template: how stored images are named, e.g. ``{id}-{seed}`` (fields ``{index}``,
        ``{id}``, ``{seed}``, ``{hash}``; default ``[flux2] output_name_template``, ``{index}-{id}-{hash}``).
    :param insufficient_balance_action: ``fail`` (default: a plan that costs more than the organisation's
        credit balance is refused before the first submit, both figures in the error) or ``warn``. A retry
        only warns: what an earlier try paid for is replayed, not billed again.
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
        "output_name_template",
    )
    template_fields_renderers = {"prompts": "json", "prompt": "json"}
    operator_extra_links = (FluxImagesLink(),)
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
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        budget_usd: str | float | Decimal | None = None,
        on_budget_stop: FailurePolicy = "fail",
        durable: bool = True,
        on_moderation: ModerationPolicy = "fail",
        on_failure: FailurePolicy = DEFAULT_ON_FAILURE,
        on_run_failure: FailurePolicy | None = None,
        resubmit_failed: int = 2,
        progress_interval: float = 5.0,
        write_manifest: bool = True,
        prompt_source: str | None = None,
        output_name_template: str | None = None,
        insufficient_balance_action: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.insufficient_balance_action = insufficient_balance_action
        self.prompt_source = prompt_source
        self.output_name_template = output_name_template
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
        self.on_budget_stop = on_budget_stop
        self.durable = durable
        self.on_moderation = on_moderation
        self.on_failure = renamed_argument(
            type(self).__name__, "on_run_failure", "on_failure", on_run_failure, on_failure, DEFAULT_ON_FAILURE
        )
        self.resubmit_failed = resubmit_failed
        self.progress_interval = progress_interval
        self.write_manifest = write_manifest
        check_operator_arguments(self)  # typed errors for bad arguments (templated ones: again in plan)
        _check_choice("on_moderation", on_moderation, ("fail", "skip", "record"))
        _check_choice("on_failure" if on_run_failure is None else "on_run_failure", self.on_failure, ("fail", "record"))
        _check_choice("on_budget_stop", on_budget_stop, ("fail", "record"))
        _check_choice("insufficient_balance_action", insufficient_balance_action, ("fail", "warn"))
        if max_in_flight < 1:
            raise FluxValidationError(field="max_in_flight", value=max_in_flight, allowed="an integer >= 1")
        if batch_size is not None and not 1 <= batch_size <= protocol.MAX_BATCH_ITEMS:
            raise FluxValidationError(
                field="batch_size", value=batch_size, allowed=f"an integer 1..{protocol.MAX_BATCH_ITEMS}"
            )
        if not self._prompts_at_run_time:
            self._check_items()

    #: Set by ``@task.flux2``, whose prompts are the function's return value: checked by the plan.
    _prompts_at_run_time = False

    def _check_items(self) -> None:
        """The prompts as written in the DAG, each checked as the plan will build it (with the model when
        the task or the item names one), so a typo fails the DAG's parse, not the night. Templated values
        are left to the plan, which checks everything again once they are rendered."""
        if any(v is not None and is_templated(v) for v in (self.prompt, self.prompts, self.model)):
            return
        items = self._items()
        default = resolve_variant(self.model) if self.model else None
        for index, (item, _) in enumerate(items):
            model = item.pop("model", None)
            if model is not None and is_templated(model):
                continue
            variant = resolve_variant(model) if model else default
            known = {k: v for k, v in item.items() if v is None or not is_templated(v)}
            if variant is None:  # the connection's model, known at run time: leave what depends on it
                known = {k: v for k, v in known.items() if k not in VARIANT_ONLY}
            with self._naming_item(index, len(items)):
                build_input(variant, **known)

    @contextlib.contextmanager
    def _naming_item(self, index: int, count: int) -> Iterator[None]:
        """An invalid item of a list fails as ``prompts[index]: …`` (unless the operator's own argument is bad)."""
        try:
            yield
        except FluxValidationError as error:
            if count > 1 and not self._operator_level(error.field, index):
                error.args = (f"prompts[{index}]: {error.args[0]}",)
            raise

    @cached_property
    def hook(self) -> FluxHook:
        return FluxHook(self.flux_conn_id)

    # -- the story ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Plan, log the plan line, and hand the window to the trigger (or run it here)."""
        plan = self.plan(context)
        balance = self.hook.get_balance()
        self.log.info("%s", plan.line(self.max_in_flight, balance=balance))
        check_balance(
            plan,
            balance,
            action=self.insufficient_balance_action if _first_try(context) else "warn",
            log=self.log,
        )
        if plan.budget is None:
            self.log.warning(
                "No budget: this task may spend $%s (its estimate; more if the API bills more). Set budget_usd, "
                "or max_task_spend_usd on connection %r, to cap it",
                usd(plan.estimate.total),
                self.flux_conn_id,
            )
        publisher = self._publisher()
        # The extra link resolves from the deferral on: the folder now, the gallery at the end.
        links.remember_gallery(context["ti"], self, XCOM_GALLERY, publisher.folder_uri(task_location(context)))
        trigger = self._trigger(context, plan)
        trigger.attached = self._earlier_runs(context, plan)
        if self.deferrable:
            self.defer(
                trigger=trigger,
                method_name="execute_complete",
                timeout=timedelta(seconds=max(60.0, trigger.options["end_time"] - time.time() + DEFER_GRACE)),
            )
        self._live = trigger.window()
        self._killable = (context, plan, publisher)  # for on_kill: the night's spend goes on record
        event = run_window(
            self.hook,
            self._live,
            metadata=trigger.metadata,
            logger=self.log,
            progress_interval=self.progress_interval,
        )
        return self._complete(context, plan, event, publisher)

    def on_kill(self) -> None:
        """The task is killed while its window runs here (not deferred): say what is left at the API,
        and write the manifest of what the try paid for so far (runs at the API, finished but not yet
        stored), so a killed try's spend is on record even when its retry never comes.

        Runflow has no public cancel, so the runs already sent finish and bill; the log names them
        (a deferred task's trigger does the same in its ``on_kill``). Best effort: never raises.
        """
        window = getattr(self, "_live", None)
        log_kill(window, self.log)
        killable = getattr(self, "_killable", None)
        if window is None or killable is None:
            return
        try:
            context, plan, publisher = killable
            states = rows_of(window.event(time.time()))
            self._account_failed_night(context, plan, states, {}, publisher, task_location(context))
        except Exception as error:  # never fail the kill
            self.log.warning("on_kill could not write the killed try's manifest: %s", error)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Back from the triggerer: collect every finished job, store, report."""
        plan = self.plan(context, check_budget=False)  # what was sent is paid for: collect it whatever the prices
        return self._complete(context, plan, event or {"status": "error", "message": "no event"}, self._publisher())

    # -- 1. plan --------------------------------------------------------------------------------------

    def plan(self, context: Context, *, check_budget: bool = True) -> Plan:
        """Validate and price every item; refuse the plan if it is over budget. Sends nothing."""
        check_operator_arguments(self, rendered=True)
        items = self._items()
        default_variant = resolve_variant(self.model) if self.model else self.hook.default_model
        identity = task_identity(context, durable=self.durable)
        references = ReferenceResolver(
            aws_conn_id=self.aws_conn_id, valid_for=self.timeout, memory=context.get("task_state_store")
        )
        jobs = []
        for index, (item, meta) in enumerate(items):
            variant = resolve_variant(item.pop("model", None) or default_variant)
            with self._naming_item(index, len(items)):
                request = build_input(variant, **item)
                # Identity from the references as written; the request sent carries fetchable ones.
                job = references.attach(
                    new_job(identity, index, variant, request, meta=meta, routes=self.hook.config.edit_models)
                )
            jobs.append(job)
        cost = estimate([(j.model, j.request) for j in jobs], self.hook.prices)
        budget = self._budget()
        if budget is not None and check_budget:
            budget.check(cost)
        chunk = default_chunk_size(self.max_in_flight, self.batch_size, self.use_batches)
        return Plan.of(jobs, cost, chunk, budget)

    def _operator_level(self, field: str, index: int) -> bool:
        """Whether an invalid ``field`` of item ``index`` is the operator's own parameter, not the item's."""
        name = field.split(".")[0].split("[")[0]
        entry = self.prompts[index] if self.prompts else None
        own = isinstance(entry, dict) and name in entry
        return name in self._PARAM_NAMES and getattr(self, name, None) is not None and not own

    def _budget(self) -> Budget | None:
        """The task's ``budget_usd``, else the connection's ``max_task_spend_usd``, else none."""
        budget = Budget.of(self.budget_usd)
        if budget is None and self.hook.config.max_task_spend is not None:
            budget = Budget(self.hook.config.max_task_spend, scope=f"connection {self.flux_conn_id!r} task")
        return budget

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
        for index, entry in enumerate(raw):
            unknown = set(entry) - set(self._PARAM_NAMES) - {"model", *ITEM_META} if isinstance(entry, dict) else ()
            if isinstance(entry, dict) and "prompt" in entry and unknown:
                raise FluxValidationError(
                    field=f"prompts[{index}].{sorted(unknown)[0]}",
                    value=entry[sorted(unknown)[0]],
                    allowed=f"per-item keys {', '.join((*self._PARAM_NAMES, 'model', *ITEM_META))}",
                )
        return [merge_item(entry, shared) for entry in raw]

    # -- 2. the window (run by the trigger, or here) ----------------------------------------------------

    def _trigger(self, context: Context, plan: Plan) -> FluxGenerationTrigger:
        return FluxGenerationTrigger.for_specs(
            plan.specs(),
            flux_conn_id=self.flux_conn_id,
            options={
                "max_in_flight": self.max_in_flight,
                "chunk_size": plan.chunk_size,
                "use_batches": self.use_batches,
                "resubmit_failed": self.resubmit_failed,
                "budget_usd": str(plan.budget.limit) if plan.budget is not None else None,
                "end_time": time.time() + self.timeout,
                "poll_interval": self.poll_interval,
                "progress_interval": self.progress_interval,
            },
            metadata=run_metadata(context),
        )

    def _earlier_runs(self, context: Context, plan: Plan) -> dict[str, list[Any]]:
        """The runs an earlier try of this task sent (recorded in ``task_state_store``), to wait for by id:
        a task cleared or retried days later must not depend on the API still remembering its keys."""
        store = context.get("task_state_store") if self.durable else None
        progress = Progress.load(store.get(STATE_KEY), plan, self.log) if store is not None else None
        if progress is None:
            return {}
        return earlier_runs(self.hook, plan, progress, self.log)

    # -- 3. collect -----------------------------------------------------------------------------------

    def _complete(
        self, context: Context, plan: Plan, event: dict[str, Any], publisher: Publisher
    ) -> list[dict[str, Any]]:
        started = time.time()
        states = rows_of(event)
        location = task_location(context)
        store = context.get("task_state_store") if self.durable else None
        progress = Progress.load(store.get(STATE_KEY), plan, self.log) if store is not None else None

        def checkpoint(done: Collected) -> None:  # a crash mid-collect keeps what is already stored
            if store is not None:
                store.set(STATE_KEY, Progress.after(plan, states, done.records, progress).model_dump(mode="json"))

        partial = Collected()
        try:
            collected = self._collect(context, plan, states, publisher, location, progress, checkpoint, partial)
        except Exception:  # an image could not be stored: the night's spend is on record before failing
            self._account_failed_night(context, plan, states, partial.records, publisher, location)
            raise
        if progress is not None:
            self.log.info(
                "An earlier try stored this plan's images: the API replayed its runs (same keys, nothing billed "
                "again); %d object(s) were intact, %d missing or changed and stored again%s",
                len(collected.kept),
                len(collected.restored),
                f" ({', '.join(f'#{i}' for i in collected.restored[:20])})" if collected.restored else "",
            )
        checkpoint(collected)
        status = event.get("status")
        if status != "success":
            pending = [s.run_id for s in states.values() if s.phase in ("in_flight", "read") and s.run_id]
            self.log.warning("Stored %d finished image(s) before failing", len(collected.records))
            self._account_failed_night(context, plan, states, collected.records, publisher, location)
            if status == "timeout":
                raise FluxTimeoutError(
                    f"{event.get('message')} (timeout {self.timeout:.0f}s); a retry replays these runs "
                    "under the same keys",
                    run_ids=[r for r in pending if r],
                )
            raise FluxError(f"The FLUX window failed: {event.get('message')}")
        night = records_of(plan, states, collected.records)
        self.log.info("Collected %d image(s) in %s", len(collected.records), duration(time.time() - started))
        return self._finish(context, plan, night, publisher, location, event.get("budget_stop"))

    def _collect(
        self,
        context: Context,
        plan: Plan,
        states: dict[int, JobState],
        publisher: Publisher,
        location: BatchLocation,
        progress: Progress | None,
        checkpoint: Callable[[Collected], None] | None = None,
        into: Collected | None = None,
    ) -> Collected:
        return collect(
            self.hook,
            plan,
            states,
            publisher,
            location,
            on_moderation=self.on_moderation,
            progress=progress,
            logger=self.log,
            checkpoint=checkpoint,
            into=into,
        )

    def _account_failed_night(
        self,
        context: Context,
        plan: Plan,
        states: dict[int, JobState],
        collected: dict[int, ImageRecord],
        publisher: Publisher,
        location: BatchLocation,
    ) -> None:
        """Before a failed window fails the task: write the manifest (whatever ``write_manifest`` says)
        and emit the metrics, so a failed night's spend is on record — what was stored and billed, and
        what was still running at the API or never sent. Best effort: the window's error is the one raised."""
        try:
            night = records_of(plan, states, collected)
            spent, _ = billed_total(night)
            records = [r.to_xcom() for r in night]
            uris = write_batch_report(publisher, location, records, self.hook.prices)
            context["ti"].xcom_push(key=XCOM_MANIFEST, value=uris["manifest_uri"])
            links.remember_gallery(context["ti"], self, XCOM_GALLERY, uris["gallery_uri"])
            metrics.images_finished(records, context, resubmitted=True)
            running = sum(1 for r in records if r.get("failure_code") == "STILL_RUNNING")
            self.log.warning(
                "The failed try's manifest: %s ($%s billed for %d stored image(s); %d run(s) still at the API)",
                uris["manifest_uri"],
                usd(spent),
                sum(1 for r in records if r.get("uri")),
                running,
            )
        except Exception as error:  # never hide the window's own error behind the report's
            self.log.warning("Could not write the failed try's manifest: %s", error)

    # -- 4. report ------------------------------------------------------------------------------------

    def _finish(
        self,
        context: Context,
        plan: Plan,
        night: list[ImageRecord],
        publisher: Publisher,
        location: BatchLocation,
        budget_stop: dict[str, str] | None,
    ) -> list[dict[str, Any]]:
        spent, billed_mp = billed_total(night)
        records = [record.to_xcom() for record in night]
        failures: dict[str, int] = {}
        for record in records:
            if record["status"] in ("failed", "moderated", "skipped", "pending"):
                kind = record.get("failure_code") or ("NSFW_FLAGGED" if record.get("nsfw") else "UNKNOWN")
                failures[kind] = failures.get(kind, 0) + 1
        done = sum(1 for r in records if r["status"] in ("succeeded", "moderated", "skipped", "failed"))
        failed = sum(1 for r in records if r["status"] == "failed")
        limit = f" of ${cents(plan.budget.limit)} budget" if plan.budget is not None else " spent"
        self.log.info("%d/%d done · %d failed · $%s%s · 0 in flight", done, len(records), failed, cents(spent), limit)
        self.log.info(
            "Finished %d image(s): %d stored, failures by kind %s, %d MP billed, $%s (estimate $%s)",
            len(records),
            sum(1 for r in records if r.get("uri")),
            failures or "none",
            billed_mp,
            usd(spent),
            usd(plan.estimate.total),
        )
        stopped = budget_stop is not None and self.on_budget_stop == "fail"
        # A task about to fail keeps its manifest whatever write_manifest says: its spend is on record.
        self._write_report(context, publisher, location, records, failing=stopped or self._fails(records))
        metrics.images_finished(records, context, resubmitted=True)
        if stopped and budget_stop is not None:
            raise RunningBudgetError(
                committed=Decimal(budget_stop["committed"]),
                next_cost=Decimal(budget_stop["next"]),
                limit=Decimal(budget_stop["limit"]),
                not_sent=sum(1 for r in records if r["status"] == "pending"),
            )
        self._raise_for_outcome(records)
        kept = [r for r in records if r["status"] != "skipped"]
        if not kept and self.on_moderation == "skip":
            from airflow.exceptions import AirflowSkipException

            raise AirflowSkipException("Every image was moderated; on_moderation='skip'")
        return kept

    def _write_report(
        self,
        context: Context,
        publisher: Publisher,
        location: BatchLocation,
        records: list[dict[str, Any]],
        *,
        failing: bool = False,
    ) -> None:
        ti = context["ti"]
        folder = publisher.folder_uri(location)
        gallery = folder
        if self.write_manifest or failing:
            uris = write_batch_report(publisher, location, records, self.hook.prices)
            gallery = uris["gallery_uri"]
            ti.xcom_push(key=XCOM_MANIFEST, value=uris["manifest_uri"])
            self.log.info("Manifest: %s · gallery: %s", uris["manifest_uri"], gallery)
        links.remember_gallery(ti, self, XCOM_GALLERY, gallery)

    def _fails(self, records: list[dict[str, Any]]) -> bool:
        """Whether :meth:`_raise_for_outcome` will fail the task on these records."""
        statuses = {r["status"] for r in records}
        return ("moderated" in statuses and self.on_moderation == "fail") or (
            "failed" in statuses and self.on_failure == "fail"
        )

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
        if failed and self.on_failure == "fail":
            first = failed[0]
            raise FluxRunFailedError(
                run_id=first["run_id"],
                status="failed",
                failure_code=first.get("failure_code"),
                failure_message=f"{len(failed)} image(s) failed after resubmission: "
                + ", ".join(f"#{r['index']} (run {r['run_id']}: {r.get('failure_code')})" for r in failed),
            )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage: the prompt source (when given) in, the output prefix (the same every run) out."""
        from airflow_provider_flux2.lineage import lineage

        output = self._publisher().base_uri
        return lineage(inputs=[self.prompt_source] if self.prompt_source else [], outputs=[output])

    def _publisher(self) -> Publisher:
        return output_publisher(self.output_uri, self.aws_conn_id, self.output_name_template)


# -- small pure pieces ---------------------------------------------------------------------------------


def _first_try(context: Context) -> bool:
    """Whether nothing of this task can have been paid for yet (its first try)."""
    ti = context.get("ti")
    return int(getattr(ti, "try_number", 1) or 1) <= 1


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise FluxValidationError(field=name, value=value, allowed=" | ".join(allowed))


__all__ = ["FluxGenerateImageOperator", "FluxImagesLink"]
