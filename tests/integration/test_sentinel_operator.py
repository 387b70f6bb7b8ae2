"""The quality step's Sentinel gate, end to end with dag.test() on real sockets: generate → check (Sentinel)
→ publish, in the worker and on the triggerer; verdicts in the records, the manifest (JSON and CSV) and
the gallery; every evaluation billed once, retries and faults included; the budget before anything is sent."""

from __future__ import annotations

import csv
import io
import itertools
import json
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from airflow.sdk import DAG

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.publish import FluxPublishOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator

_ids = itertools.count()
PROMPTS = [f"catalogue sneaker {i}, studio light" for i in range(5)]


def items(fail: dict[int, str] | None = None) -> list[dict]:
    """Prompts as items; ``fail`` puts a marker in an item's Sentinel task description."""
    out = []
    for i, prompt in enumerate(PROMPTS):
        entry: dict = {"prompt": prompt, "id": f"SKU-{i}"}
        if fail and i in fail:
            entry["extra"] = {"sentinel_task_description": f"white sneaker on white {fail[i]}"}
        out.append(entry)
    return out


def pipeline(tmp_path: Path, prompts: list, *, deferrable: bool, publish: bool = True, **check) -> DAG:
    staging = (tmp_path / "staging").as_uri()
    with DAG(f"t_sentinel_{next(_ids)}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        generate = FluxGenerateImageOperator(
            task_id="generate", prompts=prompts, image_size="square", seed=5, output_uri=staging, poll_interval=0.02
        )
        checked = FluxQualityCheckOperator(
            task_id="check",
            records=generate.output,
            checks=["decodes", "not_blank"],
            output_uri=staging,
            poll_interval=0.02,
            deferrable=deferrable,
            sentinel=True,
            sentinel_task_type="product",
            sentinel_task_description="white sneaker on white",
            **check,
        )
        if publish:
            FluxPublishOperator(
                task_id="publish", records=checked.output, destination_uri=(tmp_path / "published").as_uri()
            )
    return dag


def evaluations(ledger: dict) -> list[dict]:
    return [e for e in ledger["entries"] if e["kind"] == "evaluation"]


@pytest.mark.parametrize("deferrable", [False, True], ids=["in-worker", "deferred"])
def test_failing_verdicts_are_dropped_and_on_record_in_the_manifest_csv_and_gallery(
    emulator, run_dag, xcom, tmp_path, deferrable
):
    dag = pipeline(
        tmp_path,
        items({1: "SENTINEL_FAIL"}),
        deferrable=deferrable,
        on_failure="drop",
        min_pass_rate="80%",
        sentinel_min_pass_rate="60%",
    )
    dr = run_dag(dag)
    assert dr.state == "success"

    records = xcom(dr, "check")
    by_index = {r["index"]: r for r in records}
    assert by_index[1]["status"] == "dropped"
    verdict = by_index[1]["sentinel"]
    assert verdict["status"] == "completed" and verdict["overall_passed"] is False and verdict["passed"] is False
    assert "SENTINEL_FAIL" in verdict["top_issues"][0] and verdict["cost_usd"] == "0.010"
    failed = [c for c in by_index[1]["checks"] if not c["passed"]]
    assert [c["check"] for c in failed] == ["sentinel"] and failed[0]["reason"].startswith("failed, score 0.33")
    for i in (0, 2, 3, 4):
        good = by_index[i]["sentinel"]
        assert good["passed"] is True and good["score"] >= 0.70 and good["evaluation_id"] and good["top_strengths"]
        assert by_index[i]["checks"][-1]["check"] == "sentinel"
    # The generation prompt sent is the upsampled one (pro upsamples), and each image was judged once.
    ledger = emulator.ledger()
    assert len(evaluations(ledger)) == 5 and len({e["evaluation_id"] for e in evaluations(ledger)}) == 5
    assert emulator.stats()["evaluations_created"] == 5

    summary = xcom(dr, "check", key="flux_quality_summary")
    assert summary["sentinel"] == {
        "job_class": "standard",
        "price_usd": "0.010",
        "gate": "overall_passed and weighted_pass_rate ≥ 60%",
        "evaluated": 5,
        "passed": 4,
        "failed": 1,
        "cost_usd": "0.050",
    }
    assert Decimal(summary["total_cost_usd"]) == Decimal(ledger["total_cost"]) == Decimal("0.200")

    published = xcom(dr, "publish")
    # The publish step's figure (its return value and the asset event) counts the evaluations too.
    assert (published["cost_usd"], published["generation_cost_usd"], published["evaluation_cost_usd"]) == (
        "0.200",
        "0.150",
        "0.050",
    )
    manifest = json.loads(Path(published["manifest_uri"][len("file://") :]).read_text())
    assert Decimal(manifest["summary"]["total_cost_usd"]) == Decimal(ledger["total_cost"])
    assert (
        manifest["summary"]["evaluation_cost_usd"] == "0.050" and manifest["summary"]["generation_cost_usd"] == "0.150"
    )
    rows = {row["index"]: row for row in manifest["images"]}
    assert rows[1]["sentinel"]["top_issues"] == verdict["top_issues"] and rows[1]["evaluation_cost_usd"] == "0.010"
    csv_path = Path(published["manifest_uri"][7:]).with_name("manifest.csv")
    table = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert {
        "sentinel.passed",
        "sentinel.score",
        "sentinel.top_issues",
        "sentinel.evaluation_id",
        "sentinel.cost_usd",
    } <= set(table[0])
    assert next(r for r in table if r["index"] == "1")["sentinel.passed"] == "false"
    gallery = Path(published["gallery_uri"][7:]).read_text()
    assert "SENTINEL_FAIL" in gallery and "Sentinel" in gallery and verdict["evaluation_id"] in gallery
    for text in (json.dumps(records), json.dumps(summary), json.dumps(manifest), gallery):
        assert emulator.api_key not in text


def test_a_failing_image_is_regenerated_judged_again_and_billed_once_each_on_the_triggerer(
    emulator, run_dag, xcom, tmp_path
):
    dag = pipeline(
        tmp_path,
        items({2: "SENTINEL_FAIL_ONCE"}),
        deferrable=True,
        on_failure="regenerate",
        max_regenerations=1,
        budget_usd="1.00",
    )
    dr = run_dag(dag)
    assert dr.state == "success"

    records = xcom(dr, "check")
    item = sorted((r for r in records if r["index"] == 2), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status"]) for r in item] == [(1, "dropped"), (2, "succeeded")]
    assert item[0]["sentinel"]["overall_passed"] is False and item[1]["sentinel"]["overall_passed"] is True
    assert item[0]["sentinel"]["evaluation_id"] != item[1]["sentinel"]["evaluation_id"]
    ledger = emulator.ledger()
    runs = [e for e in ledger["entries"] if e["kind"] == "run"]
    assert (len(runs), len(evaluations(ledger))) == (6, 6)  # 5 + 1 regenerated, each judged once
    summary = xcom(dr, "check", key="flux_quality_summary")
    assert summary["sentinel"]["cost_usd"] == "0.060" and summary["regenerated"] == 1
    assert Decimal(summary["total_cost_usd"]) == Decimal(ledger["total_cost"]) == Decimal("0.240")
    manifest = json.loads(Path(xcom(dr, "publish")["manifest_uri"][7:]).read_text())
    assert Decimal(manifest["summary"]["total_cost_usd"]) == Decimal("0.240")


def test_a_retried_task_reuses_the_verdicts_already_paid_for(emulator, run_dag, xcom, task_states, tmp_path):
    # The gate fails the task (on_failure="fail"); its retry asks again under the same keys.
    dag = pipeline(tmp_path, items({0: "SENTINEL_FAIL"}), deferrable=True, publish=False, on_failure="fail")
    dag.task_dict["check"].retries = 1
    dag.task_dict["check"].retry_delay = timedelta(seconds=0)
    dr = run_dag(dag)
    assert task_states(dr)["check"] == "failed"
    stats = emulator.stats()
    # The retry read the five verdicts by id (task_state_store) instead of asking again: billed once.
    assert stats["requests"]["create_evaluation"] == 5 and stats["requests"]["get_evaluation"] >= 10
    assert stats["evaluations_created"] == 5 and len(evaluations(emulator.ledger())) == 5


def test_an_over_budget_evaluation_plan_sends_nothing(emulator, run_dag, task_states, tmp_path, capfd):
    # The five images cost $0.150; five evaluations $0.050 more: a $0.19 budget refuses them first.
    dag = pipeline(tmp_path, items(), deferrable=False, publish=False, on_failure="drop", budget_usd="0.19")
    dr = run_dag(dag)
    assert task_states(dr)["check"] == "failed"
    assert emulator.stats()["requests"].get("create_evaluation", 0) == 0 and not evaluations(emulator.ledger())
    logged = capfd.readouterr().out
    assert "Sentinel: 5 evaluation(s) at $0.010 each ($0.050) on top of the $0.150 spent" in logged
    assert "exceeds the task budget of $0.190; nothing was submitted" in logged


def test_faults_are_ridden_out_and_nothing_is_billed_twice(emulator, run_dag, xcom, tmp_path):
    emulator.faults(
        {
            "rules": [
                {"endpoint": "create_evaluation", "fault": "server_error", "count": 2},
                {"endpoint": "create_evaluation", "fault": "server_error", "phase": "after", "count": 1},
                {"endpoint": "get_evaluation", "fault": "rate_limit", "retry_after": 0.05, "count": 3},
                {"endpoint": "create_evaluation", "fault": "run_failure", "code": "JUDGE_UNAVAILABLE", "count": 1},
            ]
        }
    )
    dag = pipeline(tmp_path, items(), deferrable=True, publish=False, on_failure="drop", min_pass_rate=0)
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "check")
    assert all(r["sentinel"]["status"] == "completed" and r["sentinel"]["passed"] for r in records)
    ledger = emulator.ledger()
    # One evaluation failed (free) and was sent again; the one whose answer was lost was replayed.
    assert len(evaluations(ledger)) == 5 and emulator.stats()["evaluations_created"] == 6
    assert Decimal(xcom(dr, "check", key="flux_quality_summary")["total_cost_usd"]) == Decimal(ledger["total_cost"])


def test_the_connections_price_is_used_and_the_billed_cost_is_recorded(emulator, run_dag, xcom, tmp_path, monkeypatch):
    connection = json.loads(emulator.connection_json())
    connection["extra"]["sentinel_price_usd"] = "0.02"
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_DEFAULT", json.dumps(connection))
    emulator.configure(evaluation_price_usd="0.015")
    dag = pipeline(tmp_path, items(), deferrable=False, publish=False, on_failure="drop", min_pass_rate=0)
    dr = run_dag(dag)
    assert dr.state == "success"
    summary = xcom(dr, "check", key="flux_quality_summary")
    assert summary["sentinel"]["price_usd"] == "0.020"  # planned at the connection's price
    assert summary["sentinel"]["cost_usd"] == "0.075"  # recorded as the API billed it
    assert emulator.stats()["requests"].get("list_job_classes", 0) == 0


def test_images_in_s3_reach_the_api_presigned_and_are_judged_on_their_pixels(
    emulator, run_dag, xcom, moto_aws_conn, bucket
):
    # Only "decodes" runs before Sentinel here, so the blank image is Sentinel's to catch, from its pixels:
    # the emulator fetched the presigned moto URL and measured it.
    emulator.faults(
        {"rules": [{"endpoint": "create_batch", "fault": "blank_image", "match": {"prompt_contains": "1,"}}]}
    )
    with DAG(f"t_sentinel_{next(_ids)}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        generate = FluxGenerateImageOperator(
            task_id="generate",
            prompts=PROMPTS[:3],
            image_size="square",
            output_uri=f"s3://{bucket}/staging",
            aws_conn_id=moto_aws_conn,
            poll_interval=0.02,
        )
        FluxQualityCheckOperator(
            task_id="check",
            records=generate.output,
            checks=["decodes"],
            on_failure="drop",
            min_pass_rate=0,
            aws_conn_id=moto_aws_conn,
            poll_interval=0.02,
            sentinel=True,
            sentinel_task_type="product",
        )
    dr = run_dag(dag)
    assert dr.state == "success"
    records = {r["index"]: r for r in xcom(dr, "check")}
    assert (
        records[1]["status"] == "dropped" and records[1]["sentinel"]["top_issues"][0] == "blank or near-uniform image"
    )
    assert records[0]["sentinel"]["passed"] and records[2]["sentinel"]["passed"]
    assert all(r["uri"].startswith(f"s3://{bucket}/") for r in records.values())
    assert len(evaluations(emulator.ledger())) == 3
