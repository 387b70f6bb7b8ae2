"""storage/report.py: one batch's report — the manifest first, then the gallery, thumbnails and contact sheet."""

from __future__ import annotations

import io
import json

from PIL import Image

from airflow_provider_flux2.storage.base import BatchLocation
from airflow_provider_flux2.storage.local import LocalPublisher
from airflow_provider_flux2.storage.report import thumbnail_workers, write_batch_report


def jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (256, 192), colour).save(out, "JPEG")
    return out.getvalue()


def record(index: int, uri: str | None, status: str = "succeeded") -> dict:
    return {
        "index": index,
        "prompt": f"item {index}",
        "model": "pro",
        "width": 256,
        "height": 192,
        "billed_mp": 1,
        "cost_usd": "0.030" if status == "succeeded" else "0.000",
        "estimated_cost_usd": "0.030",
        "status": status,
        "uri": uri,
        "run_id": f"run-{index}",
        "attempt": 1,
    }


def test_a_batch_report_has_its_manifest_gallery_thumbnails_and_sheet(tmp_path):
    publisher = LocalPublisher(tmp_path.as_uri())
    location = BatchLocation("dag", "run_1", "generate")
    folder = tmp_path / "dag" / "run_1" / "generate"
    folder.mkdir(parents=True)
    (folder / "00000.jpg").write_bytes(jpeg((200, 20, 20)))
    records = [record(0, (folder / "00000.jpg").as_uri()), record(1, None, status="failed")]
    uris = write_batch_report(publisher, location, records, title="nightly")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [r["index"] for r in manifest["images"]] == [0, 1]
    assert manifest["dag_id"] == "dag" and manifest["run_id"] == "run_1"
    page = (folder / "index.html").read_text()
    assert "nightly" in page and "thumbs/00000.jpg" in page
    assert (folder / "thumbs" / "00000.jpg").stat().st_size > 0
    with Image.open(folder / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG"
    assert set(uris) == {"manifest_uri", "manifest_csv_uri", "gallery_uri", "contact_sheet_uri"}


def test_an_image_that_cannot_be_read_back_still_gets_its_manifest_row(tmp_path):
    publisher = LocalPublisher(tmp_path.as_uri())
    location = BatchLocation("dag", "run_2", "generate")
    gone = (tmp_path / "nowhere" / "00000.jpg").as_uri()
    write_batch_report(publisher, location, [record(0, gone)])
    folder = tmp_path / "dag" / "run_2" / "generate"
    assert json.loads((folder / "manifest.json").read_text())["images"][0]["uri"] == gone
    assert not (folder / "thumbs" / "00000.jpg").exists()


def test_thumbnail_workers_shrink_for_large_images():
    small = thumbnail_workers([{"width": 1024, "height": 1024}])
    large = thumbnail_workers([{"width": 8192, "height": 8192}])
    assert small > large >= 1
