"""generate → check → publish with dag.test(): emulator faults in, S3 (moto) out, gallery in Chromium."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from decimal import Decimal
from urllib.parse import quote

import pytest
from airflow.sdk import DAG
from browser import rendered_images

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.publish import FluxPublishOperator, destination_asset
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator

PROMPTS = [f"catalogue product {i}, studio light" for i in range(20)]
BLANK = (5, 12)  # these come back as a single flat colour
DUPLICATES = {9: 3, 17: 14}  # these come back as a copy of another image of the batch
_ids = itertools.count()


def inject_faults(emulator) -> None:
    rules = [
        {"endpoint": "create_batch", "fault": "blank_image", "match": {"prompt_contains": f"product {i},"}}
        for i in BLANK
    ]
    rules += [
        {
            "endpoint": "create_batch",
            "fault": "duplicate_image",
            "of_prompt": PROMPTS[original],
            "of_seed": 11,
            "match": {"prompt_contains": f"product {copy},"},
        }
        for copy, original in DUPLICATES.items()
    ]
    emulator.faults({"rules": rules})


def pipeline(tmp_path, bucket, conn_id, **check_kwargs) -> DAG:
    with DAG(f"t_pipeline_{next(_ids)}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        generate = FluxGenerateImageOperator(
            task_id="generate",
            prompts=PROMPTS,
            image_size="square",
            seed=11,
            output_uri=(tmp_path / "staging").as_uri(),
            poll_interval=0.02,
            deferrable=True,
        )
        check = FluxQualityCheckOperator(
            task_id="check",
            records=generate.output,
            output_uri=(tmp_path / "staging").as_uri(),
            poll_interval=0.02,
            **check_kwargs,
        )
        FluxPublishOperator(
            task_id="publish",
            records=check.output,
            destination_uri=f"s3://{bucket}/products",
            aws_conn_id=conn_id,
        )
    return dag


def published_keys(s3_admin, bucket) -> list[str]:
    listing = s3_admin.list_objects_v2(Bucket=bucket, Prefix="products/")
    return [o["Key"] for o in listing.get("Contents", [])]


def image_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if k.rsplit("/", 1)[-1][:5].isdigit() and "/thumbs/" not in k]


def asset_event_extra(uri: str) -> dict:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        event = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri)
            .order_by(AssetEvent.id.desc())
        ).first()
        return dict(event.extra) if event else {}


def test_drop_policy_publishes_the_sixteen_good_images(
    emulator, run_dag, xcom, tmp_path, moto_aws_conn, bucket, s3_admin, moto_endpoint
):
    inject_faults(emulator)
    dag = pipeline(tmp_path, bucket, moto_aws_conn, on_failure="drop", min_pass_rate="80%")
    dr = run_dag(dag)
    assert dr.state == "success"

    checked = xcom(dr, "check")
    dropped = sorted(r["index"] for r in checked if r["status"] == "dropped")
    assert dropped == sorted([*BLANK, *DUPLICATES])
    reasons = {r["index"]: {v["check"] for v in r["checks"] if not v["passed"]} for r in checked}
    assert all(reasons[i] == {"not_blank"} for i in BLANK)
    assert all(reasons[i] == {"near_duplicate"} for i in DUPLICATES)

    summary = xcom(dr, "publish")
    assert summary["count"] == 16 and summary["images"] == 20
    keys = published_keys(s3_admin, bucket)
    assert len(image_keys(keys)) == 16
    head = s3_admin.head_object(Bucket=bucket, Key=image_keys(keys)[0])
    assert head["ContentType"] == "image/jpeg"
    assert set(head["Metadata"]) >= {"prompt-sha256", "seed", "model", "billed-mp", "cost-usd"}

    manifest_key = summary["manifest_uri"].split(f"s3://{bucket}/", 1)[1]
    manifest = json.loads(s3_admin.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    rows = manifest["images"]
    assert len(rows) == 20
    total = sum(Decimal(r["billed_cost_usd"]) for r in rows)
    ledger = emulator.ledger()
    # Every image was paid for (dropped ones too), and the manifest says exactly what the API billed.
    assert Decimal(manifest["summary"]["total_cost_usd"]) == total == Decimal(ledger["total_cost"]) == Decimal("0.600")
    assert summary["cost_usd"] == "0.600"

    extra = asset_event_extra(destination_asset(f"s3://{bucket}/products").uri)
    assert extra["count"] == 16 and extra["cost_usd"] == "0.600"
    assert extra["manifest_uri"] == summary["manifest_uri"]

    # The published gallery, served straight from S3 (moto) as a static site, in a real browser.
    public_read = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }
    s3_admin.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [public_read]}))
    gallery_key = summary["gallery_uri"].split(f"s3://{bucket}/", 1)[1]
    images = rendered_images(f"{moto_endpoint}/{bucket}/{quote(gallery_key)}")
    assert len(images) == 20
    assert all(img["ok"] and img["w"] > 0 for img in images), images


@pytest.mark.parametrize("deferrable", [False, True])
def test_regenerate_policy_ends_with_twenty_good_images_within_budget(
    emulator, run_dag, xcom, tmp_path, moto_aws_conn, bucket, s3_admin, deferrable, capfd
):
    inject_faults(emulator)
    dag = pipeline(
        tmp_path,
        bucket,
        moto_aws_conn,
        on_failure="regenerate",
        max_regenerations=2,
        budget_usd="1.00",
        deferrable=deferrable,
    )
    dr = run_dag(dag)
    assert dr.state == "success"
    checked = xcom(dr, "check")
    live = [r for r in checked if r["status"] == "succeeded"]
    assert len(live) == 20 and all(all(v["passed"] for v in r["checks"]) for r in live)
    regenerated = [r for r in live if r["attempt"] == 2]
    assert sorted(r["index"] for r in regenerated) == sorted([*BLANK, *DUPLICATES])
    assert all(r["regenerated_from"] for r in regenerated)
    assert len(image_keys(published_keys(s3_admin, bucket))) == 20
    assert len(emulator.ledger()["entries"]) == 24
    assert xcom(dr, "publish")["cost_usd"] == "0.720" == emulator.ledger()["total_cost"]
    summary = xcom(dr, "check", key="flux_quality_summary")
    assert (summary["passed"], summary["dropped"], summary["superseded"], summary["regenerated"]) == (20, 0, 4, 4)
    out = capfd.readouterr()
    # Deferrable: the round was waited for on the triggerer; on resume its requests were replayed
    # (same idempotency keys), which is why 24 runs were billed and no more.
    assert ("Waiting on the triggerer for 4 regenerated image(s)" in out.out + out.err) is deferrable


def test_regeneration_over_budget_is_refused_before_it_is_sent(
    emulator, run_dag, task_states, tmp_path, moto_aws_conn, bucket
):
    inject_faults(emulator)
    dag = pipeline(tmp_path, bucket, moto_aws_conn, on_failure="regenerate", budget_usd="0.65")
    dr = run_dag(dag)
    assert task_states(dr)["check"] == "failed"
    assert len(emulator.ledger()["entries"]) == 20  # the batch, and nothing more


def test_fail_policy_names_every_failed_image(emulator, run_dag, task_states, tmp_path, moto_aws_conn, bucket):
    inject_faults(emulator)
    dag = pipeline(tmp_path, bucket, moto_aws_conn, on_failure="fail")
    dr = run_dag(dag)
    assert task_states(dr)["check"] == "failed"
    assert task_states(dr)["publish"] == "upstream_failed"


def test_drop_below_the_default_pass_rate_fails_the_task_after_recording_it(
    emulator, run_dag, task_states, xcom, tmp_path, moto_aws_conn, bucket, capfd
):
    inject_faults(emulator)  # 4 of 20 images fail their checks: 80 % pass, under the default 90 %
    dag = pipeline(tmp_path, bucket, moto_aws_conn, on_failure="drop")
    dr = run_dag(dag)
    assert task_states(dr)["check"] == "failed"
    assert task_states(dr)["publish"] == "upstream_failed"
    summary = xcom(dr, "check", key="flux_quality_summary")  # written before the task failed
    assert (summary["passed"], summary["dropped"], summary["pass_rate"], summary["min_pass_rate"]) == (
        16,
        4,
        "0.8000",
        "0.9",
    )
    out = capfd.readouterr()
    log = out.out + out.err
    assert "on_failure=drop · min_pass_rate 90% (the task fails below 18 of 20 passing)" in log
    assert "16 of 20 images passed the quality step (80%), below min_pass_rate 90%" in log
