from __future__ import annotations

import io
import json
import re
from datetime import datetime, timezone
from html.parser import HTMLParser

import pytest
from PIL import Image
from synthetic_images import Pictures, image_record

from airflow_provider_flux2.models import CheckVerdict
from airflow_provider_flux2.storage import BatchLocation, LocalPublisher
from airflow_provider_flux2.storage.gallery import (
    Card,
    contact_sheet_png,
    relative_link,
    render_gallery,
    thumb_name,
    thumbnail_jpeg,
)
from airflow_provider_flux2.storage.manifest import build_manifest
from airflow_provider_flux2.storage.report import write_batch_report

WHEN = datetime(2026, 5, 1, tzinfo=timezone.utc)
BLANK = CheckVerdict(check="not_blank", passed=False, reason="near-uniform: grayscale std 0.00 <= 4.0")
OK = CheckVerdict(check="not_blank", passed=True, reason="std 40.00")
HOSTILE = '<img src="https://evil.example/x.png" onerror="alert(1)"><script>alert(2)</script> & "quotes"'


class Elements(HTMLParser):
    """Every start tag with its attributes, as a browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(page)
    return parser.tags


def page_for(records, thumbs=True) -> str:
    manifest = build_manifest(records, generated_at=WHEN)
    cards = [
        Card(row, thumb=thumb_name(row) if thumbs else None, thumb_size=(64, 48), link=f"{row['index']:05d}.png")
        for row in manifest.rows
    ]
    return render_gallery(manifest, cards, title="nightly <run>")


def test_user_text_is_escaped_so_a_prompt_cannot_add_elements_or_scripts():
    page = page_for([image_record(0, prompt=HOSTILE)])

    tags = parse(page)
    assert not [t for t, _ in tags if t == "script"]
    assert [a["src"] for t, a in tags if t == "img"] == ["thumbs/00000.jpg"]
    assert "&lt;script&gt;alert(2)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "<title>nightly &lt;run&gt;</title>" in page


def test_the_page_references_nothing_outside_its_folder():
    page = page_for([image_record(0), image_record(1, checks=[BLANK])])

    urls = [a.get(k) for _, a in parse(page) for k in ("src", "href") if a.get(k)]
    assert urls
    assert all(not re.match(r"^([a-z]+:|//|/)", url) for url in urls), urls
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_a_content_security_policy_forbids_scripts_and_remote_loads():
    [csp] = [a["content"] for t, a in parse(page_for([image_record(0)])) if a.get("http-equiv")]

    assert "default-src 'none'" in csp
    assert "script-src" not in csp


def test_failed_images_are_marked_and_their_failed_checks_highlighted():
    page = page_for([image_record(0, checks=[OK]), image_record(1, checks=[BLANK])])

    figures = {a["data-index"]: a for t, a in parse(page) if t == "figure"}
    assert figures["0"]["class"] == "card passed"
    assert figures["1"]["class"] == "card failed"
    assert figures["1"]["data-outcome"] == "failed_checks"
    assert '<span class="badge">FAILED CHECKS</span>' in page
    assert '<li class="fail">✗ not_blank: near-uniform: grayscale std 0.00 &lt;= 4.0</li>' in page


def test_each_card_shows_prompt_seed_size_and_cost():
    page = page_for([image_record(0, prompt="a red chair", seed=4242, width=1920, height=1080, cost_usd="0.045")])

    assert '<p class="prompt">a red chair</p>' in page
    assert "<dt>Seed</dt><dd>4242</dd>" in page
    assert "<dt>Size</dt><dd>1920×1080 (png)</dd>" in page
    assert "<dt>Cost</dt><dd>$0.045 (1 MP)</dd>" in page


def test_the_summary_is_at_the_top():
    page = page_for([image_record(0, cost_usd="0.030"), image_record(1, status="dropped", cost_usd="0.045")])

    summary = page[page.index('id="summary"') : page.index('<main class="grid">')]
    assert "<dt>Images</dt><dd>2</dd>" in summary
    assert "<dt>Dropped</dt><dd>1</dd>" in summary
    assert "<dt>Total cost</dt><dd>$0.075</dd>" in summary


def test_images_replaced_by_a_regeneration_are_shown_as_superseded():
    page = page_for(
        [
            image_record(0, status="dropped", checks=[BLANK], cost_usd="0.030"),
            image_record(0, attempt=2, regenerated_from="run-0", checks=[OK], cost_usd="0.030"),
            image_record(1, status="dropped", checks=[BLANK], cost_usd="0.045"),
        ]
    )

    outcomes = [a["data-outcome"] for t, a in parse(page) if t == "figure"]
    assert outcomes == ["superseded", "passed", "dropped"]
    assert '<span class="badge">SUPERSEDED</span>' in page
    summary = page[page.index('id="summary"') : page.index('<main class="grid">')]
    assert "<dt>Dropped</dt><dd>1</dd>" in summary
    assert "<dt>Superseded</dt><dd>1</dd>" in summary
    assert "<dt>Spent on superseded</dt><dd>$0.030</dd>" in summary
    assert "<dt>Spent on dropped</dt><dd>$0.045</dd>" in summary


def test_an_image_without_a_thumbnail_says_so_instead_of_a_broken_img():
    page = page_for([image_record(0, status="failed", uri=None, cost_usd="0")], thumbs=False)

    assert not [t for t, _ in parse(page) if t == "img"]
    assert '<span class="noimage">no image</span>' in page


def test_thumbnails_are_small_jpegs_keeping_the_aspect_ratio():
    data, size = thumbnail_jpeg(Pictures.encode(Pictures.scene(1, (1600, 900))))

    with Image.open(io.BytesIO(data)) as thumb:
        assert thumb.format == "JPEG"
        assert thumb.size == size == (320, 180)


def test_bytes_that_do_not_decode_have_no_thumbnail():
    assert thumbnail_jpeg(b"not an image") is None
    assert thumbnail_jpeg(None) is None


@pytest.mark.parametrize(
    ("uri", "link"),
    [
        ("s3://b/p/d/r/t/00001-abc.png", "00001-abc.png"),
        ("s3://b/p/d/r/t/sub/x.png", "sub/x.png"),
        ("s3://b/p/d/r/t2/x.png", None),
        ("s3://b/staging/x.png", None),
        (None, None),
    ],
)
def test_only_images_inside_the_gallery_folder_are_linked(uri, link):
    assert relative_link("s3://b/p/d/r/t", uri) == link


def test_thumb_names_follow_the_stored_image_so_attempts_do_not_collide():
    assert thumb_name({"uri": "file:///x/00003-0123456789ab.png", "index": 3, "attempt": 1}) == (
        "thumbs/00003-0123456789ab.jpg"
    )
    assert thumb_name({"uri": None, "index": 3, "attempt": 2}) == "thumbs/00003-attempt2.jpg"


def test_the_png_contact_sheet_is_a_grid_with_a_header():
    records = [image_record(i, checks=[OK if i % 2 else BLANK]) for i in range(7)]
    manifest = build_manifest(records, generated_at=WHEN)
    thumbs = [thumbnail_jpeg(Pictures.encode(Pictures.scene(i)))[0] for i in range(6)] + [None]

    sheet = Image.open(io.BytesIO(contact_sheet_png(manifest, thumbs, columns=5)))

    assert sheet.format == "PNG"
    assert sheet.size == (12 + 5 * 212, 56 + 2 * (200 + 62 + 12))
    # The frame of a failed image is red, of a passed one green (top-left corner of each cell).
    assert sheet.getpixel((13, 57)) == (207, 34, 46)
    assert sheet.getpixel((12 + 212 + 1, 57)) == (46, 160, 67)


def test_write_batch_report_writes_manifest_gallery_thumbnails_and_sheet(tmp_path):
    publisher = LocalPublisher(tmp_path.as_uri())
    location = BatchLocation("dag", "run", "publish")
    records = []
    for i in range(3):
        uri = publisher.put_image(location, i, Pictures.encode(Pictures.scene(i)), "image/png")
        records.append(image_record(i, uri=uri, checks=[OK]).to_xcom())
    records.append(image_record(3, status="failed", uri=None, cost_usd="0").to_xcom())

    uris = write_batch_report(publisher, location, records, generated_at=WHEN)

    folder = publisher.folder_uri(location)
    assert uris == {
        "manifest_uri": f"{folder}/manifest.json",
        "manifest_csv_uri": f"{folder}/manifest.csv",
        "gallery_uri": f"{folder}/index.html",
        "contact_sheet_uri": f"{folder}/contact_sheet.png",
    }
    page = publisher.get(uris["gallery_uri"]).decode()
    srcs = [a["src"] for t, a in parse(page) if t == "img"]
    assert len(srcs) == 3
    assert all(publisher.exists(f"{folder}/{src}") for src in srcs)
    assert publisher.head(uris["gallery_uri"]).content_type == "text/html; charset=utf-8"
    manifest = json.loads(publisher.get(uris["manifest_uri"]))
    assert (manifest["dag_id"], manifest["folder_uri"], manifest["summary"]["count"]) == ("dag", folder, 4)
    assert Image.open(io.BytesIO(publisher.get(uris["contact_sheet_uri"]))).format == "PNG"


def test_a_missing_image_still_gets_its_manifest_row_and_a_no_image_card(tmp_path):
    publisher = LocalPublisher(tmp_path.as_uri())
    location = BatchLocation("dag", "run", "publish")
    gone = publisher.uri_for(location, "00000-gone.png")

    uris = write_batch_report(publisher, location, [image_record(0, uri=gone)], generated_at=WHEN)

    assert json.loads(publisher.get(uris["manifest_uri"]))["images"][0]["uri"] == gone
    assert "no image" in publisher.get(uris["gallery_uri"]).decode()


def test_the_report_writer_lives_in_report_only_and_the_gallery_does_not_import_it():
    import airflow_provider_flux2.storage.gallery as gallery

    assert not hasattr(gallery, "write_batch_report")  # the shim that made gallery <-> report a cycle is gone
    assert write_batch_report.__module__ == "airflow_provider_flux2.storage.report"


def test_the_items_id_is_shown_on_its_card_and_in_the_manifest():
    records = [image_record(0, extra={"id": "SKU-1042"}), image_record(1)]
    manifest = build_manifest(records, generated_at=WHEN)
    page = page_for(records)

    assert [row["item_id"] for row in manifest.rows] == ["SKU-1042", None]
    assert "item_id" in manifest.to_csv().decode().splitlines()[0].split(",")
    assert "<dt>ID</dt><dd>SKU-1042</dd>" in page
    cards = [attrs for tag, attrs in parse(page) if tag == "figure"]
    assert [c.get("data-id") for c in cards] == ["SKU-1042", None]


def _title_band(title: str, records=None) -> Image.Image:
    manifest = build_manifest(records or [image_record(0)], generated_at=WHEN)
    sheet = Image.open(io.BytesIO(contact_sheet_png(manifest, [None] * len(manifest.rows), title=title)))
    return sheet.crop((0, 0, sheet.width, 30))


def test_the_contact_sheet_title_draws_a_dash_where_the_font_has_no_em_dash():
    from PIL import ImageFont

    from airflow_provider_flux2.storage.gallery import _has_glyph, drawable

    font = ImageFont.load_default(size=18)
    title = "Product images — nightly refresh"

    assert not _has_glyph(font, "—")  # what made the missing-glyph box
    assert drawable(title, font) == "Product images - nightly refresh"
    assert drawable("Café × 2 漢", font) == "Cafe x 2 ?"
    assert _title_band(title).tobytes() == _title_band("Product images - nightly refresh").tobytes()


def test_the_contact_sheet_caption_names_the_item():
    records = [image_record(0, extra={"id": "SKU-1042"})]

    with_id = _cell_caption(records)
    without = _cell_caption([image_record(0)])

    assert with_id != without  # the id is drawn in the caption


def _cell_caption(records) -> bytes:
    manifest = build_manifest(records, generated_at=WHEN)
    sheet = Image.open(io.BytesIO(contact_sheet_png(manifest, [None], title="t")))
    return sheet.crop((12, 56 + 200, 212, 56 + 200 + 20)).tobytes()
