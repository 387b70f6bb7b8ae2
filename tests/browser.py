"""Headless Chromium for the gallery tests (Debian's package, which ``make test`` installs when missing)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The system Chromium; its absence fails the test (``make test`` installs it), never skips it."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.fail("Chromium is not installed: run `make browser` (Debian's chromium package) for the gallery test")
    return path


def rendered_images(url: str) -> list[dict[str, Any]]:
    """Open ``url`` in Chromium and return every ``<img>``: its src, whether it loaded, its natural width."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url, wait_until="load")
            return page.eval_on_selector_all(
                "img", "els => els.map(e => ({src: e.getAttribute('src'), ok: e.complete, w: e.naturalWidth}))"
            )
        finally:
            browser.close()
