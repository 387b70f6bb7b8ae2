"""Runflow Sentinel as a quality check: which images to evaluate, under which keys, what a verdict means.

Pure: no request is sent here. The quality operator asks :class:`SentinelGate` what to evaluate
(:meth:`SentinelGate.plan`), sends it through the window, and folds what the API answered back into
the records (:meth:`SentinelGate.verdict`, :func:`with_verdict`). A verdict is one more
:class:`~airflow_provider_flux2.models.CheckVerdict` (``check: "sentinel"``) beside the byte checks,
so the failure policy — fail, drop or regenerate — treats it like any other check, and the record
keeps the whole verdict (``record.sentinel``: score, issues, strengths, evaluation id, cost).

Only images that passed their byte checks are evaluated: an image already failing (blank, wrong
size, a duplicate) is not worth paying Sentinel for.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from airflow_provider_flux2 import sentinel
from airflow_provider_flux2.exceptions import FluxValidationError, percent
from airflow_provider_flux2.models import CheckVerdict, ImageRecord, SentinelVerdict
from airflow_provider_flux2.money import format_usd as usd

#: The name of Sentinel's verdict among a record's checks.
SENTINEL_CHECK = "sentinel"
#: Per-item keys of a prompt's ``extra`` (they ride on the record) that override the gate's arguments.
ITEM_TASK_TYPE = "sentinel_task_type"
ITEM_TASK_DESCRIPTION = "sentinel_task_description"
ITEM_REFERENCE_KIND = "sentinel_reference_kind"


@dataclass(frozen=True)
class EvaluationJob:
    """One image to evaluate: its place, its key and ``client_ref``, and the request as it will be sent
    (storage images presigned; a local file still a path, inlined when it is sent)."""

    index: int
    attempt: int
    key: str
    ref: str
    body: dict[str, Any]


@dataclass(frozen=True)
class SentinelGate:
    """What the DAG author asked of Sentinel.

    :param task_type: the evaluation's ``task_type`` (an item's ``extra.sentinel_task_type`` wins).
    :param task_description: its ``task_description`` (an item's ``extra.sentinel_task_description`` wins).
    :param min_pass_rate: the least ``weighted_pass_rate`` an image needs (``None``: not checked).
    :param require_passed: whether ``overall_passed`` must be true.
    :param job_class: the job class evaluations are sent under.
    :param reference_kind: the ``kind`` of each reference image (``None``: not sent).
    """

    task_type: str | None
    task_description: str | None = None
    min_pass_rate: Decimal | None = None
    require_passed: bool = True
    job_class: str = sentinel.DEFAULT_JOB_CLASS
    reference_kind: str | None = None

    @property
    def gating(self) -> bool:
        """Whether a verdict can fail an image (else verdicts are only recorded)."""
        return self.require_passed or self.min_pass_rate is not None

    def describe(self) -> str:
        """The gate in words, for the plan line."""
        parts = ["overall_passed"] if self.require_passed else []
        if self.min_pass_rate is not None:
            parts.append(f"weighted_pass_rate ≥ {percent(self.min_pass_rate)}")
        return " and ".join(parts) if parts else "verdicts recorded, not gated"

    # -- what to evaluate ---------------------------------------------------------------------------

    def wants(self, record: ImageRecord) -> bool:
        """Whether ``record``'s image is evaluated: stored, succeeded, and passing its byte checks."""
        checks = [c for c in record.checks if c.check != SENTINEL_CHECK]
        return record.status == "succeeded" and bool(record.uri) and all(c.passed for c in checks)

    def stable_request(self, record: ImageRecord) -> dict[str, Any]:
        """What is asked about ``record``'s image, with the image and references as stored (never a
        signature): the key and the ``client_ref`` are derived from it, so they survive re-signing."""
        return {
            "image": record.uri,
            "content_hash": record.content_hash,
            "task_type": self.task_type_of(record),
            "task_description": self.task_description_of(record),
            "generation_prompt": generation_prompt(record),
            "references": references_of(record),
            "reference_kind": self.reference_kind_of(record),
            "job_class": self.job_class,
            "run_id": record.run_id,
        }

    def key_of(self, record: ImageRecord, identity: Mapping[str, Any]) -> str:
        """The Idempotency-Key of ``record``'s evaluation (task identity, image, attempt, request)."""
        return sentinel.evaluation_key(
            identity, record.index, record.attempt, sentinel.body_hash(self.stable_request(record))
        )

    def plan(
        self,
        records: Iterable[ImageRecord],
        identity: Mapping[str, Any],
        resolve: Callable[[str, str], str],
    ) -> list[EvaluationJob]:
        """The evaluations to send: every image :meth:`wants` that has no verdict under its key yet.

        :param resolve: ``(stored uri, field) → the URL to send``: a presigned URL for ``s3://``, the
            path itself for a local file (inlined when sent); it may raise ``FluxValidationError``.
        :raises FluxValidationError: naming the item, when a task type is missing or an image cannot be sent.
        """
        jobs = []
        for record in records:
            if not self.wants(record):
                continue
            stable = self.stable_request(record)
            request_hash = sentinel.body_hash(stable)
            key = sentinel.evaluation_key(identity, record.index, record.attempt, request_hash)
            if record.sentinel is not None and record.sentinel.idempotency_key == key:
                continue  # judged already (an earlier round, or an earlier try of this step)
            try:
                jobs.append(self._job(record, identity, stable, request_hash, key, resolve))
            except FluxValidationError as error:
                error.args = (f"images[{record.index}] (attempt {record.attempt}): {error.args[0]}",)
                raise
        return jobs

    def _job(
        self,
        record: ImageRecord,
        identity: Mapping[str, Any],
        stable: Mapping[str, Any],
        request_hash: str,
        key: str,
        resolve: Callable[[str, str], str],
    ) -> EvaluationJob:
        task_type = stable["task_type"]
        if not task_type:
            raise FluxValidationError(
                field="sentinel_task_type",
                value=None,
                allowed="a task type for Sentinel (the operator's sentinel_task_type, or the item's "
                f"extra.{ITEM_TASK_TYPE})",
            )
        kind = stable["reference_kind"]
        references = [
            {"url": resolve(url, f"reference_images[{i}].url"), "kind": kind}
            for i, url in enumerate(stable["references"])
        ]
        body = sentinel.evaluation_body(
            generated_image_url=resolve(str(record.uri), "generated_image_url"),
            task_type=task_type,
            task_description=stable["task_description"],
            generation_prompt=stable["generation_prompt"],
            reference_images=references,
            run_id=record.run_id if _is_uuid(record.run_id) else None,
            client_ref=sentinel.evaluation_ref(identity, record.index, record.attempt, request_hash),
            job_class=self.job_class,
        )
        return EvaluationJob(index=record.index, attempt=record.attempt, key=key, ref=body["client_ref"], body=body)

    def task_type_of(self, record: ImageRecord) -> str | None:
        value = record.extra.get(ITEM_TASK_TYPE)
        return str(value).strip() if value not in (None, "") else (self.task_type or None)

    def task_description_of(self, record: ImageRecord) -> str | None:
        value = record.extra.get(ITEM_TASK_DESCRIPTION)
        return str(value) if value not in (None, "") else self.task_description

    def reference_kind_of(self, record: ImageRecord) -> str | None:
        value = record.extra.get(ITEM_REFERENCE_KIND)
        return str(value) if value not in (None, "") else self.reference_kind

    # -- what came back ------------------------------------------------------------------------------

    def verdict(
        self,
        evaluation: sentinel.Evaluation | None,
        job: EvaluationJob,
        *,
        price: Decimal,
        status: str | None = None,
    ) -> SentinelVerdict:
        """The recorded verdict of one evaluation (``None``: it never ended; ``status`` says where it stood).

        The cost is what the API reports; a completed evaluation that reports none counts at ``price``.
        """
        if evaluation is None or not evaluation.terminal:
            return SentinelVerdict(
                evaluation_id=evaluation.id if evaluation else None,
                status=status or (evaluation.status_code if evaluation else "not_sent"),
                passed=False if self.gating else None,
                job_class=self.job_class,
                idempotency_key=job.key,
            )
        cost = evaluation.cost if evaluation.cost is not None else (price if evaluation.completed else None)
        score = evaluation.weighted_pass_rate
        return SentinelVerdict(
            evaluation_id=evaluation.id,
            status=evaluation.status_code,
            passed=self._passes(evaluation) if self.gating else None,
            overall_passed=evaluation.overall_passed,
            score=float(score) if score is not None else None,
            top_issues=list(evaluation.top_issues),
            top_strengths=list(evaluation.top_strengths),
            cost_usd=usd(cost) if cost is not None else None,
            failure_code=evaluation.failure_code,
            job_class=evaluation.job_class_code or self.job_class,
            idempotency_key=job.key,
        )

    def _passes(self, evaluation: sentinel.Evaluation) -> bool:
        if not evaluation.completed:
            return False
        if self.require_passed and evaluation.overall_passed is not True:
            return False
        rate = evaluation.weighted_pass_rate
        return self.min_pass_rate is None or (rate is not None and rate >= self.min_pass_rate)

    def check(self, verdict: SentinelVerdict) -> CheckVerdict:
        """The verdict as one of the record's checks."""
        value = {"score": verdict.score, "evaluation_id": verdict.evaluation_id, "cost_usd": verdict.cost_usd}
        return CheckVerdict(
            check=SENTINEL_CHECK, passed=verdict.passed is not False, reason=self._reason(verdict), value=value
        )

    def _reason(self, verdict: SentinelVerdict) -> str:
        if verdict.status not in ("completed", "failed"):
            return f"not judged: the evaluation was {verdict.status.replace('_', ' ')}"
        if verdict.status == "failed":
            return f"not judged: the evaluation failed ({verdict.failure_code or 'no failure code'})"
        score = "no score" if verdict.score is None else f"score {verdict.score:.2f}"
        said = {True: "passed", False: "failed", None: "no verdict"}[verdict.overall_passed]
        text = f"{said}, {score}"
        rate = self.min_pass_rate
        if rate is not None and verdict.score is not None and Decimal(repr(verdict.score)) < rate:
            text += f" < {percent(rate)}"
        if verdict.top_issues:
            text += "; issues: " + "; ".join(verdict.top_issues[:3])
        return text if self.gating else f"{text} (recorded, not gated)"


def with_verdict(record: ImageRecord, verdict: SentinelVerdict, check: CheckVerdict) -> ImageRecord:
    """``record`` with Sentinel's verdict kept and its check placed after the byte checks."""
    checks = [c for c in record.checks if c.check != SENTINEL_CHECK]
    return record.model_copy(update={"sentinel": verdict, "checks": [*checks, check]})


def rejudged(gate: SentinelGate, records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """The verdicts records already carry, put back among their checks (a byte-check run replaces them)."""
    out = []
    for record in records:
        if record.sentinel is not None and record.status == "succeeded" and gate.wants(record):
            record = with_verdict(record, record.sentinel, gate.check(record.sentinel))
        out.append(record)
    return out


def evaluation_cost(record: ImageRecord) -> Decimal:
    """What Sentinel billed for ``record``'s image (nothing when it was not evaluated, or not billed)."""
    if record.sentinel is None or record.sentinel.cost_usd is None:
        return Decimal("0")
    return Decimal(record.sentinel.cost_usd)


def evaluation_spend(records: Iterable[ImageRecord]) -> Decimal:
    """What Sentinel billed for a batch, exactly."""
    return sum((evaluation_cost(r) for r in records), Decimal("0"))


def generation_prompt(record: ImageRecord) -> str:
    """The prompt the image was made from: the upsampled one, when the API returned it."""
    return record.upsampled_prompt or record.prompt


def references_of(record: ImageRecord) -> list[str]:
    """The item's reference images as written (``s3://``, a path, a URL), at most four."""
    urls = record.params.get("image_urls") or []
    return [str(url) for url in urls if isinstance(url, str)][: sentinel.MAX_REFERENCE_IMAGES]


def _is_uuid(value: str | None) -> bool:
    if not value:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


__all__ = [
    "SENTINEL_CHECK",
    "EvaluationJob",
    "SentinelGate",
    "evaluation_cost",
    "evaluation_spend",
    "generation_prompt",
    "references_of",
    "rejudged",
    "with_verdict",
]
