from __future__ import annotations

from decimal import Decimal

import pytest
from synthetic_images import image_record

from airflow_provider_flux2.exceptions import BudgetExceededError, FluxValidationError
from airflow_provider_flux2.models import CheckVerdict
from airflow_provider_flux2.pricing import Budget, PriceTable
from airflow_provider_flux2.quality.regeneration import (
    QUALITY_FAILURE_CODE,
    plan_regeneration,
    regeneration_seed,
    supersede,
)

PASS = [CheckVerdict(check="not_blank", passed=True, reason="ok")]
BLANK = [CheckVerdict(check="not_blank", passed=False, reason="near-uniform")]


def batch(n_failing: int, n_passing: int = 0, **fields):
    failing = [image_record(i, checks=BLANK, **fields) for i in range(n_failing)]
    passing = [image_record(n_failing + i, checks=PASS, **fields) for i in range(n_passing)]
    return failing + passing


def test_seeds_are_deterministic_new_and_different_per_attempt():
    record = image_record(3, seed=42)

    second, third = regeneration_seed(record, 2), regeneration_seed(record, 3)

    assert second == regeneration_seed(image_record(3, seed=42), 2)  # a retried task plans the same seed
    assert len({42, second, third}) == 3
    assert 0 <= second < 2**32
    assert regeneration_seed(image_record(4, seed=42), 2) != second  # index is part of the seed


def test_only_checked_images_that_failed_are_planned_with_new_seeds_and_params():
    records = [*batch(2, 3, params={"image_size": "square_hd", "seed": 7}), image_record(9, status="failed")]

    plan = plan_regeneration(records, max_regenerations=2)

    assert [item.index for item in plan.items] == [0, 1]
    item = plan.items[0]
    assert item.attempt == 2
    assert item.previous_seed == 1000
    assert item.params == {"image_size": "square_hd", "seed": item.seed}
    assert item.replaces == "run-0"
    assert item.failed_checks == ("not_blank",)
    assert plan.exhausted == ()


def test_regenerations_are_priced_with_the_plan_s_table():
    records = [
        image_record(0, checks=BLANK, width=1920, height=1080, billed_mp=2),
        image_record(1, checks=BLANK, width=4096, height=4096, billed_mp=16),
        image_record(2, checks=BLANK, model="black-forest-labs/flux-2-flex", billed_mp=1),
    ]

    plan = plan_regeneration(records, max_regenerations=1)

    assert [item.cost for item in plan.items] == [Decimal("0.045"), Decimal("0.255"), Decimal("0.05")]
    assert plan.total == Decimal("0.350")
    assert plan.as_dict()["total_cost_usd"] == "0.350"


def test_price_overrides_apply_to_regenerations():
    table = PriceTable().with_overrides({"pro": {"first_mp": "0.04", "extra_mp": "0.02"}})

    plan = plan_regeneration(batch(1, billed_mp=2), max_regenerations=1, prices=table)

    assert plan.total == Decimal("0.06")


def test_reference_images_are_priced_too():
    records = batch(1, params={"image_urls": ["https://example.com/a.png", "https://example.com/b.png"]})

    plan = plan_regeneration(records, max_regenerations=1)

    assert plan.total == Decimal("0.060")  # 0.030 for the output + 2 × 0.015 for two assumed 1 MP references
    assert plan.estimate.items[0].reference_mp == 2


def test_an_over_budget_plan_raises_before_anything_is_sent_naming_the_figures():
    records = batch(4, 6)  # 10 images at $0.030 billed: $0.300 spent; 4 regenerations: $0.120

    with pytest.raises(BudgetExceededError) as err:
        plan_regeneration(records, max_regenerations=1, budget=Budget.of("0.40"))

    assert err.value.estimate == Decimal("0.420")
    assert err.value.limit == Decimal("0.40")
    assert err.value.images == 4


def test_a_plan_that_fits_exactly_is_allowed():
    plan = plan_regeneration(batch(4, 6), max_regenerations=1, budget=Budget.of("0.42"))

    assert plan.spent == Decimal("0.300")
    assert plan.total == Decimal("0.120")
    assert plan.as_dict()["budget_usd"] == "0.420"


def test_spent_counts_dropped_images_but_not_failed_runs():
    records = [
        *batch(1, 1),
        image_record(5, status="dropped", cost_usd="0.045"),  # paid for, then dropped
        image_record(6, status="failed", uri=None, cost_usd="0.030"),  # failed runs are not billed
    ]

    plan = plan_regeneration(records, max_regenerations=1)

    assert plan.spent == Decimal("0.105")


def test_an_explicit_spent_figure_is_used_as_given():
    with pytest.raises(BudgetExceededError):
        plan_regeneration(batch(1), max_regenerations=1, budget=Budget.of(1), spent="0.98")


def test_images_out_of_regenerations_are_reported_not_planned():
    records = [image_record(0, checks=BLANK, attempt=3), image_record(1, checks=BLANK, attempt=2)]

    plan = plan_regeneration(records, max_regenerations=2)

    assert [item.index for item in plan.items] == [1]
    assert plan.items[0].attempt == 3
    assert plan.exhausted == (0,)


def test_zero_regenerations_plans_nothing_and_costs_nothing():
    plan = plan_regeneration(batch(3), max_regenerations=0, budget=Budget.of(0))

    assert plan.items == ()
    assert plan.exhausted == (0, 1, 2)
    assert plan.total == 0


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_max_regenerations_must_be_a_non_negative_integer(value):
    with pytest.raises(FluxValidationError, match="max_regenerations"):
        plan_regeneration(batch(1), max_regenerations=value)


def test_supersede_drops_the_old_image_and_appends_the_new_one_after_the_batch():
    records = batch(2, 1)
    new = image_record(1, run_id="run-1b", seed=77, checks=[])

    out = supersede(records, [new])

    assert [(r.index, r.status, r.attempt) for r in out] == [
        (0, "succeeded", 1),
        (1, "dropped", 1),
        (2, "succeeded", 1),
        (1, "succeeded", 2),
    ]
    assert out[1].failure_code == QUALITY_FAILURE_CODE
    assert out[1].failure_message == "failed not_blank; replaced by attempt 2"
    assert out[3].regenerated_from == "run-1"


def test_supersede_refuses_a_replacement_for_an_image_that_is_not_live():
    records = [image_record(0, status="dropped")]

    with pytest.raises(ValueError, match="index 0"):
        supersede(records, [image_record(0)])
