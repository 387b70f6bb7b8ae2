"""The task's link opens in a browser, and lineage names the same dataset from generate to publish."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from browser import rendered_images
from PIL import Image

from airflow_provider_flux2 import links
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator, FluxImagesLink
from airflow_provider_flux2.operators.publish import FluxPublishOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator

LINK_XCOM = FluxImagesLink().xcom_key


@pytest.fixture
def web_folder(tmp_path):
    """``tmp_path/www`` served over HTTP on loopback, as a web server in front of a shared volume would."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _generate_dag(dag_id: str, output_uri: str, **kwargs):
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            prompts=[{"prompt": "a red mug", "id": "MUG-RED"}, {"prompt": "a blue mug", "id": "MUG-BLUE"}],
            image_size="square",
            output_uri=output_uri,
            poll_interval=0.02,
            progress_interval=0,
            **kwargs,
        )
    return dag


@pytest.mark.browser
def test_with_a_public_base_url_the_link_opens_the_gallery_with_every_image(
    emulator, run_dag, xcom, web_folder, monkeypatch
):
    root, base_url = web_folder
    monkeypatch.setenv("AIRFLOW__FLUX2__PUBLIC_BASE_URLS", json.dumps({root.as_uri(): base_url}))

    dr = run_dag(_generate_dag("t_link_public", root.as_uri()))

    link = xcom(dr, "generate", key=LINK_XCOM)
    assert link.startswith(f"{base_url}/t_link_public/manual__") and link.endswith("/generate/index.html")
    assert ":" not in link.split("/t_link_public/", 1)[1]  # readable folder names, no %3A in the URL
    images = rendered_images(link)
    assert len(images) == 2 and all(img["ok"] and img["w"] > 0 for img in images), images
    stored = sorted(p.name for p in root.rglob("*.jpg") if "thumbs" not in p.parts)
    assert [name.split("-", 1)[1].rsplit("-", 1)[0] for name in stored] == ["MUG-RED", "MUG-BLUE"]


def test_a_failed_task_has_an_empty_link_and_logs_no_missing_xcom(emulator, run_dag, xcom, tmp_path, capsys):
    dr = run_dag(_generate_dag("t_link_failed", tmp_path.as_uri(), budget_usd="0.01"))

    assert dr.state == "failed"
    assert xcom(dr, "generate", key=LINK_XCOM) == ""
    logs = capsys.readouterr()
    assert "budget" in (logs.out + logs.err).lower()  # it failed as planned, before any submission
    assert "XCom not found" not in logs.out + logs.err
    assert "flux_gallery_url" not in logs.out + logs.err


@pytest.mark.browser
def test_on_s3_the_link_is_a_presigned_contact_sheet_at_the_stores_own_endpoint(
    emulator, run_dag, xcom, moto_aws_conn, moto_endpoint, bucket
):
    dr = run_dag(_generate_dag("t_link_s3", f"s3://{bucket}/out", aws_conn_id=moto_aws_conn))

    link = xcom(dr, "generate", key=LINK_XCOM)
    assert link.startswith(f"{moto_endpoint}/{bucket}/out/t_link_s3/")  # MinIO-style: its endpoint, path-style
    assert "/generate/contact_sheet.png?" in link and "X-Amz-Signature=" in link
    response = httpx.get(link, timeout=10)
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).format == "PNG"
    shown = rendered_images(link)  # a browser opening the link shows the contact sheet
    assert len(shown) == 1 and shown[0]["ok"] and shown[0]["w"] == Image.open(io.BytesIO(response.content)).width


def test_a_folder_on_s3_links_a_presigned_listing(isolated_aws, moto_aws_conn, moto_endpoint, bucket, s3_admin):
    s3_admin.put_object(Bucket=bucket, Key="batch/a/00000-x.jpg", Body=b"x")

    link = links.gallery_link(f"s3://{bucket}/batch/a", aws_conn_id=moto_aws_conn)

    response = httpx.get(link, timeout=10)
    assert response.status_code == 200 and b"<Key>batch/a/00000-x.jpg</Key>" in response.content


def test_a_local_gallery_links_its_path_until_a_ui_view_registers_its_own_link(monkeypatch):
    uri = "file:///data/flux2/d/r/generate/index.html"
    # Importing the FLUX view's plugin (another test may have) registers its link: start without one.
    links.set_local_link(None)

    assert links.gallery_link(uri) == "/data/flux2/d/r/generate/index.html"

    monkeypatch.setenv("AIRFLOW__FLUX2__LOCAL_LINK_TEMPLATE", "/flux2/files?path={quoted_path}")
    assert links.gallery_link(uri) == "/flux2/files?path=%2Fdata%2Fflux2%2Fd%2Fr%2Fgenerate%2Findex.html"

    links.set_local_link(lambda path: f"/plugin{path}")
    try:
        assert links.gallery_link(uri) == "/plugin/data/flux2/d/r/generate/index.html"
    finally:
        links.set_local_link(None)


def test_the_longest_public_prefix_wins(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW__FLUX2__PUBLIC_BASE_URLS",
        json.dumps({"s3://b": "https://all.example", "s3://b/products": "https://cdn.example/p"}),
    )

    assert links.gallery_link("s3://b/products/x/index.html") == "https://cdn.example/p/x/index.html"
    assert links.gallery_link("s3://b/other/index.html") == "https://all.example/other/index.html"


def test_lineage_names_one_stable_dataset_from_generate_through_check_to_publish(emulator, run_dag, xcom, tmp_path):
    staging, final = tmp_path / "staging", tmp_path / "final"
    runs = []
    for night in range(2):
        dr = run_dag(_generate_dag(f"t_lineage_{night}", staging.as_uri()))
        runs.append((dr, xcom(dr, "generate")))

    def facets(operator, dr, task_id):
        ti = SimpleNamespace(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id, map_index=-1)
        got = operator.get_openlineage_facets_on_complete(ti)
        return [(d.namespace, d.name) for d in got.inputs], [(d.namespace, d.name) for d in got.outputs]

    seen = set()
    for dr, records in runs:
        generate = FluxGenerateImageOperator(task_id="generate", prompt="p", output_uri=staging.as_uri())
        check = FluxQualityCheckOperator(task_id="check", records=records, output_uri=staging.as_uri())
        publish = FluxPublishOperator(
            task_id="publish", records=records, destination_uri=final.as_uri(), latest_uri=f"{final.as_uri()}/latest"
        )
        _, generated = facets(generate, dr, "generate")
        checked_in, checked_out = facets(check, dr, "check")
        published_in, published_out = facets(publish, dr, "publish")

        assert generated == checked_in == published_in == [("file", str(staging))]
        assert checked_out == generated
        assert published_out == [("file", str(final)), ("file", str(final / "latest"))]
        seen.add(tuple(generated))
    assert len(seen) == 1  # two runs, one dataset: lineage joins across runs


def test_the_latest_prefix_holds_the_current_image_of_each_item(emulator, run_dag, xcom, tmp_path):
    from airflow.sdk import DAG

    final = tmp_path / "final"
    latest = f"{final.as_uri()}/latest"

    def night(name: str, prompts):
        with DAG(name, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            generate = FluxGenerateImageOperator(
                task_id="generate",
                prompts=prompts,
                image_size="square",
                output_uri=(tmp_path / "staging").as_uri(),
                poll_interval=0.02,
                progress_interval=0,
                write_manifest=False,
            )
            FluxPublishOperator(
                task_id="publish", records=generate.output, destination_uri=final.as_uri(), latest_uri=latest
            )
        return run_dag(dag)

    night("t_latest_1", [{"prompt": "a red mug", "id": "MUG-1"}, {"prompt": "a blue mug", "id": "MUG-2"}])
    first = (final / "latest" / "MUG-1.jpg").read_bytes()
    dr = night("t_latest_2", [{"prompt": "a green mug, new design", "id": "MUG-1"}])

    index = json.loads((final / "latest" / "latest.json").read_text())
    assert sorted(index) == ["MUG-1", "MUG-2"]
    assert index["MUG-1"]["run_id"] == dr.run_id  # changed tonight
    assert (final / "latest" / "MUG-1.jpg").read_bytes() != first
    record = xcom(dr, "generate")[0]
    assert Path(record["uri"][7:]).read_bytes() == (final / "latest" / "MUG-1.jpg").read_bytes()
    assert (final / "latest" / "MUG-2.jpg").is_file()  # unchanged products keep their image
