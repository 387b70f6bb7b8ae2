"""execute() plans and defers exactly once, sending nothing; what it hands the trigger stays small."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from airflow.exceptions import TaskDeferred

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import RunStatus
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger

PROMPT = (
    "Studio photograph of a hand-thrown ceramic mug in sage green glaze on a walnut table, soft window light, "
    "shallow depth of field, catalogue style, item {}"
)


def context() -> dict:
    pushed: dict = {}
    ti = SimpleNamespace(
        dag_id="catalogue",
        task_id="generate",
        run_id="scheduled__2026-12-01T00:00:00+00:00",
        map_index=-1,
        try_number=1,
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
        pushed=pushed,
    )
    return {"ti": ti}


def test_execute_plans_and_defers_exactly_once_sending_nothing(emulator, tmp_path):
    operator = FluxGenerateImageOperator(
        task_id="generate",
        prompts=[PROMPT.format(i) for i in range(1000)],
        image_size="1920x1080",
        output_uri=tmp_path.as_uri(),
        max_in_flight=32,
        budget_usd="50",
        deferrable=True,
    )
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(ctx)
    trigger = deferred.value.trigger
    assert isinstance(trigger, FluxGenerationTrigger) and deferred.value.method_name == "execute_complete"
    assert len(trigger.jobs) == 1000 and trigger.options["chunk_size"] == 8
    assert "batch_keys" not in trigger.serialize()[1]["options"]  # the window derives them from the jobs' keys
    assert len(set(trigger.window().batch_keys)) == 125
    assert trigger.options["budget_usd"] == "50" and trigger.options["end_time"] > time.time()
    # Planning submits nothing (the trigger does); it reads the organisation's balance once.
    assert emulator.stats()["requests"] == {"get_balance": 1}
    assert ctx["ti"].pushed["flux_gallery_url"].startswith(tmp_path.as_uri())

    kwargs = len(json.dumps(trigger.serialize()[1]))
    window = trigger.window()
    for state in window.states.values():  # the largest event: every job finished, resubmitted once
        state.phase, state.attempt, state.status = "done", 2, RunStatus.SUCCEEDED.value
        state.run_id, state.batch_id, state.previous = f"run-{state.index:032d}", "b" * 36, ["r" * 36]
        state.submitted_at = state.detected_at = time.time()
        state.completed_at = "2026-12-01T10:00:00.123456+00:00"
    event = len(json.dumps(window.event(time.time())))
    print(f"1,000 images: trigger kwargs {kwargs:,} B, largest event {event:,} B")
    assert kwargs <= 1_000_000 and event <= 1_000_000


def test_a_bad_policy_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(FluxValidationError, match=r"on_budget_stop.*fail \| record"):
        FluxGenerateImageOperator(task_id="t", prompt="x", on_budget_stop="ignore")


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"model": "klein"}, "model"),
        ({"image_size": "1080p"}, "image_size"),
        ({"output_format": "gif"}, "output_format"),
        ({"seed": -1}, "seed"),
        ({"model": "pro", "guidance_scale": 3.0}, "guidance_scale"),
        ({"model": "klein-4b", "image_size": "4096x4096"}, "image_size"),
        ({"model": "{{ params.model }}", "image_size": "1080p"}, "image_size"),
    ],
)
def test_a_typo_fails_when_the_dag_is_parsed_naming_the_field(arguments, field):
    with pytest.raises(FluxValidationError, match=f"Invalid {field}"):
        FluxGenerateImageOperator(task_id="generate", prompt="a mug", **arguments)


@pytest.mark.parametrize(
    "arguments",
    [
        {"model": "{{ params.model }}", "guidance_scale": 3.0},  # known once rendered
        {"guidance_scale": 3.0},  # the connection's model may be flex
        {"model": "flex", "guidance_scale": 3.0, "image_size": "{{ params.size }}"},
    ],
)
def test_what_depends_on_a_template_or_the_connection_waits_for_the_plan(arguments):
    FluxGenerateImageOperator(task_id="generate", prompt="a mug", **arguments)
