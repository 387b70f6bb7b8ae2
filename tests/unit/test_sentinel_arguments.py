"""The quality operator's Sentinel arguments and plan line, without a socket."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import ImageRecord
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator
from airflow_provider_flux2.pricing import Budget
from airflow_provider_flux2.quality.suite import CheckSuite


def operator(**kwargs) -> FluxQualityCheckOperator:
    return FluxQualityCheckOperator(task_id="check", records=[], **kwargs)


def test_sentinel_is_off_by_default_and_its_text_arguments_are_templated():
    check = operator()
    assert check.sentinel is False
    assert {"sentinel_task_type", "sentinel_task_description", "sentinel_min_pass_rate"} <= set(check.template_fields)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sentinel_min_pass_rate": "120%"}, "sentinel_min_pass_rate"),
        ({"sentinel_max_in_flight": 0}, "sentinel_max_in_flight"),
        ({"sentinel_resubmit_failed": -1}, "sentinel_resubmit_failed"),
        ({"sentinel_task_type": "  "}, "sentinel_task_type"),
        ({"sentinel_job_class": ""}, "sentinel_job_class"),
    ],
)
def test_bad_sentinel_arguments_fail_when_the_dag_is_parsed(kwargs, field):
    with pytest.raises(FluxValidationError, match=field):
        operator(sentinel=True, **{"sentinel_task_type": "product", **kwargs})


def test_templated_sentinel_arguments_wait_for_the_run():
    operator(sentinel=True, sentinel_task_type="{{ params.kind }}", sentinel_min_pass_rate="{{ params.bar }}")


def record(index: int) -> ImageRecord:
    return ImageRecord(
        index=index,
        model="black-forest-labs/flux-2-pro",
        prompt="p",
        width=512,
        height=512,
        billed_mp=1,
        cost_usd="0.030",
        estimated_cost_usd="0.030",
        status="succeeded",
        uri=f"file:///s/{index}.jpg",
    )


def test_the_plan_line_states_sentinels_price_count_gate_and_budget():
    check = operator(sentinel=True, sentinel_task_type="product", sentinel_min_pass_rate="80%", on_failure="regenerate")
    gate = check._gate(rendered=True)
    records = [record(i) for i in range(3)] + [record(3).model_copy(update={"status": "failed", "uri": None})]
    line = check._plan_line(
        records, CheckSuite.from_config(["decodes"]), Decimal("0.9"), Budget.of("1.00"), gate, Decimal("0.0125")
    )
    assert line == (
        "Quality plan: 4 item(s) · checks decodes · Sentinel standard at $0.0125 each (up to 3 evaluation(s), "
        "$0.0375; gate: overall_passed and weighted_pass_rate ≥ 80%) · on_failure=regenerate · up to 1 "
        "regeneration(s) per image (each judged again), budget $1.000 · min_pass_rate 90% (the task fails below "
        "4 of 4 passing)"
    )
    plain = operator(on_failure="drop")._plan_line(records, CheckSuite.from_config(["decodes"]), Decimal("0.9"), None)
    assert "Sentinel" not in plain and "budget" not in plain
