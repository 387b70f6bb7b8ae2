"""The large-night template: one plan prices the whole night against one budget and the balance, then
mapped shards carry their share; over budget or over the balance, no shard starts."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def night(airflow_db):
    from dagbags import dag_bag

    return dag_bag(REPO / "dags" / "flux2_large_night.py").get_dag("flux2_large_night")


def test_a_night_in_four_shards_shares_one_budget_and_pays_each_image_once(
    emulator, run_dag, xcom, task_states, night, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_OUTPUT_URI", tmp_path.as_uri())
    dr = run_dag(night)
    assert dr.state == "success"
    states = task_states(dr)
    assert [k for k in states if k.startswith("generate[")] == [f"generate[{i}]" for i in range(4)]
    shards = xcom(dr, "plan")
    assert [len(s["prompts"]) for s in shards] == [10, 10, 10, 10]
    shares = [Decimal(s["budget_usd"]) for s in shards]
    assert sum(shares) <= Decimal("2.00") and all(share >= Decimal("0.300") for share in shares)
    records = [r for i in range(4) for r in xcom(dr, "generate", map_index=i)]
    assert len(records) == 40 and all(r["status"] == "succeeded" for r in records)
    assert len(emulator.ledger()["entries"]) == 40
    assert Decimal(emulator.ledger()["total_cost"]) == sum(Decimal(r["cost_usd"]) for r in records) == Decimal("1.2")
    out = capfd.readouterr()
    assert "Night plan: 4 shard(s) × 10 image(s) × $0.030 = $1.20 for 40 images · budget $2.00" in out.out + out.err


def test_a_night_over_its_budget_starts_no_shard(emulator, run_dag, task_states, night, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_OUTPUT_URI", tmp_path.as_uri())
    dr = run_dag(night, run_conf={"budget_usd": "1.00"})
    assert dr.state == "failed" and task_states(dr)["plan"] == "failed"
    assert emulator.stats()["runs_created"] == 0


def test_a_night_over_the_balance_starts_no_shard(emulator, run_dag, task_states, night, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_OUTPUT_URI", tmp_path.as_uri())
    emulator.configure(credit_usd="0.50")
    dr = run_dag(night)
    assert dr.state == "failed" and task_states(dr)["plan"] == "failed"
    assert emulator.stats()["runs_created"] == 0
