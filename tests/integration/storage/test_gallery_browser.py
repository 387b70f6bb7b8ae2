"""The gallery as people see it: rendered by a real headless Chromium from ``file://``."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import CHROMIUM_ARGS, chromium_path
from synthetic_images import Pictures, image_record

from airflow_provider_flux2.quality.suite import CheckSuite
from airflow_provider_flux2.storage import BatchLocation, LocalPublisher
from airflow_provider_flux2.storage.local import path_of
from airflow_provider_flux2.storage.report import write_batch_report

HOSTILE_PROMPT = 'a chair <img src="https://evil.example/x.png"> <script>document.title="pwned"</script>'


@pytest.fixture
def gallery(tmp_path) -> tuple[Path, list]:
    """A checked batch of 8 images — 2 blank, 1 near-duplicate, 1 wrong size, 1 failed run — and its report."""
    publisher = LocalPublisher(tmp_path.as_uri())
    location = BatchLocation("catalogue", "manual__2026-05-01T00:00:00+00:00", "publish")
    base = Pictures.scene(100)
    images = {
        0: Pictures.scene(101),
        1: Pictures.flat((255, 255, 255)),
        2: base,
        3: Pictures.perturbed(base),
        4: Pictures.scene(102),
        5: Pictures.flat((0, 0, 0)),
        6: Pictures.scene(103, (200, 192)),
    }
    items = []
    for index, image in images.items():
        data = Pictures.encode(image)
        uri = publisher.put_image(location, index, data, "image/png")
        prompt = HOSTILE_PROMPT if index == 0 else f"product shot {index}"
        items.append((image_record(index, uri=uri, prompt=prompt), data))
    items.append((image_record(7, status="failed", uri=None, cost_usd="0", failure_code="CONTENT_MODERATED"), None))
    checked = CheckSuite.from_config().run(items).records
    uris = write_batch_report(publisher, location, checked)
    return path_of(uris["gallery_uri"]), checked


@pytest.mark.browser
def test_every_thumbnail_loads_and_failed_images_are_marked_in_chromium(gallery):
    from playwright.sync_api import sync_playwright

    page_path, records = gallery
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({src: e.getAttribute('src'), ok: e.complete, w: e.naturalWidth}))"
            )
            cards = page.eval_on_selector_all(
                "figure.card",
                "els => els.map(e => ({index: e.dataset.index, cls: e.className,"
                " badge: e.querySelector('.badge').textContent,"
                " failed: Array.from(e.querySelectorAll('.checks .fail')).map(li => li.textContent)}))",
            )
            title = page.title()
            scripts = page.eval_on_selector_all("script", "els => els.length")
            summary = page.inner_text("#summary")
        finally:
            browser.close()

    assert len(images) == 7  # one per stored image; the failed run has none
    assert all(img["ok"] and img["w"] > 0 for img in images), images
    assert all(img["src"].startswith("thumbs/") for img in images)
    assert len(requests) >= 8  # the page and its seven thumbnails...
    assert all(url.startswith("file://") for url in requests), requests  # ...and nothing from the network

    by_index = {card["index"]: card for card in cards}
    assert [card["index"] for card in cards] == [str(i) for i in range(8)]
    expected_failed = {"1": "not_blank", "3": "near_duplicate", "5": "not_blank", "6": "size"}
    for index, check in expected_failed.items():
        assert "failed" in by_index[index]["cls"].split()
        assert by_index[index]["badge"] == "FAILED CHECKS"
        assert any(text.startswith(f"✗ {check}:") for text in by_index[index]["failed"])
    for index in ("0", "2", "4"):
        assert by_index[index]["cls"] == "card passed" and by_index[index]["failed"] == []
    assert by_index["7"]["badge"] == "FAILED"

    assert scripts == 0 and title != "pwned"  # the hostile prompt stayed text
    assert "Images\n8" in summary and "Failed\n5" in summary
    assert len(records) == 8
