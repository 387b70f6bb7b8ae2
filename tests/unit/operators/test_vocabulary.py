"""One vocabulary: the same name and default for the same idea across the operators and the trigger,
old names accepted with a deprecation warning, and the quality step's ``min_pass_rate``."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from airflow.exceptions import AirflowProviderDeprecationWarning

from airflow_provider_flux2.arguments import DEFAULT_POLL_INTERVAL, DEFAULT_TIMEOUT, check_pass_rate
from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator
from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger


def generate(**kwargs):
    return FluxGenerateImageOperator(task_id="generate", prompt="a cup", **kwargs)


def quality(**kwargs):
    return FluxQualityCheckOperator(task_id="check", records=[], **kwargs)


def test_the_operators_and_the_trigger_share_names_and_defaults():
    trigger = FluxGenerationTrigger(runs=["r1"])
    assert generate().on_failure == quality().on_failure == "fail"
    poll_interval = trigger.options["poll_interval"]
    assert generate().poll_interval == quality().poll_interval == poll_interval == DEFAULT_POLL_INTERVAL
    assert generate().timeout == quality().timeout == DEFAULT_TIMEOUT
    assert abs(trigger.options["end_time"] - time.time() - DEFAULT_TIMEOUT) < 5


def test_the_old_name_on_run_failure_still_works_with_a_deprecation_warning():
    with pytest.warns(AirflowProviderDeprecationWarning, match="`on_run_failure` is deprecated; use `on_failure`"):
        op = generate(on_run_failure="record")
    assert op.on_failure == "record"


def test_the_old_and_new_name_disagreeing_is_an_error_naming_both():
    with pytest.warns(AirflowProviderDeprecationWarning), pytest.raises(FluxValidationError) as err:
        generate(on_run_failure="record", on_failure="fail_fast")
    assert err.value.field == "on_failure" and "on_run_failure='record'" in str(err.value)


def test_a_bad_failure_policy_names_the_argument_the_dag_used():
    with pytest.raises(FluxValidationError) as err:
        generate(on_failure="retry")
    assert err.value.field == "on_failure" and "fail | record" in str(err.value)
    with pytest.warns(AirflowProviderDeprecationWarning), pytest.raises(FluxValidationError) as err:
        generate(on_run_failure="retry")
    assert err.value.field == "on_run_failure"


@pytest.mark.parametrize(
    ("given", "expected"),
    [(0.9, Decimal("0.9")), ("90%", Decimal("0.9")), ("87.5 %", Decimal("0.875")), (1, Decimal(1)), ("0", Decimal(0))],
)
def test_min_pass_rate_takes_a_share_or_a_percentage(given, expected):
    assert check_pass_rate("min_pass_rate", given) == expected


@pytest.mark.parametrize("bad", ["ninety", "120%", -0.1, 1.5, True, [0.9], "NaN"])
def test_a_bad_min_pass_rate_is_refused_when_the_dag_is_parsed(bad):
    with pytest.raises(FluxValidationError) as err:
        quality(on_failure="drop", min_pass_rate=bad)
    assert err.value.field == "min_pass_rate" and "'90%'" in str(err.value)


def test_a_templated_min_pass_rate_waits_for_the_run():
    assert quality(min_pass_rate="{{ params.rate }}").min_pass_rate == "{{ params.rate }}"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompts": [{"prompt": "a cup", "seed": -5}]}, "seed"),
        ({"prompts": ["a cup", {"prompt": "a mug", "image_size": "huge"}]}, "image_size"),
        ({"prompts": []}, "prompts"),
        ({"prompt": ""}, "prompt"),
        ({"prompts": ["a cup", {"prompt": "a mug", "model": "klein"}]}, "model"),
        ({"prompts": [{"prompt": "a cup", "model": "flex", "guidance_scale": 99}]}, "guidance_scale"),
    ],
)
def test_a_typo_in_the_prompts_fails_when_the_dag_is_parsed(kwargs, field):
    with pytest.raises(FluxValidationError) as err:
        FluxGenerateImageOperator(task_id="generate", **kwargs)
    assert err.value.field == field


def test_templated_prompts_and_values_wait_for_the_plan():
    FluxGenerateImageOperator(task_id="a", prompt="{{ params.prompt }}")
    FluxGenerateImageOperator(task_id="b", prompts=["a cup"], seed="{{ params.seed }}")
    FluxGenerateImageOperator(task_id="c", prompts=[{"prompt": "a cup", "model": "{{ params.model }}"}])


def test_the_quality_steps_exhausted_policy_is_checked_when_the_dag_is_parsed():
    with pytest.raises(FluxValidationError) as err:
        quality(on_failure="regenerate", on_exhausted="boom")
    assert err.value.field == "on_exhausted"
