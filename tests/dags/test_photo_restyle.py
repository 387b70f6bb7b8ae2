"""One photo → several styled versions: the photo from S3 (moto) or disk, the API the emulator."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_flux2.storage.local import path_of

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "dags" / "data" / "sample_dish.jpg"


@pytest.fixture
def restyle_dag(airflow_db):
    from dagbags import dag_bag

    bag = dag_bag(REPO / "dags" / "flux2_photo_restyle.py")
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("flux2_photo_restyle")


def _manifest(dr, xcom) -> dict:
    records = xcom(dr, "restyle")
    folder = path_of(records[0]["uri"]).parent
    return json.loads((folder / "manifest.json").read_text())


def test_photo_in_s3_becomes_four_styles_priced_at_its_real_size(
    emulator, run_dag, xcom, restyle_dag, tmp_path, monkeypatch, moto_aws_conn, s3_admin, bucket
):
    s3_admin.put_object(Bucket=bucket, Key="snaps/dish.jpg", Body=PHOTO.read_bytes(), ContentType="image/jpeg")
    photo = f"s3://{bucket}/snaps/dish.jpg"
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_RESTYLE_OUTPUT_URI", tmp_path.as_uri())
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_AWS_CONN_ID", moto_aws_conn)
    dr = run_dag(restyle_dag, run_conf={"photo": photo})
    assert dr.state == "success"

    ledger = emulator.ledger()
    assert len(ledger["entries"]) == 4
    # The emulator fetched the presigned URL from moto and measured it, as the API would: 1200x900 → 2 MP.
    assert {entry["reference_mp"] for entry in ledger["entries"]} == {2}
    assert Decimal(ledger["total_cost"]) == Decimal("0.240")

    records = xcom(dr, "restyle")
    assert {r["estimated_cost_usd"] for r in records} == {"0.060"} == {r["cost_usd"] for r in records}
    assert all(r["params"]["image_urls"] == [photo] for r in records)  # as written: no signature
    manifest = _manifest(dr, xcom)
    assert Decimal(manifest["summary"]["total_cost_usd"]) == Decimal("0.240")
    rows = manifest["images"]
    assert {row["extra"]["style"] for row in rows} == {
        "restaurant menu card, overhead shot on white linen, soft daylight",
        "social media post, bold colours, hard flash, playful props",
        "food magazine spread, moody low-key lighting, dark slate background",
        "watercolour illustration on textured paper",
    }
    assert rows[0]["extra"]["references"] == [{"source": photo, "width": 1200, "height": 900, "billed_mp": 2}]
    assert "X-Amz-Signature" not in json.dumps(manifest)


def test_shipped_photo_on_disk_is_sent_inline(emulator, run_dag, xcom, restyle_dag, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_RESTYLE_OUTPUT_URI", tmp_path.as_uri())
    dr = run_dag(restyle_dag, run_conf={"styles": ["pencil sketch"], "model": "klein-4b"})
    assert dr.state == "success"
    entry = emulator.ledger()["entries"][0]
    assert entry["reference_mp"] == 2  # the data: URI was measured by the emulator too
    # klein-4b's references go to its edit model, billed $0.005 per image whatever they weigh.
    assert entry["model"] == "black-forest-labs/flux-2-klein-4b/edit"
    assert Decimal(entry["cost"]) == Decimal("0.005")
    record = xcom(dr, "restyle")[0]
    assert record["estimated_cost_usd"] == "0.005" and record["model"] == entry["model"]


def test_missing_photo_fails_the_plan_and_sends_nothing(
    emulator, run_dag, task_states, restyle_dag, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_RESTYLE_OUTPUT_URI", tmp_path.as_uri())
    dr = run_dag(restyle_dag, run_conf={"photo": str(tmp_path / "nope.jpg")})
    assert dr.state == "failed"
    assert task_states(dr)["plan"] == "failed"
    assert emulator.stats()["runs_created"] == 0


def test_over_budget_sends_nothing(emulator, run_dag, task_states, restyle_dag, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_RESTYLE_OUTPUT_URI", tmp_path.as_uri())
    dr = run_dag(restyle_dag, run_conf={"budget_usd": "0.20"})  # 0.240 on defaults
    assert dr.state == "failed"
    assert task_states(dr)["plan"] == "failed"
    assert emulator.stats()["runs_created"] == 0


def test_a_regenerated_version_is_sent_the_photo_again_and_priced_at_its_size(
    emulator, run_dag, xcom, tmp_path, moto_aws_conn, s3_admin, bucket
):
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
    from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator

    s3_admin.put_object(Bucket=bucket, Key="dish.jpg", Body=PHOTO.read_bytes())
    photo = f"s3://{bucket}/dish.jpg"
    emulator.faults(
        {"rules": [{"endpoint": "create_batch", "fault": "blank_image", "match": {"prompt_contains": "flat"}}]}
    )
    with DAG("t_restyle_regenerate", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        generate = FluxGenerateImageOperator(
            task_id="generate",
            prompts=["the dish, flat style", "the dish, oil painting"],
            image_urls=[photo],
            image_size="square",
            aws_conn_id=moto_aws_conn,
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
        )
        FluxQualityCheckOperator(
            task_id="check",
            records=generate.output,
            checks=["decodes", "not_blank"],
            on_failure="regenerate",
            max_regenerations=1,
            aws_conn_id=moto_aws_conn,
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
        )
    dr = run_dag(dag)
    assert dr.state == "success"
    entries = emulator.ledger()["entries"]
    assert len(entries) == 3  # two versions, one regenerated
    assert {e["reference_mp"] for e in entries} == {2}  # the regeneration fetched the presigned photo too
    regenerated = [r for r in xcom(dr, "check") if r["attempt"] == 2]
    assert len(regenerated) == 1
    assert regenerated[0]["estimated_cost_usd"] == "0.060" == regenerated[0]["cost_usd"]


def test_per_item_references_from_s3_and_disk_are_each_measured(
    emulator, run_dag, xcom, tmp_path, moto_aws_conn, s3_admin, bucket
):
    from datetime import datetime

    from airflow.sdk import DAG
    from synthetic_images import Pictures

    from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

    s3_admin.put_object(Bucket=bucket, Key="front.jpg", Body=PHOTO.read_bytes())  # 1200x900 → 2 MP
    side = tmp_path / "side.png"
    side.write_bytes(Pictures.encode(Pictures.scene(4, (2048, 1536)), "png"))  # 3 MP
    with DAG("t_per_item_references", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            prompts=[
                {"prompt": "front view, studio", "image_urls": [f"s3://{bucket}/front.jpg"]},
                {"prompt": "side view, studio", "image_urls": [str(side)]},
                {"prompt": "both views, collage", "image_urls": [f"s3://{bucket}/front.jpg", side.as_uri()]},
            ],
            image_size="square_hd",
            aws_conn_id=moto_aws_conn,
            output_uri=(tmp_path / "out").as_uri(),
            budget_usd="0.25",
            poll_interval=0.02,
        )
    dr = run_dag(dag)
    assert dr.state == "success"
    records = sorted(xcom(dr, "generate"), key=lambda r: r["index"])
    assert [r["estimated_cost_usd"] for r in records] == ["0.060", "0.075", "0.105"]
    assert [r["cost_usd"] for r in records] == ["0.060", "0.075", "0.105"]  # what the emulator billed
    assert [[ref["billed_mp"] for ref in r["extra"]["references"]] for r in records] == [[2], [3], [2, 3]]
    assert sorted(e["reference_mp"] for e in emulator.ledger()["entries"]) == [2, 3, 5]


def test_references_over_the_budget_are_refused_before_anything_is_sent(
    emulator, run_dag, task_states, tmp_path, moto_aws_conn, s3_admin, bucket
):
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

    s3_admin.put_object(Bucket=bucket, Key="front.jpg", Body=PHOTO.read_bytes())
    with DAG("t_references_budget", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            prompts=["a", "b"],
            image_urls=[f"s3://{bucket}/front.jpg"],
            image_size="square_hd",
            aws_conn_id=moto_aws_conn,
            output_uri=tmp_path.as_uri(),
            budget_usd="0.10",  # 2 × $0.060 measured; an assumed 1 MP reference would have fit ($0.090)
        )
    dr = run_dag(dag)
    assert dr.state == "failed"
    assert task_states(dr)["generate"] == "failed"
    assert emulator.stats()["runs_created"] == 0
