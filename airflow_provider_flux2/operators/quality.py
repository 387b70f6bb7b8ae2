"""FluxQualityCheckOperator: check a batch on its real bytes; fail, drop or regenerate what fails.

Regenerations are priced and checked against the budget before they are sent, carry idempotency
keys derived from the task and the image (so a retried task replays them instead of paying twice),
and are checked again like the originals — up to ``max_regenerations`` times per image.

Deferrable: a round of regenerations is waited for on the triggerer. When the task resumes it runs
again from the records it was given; every request it makes again carries the same idempotency key
(seeds are derived, not drawn), so the API replays the runs already made and nothing is paid twice.

With ``sentinel=True`` every stored image that passed its byte checks is also judged by Runflow
Sentinel (``POST /v1/evaluations``): priced from the job classes and checked against the budget
before anything is sent, sent and awaited through the same window as generation (on the triggerer
when deferrable), under keys derived from the task, the image and its attempt — a retried or cleared
task is answered with the verdicts already paid for. The verdict is one more check (``sentinel``),
so ``fail``, ``drop`` and ``regenerate`` act on it; regenerated images are judged again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1: the Task SDK exposes conf from 3.2 on
    from airflow.configuration import conf  # type: ignore[assignment]

from airflow_provider_flux2 import metrics
from airflow_provider_flux2 import sentinel as sentinel_api
from airflow_provider_flux2.arguments import (
    DEFAULT_MIN_PASS_RATE,
    DEFAULT_ON_FAILURE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    check_int,
    check_operator_arguments,
    check_pass_rate,
    is_templated,
)
from airflow_provider_flux2.exceptions import (
    BudgetExceededError,
    FluxError,
    FluxNotFoundError,
    FluxValidationError,
    percent,
)
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.jobs import (
    Job,
    new_job,
    output_publisher,
    record_for_run,
    run_metadata,
    run_outcome,
    store_image,
    task_identity,
    task_location,
)
from airflow_provider_flux2.loops import run_window
from airflow_provider_flux2.models import ImageRecord, RunStatus, records_from_xcom, utc_now_iso
from airflow_provider_flux2.pricing import Budget, billed_cost, usd
from airflow_provider_flux2.quality.policy import apply_failure_policy, pass_rate
from airflow_provider_flux2.quality.regeneration import RegenerationPlan, supersede
from airflow_provider_flux2.quality.sentinel import (
    EvaluationJob,
    SentinelGate,
    evaluation_spend,
    rejudged,
    with_verdict,
)
from airflow_provider_flux2.quality.suite import CheckSuite, failed_checks, read_each
from airflow_provider_flux2.references import ReferenceResolver, reference_kind
from airflow_provider_flux2.storage import uri_reader
from airflow_provider_flux2.storage.manifest import superseded_rows
from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger, finished_runs
from airflow_provider_flux2.window import JobSpec, expected_duration, log_kill, rows_of

if TYPE_CHECKING:
    from airflow.sdk import Context

XCOM_QUALITY = "flux_quality_summary"
#: Where the evaluations a task sent are remembered between tries (``task_state_store``, Airflow >= 3.3).
SENTINEL_MEMORY = "flux/sentinel"


class FluxQualityCheckOperator(BaseOperator):
    """Check generated images and apply a policy to the ones that fail.

    :param records: the batch's records (e.g. ``generate.output``); images are read from their ``uri``.
    :param checks: names or ``{"check": name, **options}`` dicts (``decodes``, ``format``, ``size``,
        ``not_blank``, ``nsfw``, ``near_duplicate``, ``quality_score``); ``None`` runs them all.
    :param on_failure: ``fail`` the task (the default, as in the generate operator), ``drop`` the failing
        images, or ``regenerate`` them with a new seed.
    :param min_pass_rate: with ``drop`` or ``regenerate``: fail the task (after writing its records and
        summary) when fewer than this share of the items end with an image that passed: ``0.9`` or
        ``"90%"`` (the default); ``0`` never fails. Stated in the plan line.
    :param max_regenerations: with ``regenerate``: how many times one image may be made again.
    :param on_exhausted: with ``regenerate``: ``drop`` or ``fail`` for images still failing at the end.
    :param budget_usd: with ``regenerate``: total spend allowed, the batch's billed cost included;
        regenerations that would go over it are refused before anything is sent.
    :param flux_conn_id: the ``flux2`` connection (regeneration).
    :param output_uri: where regenerated images are stored (``file://`` or ``s3://``).
    :param aws_conn_id: AWS connection for reading and writing ``s3://`` images.
    :param poll_interval: shortest pause between polls while regenerating (seconds).
    :param timeout: seconds to wait for one round of regenerations (or of Sentinel evaluations).
    :param deferrable: wait for regenerations (and evaluations) on the triggerer, holding no worker slot.
    :param sentinel: also have each stored image that passed its byte checks judged by Runflow Sentinel
        (``False``, the default, changes nothing). Its verdict is the ``sentinel`` check, kept whole on
        the record (``record.sentinel``) and in the manifest; it is billed per evaluation.
    :param sentinel_task_type: Sentinel's ``task_type`` (e.g. ``"product"``); an item's
        ``extra.sentinel_task_type`` wins. Required with ``sentinel=True`` unless every item has one.
    :param sentinel_task_description: Sentinel's ``task_description`` (the brief it judges against);
        an item's ``extra.sentinel_task_description`` wins.
    :param sentinel_min_pass_rate: the least ``weighted_pass_rate`` (``0.8`` or ``"80%"``) an image needs.
    :param sentinel_require_passed: whether ``overall_passed`` must be true (with neither this nor a
        minimum, verdicts are recorded but fail nothing).
    :param sentinel_job_class: the job class evaluations are sent under (``standard``).
    :param sentinel_reference_kind: the ``kind`` sent with each reference image (an item's
        ``extra.sentinel_reference_kind`` wins); none by default.
    :param sentinel_max_in_flight: most evaluations at the API at once.
    :param sentinel_resubmit_failed: times an evaluation that ends ``failed`` is sent again.
    """

    template_fields: Sequence[str] = (
        "records",
        "checks",
        "output_uri",
        "budget_usd",
        "aws_conn_id",
        "min_pass_rate",
        "sentinel_task_type",
        "sentinel_task_description",
        "sentinel_min_pass_rate",
    )
    template_fields_renderers = {"records": "json", "checks": "json"}
    ui_color = "#e8f5e9"
    #: Sentinel evaluations this try has sent (key → ``[id, attempt]``) and the price it read.
    _known: dict[str, list[Any]] | None = None
    _price: Decimal | None = None

    def __init__(
        self,
        *,
        records: Any,
        checks: list[str | dict[str, Any]] | None = None,
        on_failure: Literal["fail", "drop", "regenerate"] = DEFAULT_ON_FAILURE,
        min_pass_rate: float | str | Decimal = DEFAULT_MIN_PASS_RATE,
        max_regenerations: int = 1,
        on_exhausted: Literal["fail", "drop"] = "drop",
        budget_usd: str | float | Decimal | None = None,
        flux_conn_id: str = FluxHook.default_conn_name,
        output_uri: str | None = None,
        aws_conn_id: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        sentinel: bool = False,
        sentinel_task_type: str | None = None,
        sentinel_task_description: str | None = None,
        sentinel_min_pass_rate: float | str | Decimal | None = None,
        sentinel_require_passed: bool = True,
        sentinel_job_class: str = sentinel_api.DEFAULT_JOB_CLASS,
        sentinel_reference_kind: str | None = None,
        sentinel_max_in_flight: int = 8,
        sentinel_resubmit_failed: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sentinel = sentinel
        self.sentinel_task_type = sentinel_task_type
        self.sentinel_task_description = sentinel_task_description
        self.sentinel_min_pass_rate = sentinel_min_pass_rate
        self.sentinel_require_passed = sentinel_require_passed
        self.sentinel_job_class = sentinel_job_class
        self.sentinel_reference_kind = sentinel_reference_kind
        self.sentinel_max_in_flight = sentinel_max_in_flight
        self.sentinel_resubmit_failed = sentinel_resubmit_failed
        self.records = records
        self.checks = checks
        self.on_failure = on_failure
        self.min_pass_rate = min_pass_rate
        self.max_regenerations = max_regenerations
        self.on_exhausted = on_exhausted
        self.budget_usd = budget_usd
        self.flux_conn_id = flux_conn_id
        self.output_uri = output_uri
        self.aws_conn_id = aws_conn_id
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.deferrable = deferrable
        check_operator_arguments(self)  # typed errors for bad arguments (templated ones: again in execute)
        if on_failure not in ("fail", "drop", "regenerate"):
            raise FluxValidationError(field="on_failure", value=on_failure, allowed="fail | drop | regenerate")
        if on_exhausted not in ("fail", "drop"):
            raise FluxValidationError(field="on_exhausted", value=on_exhausted, allowed="fail | drop")
        # Fail on a bad check list at parse time, not at 3 a.m. (templated lists are checked at run time).
        if isinstance(checks, list):
            CheckSuite.from_config(checks)
        if sentinel:
            self._gate(rendered=False)

    @cached_property
    def hook(self) -> FluxHook:
        return FluxHook(self.flux_conn_id)

    def execute(self, context: Context) -> list[dict[str, Any]]:
        check_operator_arguments(self, rendered=True)
        records = records_from_xcom(self.records)
        suite = CheckSuite.from_config(self.checks)
        read = uri_reader(aws_conn_id=self.aws_conn_id)
        budget = Budget.of(self.budget_usd)
        min_pass_rate = check_pass_rate("min_pass_rate", self.min_pass_rate)
        gate = self._gate(rendered=True) if self.sentinel else None
        price = self._sentinel_price(gate) if gate is not None else None
        self.log.info("%s", self._plan_line(records, suite, min_pass_rate, budget, gate, price))
        regenerated = 0
        rounds = 0
        while True:
            records = suite.run(read_each(records, read)).records
            if gate is not None and price is not None:
                records = self._judge(context, gate, price, records, budget)
            outcome = apply_failure_policy(
                records,
                self.on_failure,
                max_regenerations=self.max_regenerations,
                on_exhausted=self.on_exhausted,
                budget=budget,
                spent=_spent(records) if gate is not None else None,
                prices=self.hook.prices if self.on_failure == "regenerate" else None,
            )
            records = outcome.records
            if outcome.finished or outcome.plan is None:
                break
            rounds += 1
            plan = outcome.plan
            judged = (price or Decimal("0")) * len(plan.items) if gate is not None else Decimal("0")
            if budget is not None and judged:
                # Each regenerated image is judged again: its evaluation is in the round's price.
                try:
                    budget.check(plan.total + judged, spent=plan.spent)
                except BudgetExceededError as error:
                    error.args = (
                        f"Regenerating {len(plan.items)} image(s) (${usd(plan.total)}) and judging them again "
                        f"(${usd(judged)}): {error.args[0]}",
                    )
                    raise
            self.log.info(
                "Round %d: regenerating %d image(s) for $%s%s (spent so far $%s%s)",
                rounds,
                len(plan.items),
                usd(plan.total),
                f" and judging them again for ${usd(judged)}" if judged else "",
                usd(plan.spent),
                f", budget ${usd(budget.limit)}" if budget else "",
            )
            replacements = self._regenerate(context, plan, records)
            metrics.images_finished([r.to_xcom() for r in replacements], context)
            regenerated += len(replacements)
            records = supersede(records, replacements)
        summary = _summary(records, suite, regenerated, gate, price)
        rate = pass_rate(records)
        summary.update(pass_rate=str(rate.rate.quantize(Decimal("0.0001"))), min_pass_rate=str(min_pass_rate))
        judged_all = summary.get("sentinel") or {}
        self.log.info(
            "Quality: %d checked · %d passed · %d dropped · %d regenerated (%d replaced)%s · $%s billed in all",
            summary["checked"],
            summary["passed"],
            summary["dropped"],
            regenerated,
            summary["superseded"],
            f" · Sentinel {judged_all['evaluated']} judged, {judged_all['failed']} failed, ${judged_all['cost_usd']}"
            if judged_all
            else "",
            summary["total_cost_usd"],
        )
        context["ti"].xcom_push(key=XCOM_QUALITY, value=summary)
        if self.on_failure != "fail":
            rate.check(min_pass_rate)
        return [r.to_xcom() for r in records]

    def _plan_line(
        self,
        records: list[ImageRecord],
        suite: CheckSuite,
        min_pass_rate: Decimal,
        budget: Budget | None,
        gate: SentinelGate | None = None,
        price: Decimal | None = None,
    ) -> str:
        """What the step will do, before it reads an image: checks, Sentinel and its price, policy, and
        the pass rate it asks."""
        items = len({r.index for r in records})
        if self.on_failure == "fail":
            verdict = "any failing image fails the task"
        else:
            needed = math.ceil(min_pass_rate * items)
            verdict = f"min_pass_rate {percent(min_pass_rate)} (the task fails below {needed} of {items} passing)"
        sentinel = ""
        if gate is not None and price is not None:
            stored = sum(1 for r in records if r.status == "succeeded" and r.uri)
            sentinel = (
                f" · Sentinel {gate.job_class} at ${usd(price)} each (up to {stored} evaluation(s), "
                f"${usd(price * stored)}; gate: {gate.describe()})"
            )
        regenerate = (
            f" · up to {self.max_regenerations} regeneration(s) per image"
            + (" (each judged again)" if sentinel else "")
            + (f", budget ${usd(budget.limit)}" if budget else "")
            if self.on_failure == "regenerate"
            else ""
        )
        if budget is not None and self.on_failure != "regenerate" and gate is not None:
            regenerate = f" · budget ${usd(budget.limit)}"
        names = ", ".join(check.name for check in suite.checks)
        return (
            f"Quality plan: {items} item(s) · checks {names}{sentinel} · on_failure={self.on_failure}{regenerate} · "
            f"{verdict}"
        )

    # -- regeneration ---------------------------------------------------------------------------------

    def _regenerate(self, context: Context, plan: RegenerationPlan, batch: list[ImageRecord]) -> list[ImageRecord]:
        """Submit a round of regenerations, wait for them, store them; return their records."""
        # A new image is the same catalogue item: it keeps the item's id and source hash (its name, the refresh).
        meta = {r.index: {**r.extra, "source_hash": r.source_hash} for r in batch if r.status == "succeeded"}
        publisher = output_publisher(self.output_uri, self.aws_conn_id)
        location = task_location(context)
        identity = task_identity(context)
        images: list[Job] = []
        references = ReferenceResolver(
            aws_conn_id=self.aws_conn_id, valid_for=self.timeout, memory=context.get("task_state_store")
        )
        for item in plan.items:
            variant, request = self.hook.build_request(item.model, prompt=item.prompt, **item.params)
            item_meta = {k: v for k, v in meta.get(item.index, {}).items() if v is not None}
            job = new_job(
                identity,
                item.index,
                variant,
                request,
                item=f"{item.index}/{item.attempt}",
                meta=item_meta,
                routes=self.hook.config.edit_models,
            )
            images.append(references.attach(job))  # s3:// and local references made fetchable
        submitted_at = utc_now_iso()
        run_ids = [
            self.hook.submit(
                image.request,
                model=image.model,
                idempotency_key=image.idempotency_key,
                client_ref=image.client_ref,
                metadata=run_metadata(context),
            ).id
            for image in images
        ]
        finished = self._wait(run_ids, images)
        records = []
        for item, image, run_id, cost in zip(plan.items, images, run_ids, plan.estimate.items, strict=True):
            run = self.hook.get_run(run_id)
            record = record_for_run(
                image,
                cost,
                run,
                attempt=item.attempt,
                batch_id=None,
                submitted_at=submitted_at,
                seen=finished.get(run_id, {}),
                log=self.log,
            )
            if run.status_code == RunStatus.SUCCEEDED:
                store_image(self.hook, publisher, location, run, image, record)
            record.status = run_outcome(run)
            records.append(record)
        return records

    def _wait(self, run_ids: list[str], images: list[Job]) -> dict[str, dict[str, Any]]:
        expected = max(expected_duration(i.request.width, i.request.height) for i in images)

        def waiting_for(ids: list[str]) -> FluxGenerationTrigger:
            return FluxGenerationTrigger.waiting_for(
                ids,
                flux_conn_id=self.flux_conn_id,
                expected_seconds=expected,
                options={"end_time": time.time() + self.timeout, "poll_interval": self.poll_interval},
            )

        if not self.deferrable:
            self._live = waiting_for(run_ids).window()
            event = run_window(self.hook, self._live, metadata=None, logger=self.log, progress_interval=-1)
            _raise_unless_done(event)
            return finished_runs(event)
        # Runs already finished (a resumed task replays its earlier rounds) need no wait at all.
        runs = [self.hook.get_run(run_id) for run_id in run_ids]
        awaited = [run.id for run in runs if not run.terminal]
        if awaited:
            self.log.info("Waiting on the triggerer for %d regenerated image(s)", len(awaited))
            self.defer(
                trigger=waiting_for(awaited),
                method_name="execute_complete",
                kwargs=self._resume_kwargs(),
                timeout=timedelta(seconds=self.timeout + 300),
            )
        return {run.id: {"status": run.status_code.value, "completed_at": run.completed_at} for run in runs}

    def on_kill(self) -> None:
        """Killed while waiting here for regenerations: name the runs left at the API (they bill)."""
        log_kill(getattr(self, "_live", None), self.log)

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        evaluations: dict[str, list[Any]] | None = None,
        evaluation_keys: list[str] | None = None,
        sentinel_price: str | None = None,
    ) -> list[dict[str, Any]]:
        """Back from the triggerer: run again; the finished round is replayed, not paid again.

        :param evaluations: Sentinel evaluations already sent by this try (key → ``[id, attempt]``),
            read by id instead of waited for again (where the deferral kept them).
        :param evaluation_keys: unused (the event names its keys); kept for deferrals made by earlier versions.
        :param sentinel_price: the evaluation price this try read (cached for the task).
        """
        event = event or {"status": "error", "message": "no event from the trigger"}
        self._known = {k: list(v) for k, v in (evaluations or {}).items()}
        if sentinel_price is not None:
            self._price = Decimal(sentinel_price)
        keys = event.get("keys")
        if not isinstance(keys, dict):  # a regeneration round's event
            _raise_unless_done(event)
            return self.execute(context)
        self._learn(context, event, {int(i): str(k) for i, k in keys.items()})
        if event.get("status") != "success":
            raise FluxError(f"Sentinel evaluations did not complete: {event.get('message')}")
        return self.execute(context)

    # -- Sentinel ----------------------------------------------------------------------------------------

    def _gate(self, *, rendered: bool) -> SentinelGate:
        """The Sentinel gate the arguments ask for (checked at parse time, templated ones when rendered)."""

        def known(value: Any) -> bool:
            return value is not None and (rendered or not is_templated(value))

        rate = self.sentinel_min_pass_rate
        minimum = check_pass_rate("sentinel_min_pass_rate", rate) if known(rate) else None
        for name in ("sentinel_max_in_flight", "sentinel_resubmit_failed"):
            check_int(name, getattr(self, name), 1 if name.endswith("flight") else 0, 1000)
        if not isinstance(self.sentinel_job_class, str) or not self.sentinel_job_class.strip():
            raise FluxValidationError(field="sentinel_job_class", value=self.sentinel_job_class, allowed="a job class")
        task_type = self.sentinel_task_type if known(self.sentinel_task_type) else None
        if task_type is not None and (not isinstance(task_type, str) or not task_type.strip()):
            raise FluxValidationError(field="sentinel_task_type", value=task_type, allowed="a non-empty task type")
        return SentinelGate(
            task_type=task_type,
            task_description=self.sentinel_task_description or None,
            min_pass_rate=minimum,
            require_passed=bool(self.sentinel_require_passed),
            job_class=self.sentinel_job_class.strip(),
            reference_kind=self.sentinel_reference_kind or None,
        )

    def _sentinel_price(self, gate: SentinelGate) -> Decimal:
        """One evaluation's price, read once per task: the connection's ``sentinel_price_usd``, else the
        API's job classes. Without a price nothing is sent (the cost must be known first)."""
        if self._price is not None:
            return self._price
        try:
            price = self.hook.evaluation_price(gate.job_class)
        except FluxNotFoundError:
            price = None
        if price is None:
            raise FluxValidationError(
                field="sentinel_price_usd",
                value=None,
                allowed=f"a price for Sentinel job class {gate.job_class!r}: GET /v1/evaluations/job-classes lists "
                f"none; set the extra sentinel_price_usd on connection {self.flux_conn_id!r}",
            )
        self._price = price
        return price

    def _judge(
        self, context: Context, gate: SentinelGate, price: Decimal, records: list[ImageRecord], budget: Budget | None
    ) -> list[ImageRecord]:
        """Have Sentinel judge every image that needs it (budget checked first); fold the verdicts in."""
        records = rejudged(gate, records)
        jobs = gate.plan(records, task_identity(context), self._image_urls(context))
        if not jobs:
            return records
        cost = price * len(jobs)
        spent = _spent(records)
        if budget is not None:
            try:
                budget.check(cost, spent=spent)
            except BudgetExceededError as error:
                error.args = (
                    f"Sentinel: {len(jobs)} evaluation(s) at ${usd(price)} each (${usd(cost)}) on top of the "
                    f"${usd(spent)} spent: {error.args[0]}",
                )
                raise
        self.log.info(
            "Sentinel: judging %d image(s) for $%s (%s at $%s each; spent so far $%s%s)",
            len(jobs),
            usd(cost),
            gate.job_class,
            usd(price),
            usd(spent),
            f", budget ${usd(budget.limit)}" if budget else "",
        )
        known = self._recall(context)
        found: dict[int, sentinel_api.Evaluation] = {}
        for position, job in enumerate(jobs):  # read again by id: what an earlier wait already saw end
            if job.key in known:
                try:
                    evaluation = self.hook.get_evaluation(str(known[job.key][0]))
                except FluxNotFoundError:  # the API no longer has it: asked again under its key
                    known.pop(job.key)
                    continue
                if evaluation.terminal:
                    found[position] = evaluation
        waiting = [position for position in range(len(jobs)) if position not in found]
        if waiting:
            found.update(self._wait_for_evaluations(context, [jobs[p] for p in waiting], waiting, price, budget, spent))
        for position, job in enumerate(jobs):
            verdict = gate.verdict(found.get(position), job, price=price)
            check = gate.check(verdict)
            records = [
                with_verdict(r, verdict, check)
                if (r.index, r.attempt) == (job.index, job.attempt) and r.status == "succeeded"
                else r
                for r in records
            ]
        return records

    def _wait_for_evaluations(
        self,
        context: Context,
        jobs: list[EvaluationJob],
        positions: list[int],
        price: Decimal,
        budget: Budget | None,
        spent: Decimal,
    ) -> dict[int, sentinel_api.Evaluation]:
        """Send and await ``jobs`` through the window: on the triggerer (the task resumes in
        :meth:`execute_complete`) or here; returns the evaluations that ended, by position."""
        known = self._known or {}
        specs = [
            JobSpec(
                index=i,
                model=job.body.get("job_class", "standard"),
                key=job.key,
                ref=job.ref,
                input=job.body,
                cost=price,
                expected=sentinel_api.EXPECTED_SECONDS,
            )
            for i, job in enumerate(jobs)
        ]
        attached = {
            str(i): [known[job.key][0], None, int(known[job.key][1])] for i, job in enumerate(jobs) if job.key in known
        }
        trigger = FluxGenerationTrigger.for_specs(
            specs,
            flux_conn_id=self.flux_conn_id,
            options={
                "max_in_flight": self.sentinel_max_in_flight,
                "chunk_size": 1,
                "use_batches": False,
                "resubmit_failed": self.sentinel_resubmit_failed,
                "budget_usd": str(budget.remaining(spent)) if budget is not None else None,
                "end_time": time.time() + self.timeout,
                "poll_interval": self.poll_interval,
                "kind": "evaluation",
            },
            attached=attached,
        )
        if self.deferrable:
            self.log.info("Waiting on the triggerer for %d Sentinel evaluation(s)", len(jobs))
            self.defer(
                trigger=trigger,
                method_name="execute_complete",
                kwargs=self._resume_kwargs(),
                timeout=timedelta(seconds=self.timeout + 300),
            )
        self._live = trigger.window()
        event = run_window(self.hook, self._live, metadata=None, logger=self.log, progress_interval=30.0)
        rows = rows_of(event)
        self._learn(context, event, {i: job.key for i, job in enumerate(jobs)})
        if event.get("status") != "success":
            raise FluxError(f"Sentinel evaluations did not complete: {event.get('message')}")
        found = {}
        for i, position in enumerate(positions):
            state = rows.get(i)
            if state is not None and state.run_id:
                found[position] = self.hook.get_evaluation(state.run_id)
        return found

    def _image_urls(self, context: Context) -> Callable[[str, str], str]:
        """How a stored image (or reference) reaches the API: ``s3://`` presigned (remembered across
        tries in ``task_state_store``, so a retry sends the same body under the same key), a local file
        checked now and inlined when it is sent, a URL as it is."""
        resolver = ReferenceResolver(
            aws_conn_id=self.aws_conn_id, valid_for=self.timeout, memory=context.get("task_state_store")
        )

        def resolve(uri: str, field: str) -> str:
            kind = reference_kind(uri)
            if kind == "s3":
                return resolver.wire_url(uri, field)
            if kind == "file":
                resolver.measure(uri, field)  # readable, an image, and small enough to send inline
            return uri

        return resolve

    def _recall(self, context: Context) -> dict[str, list[Any]]:
        """The evaluations this task has sent (key → ``[id, attempt]``): this try's, and an earlier try's
        as ``task_state_store`` (Airflow >= 3.3) recorded them — read by id, whatever the API still
        remembers of their keys."""
        if self._known is None:
            self._known = {}
        store = context.get("task_state_store")
        recorded = store.get(SENTINEL_MEMORY) if store is not None else None
        if isinstance(recorded, dict):
            for key, value in recorded.items():
                if isinstance(value, list) and len(value) == 2:
                    self._known.setdefault(str(key), list(value))
        return self._known

    def _learn(self, context: Context, event: dict[str, Any], keys: dict[int, str]) -> None:
        """Note the evaluation ids a wait's event reports (by key), here and in ``task_state_store``."""
        known = self._recall(context)
        for index, state in rows_of(event).items():
            if state.run_id and index in keys:
                known[keys[index]] = [state.run_id, state.attempt]
        store = context.get("task_state_store")
        if store is not None:
            store.set(SENTINEL_MEMORY, dict(known))

    def _resume_kwargs(self) -> dict[str, Any]:
        """What a deferral carries to :meth:`execute_complete`: the evaluations sent, the price read."""
        return {
            "evaluations": dict(self._known or {}),
            **({"sentinel_price": str(self._price)} if self._price is not None else {}),
        }

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow_provider_flux2.lineage import lineage, prefixes

        # The checked images stay where they are: the input prefixes are outputs too (the checked
        # dataset the publish task reads), with the regeneration prefix when images are remade.
        inputs = prefixes((r.uri for r in records_from_xcom(self.records)), task_instance)
        regenerated = [self.output_uri] if self.output_uri and self.on_failure == "regenerate" else []
        return lineage(inputs=inputs, outputs=[*inputs, *regenerated])


def _raise_unless_done(event: dict[str, Any]) -> None:
    if event.get("status") != "success":
        raise FluxError(f"Regeneration did not complete: {event.get('message')}")


def _spent(records: list[ImageRecord]) -> Decimal:
    """What the batch has cost so far: its images as billed, and Sentinel's evaluations as billed."""
    return sum((billed_cost(r) for r in records), Decimal("0")) + evaluation_spend(records)


def _summary(
    records: list[ImageRecord],
    suite: CheckSuite,
    regenerated: int,
    gate: SentinelGate | None = None,
    price: Decimal | None = None,
) -> dict[str, Any]:
    checked = [r for r in records if r.checks]
    replaced = superseded_rows(records)
    judged = [r.sentinel for r in records if r.sentinel is not None]
    sentinel = (
        {
            "job_class": gate.job_class,
            "price_usd": usd(price) if price is not None else None,
            "gate": gate.describe(),
            "evaluated": sum(1 for v in judged if v.status in ("completed", "failed")),
            "passed": sum(1 for v in judged if v.passed is True),
            "failed": sum(1 for v in judged if v.passed is False),
            "cost_usd": usd(evaluation_spend(records)),
        }
        if gate is not None
        else None
    )
    return {
        "checks": suite.as_config() + ([{"check": "sentinel", "gate": gate.describe()}] if gate else []),
        **({"sentinel": sentinel} if sentinel else {}),
        "images": len(records),
        "checked": len(checked),
        "passed": sum(1 for r in records if r.status == "succeeded" and r.checks and not failed_checks(r)),
        "dropped": sum(1 for r in records if r.status == "dropped" and (r.index, r.attempt) not in replaced),
        "superseded": len(replaced),
        "regenerated": regenerated,
        "total_cost_usd": usd(_spent(records)),
    }
