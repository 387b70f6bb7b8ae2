"""The nightly refresh DAG end to end against the emulator: local folder and S3 (moto)."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_flux2.storage.local import path_of

REPO = Path(__file__).resolve().parents[2]
CATALOGUE = REPO / "dags" / "data" / "products.csv"


@pytest.fixture(autouse=True)
def no_earlier_nights(airflow_db):
    """Each test starts with no published manifest: the asset's event history is emptied."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(AssetEvent))


@pytest.fixture
def refresh_dag():
    from dagbags import dag_bag

    bag = dag_bag(REPO / "dags" / "flux2_product_image_refresh.py")
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("flux2_product_image_refresh")


def published(dr, xcom) -> dict:
    return xcom(dr, "publish")


def test_first_night_generates_every_product_and_publishes_a_manifest(
    emulator, run_dag, xcom, refresh_dag, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_OUTPUT_URI", tmp_path.as_uri())
    dr = run_dag(refresh_dag)
    assert dr.state == "success"
    summary = published(dr, xcom)
    assert summary["count"] == 16
    manifest = json.loads(path_of(summary["manifest_uri"]).read_text())
    assert manifest["summary"]["count"] == 16
    assert (
        Decimal(manifest["summary"]["total_cost_usd"]) == Decimal(emulator.ledger()["total_cost"]) == Decimal("0.495")
    )
    assert {row["extra"]["id"] for row in manifest["images"]} == {f"SKU-{1000 + i}" for i in range(1, 17)}
    assert all(row["source_hash"] for row in manifest["images"])
    assert path_of(summary["gallery_uri"]).is_file()


def test_second_night_pays_only_for_the_changed_product(emulator, run_dag, xcom, refresh_dag, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_OUTPUT_URI", tmp_path.as_uri())
    first = run_dag(refresh_dag)
    assert first.state == "success"
    first_cost = Decimal(emulator.ledger()["total_cost"])
    first_latest = (tmp_path / "latest" / "SKU-1003.jpg").read_bytes()

    rows = list(csv.DictReader(io.StringIO(CATALOGUE.read_text())))
    rows[2]["description"] = "hand-glazed dripper, now in speckled stoneware"
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_CATALOGUE_JSON", json.dumps(rows))
    dr = run_dag(refresh_dag)
    assert dr.state == "success"
    entries = emulator.ledger()["entries"]
    assert len(entries) == 17  # 16 the first night, 1 the second
    assert Decimal(emulator.ledger()["total_cost"]) - first_cost == Decimal("0.030")
    manifest = json.loads(path_of(published(dr, xcom)["manifest_uri"]).read_text())
    assert manifest["summary"]["count"] == 16  # the changed product, and 15 carried forward
    assert Decimal(manifest["summary"]["total_cost_usd"]) == Decimal("0.030")
    carried = [row for row in manifest["images"] if row["extra"].get("carried_from")]
    assert len(carried) == 15

    # The stable "latest" prefix: one current image per product, whatever night it changed.
    latest = json.loads((tmp_path / "latest" / "latest.json").read_text())
    assert sorted(latest) == [f"SKU-{1000 + i}" for i in range(1, 17)]
    assert latest["SKU-1003"]["run_id"] == dr.run_id
    assert {latest[k]["run_id"] for k in latest if k != "SKU-1003"} == {first.run_id}
    assert (tmp_path / "latest" / "SKU-1003.jpg").read_bytes() != first_latest
    changed = next(row for row in manifest["images"] if row["item_id"] == "SKU-1003")
    assert path_of(changed["uri"]).read_bytes() == (tmp_path / "latest" / "SKU-1003.jpg").read_bytes()
    # Readable names: the product's id in the file name, no ':' or '+' in the run's folder.
    assert path_of(changed["uri"]).name.startswith("00000-SKU-1003-")
    assert ":" not in changed["uri"][len("file://") :] and "+" not in changed["uri"]


def test_publishes_to_s3_through_an_aws_connection(
    emulator, run_dag, xcom, refresh_dag, monkeypatch, moto_aws_conn, bucket, s3_admin
):
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_OUTPUT_URI", f"s3://{bucket}/nightly")
    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_AWS_CONN_ID", moto_aws_conn)
    dr = run_dag(refresh_dag)
    assert dr.state == "success"
    summary = published(dr, xcom)
    assert summary["manifest_uri"].startswith(f"s3://{bucket}/nightly/flux2_product_image_refresh/")
    keys = [o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket)["Contents"]]
    published_images = [k for k in keys if k.startswith("nightly/") and "/publish/" in k and k.endswith(".jpg")]
    staged = [k for k in keys if k.startswith("nightly-staging/") and k.endswith(".jpg")]
    assert len([k for k in published_images if "/thumbs/" not in k]) == 16
    assert len([k for k in staged if "/thumbs/" not in k]) == 16
    # The generate step keeps its own manifest beside the staged images (a failed night's record).
    assert any(k.startswith("nightly-staging/") and k.endswith("/generate/manifest.json") for k in keys)
    manifest_key = summary["manifest_uri"].split(f"s3://{bucket}/", 1)[1]
    manifest = json.loads(s3_admin.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert Decimal(manifest["summary"]["total_cost_usd"]) == Decimal(emulator.ledger()["total_cost"])
