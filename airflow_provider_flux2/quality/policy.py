"""What to do with images that failed their checks: ``fail`` the task, ``drop`` them, or ``regenerate`` them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from airflow_provider_flux2.exceptions import FluxPassRateError, FluxQualityError, FluxValidationError
from airflow_provider_flux2.models import ImageRecord
from airflow_provider_flux2.pricing import Budget, PriceTable
from airflow_provider_flux2.quality.regeneration import QUALITY_FAILURE_CODE, RegenerationPlan, plan_regeneration
from airflow_provider_flux2.quality.suite import failed_checks

FailurePolicy = Literal["fail", "drop", "regenerate"]
FAILURE_POLICIES: tuple[str, ...] = ("fail", "drop", "regenerate")
EXHAUSTED_POLICIES: tuple[str, ...] = ("fail", "drop")


@dataclass(frozen=True)
class PolicyOutcome:
    """The batch after the policy, and what (if anything) to regenerate next.

    :param records: the batch; images dropped by the policy have ``status="dropped"``.
    :param dropped: indices dropped by this application of the policy.
    :param plan: the regeneration plan (``regenerate`` policy only).
    """

    records: list[ImageRecord]
    dropped: list[int] = field(default_factory=list)
    plan: RegenerationPlan | None = None

    @property
    def finished(self) -> bool:
        """Whether nothing is left to regenerate."""
        return self.plan is None or not self.plan.items


def apply_failure_policy(
    records: Iterable[ImageRecord | Mapping[str, Any]],
    on_failure: FailurePolicy = "drop",
    *,
    max_regenerations: int = 1,
    on_exhausted: Literal["fail", "drop"] = "drop",
    budget: Budget | None = None,
    spent: Decimal | str | None = None,
    prices: PriceTable | None = None,
) -> PolicyOutcome:
    """Apply a failure policy to a checked batch.

    :param records: the batch after :class:`~airflow_provider_flux2.quality.suite.CheckSuite` ran.
    :param on_failure: ``fail`` raises :class:`FluxQualityError` if any image failed; ``drop`` marks
        failed images ``dropped``; ``regenerate`` plans new attempts (see :func:`plan_regeneration`).
    :param max_regenerations: with ``regenerate``: how many times one image may be made again.
    :param on_exhausted: with ``regenerate``: what to do with an image still failing after its
        last regeneration (``drop`` it, or ``fail`` the task).
    :param budget: with ``regenerate``: the task's budget, checked before anything is sent.
    :param spent: with ``regenerate``: spent so far (default: the batch's billed cost).
    :param prices: with ``regenerate``: the price table.
    :raises FluxQualityError: ``fail`` (or exhausted ``fail``) and some image failed.
    :raises BudgetExceededError: the regenerations do not fit in the budget.
    """
    _validate(on_failure, FAILURE_POLICIES, "on_failure")
    _validate(on_exhausted, EXHAUSTED_POLICIES, "on_exhausted")
    batch = [r if isinstance(r, ImageRecord) else ImageRecord.model_validate(r) for r in records]
    failing = [r.index for r in batch if r.status == "succeeded" and failed_checks(r)]
    checked = sum(1 for r in batch if r.status == "succeeded")
    if on_failure == "fail":
        if failing:
            raise FluxQualityError(_failure_entries(batch, failing), total=checked)
        return PolicyOutcome(records=batch)
    if on_failure == "drop":
        return PolicyOutcome(records=_drop(batch, failing), dropped=failing)
    plan = plan_regeneration(batch, max_regenerations=max_regenerations, budget=budget, spent=spent, prices=prices)
    exhausted = list(plan.exhausted)
    if exhausted and on_exhausted == "fail":
        raise FluxQualityError(_failure_entries(batch, exhausted), total=checked)
    return PolicyOutcome(records=_drop(batch, exhausted), dropped=exhausted, plan=plan)


def _validate(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise FluxValidationError(field=name, value=value, allowed=" or ".join(repr(a) for a in allowed))


def _drop(batch: list[ImageRecord], indices: list[int]) -> list[ImageRecord]:
    targets = set(indices)
    out = []
    for record in batch:
        if record.status == "succeeded" and record.index in targets:
            reasons = "; ".join(f"{v.check}: {v.reason}" for v in failed_checks(record))
            record = record.model_copy(
                update={"status": "dropped", "failure_code": QUALITY_FAILURE_CODE, "failure_message": reasons}
            )
        out.append(record)
    return out


def _failure_entries(batch: list[ImageRecord], indices: list[int]) -> list[dict[str, Any]]:
    targets = set(indices)
    return [
        {
            "index": r.index,
            "run_id": r.run_id,
            "checks": [{"check": v.check, "reason": v.reason} for v in failed_checks(r)],
        }
        for r in batch
        if r.status == "succeeded" and r.index in targets
    ]


@dataclass(frozen=True)
class PassRate:
    """How many of the items the quality step was given ended with an image that passed.

    Counted per item (index), on its latest attempt: a regenerated image that passed counts once;
    an item whose generation failed, or whose image was dropped, did not pass.
    """

    passed: int
    total: int
    failures: list[dict[str, Any]]

    @property
    def rate(self) -> Decimal:
        return Decimal(self.passed) / self.total if self.total else Decimal(1)

    def check(self, min_pass_rate: Decimal) -> None:
        """:raises FluxPassRateError: the rate is below ``min_pass_rate``."""
        if self.total and self.rate < min_pass_rate:
            raise FluxPassRateError(self.failures, total=self.total, passed=self.passed, min_pass_rate=min_pass_rate)


def pass_rate(records: Iterable[ImageRecord]) -> PassRate:
    """The step's pass rate over its items (see :class:`PassRate`)."""
    latest: dict[int, ImageRecord] = {}
    for record in records:
        if record.index not in latest or record.attempt >= latest[record.index].attempt:
            latest[record.index] = record
    failures = []
    for index in sorted(latest):
        record = latest[index]
        if record.status == "succeeded" and not failed_checks(record):
            continue
        checks = [{"check": v.check, "reason": v.reason} for v in failed_checks(record)]
        reason = record.failure_code or record.failure_message or record.status
        failures.append(
            {"index": index, "run_id": record.run_id, "checks": checks or [{"check": record.status, "reason": reason}]}
        )
    return PassRate(passed=len(latest) - len(failures), total=len(latest), failures=failures)
