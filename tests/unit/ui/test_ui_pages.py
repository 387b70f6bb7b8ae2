"""A range of days in the FLUX view: every batch of the range, a page at a time, never cut short.

Manifests are written by the project's own writer and read back through the view's code."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from html import unescape

import pytest
from synthetic_images import image_record

from airflow_provider_flux2.storage import BatchLocation, LocalPublisher, uri_reader
from airflow_provider_flux2.storage.manifest import build_manifest, write_manifest
from airflow_provider_flux2.ui.app import overview_json, render_page
from airflow_provider_flux2.ui.batches import Batch, ManifestCache, load_manifests, overview

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)
NIGHTS, PER_NIGHT = 40, 12  # ~11 batches a night, as the team runs


@pytest.fixture(scope="module")
def season(tmp_path_factory) -> list[Batch]:
    """Forty nights of twelve one-image batches (one DAG run a night), newest night last night."""
    publisher = LocalPublisher(tmp_path_factory.mktemp("out").as_uri())
    batches = []
    for night in range(NIGHTS):
        start = NOW.replace(hour=1) - timedelta(days=night + 1)
        for task in range(PER_NIGHT):
            location = BatchLocation(dag_id="nightly", run_id=f"scheduled__{night}", task_id=f"sku_{task}")
            record = image_record(0, run_id=f"run-{night}-{task}")
            uri, _ = write_manifest(publisher, location, build_manifest([record]))
            batches.append(
                Batch(
                    manifest_uri=uri,
                    gallery_uri=None,
                    dag_id="nightly",
                    run_id=location.run_id,
                    task_id=location.task_id,
                    map_index=-1,
                    at=start + timedelta(minutes=task),
                    state="success",
                    try_number=1,
                )
            )
    return load_manifests(batches, ManifestCache(uri_reader()))


def test_a_long_range_shows_every_batch_a_page_at_a_time_newest_first(season):
    first = overview(season, days=90, now=NOW)
    assert (first.total_batches, first.pages, len(first.batches)) == (NIGHTS * PER_NIGHT, 10, 50)
    seen: list[Batch] = []
    for page in range(1, first.pages + 1):
        view = overview(season, days=90, page=page, now=NOW)
        seen.extend(view.batches)
        # The spend covers the whole range on every page, not the page's batches.
        assert Decimal(view.total_cost_usd) == Decimal("0.030") * NIGHTS * PER_NIGHT
        assert len(view.spend) == NIGHTS
    assert len(seen) == len({id(b) for b in seen}) == NIGHTS * PER_NIGHT
    assert [b.at for b in seen] == sorted((b.at for b in season), reverse=True)
    assert overview(season, days=90, page=11, now=NOW).batches == []


def test_a_range_shows_the_batches_of_its_days_only(season):
    view = overview(season, days=7, limit=500, now=NOW)
    assert view.since.isoformat() == "2026-05-25"
    assert view.total_batches == 7 * PER_NIGHT and len(view.batches) == 7 * PER_NIGHT
    assert min(b.at for b in view.batches) >= datetime(2026, 5, 25, tzinfo=timezone.utc)
    assert Decimal(view.total_cost_usd) == Decimal("0.030") * 7 * PER_NIGHT


def links(page: str) -> dict[str, str]:
    return {rel: unescape(href) for href, rel in re.findall(r"<a href='([^']*)' rel='(prev|next)'>", page)}


def test_the_page_links_to_the_newer_and_older_pages_keeping_the_range_and_size(season):
    assert links(render_page(overview(season, days=90, now=NOW))) == {"next": "?days=90&page=2"}
    middle = render_page(overview(season, days=90, page=2, limit=100, now=NOW))
    assert links(middle) == {"prev": "?days=90&limit=100", "next": "?days=90&page=3&limit=100"}
    assert "batches 101–200 of 480 · page 2 of 5" in middle
    assert links(render_page(overview(season, days=90, page=5, limit=100, now=NOW))) == {
        "prev": "?days=90&page=4&limit=100"
    }
    # Nothing to page through: no pager at all.
    assert links(render_page(overview(season, days=1, now=NOW))) == {}


def test_the_json_says_where_the_page_is_in_the_range(season):
    body = overview_json(overview(season, days=366, page=3, limit=200, now=NOW))
    assert (body["page"], body["limit"], body["pages"], body["total_batches"]) == (3, 200, 3, 480)
    assert len(body["batches"]) == 80
    assert Decimal(body["total_cost_usd"]) == Decimal("14.400")
