"""Fault plans: validation, triggers and rule order, without a server."""

from __future__ import annotations

import pytest

from airflow_provider_flux2.emulator.faults import FaultPlan, PlanError
from airflow_provider_flux2.models import Variant


def _kinds(plan: FaultPlan, endpoint: str, n: int, category: str = "request", prompts=()) -> list[str | None]:
    return [(f.kind if (f := plan.select(endpoint, category, prompts)) else None) for _ in range(n)]


def test_empty_plan_never_fires():
    assert _kinds(FaultPlan(), "create_run", 3) == [None, None, None]


def test_rule_without_trigger_fires_on_every_matching_request():
    plan = FaultPlan.parse({"rules": [{"endpoint": "get_run", "fault": "drop"}]})
    assert _kinds(plan, "get_run", 3) == ["drop"] * 3
    assert _kinds(plan, "create_run", 1) == [None]


def test_count_and_after():
    plan = FaultPlan.parse({"rules": [{"endpoint": "health", "fault": "stall", "count": 2, "after": 2}]})
    assert _kinds(plan, "health", 6) == [None, None, "stall", "stall", None, None]


def test_sequence_elements_and_defaults():
    plan = FaultPlan.parse(
        {
            "rules": [
                {
                    "endpoint": "create_run",
                    "phase": "after",
                    "sequence": ["rate_limit", "ok", {"fault": "server_error", "status": 502}, {"fault": "ok"}],
                }
            ]
        }
    )
    faults = [plan.select("create_run", "request") for _ in range(5)]
    assert [f.kind if f else None for f in faults] == ["rate_limit", None, "server_error", None, None]
    assert faults[0].params == {"phase": "after", "retry_after": None}
    assert faults[2].params == {"phase": "after", "status": 502}


def test_probability_is_seeded():
    spec = {"seed": 3, "rules": [{"fault": "server_error", "probability": 0.5}]}
    first = _kinds(FaultPlan.parse(spec), "get_run", 50)
    assert first == _kinds(FaultPlan.parse(spec), "get_run", 50)
    assert 10 < first.count("server_error") < 40
    assert _kinds(FaultPlan.parse({"rules": [{"fault": "drop", "probability": 0}]}), "get_run", 20) == [None] * 20


def test_matching_by_prompt_and_model():
    plan = FaultPlan.parse(
        {"rules": [{"endpoint": "create_run", "fault": "drop", "match": {"prompt_contains": "FOX", "model": "flex"}}]}
    )
    assert plan.select("create_run", "request", ["a red fox"], Variant.FLEX) is not None
    assert plan.select("create_run", "request", ["a red fox"], Variant.PRO) is None
    assert plan.select("create_run", "request", ["a cat"], Variant.FLEX) is None


def test_non_matching_requests_do_not_advance_counters():
    plan = FaultPlan.parse(
        {"rules": [{"endpoint": "create_run", "fault": "drop", "count": 1, "match": {"prompt_contains": "x"}}]}
    )
    assert plan.select("create_run", "request", ["a"]) is None
    assert plan.select("create_run", "request", ["x"]) is not None


def test_run_level_rules_only_see_created_runs():
    plan = FaultPlan.parse({"rules": [{"fault": "nsfw"}]})  # endpoint "*": both create endpoints
    assert plan.select("create_run", "request") is None
    assert plan.select("create_run", "run").kind == "nsfw"
    assert plan.select("create_batch", "run").kind == "nsfw"
    assert plan.select("get_run", "run") is None


def test_first_firing_rule_wins_and_later_rules_do_not_count_it():
    plan = FaultPlan.parse({"rules": [{"fault": "rate_limit", "count": 1}, {"fault": "server_error", "count": 1}]})
    assert _kinds(plan, "health", 3) == ["rate_limit", "server_error", None]


def test_defaults_of_each_kind():
    def params(kind: str, category: str = "request", endpoint: str = "create_run") -> dict:
        rule = {"endpoint": "download" if kind == "slow_download" else "*", "fault": kind}
        return dict(FaultPlan.parse({"rules": [rule]}).select(endpoint, category).params)

    assert params("stall") == {"phase": "before", "seconds": 30.0}
    assert params("server_error") == {"phase": "before", "status": 500}
    assert params("rate_limit") == {"phase": "before", "retry_after": None}
    assert params("http_error") == {
        "phase": "before",
        "status": 500,
        "code": None,
        "message": None,
        "retry_after": None,
    }
    assert params("slow_download", endpoint="download") == {"bytes_per_second": 65536}
    assert params("run_failure", "run")["code"] == "INTERNAL_ERROR"
    assert params("moderation", "run")["stage"] == "OUTPUT_MODERATION"
    assert params("low_score", "run") == {"score": 0.1}
    assert params("duplicate_image", "run") == {"of_prompt": None, "of_seed": None}


@pytest.mark.parametrize(
    ("rule", "loc"),
    [
        ({"fault": "meteor"}, ["faults", "rules", 0, "fault"]),
        ({}, ["faults", "rules", 0, "fault"]),
        ({"fault": "server_error", "status": 504}, ["faults", "rules", 0, "status"]),
        ({"fault": "http_error", "status": 302}, ["faults", "rules", 0, "status"]),
        ({"fault": "rate_limit", "retry_after": -1}, ["faults", "rules", 0, "retry_after"]),
        ({"fault": "drop", "phase": "during"}, ["faults", "rules", 0, "phase"]),
        ({"fault": "drop", "colour": "red"}, ["faults", "rules", 0, "colour"]),
        ({"endpoint": "get_batch", "fault": "nsfw"}, ["faults", "rules", 0, "endpoint"]),
        ({"endpoint": "get_run", "fault": "slow_download"}, ["faults", "rules", 0, "endpoint"]),
        ({"fault": "drop", "count": 1, "sequence": ["drop"]}, ["faults", "rules", 0, "sequence"]),
        ({"fault": "drop", "sequence": ["drop"]}, ["faults", "rules", 0, "fault"]),
        ({"sequence": ["drop", "nsfw"]}, ["faults", "rules", 0]),
        ({"sequence": ["drop", "teleport"]}, ["faults", "rules", 0, "sequence", 1]),
        ({"fault": "drop", "probability": 1.5}, ["faults", "rules", 0, "probability"]),
        ({"fault": "drop", "match": {"model": "flux-9"}}, ["faults", "rules", 0, "match", "model"]),
    ],
)
def test_invalid_rules_name_the_field(rule, loc):
    with pytest.raises(PlanError) as caught:
        FaultPlan.parse({"rules": [rule]})
    assert caught.value.errors[0]["loc"] == loc


def test_every_bad_rule_is_reported():
    with pytest.raises(PlanError) as caught:
        FaultPlan.parse({"rules": [{"fault": "x"}, {"fault": "drop"}, {"fault": "y"}]})
    assert [e["loc"][2] for e in caught.value.errors] == [0, 2]


def test_describe_shows_the_plan_and_counters():
    plan = FaultPlan.parse({"seed": 1, "rules": [{"endpoint": "health", "fault": "drop", "count": 1}]})
    plan.select("health", "request")
    described = plan.describe()
    assert described["seed"] == 1
    assert described["rules"][0] == {"endpoint": "health", "fault": "drop", "count": 1, "after": 0}
    assert described["seen"] == [1]
