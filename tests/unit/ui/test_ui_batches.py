"""The FLUX view's arithmetic and its file rule (pure: no database, no server)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import PurePosixPath

from airflow_provider_flux2.ui.app import _view_path, gallery_url, render_page
from airflow_provider_flux2.ui.batches import (
    Batch,
    ManifestCache,
    failure_rows,
    load_manifests,
    overview,
    serving_batch,
    spend_by_dag_day,
)

NOW = datetime(2026, 3, 3, 8, tzinfo=timezone.utc)


def _row(index, run_id, cost="0.030", outcome="passed", attempt=1, **extra):
    return {"index": index, "run_id": run_id, "billed_cost_usd": cost, "outcome": outcome, "attempt": attempt, **extra}


def _batch(task, rows, *, dag="d", run="r1", at=datetime(2026, 3, 2, 10, tzinfo=timezone.utc), folder="/out/d/r1"):
    return Batch(
        manifest_uri=f"file://{folder}/{task}/manifest.json",
        gallery_uri=f"file://{folder}/{task}/index.html",
        dag_id=dag,
        run_id=run,
        task_id=task,
        map_index=-1,
        at=at,
        rows=rows,
        summary={"total_cost_usd": "0.090"},
    )


def test_an_image_in_two_manifests_of_a_run_counts_once():
    generate = _batch("generate", [_row(0, "run_a"), _row(1, "run_b"), _row(2, "run_c", outcome="moderated")])
    publish = _batch(
        "publish",
        [
            _row(0, "run_a"),
            _row(1, "run_b", outcome="superseded"),
            _row(1, "run_d", attempt=2),
            _row(2, "run_c", outcome="moderated"),
        ],
    )
    (day,) = spend_by_dag_day([generate, publish])
    assert day == {
        "dag_id": "d",
        "day": "2026-03-02",
        "cost_usd": "0.120",
        "regeneration_cost_usd": "0.030",
        "undelivered_cost_usd": "0.060",  # the superseded image and the moderated one
        "images": 4,
        "failed": 2,
        "regenerated": 1,
        "failed_tasks": 0,
        "runs": 1,
    }


def test_spend_is_grouped_by_dag_and_day_newest_first():
    monday = datetime(2026, 3, 2, 23, 59, tzinfo=timezone.utc)
    tuesday = datetime(2026, 3, 3, 0, 1, tzinfo=timezone.utc)
    rows = spend_by_dag_day(
        [
            _batch("g", [_row(0, "a")], run="r1", at=monday),
            _batch("g", [_row(0, "b", cost="0.045")], run="r2", at=tuesday),
            _batch("g", [_row(0, "c", cost="0.005")], dag="e", run="r3", at=tuesday),
        ]
    )
    assert [(r["day"], r["dag_id"], r["cost_usd"]) for r in rows] == [
        ("2026-03-03", "e", "0.005"),
        ("2026-03-03", "d", "0.045"),
        ("2026-03-02", "d", "0.030"),
    ]


def test_the_same_api_run_in_two_dag_runs_counts_in_each():
    # A product carried forward to tomorrow's manifest keeps its run id but costs 0 there.
    first = _batch("p", [_row(0, "run_a")], run="r1")
    second = _batch("p", [_row(0, "run_a", cost="0.000")], run="r2")
    (day,) = spend_by_dag_day([first, second])
    assert day["cost_usd"] == "0.030" and day["images"] == 2 and day["runs"] == 2


def test_failures_are_listed_once_with_the_latest_manifests_word():
    generate = _batch("generate", [_row(0, "run_a"), _row(1, "run_b", outcome="moderated")])
    publish = _batch(
        "publish",
        [_row(0, "run_a", outcome="superseded"), _row(0, "run_c", attempt=2), _row(1, "run_b", outcome="moderated")],
        at=datetime(2026, 3, 2, 11, tzinfo=timezone.utc),
    )
    found = [(b.task_id, r["run_id"], r["outcome"]) for b, r in failure_rows([publish, generate])]
    assert sorted(found) == [
        ("publish", "run_a", "superseded"),
        ("publish", "run_b", "moderated"),
        ("publish", "run_c", "passed"),
    ]


def test_only_files_inside_a_recorded_batch_folder_are_served():
    batches = [_batch("publish", [])]
    assert serving_batch(PurePosixPath("/out/d/r1/publish/index.html"), batches) is batches[0]
    assert serving_batch(PurePosixPath("/out/d/r1/publish/thumbs/a.jpg"), batches) is batches[0]
    for path in ("/out/d/r1/publishx/a.jpg", "/out/d/r1/publish/../../../etc/passwd", "/etc/passwd", "out/d"):
        assert serving_batch(PurePosixPath(path), batches) is None, path


def test_a_gallery_uri_maps_to_a_stable_view_url():
    assert _view_path("file:///out/a%20b/index.html") == "/flux2/files/out/a%20b/index.html"
    assert _view_path("file:///out/folder") == "/flux2/files/out/folder/index.html"
    assert _view_path("s3://bucket/p/q/index.html") == "/flux2/s3/bucket/p/q/index.html"
    assert _view_path("https://elsewhere/x") is None
    assert gallery_url("file:///out/x/index.html") == "/flux2/gallery?uri=file%3A%2F%2F%2Fout%2Fx%2Findex.html"


def test_an_unreadable_manifest_is_reported_not_fatal():
    def read(uri: str) -> bytes:
        if "broken" in uri:
            raise FileNotFoundError(uri)
        return b'{"summary": {"total_cost_usd": "0.030", "count": 1}, "images": [{"index": 0}]}'

    good, broken = _batch("good", []), _batch("broken", [], folder="/out/broken")
    load_manifests([good, broken], ManifestCache(read))
    assert good.summary["count"] == 1 and good.rows == [{"index": 0}]
    assert broken.error and "FileNotFoundError" in broken.error


def test_the_page_escapes_what_users_wrote():
    batch = _batch("g", [_row(0, "r", outcome="failed", prompt="<script>alert(1)</script>", failure_code="X")])
    page = render_page(overview([batch], days=7, now=NOW))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_view_reads_the_xcom_keys_the_operators_write():
    from airflow_provider_flux2.operators import flux
    from airflow_provider_flux2.ui import batches

    assert (batches.XCOM_MANIFEST, batches.XCOM_GALLERY) == (flux.XCOM_MANIFEST, flux.XCOM_GALLERY)


def test_a_batch_without_a_manifest_yet_is_shown_in_progress():
    batch = _batch("generate", [])
    batch.manifest_uri, batch.state = None, "deferred"
    page = render_page(overview([batch], days=1, now=NOW))
    assert "in progress (no manifest yet)" in page
    assert "/flux2/files/out/d/r1/generate/index.html" in page  # its folder's gallery, once written


def test_a_succeeded_batch_without_a_manifest_is_not_shown_in_progress():
    batch = _batch("generate", [])
    batch.manifest_uri, batch.state = None, "success"
    page = render_page(overview([batch], days=1, now=NOW))
    assert "succeeded · no manifest (write_manifest=False)" in page and "in progress" not in page
