"""FluxQualityCheckOperator: check a batch on its real bytes; fail, drop or regenerate what fails.

Regenerations are priced and checked against the budget before they are sent, carry idempotency
keys derived from the task and the image (so a retried task replays them instead of paying twice),
and are checked again like the originals — up to ``max_regenerations`` times per image.

Deferrable: a round of regenerations is waited for on the triggerer. When the task resumes it runs
again from the records it was given; every request it makes again carries the same idempotency key
(seeds are derived, not drawn), so the API replays the runs already made and nothing is paid twice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1: the Task SDK exposes conf from 3.2 on
    from airflow.configuration import conf  # type: ignore[assignment]

from airflow_provider_flux2 import metrics, protocol
from airflow_provider_flux2.arguments import (
    DEFAULT_MIN_PASS_RATE,
    DEFAULT_ON_FAILURE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    check_operator_arguments,
    check_pass_rate,
)
from airflow_provider_flux2.exceptions import FluxError, FluxValidationError, percent
from airflow_provider_flux2.hooks.flux import FluxHook, expected_duration
from airflow_provider_flux2.jobs import (
    Job,
    is_moderated,
    log_kill,
    new_job,
    output_publisher,
    record_for_run,
    run_metadata,
    run_window,
    store_image,
    task_identity,
    task_location,
)
from airflow_provider_flux2.models import ImageRecord, RunStatus, records_from_xcom, utc_now_iso
from airflow_provider_flux2.pricing import Budget, billed_cost, usd
from airflow_provider_flux2.quality.policy import apply_failure_policy, pass_rate
from airflow_provider_flux2.quality.regeneration import RegenerationPlan, supersede
from airflow_provider_flux2.quality.suite import CheckSuite, failed_checks, read_each
from airflow_provider_flux2.references import ReferenceResolver
from airflow_provider_flux2.storage import uri_reader
from airflow_provider_flux2.storage.manifest import superseded_rows
from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger, finished_runs

if TYPE_CHECKING:
    from airflow.sdk import Context

XCOM_QUALITY = "flux_quality_summary"


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
    :param timeout: seconds to wait for one round of regenerations.
    :param deferrable: wait for regenerations on the triggerer, holding no worker slot.
    """

    template_fields: Sequence[str] = ("records", "checks", "output_uri", "budget_usd", "aws_conn_id", "min_pass_rate")
    template_fields_renderers = {"records": "json", "checks": "json"}
    ui_color = "#e8f5e9"

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        self.log.info("%s", self._plan_line(records, suite, min_pass_rate, budget))
        regenerated = 0
        rounds = 0
        while True:
            records = suite.run(read_each(records, read)).records
            outcome = apply_failure_policy(
                records,
                self.on_failure,
                max_regenerations=self.max_regenerations,
                on_exhausted=self.on_exhausted,
                budget=budget,
                prices=self.hook.prices if self.on_failure == "regenerate" else None,
            )
            records = outcome.records
            if outcome.finished or outcome.plan is None:
                break
            rounds += 1
            plan = outcome.plan
            self.log.info(
                "Round %d: regenerating %d image(s) for $%s (spent so far $%s%s)",
                rounds,
                len(plan.items),
                usd(plan.total),
                usd(plan.spent),
                f", budget ${usd(budget.limit)}" if budget else "",
            )
            replacements = self._regenerate(context, plan, records)
            metrics.images_finished([r.to_xcom() for r in replacements], context)
            regenerated += len(replacements)
            records = supersede(records, replacements)
        summary = _summary(records, suite, regenerated)
        rate = pass_rate(records)
        summary.update(pass_rate=str(rate.rate.quantize(Decimal("0.0001"))), min_pass_rate=str(min_pass_rate))
        self.log.info(
            "Quality: %d checked · %d passed · %d dropped · %d regenerated (%d replaced) · $%s billed in all",
            summary["checked"],
            summary["passed"],
            summary["dropped"],
            regenerated,
            summary["superseded"],
            summary["total_cost_usd"],
        )
        context["ti"].xcom_push(key=XCOM_QUALITY, value=summary)
        if self.on_failure != "fail":
            rate.check(min_pass_rate)
        return [r.to_xcom() for r in records]

    def _plan_line(
        self, records: list[ImageRecord], suite: CheckSuite, min_pass_rate: Decimal, budget: Budget | None
    ) -> str:
        """What the step will do, before it reads an image: checks, policy, and the pass rate it asks."""
        items = len({r.index for r in records})
        if self.on_failure == "fail":
            gate = "any failing image fails the task"
        else:
            needed = math.ceil(min_pass_rate * items)
            gate = f"min_pass_rate {percent(min_pass_rate)} (the task fails below {needed} of {items} passing)"
        regenerate = (
            f" · up to {self.max_regenerations} regeneration(s) per image"
            + (f", budget ${usd(budget.limit)}" if budget else "")
            if self.on_failure == "regenerate"
            else ""
        )
        names = ", ".join(check.name for check in suite.checks)
        return f"Quality plan: {items} item(s) · checks {names} · on_failure={self.on_failure}{regenerate} · {gate}"

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
            failure = protocol.failure_of(run)
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
            record.status = (
                "moderated" if is_moderated(run, failure) else "failed" if failure is not None else "succeeded"
            )
            records.append(record)
        return records

    def _wait(self, run_ids: list[str], images: list[Job]) -> dict[str, dict[str, Any]]:
        expected = max(expected_duration(i.request.width, i.request.height) for i in images)
        trigger = FluxGenerationTrigger(
            flux_conn_id=self.flux_conn_id,
            runs=run_ids,
            end_time=time.time() + self.timeout,
            poll_interval=self.poll_interval,
            expected_seconds=expected,
        )
        if not self.deferrable:
            self._live = trigger.window()
            event = run_window(self.hook, self._live, metadata=None, logger=self.log, progress_interval=-1)
            _raise_unless_done(event)
            return finished_runs(event)
        # Runs already finished (a resumed task replays its earlier rounds) need no wait at all.
        runs = [self.hook.get_run(run_id) for run_id in run_ids]
        awaited = [run.id for run in runs if not run.terminal]
        if awaited:
            self.log.info("Waiting on the triggerer for %d regenerated image(s)", len(awaited))
            trigger.runs = awaited
            self.defer(trigger=trigger, method_name="execute_complete", timeout=timedelta(seconds=self.timeout + 300))
        return {run.id: {"status": run.status_code.value, "completed_at": run.completed_at} for run in runs}

    def on_kill(self) -> None:
        """Killed while waiting here for regenerations: name the runs left at the API (they bill)."""
        log_kill(getattr(self, "_live", None), self.log)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Back from the triggerer: run again; the finished round is replayed, not paid again."""
        _raise_unless_done(event or {"status": "error", "message": "no event from the trigger"})
        return self.execute(context)

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


def _summary(records: list[ImageRecord], suite: CheckSuite, regenerated: int) -> dict[str, Any]:
    checked = [r for r in records if r.checks]
    replaced = superseded_rows(records)
    return {
        "checks": suite.as_config(),
        "images": len(records),
        "checked": len(checked),
        "passed": sum(1 for r in records if r.status == "succeeded" and r.checks and not failed_checks(r)),
        "dropped": sum(1 for r in records if r.status == "dropped" and (r.index, r.attempt) not in replaced),
        "superseded": len(replaced),
        "regenerated": regenerated,
        "total_cost_usd": usd(sum((billed_cost(r) for r in records), Decimal("0"))),
    }
