"""The night's plan: shards split evenly, each share at least its shard's worst case, the shares never over
the night's budget; bad shard arguments refused when the DAG is parsed."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.operators.night import FluxPlanNightOperator, _share


@pytest.mark.parametrize(("count", "shards", "sizes"), [(40, 4, [10] * 4), (10, 3, [4, 4, 2]), (3, 10, [1, 1, 1])])
def test_shards_split_the_prompts_in_order(count, shards, sizes):
    op = FluxPlanNightOperator(task_id="plan", prompts=[], shards=shards)
    split = op._shards([f"p{i}" for i in range(count)])
    assert [len(s) for s in split] == sizes
    assert [p for s in split for p in s] == [f"p{i}" for i in range(count)]


def test_shard_size_gives_the_number_of_shards():
    op = FluxPlanNightOperator(task_id="plan", prompts=[], shard_size=1000)
    assert [len(s) for s in op._shards(list(range(10_000)))] == [1000] * 10


@pytest.mark.parametrize(
    ("worsts", "limit"),
    [(["0.3"] * 4, "2.00"), (["0.333", "0.333", "0.334"], "1.00"), (["0.0145", "0.029", "0.0435"], "0.10")],
)
def test_each_share_covers_its_shard_and_the_shares_fit_the_night(worsts, limit):
    worst = [Decimal(w) for w in worsts]
    night = sum(worst)
    shares = [_share(w, night, Decimal(limit)) for w in worst]
    assert all(share >= w for share, w in zip(shares, worst, strict=True))
    assert sum(shares) <= Decimal(limit)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"shards": 2, "shard_size": 10}, {"shards": 0}, {"shard_size": -1}, {"shards": 2, "budget_usd": "abc"}],
)
def test_bad_shard_arguments_fail_when_the_dag_is_parsed(kwargs):
    with pytest.raises(FluxValidationError):
        FluxPlanNightOperator(task_id="plan", prompts=["a"], **kwargs)


def test_templated_shards_wait_for_the_run():
    assert FluxPlanNightOperator(task_id="plan", prompts=["a"], shards="{{ params.shards }}").shards
