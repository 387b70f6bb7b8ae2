"""Every shipped DAG imports cleanly; the pre-production and creative DAGs run end to end."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_flux2.storage.local import path_of

REPO = Path(__file__).resolve().parents[2]
DAG_IDS = {
    "flux2_product_image_refresh",
    "flux2_preproduction_batch",
    "flux2_creative_pipeline",
    "flux2_photo_restyle",
    "flux2_large_night",
}


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from dagbags import dag_bag

    return dag_bag(REPO / "dags")


def test_every_dag_imports_without_error(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == DAG_IDS
    for dag_id in DAG_IDS:
        dag = dagbag.get_dag(dag_id)
        assert dag.doc_md and "Cost on defaults" in dag.doc_md, dag_id
        assert "flux2" in dag.tags


def test_preproduction_batch_maps_briefs_by_variants_into_one_gallery(
    emulator, run_dag, xcom, task_states, dagbag, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_OUTPUT_URI", tmp_path.as_uri())
    dr = run_dag(dagbag.get_dag("flux2_preproduction_batch"))
    assert dr.state == "success"
    states = task_states(dr)
    assert [k for k in states if k.startswith("generate[")] == [f"generate[{i}]" for i in range(4)]
    summary = xcom(dr, "gallery")
    assert summary["count"] == 16
    assert summary["cost_usd"] == "0.900" == emulator.ledger()["total_cost"]
    manifest = json.loads(path_of(summary["manifest_uri"]).read_text())
    models = {row["model"] for row in manifest["images"]}
    assert models == {"black-forest-labs/flux-2-pro", "black-forest-labs/flux-2-flex"}
    assert path_of(summary["gallery_uri"]).is_file()


def test_preproduction_batch_over_budget_sends_nothing(emulator, run_dag, task_states, dagbag, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_OUTPUT_URI", tmp_path.as_uri())
    dr = run_dag(dagbag.get_dag("flux2_preproduction_batch"), run_conf={"budget_usd": "0.50"})
    assert dr.state == "failed"
    assert task_states(dr)["plan"] == "failed"
    assert emulator.stats()["runs_created"] == 0


def test_creative_pipeline_gates_regenerates_and_publishes_the_passed_set(
    emulator, run_dag, xcom, task_states, dagbag, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_CREATIVE_OUTPUT_URI", tmp_path.as_uri())
    # One brief comes back blank the first time: the gate regenerates it with a new seed.
    emulator.faults(
        {"rules": [{"endpoint": "create_batch", "fault": "blank_image", "match": {"prompt_contains": "hiker"}}]}
    )
    dr = run_dag(dagbag.get_dag("flux2_creative_pipeline"))
    assert dr.state == "success"
    states = task_states(dr)
    assert states["publish"] == "success" and states["nothing_passed"] == "skipped"
    summary = xcom(dr, "publish")
    assert summary["count"] == 4
    checked = xcom(dr, "quality_gate")
    assert [r["attempt"] for r in checked if r["status"] == "succeeded" and "hiker" in r["prompt"]] == [2]
    ledger = emulator.ledger()
    assert len(ledger["entries"]) == 5
    assert Decimal(summary["cost_usd"]) == Decimal(ledger["total_cost"]) == Decimal("0.165")
