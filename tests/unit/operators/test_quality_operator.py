"""``operators/quality.py``: what the quality step refuses when the DAG is parsed, what it templates, what
it spends and what it reports to lineage — no DAG run.

The step run by ``dag.test()`` against the emulator, S3 (moto) and Chromium is tested in
``tests/integration/test_quality_publish_operators.py``; Sentinel's gate in ``tests/unit/test_sentinel_gate.py``.
"""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest
from synthetic_images import image_record

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator, _spent


def test_unknown_check_is_refused_when_the_dag_is_parsed():
    with pytest.raises(FluxValidationError, match="not_a_check"):
        FluxQualityCheckOperator(task_id="check", records=[], checks=["decodes", "not_a_check"])


@pytest.mark.parametrize(
    ("argument", "value", "allowed"),
    [
        ("on_failure", "retry", "fail | drop | regenerate"),
        ("on_exhausted", "regenerate", "fail | drop"),
    ],
)
def test_a_policy_it_does_not_know_is_refused_naming_the_allowed_ones(argument, value, allowed):
    with pytest.raises(FluxValidationError) as raised:
        FluxQualityCheckOperator(task_id="check", records=[], **{argument: value})
    assert raised.value.field == argument and raised.value.allowed == allowed


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"sentinel_min_pass_rate": "180%"}, "sentinel_min_pass_rate"),
        ({"sentinel_max_in_flight": 0}, "sentinel_max_in_flight"),
        ({"sentinel_job_class": " "}, "sentinel_job_class"),
        ({"sentinel_task_type": " "}, "sentinel_task_type"),
    ],
)
def test_a_sentinel_gate_it_cannot_apply_is_refused_when_the_dag_is_parsed(arguments, field):
    with pytest.raises(FluxValidationError) as raised:
        FluxQualityCheckOperator(
            task_id="check", records=[], sentinel=True, **{"sentinel_task_type": "product", **arguments}
        )
    assert raised.value.field == field


def test_templated_arguments_are_left_for_the_run_to_check():
    check = FluxQualityCheckOperator(
        task_id="check",
        records="{{ ti.xcom_pull('generate') }}",
        checks="{{ var.json.checks }}",
        min_pass_rate="{{ var.value.rate }}",
        sentinel=True,
        sentinel_task_type="{{ params.kind }}",
        sentinel_min_pass_rate="{{ params.rate }}",
    )
    assert {"records", "checks", "min_pass_rate", "sentinel_task_type", "sentinel_min_pass_rate"} <= set(
        check.template_fields
    )


def test_what_the_batch_has_cost_counts_billed_images_only():
    records = [
        image_record(0, cost_usd="0.030"),
        image_record(1, cost_usd="0.045", billed_mp=2),
        image_record(2, status="failed", cost_usd="0.030"),  # a failed run is not billed
        image_record(3, status="pending", run_id=None, failure_code="NOT_SENT"),  # never sent
    ]
    assert _spent(records) == Decimal("0.075")


def test_lineage_reads_the_batch_and_writes_regenerations_where_they_go():
    ti = SimpleNamespace(dag_id="d", run_id="manual__2026-12-01T12:38:50+00:00", task_id="check")
    record = image_record(0, uri="s3://staging/d/manual__2026-12-01T12-38-50Z/generate/00000-abc.jpg").to_xcom()
    check = FluxQualityCheckOperator(
        task_id="check", records=[record], on_failure="regenerate", output_uri="s3://regenerated/night"
    )
    facets = check.get_openlineage_facets_on_complete(ti)
    assert [(d.namespace, d.name) for d in facets.inputs] == [("s3://staging", "/")]
    assert [(d.namespace, d.name) for d in facets.outputs] == [("s3://staging", "/"), ("s3://regenerated", "night")]
    dropping = FluxQualityCheckOperator(
        task_id="drop", records=[record], on_failure="drop", output_uri="s3://elsewhere/y"
    )
    assert [(d.namespace, d.name) for d in dropping.get_openlineage_facets_on_complete(ti).outputs] == [
        ("s3://staging", "/")
    ]
