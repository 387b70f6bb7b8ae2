"""A failed night in the FLUX view: manifests written by the project's own writer into a folder, read
back through the view's code (cache, loading, the overview, the page), with its real spend to the cent."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from synthetic_images import image_record

from airflow_provider_flux2.models import ImageRecord
from airflow_provider_flux2.storage import BatchLocation, LocalPublisher, uri_reader
from airflow_provider_flux2.storage.manifest import build_manifest, write_manifest
from airflow_provider_flux2.ui.app import overview_json, render_page
from airflow_provider_flux2.ui.batches import Batch, ManifestCache, load_manifests, overview

NIGHT = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def unfinished(index: int, code: str, *, run_id: str | None = None, estimate: str = "0.030") -> ImageRecord:
    """A job the task ended before it finished: what the generate operator records for it (``pending``, 0 billed)."""
    return image_record(
        index, status="pending", cost_usd="0", estimated_cost_usd=estimate, failure_code=code, run_id=run_id, uri=None
    )


def write_night(tmp_path: Path, records: list[ImageRecord], *, dag: str = "nightly", run: str = "scheduled__1") -> str:
    """The batch's manifest where the generate task writes it; its URI (the task's XCom)."""
    publisher = LocalPublisher(tmp_path.as_uri())
    location = BatchLocation(dag_id=dag, run_id=run, task_id="generate")
    json_uri, _ = write_manifest(publisher, location, build_manifest(records, generated_at=NIGHT))
    return json_uri


def recorded(uri: str | None, *, state: str, at: datetime = NIGHT, dag: str = "nightly", run: str = "scheduled__1",
             try_number: int = 1, gallery: str | None = None) -> Batch:  # fmt: skip
    """What find_batches makes of the task's XComs and its task instance."""
    return Batch(
        manifest_uri=uri,
        gallery_uri=gallery or (uri.rsplit("/", 1)[0] + "/index.html" if uri else None),
        dag_id=dag,
        run_id=run,
        task_id="generate",
        map_index=-1,
        at=at,
        state=state,
        try_number=try_number,
    )


def shown(*batches: Batch, cache: ManifestCache | None = None):
    loaded = load_manifests(batches, cache or ManifestCache(uri_reader()))
    assert not [b.error for b in loaded if b.error]
    view = overview(loaded, days=1, now=NOW)
    return view, render_page(view), overview_json(view)


def test_a_night_that_ended_on_its_deadline_is_failed_with_the_spend_of_its_stored_images(tmp_path):
    records = [
        image_record(0),
        image_record(1),
        unfinished(2, "STILL_RUNNING", run_id="run-2"),
        unfinished(3, "STILL_RUNNING", run_id="run-3"),
    ]
    view, page, body = shown(recorded(write_night(tmp_path, records), state="failed"))
    assert Decimal(view.total_cost_usd) == Decimal("0.060")  # the two stored images; running ones bill later
    assert view.count("failed_tasks") == 1 and view.count("failed") == 2
    (day,) = view.spend
    assert (day["day"], day["cost_usd"], day["images"], day["failed"], day["failed_tasks"]) == (
        "2026-03-02",
        "0.060",
        4,
        2,
        1,
    )
    (batch,) = body["batches"]
    assert batch["task_failed"] and batch["cost_usd"] == "0.060" and batch["unfinished"] == {"STILL_RUNNING": 2}
    assert sorted((f["index"], f["failure_code"], f["api_run_id"]) for f in body["failures"]) == [
        (2, "STILL_RUNNING", "run-2"),
        (3, "STILL_RUNNING", "run-3"),
    ]
    assert "task failed" in page and "2 still running at the API" in page
    assert "in progress" not in page


def test_a_night_the_budget_stopped_is_failed_with_what_it_billed_before_the_stop(tmp_path):
    records = [
        image_record(0, billed_mp=2, cost_usd="0.045", estimated_cost_usd="0.045"),
        image_record(1, billed_mp=2, cost_usd="0.045", estimated_cost_usd="0.045"),
        image_record(2, billed_mp=2, cost_usd="0.045", estimated_cost_usd="0.045"),
        unfinished(3, "BUDGET_STOPPED", estimate="0.045"),
        unfinished(4, "BUDGET_STOPPED", estimate="0.045"),
    ]
    view, page, body = shown(recorded(write_night(tmp_path, records), state="failed"))
    assert Decimal(view.total_cost_usd) == Decimal("0.135")
    assert view.count("failed_tasks") == 1 and view.count("failed") == 2
    assert body["failed_tasks"] == 1 and Decimal(body["total_cost_usd"]) == Decimal("0.135")
    assert body["batches"][0]["unfinished"] == {"BUDGET_STOPPED": 2}
    assert {f["failure_code"] for f in body["failures"]} == {"BUDGET_STOPPED"}
    assert "2 stopped by the budget" in page and "$0.135" in page


def test_a_night_the_api_refused_counts_its_stored_images_and_not_its_failed_run(tmp_path):
    # The API failed one run (never billed, whatever the record carries) and then refused the submissions
    # (INSUFFICIENT_CREDIT): the window failed with three jobs never sent.
    records = [
        image_record(0),
        image_record(1),
        image_record(2, status="failed", failure_code="INTERNAL_ERROR", cost_usd="0.030", uri=None),
        *(unfinished(i, "NOT_SENT") for i in (3, 4, 5)),
    ]
    view, page, body = shown(recorded(write_night(tmp_path, records), state="up_for_retry"))
    assert Decimal(view.total_cost_usd) == Decimal("0.060")
    assert view.count("failed_tasks") == 1 and view.count("failed") == 4
    assert sorted((f["index"], f["outcome"], f["billed_cost_usd"]) for f in body["failures"]) == [
        (2, "failed", "0.000"),
        (3, "pending", "0.000"),
        (4, "pending", "0.000"),
        (5, "pending", "0.000"),
    ]
    assert "task failed" in page and "a retry is pending" in page and "3 not sent" in page


def test_failed_nights_spend_joins_the_successful_nights_spend_per_dag_per_day(tmp_path):
    good = [recorded(write_night(tmp_path / f"ok{i}", [image_record(j) for j in range(30)], run=f"r{i}"),
                     state="success", run=f"r{i}", at=NIGHT - timedelta(days=i + 1)) for i in range(3)]  # fmt: skip
    failed = recorded(
        write_night(tmp_path / "failed", [*(image_record(j) for j in range(8)), unfinished(8, "STILL_RUNNING")]),
        state="failed",
    )
    loaded = load_manifests([*good, failed], ManifestCache(uri_reader()))
    view = overview(loaded, days=7, now=NOW)
    assert Decimal(view.total_cost_usd) == Decimal("2.700") + Decimal("0.240")
    assert [(r["day"], r["cost_usd"], r["failed_tasks"]) for r in view.spend] == [
        ("2026-03-02", "0.240", 1),
        ("2026-03-01", "0.900", 0),
        ("2026-02-28", "0.900", 0),
        ("2026-02-27", "0.900", 0),
    ]


def test_a_retry_that_completes_the_batch_supersedes_the_failed_try_and_nothing_counts_twice(tmp_path):
    cache = ManifestCache(uri_reader())
    # Try 1 ends on its deadline: two images stored and billed, two runs still at the API.
    failed_try = [image_record(0), image_record(1), unfinished(2, "STILL_RUNNING", run_id="run-2"),
                  unfinished(3, "NOT_SENT")]  # fmt: skip
    uri = write_night(tmp_path, failed_try)
    view, _, _ = shown(recorded(uri, state="up_for_retry"), cache=cache)
    assert Decimal(view.total_cost_usd) == Decimal("0.060") and view.count("failed_tasks") == 1

    # Try 2 is queued: its XComs are still try 1's.
    queued = recorded(uri, state="queued", try_number=2)
    view, page, _ = shown(queued, cache=cache)
    assert queued.earlier_try and "retry queued (try 2)" in page
    assert Decimal(view.total_cost_usd) == Decimal("0.060")

    # Try 2 runs: Airflow deleted try 1's XComs and the task recorded its folder again. The view shows
    # what try 1 billed, from the manifest it left in that folder.
    folder = uri.rsplit("/", 1)[0]
    running = recorded(None, state="running", try_number=2, gallery=folder, at=NIGHT + timedelta(hours=1))
    view, page, body = shown(running, cache=cache)
    assert running.earlier_try and running.manifest_uri == uri
    assert Decimal(view.total_cost_usd) == Decimal("0.060") and view.count("failed_tasks") == 0
    assert "retry running (try 2)" in page and body["batches"][0]["earlier_try"]

    # Try 2 succeeds: the same runs replayed (same keys, same run ids, billed once) and the rest made.
    # Its manifest is written at the same path, over try 1's.
    retry_uri = write_night(tmp_path, [image_record(i) for i in range(4)])
    assert retry_uri == uri
    done = recorded(uri, state="success", try_number=2, at=NIGHT + timedelta(hours=2))
    view, page, body = shown(done, cache=cache)
    assert Decimal(view.total_cost_usd) == Decimal("0.120")  # four images once, not 0.060 + 0.120
    assert view.count("failed_tasks") == 0 and view.count("failed") == 0 and view.count("images") == 4

    # Even if both tries' batches reached the view (a try-dependent output_uri), the later one supersedes.
    other = write_night(tmp_path / "try1", failed_try)
    both = load_manifests([recorded(other, state="failed"), done], cache)
    view = overview(both, days=1, now=NOW)
    assert Decimal(view.total_cost_usd) == Decimal("0.120") and view.total_batches == 1
    assert view.count("failed_tasks") == 0


def test_a_cached_manifest_is_read_again_when_its_task_records_it_again(tmp_path):
    reads: list[str] = []
    read = uri_reader()

    def counting(uri: str) -> bytes:
        reads.append(uri)
        return read(uri)

    cache = ManifestCache(counting, ttl=0)
    uri = write_night(tmp_path, [image_record(0)])
    assert cache.get(uri, NIGHT)["summary"]["total_cost_usd"] == "0.030"
    write_night(tmp_path, [image_record(0), image_record(1)])  # a retry rewrites it in place
    assert cache.get(uri, NIGHT)["summary"]["total_cost_usd"] == "0.030"  # the same record: no read
    assert cache.get(uri, NIGHT + timedelta(hours=1))["summary"]["total_cost_usd"] == "0.060"
    assert reads == [uri, uri]


def test_a_failed_task_without_a_manifest_is_failed_not_in_progress(tmp_path):
    batch = recorded(None, state="failed", gallery=(tmp_path / "nightly").as_uri())
    view, page, _ = shown(batch)
    assert "task failed" in page and "no manifest" in page and "in progress" not in page
    assert view.count("failed_tasks") == 1 and Decimal(view.total_cost_usd) == 0
