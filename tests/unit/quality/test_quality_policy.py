from __future__ import annotations

from decimal import Decimal

import pytest
from synthetic_images import image_record

from airflow_provider_flux2.exceptions import BudgetExceededError, FluxQualityError, FluxValidationError
from airflow_provider_flux2.models import CheckVerdict
from airflow_provider_flux2.pricing import Budget
from airflow_provider_flux2.quality.policy import apply_failure_policy

PASS = [CheckVerdict(check="size", passed=True, reason="is 256×192")]


def failing(index: int, check: str = "not_blank", reason: str = "near-uniform", **fields):
    return image_record(index, checks=[CheckVerdict(check=check, passed=False, reason=reason)], **fields)


def checked_batch():
    return [
        image_record(0, checks=PASS),
        failing(1),
        image_record(2, checks=PASS),
        failing(3, "near_duplicate", "near-duplicate of image 2 (distance 3 <= 8)"),
    ]


def test_fail_raises_naming_every_failed_image_check_and_reason():
    with pytest.raises(FluxQualityError) as err:
        apply_failure_policy(checked_batch(), "fail")

    assert err.value.total == 4
    assert [f["index"] for f in err.value.failures] == [1, 3]
    assert "2 of 4 images failed quality checks" in str(err.value)
    assert "#3 near_duplicate (near-duplicate of image 2 (distance 3 <= 8))" in str(err.value)


def test_fail_lets_a_clean_batch_through_unchanged():
    records = [image_record(0, checks=PASS)]

    outcome = apply_failure_policy(records, "fail")

    assert outcome.records == records
    assert outcome.finished


def test_drop_marks_failed_images_dropped_with_the_reasons():
    outcome = apply_failure_policy(checked_batch(), "drop")

    assert outcome.dropped == [1, 3]
    assert [r.status for r in outcome.records] == ["succeeded", "dropped", "succeeded", "dropped"]
    assert outcome.records[1].failure_code == "QUALITY_CHECK_FAILED"
    assert outcome.records[1].failure_message == "not_blank: near-uniform"


def test_regenerate_plans_the_failed_images_and_drops_nothing_yet():
    outcome = apply_failure_policy(checked_batch(), "regenerate", max_regenerations=2, budget=Budget.of(1))

    assert [item.index for item in outcome.plan.items] == [1, 3]
    assert outcome.plan.total == Decimal("0.060")
    assert outcome.dropped == []
    assert not outcome.finished


def test_regenerate_drops_images_out_of_attempts_by_default():
    records = [*checked_batch(), failing(4, attempt=2)]

    outcome = apply_failure_policy(records, "regenerate", max_regenerations=1)

    assert outcome.dropped == [4]
    assert outcome.records[4].status == "dropped"
    assert [item.index for item in outcome.plan.items] == [1, 3]


def test_regenerate_can_fail_the_task_when_an_image_is_out_of_attempts():
    with pytest.raises(FluxQualityError) as err:
        apply_failure_policy([failing(0, attempt=3)], "regenerate", max_regenerations=2, on_exhausted="fail")

    assert err.value.failures[0]["index"] == 0


def test_regenerate_over_budget_raises_before_anything_is_planned():
    with pytest.raises(BudgetExceededError):
        apply_failure_policy(checked_batch(), "regenerate", budget=Budget.of("0.15"))


def test_records_may_come_as_xcom_dicts():
    outcome = apply_failure_policy([r.to_xcom() for r in checked_batch()], "drop")

    assert outcome.dropped == [1, 3]


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"on_failure": "retry"}, "on_failure"), ({"on_exhausted": "x"}, "on_exhausted")]
)
def test_unknown_policies_are_refused(kwargs, field):
    with pytest.raises(FluxValidationError) as err:
        apply_failure_policy(checked_batch(), **kwargs)

    assert err.value.field == field


def test_pass_rate_counts_each_item_once_on_its_latest_attempt():
    from airflow_provider_flux2.quality.policy import pass_rate
    from airflow_provider_flux2.quality.regeneration import supersede

    batch = apply_failure_policy(checked_batch(), "drop").records  # 1 and 3 dropped
    regenerated = supersede(
        [r.model_copy(update={"status": "succeeded"}) if r.index == 1 else r for r in batch],
        [image_record(1, attempt=2, checks=PASS)],
    )
    rate = pass_rate(regenerated)
    assert (rate.passed, rate.total, rate.rate) == (3, 4, Decimal("0.75"))
    assert [f["index"] for f in rate.failures] == [3]
    rate.check(Decimal("0.75"))  # exactly at the gate passes
    with pytest.raises(FluxQualityError) as err:
        rate.check(Decimal("0.8"))
    assert "3 of 4 images passed the quality step (75%), below min_pass_rate 80%: #3 near_duplicate" in str(err.value)


def test_pass_rate_counts_an_item_whose_generation_failed_as_not_passed():
    from airflow_provider_flux2.quality.policy import pass_rate

    records = [image_record(0, checks=PASS), image_record(1, status="failed", failure_code="GENERATION_FAILED")]
    rate = pass_rate(records)
    assert (rate.passed, rate.total) == (1, 2)
    assert rate.failures[0]["checks"] == [{"check": "failed", "reason": "GENERATION_FAILED"}]
