"""``references.py``: the resolver's rules for local files, URL forms and limits, and the forms it records.

Storage references read through a real S3 (moto's server), the CLI and the hook are tested in
``tests/integration/test_references_in_storage.py``.
"""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from synthetic_images import Pictures

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import build_input
from airflow_provider_flux2.pricing import estimate, item_cost
from airflow_provider_flux2.references import (
    MAX_PRESIGN_SECONDS,
    PRESIGN_MARGIN,
    Reference,
    ReferenceResolver,
    local_path,
    references_of,
)


def _photo(size: tuple[int, int], fmt: str = "png") -> bytes:
    return Pictures.encode(Pictures.noise(3, size), fmt)


# -- presigning ----------------------------------------------------------------------------------------


def test_presign_never_asks_for_more_than_seven_days():
    assert ReferenceResolver(valid_for=30 * 24 * 3600).expires_in == MAX_PRESIGN_SECONDS


def test_a_presigned_url_outlives_the_task_by_the_margin():
    assert ReferenceResolver(valid_for=2 * 3600).expires_in == 2 * 3600 + PRESIGN_MARGIN


# -- local files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["path", "file_uri"])
def test_local_file_is_sent_inline_and_measured(tmp_path, form):
    path = tmp_path / "dish photo.png"
    path.write_bytes(_photo((900, 700)))
    source = str(path) if form == "path" else path.as_uri()
    request = build_input("pro", prompt="p", image_urls=[source])
    wire, references = ReferenceResolver().resolve(request)
    url = wire.image_urls[0]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == path.read_bytes()
    assert (references[0].width, references[0].height) == (900, 700)
    assert item_cost("pro", wire).reference_mp == 1


def test_a_local_file_is_sent_with_the_mime_type_of_its_bytes_not_its_name(tmp_path):
    path = tmp_path / "shot.png"  # a JPEG under a .png name
    path.write_bytes(_photo((64, 48), "jpeg"))
    url = ReferenceResolver().wire_url(str(path))
    assert url.startswith("data:image/jpeg;base64,")


def test_local_file_over_the_inline_limit_is_refused_with_advice(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_photo((900, 700)))
    with pytest.raises(FluxValidationError) as info:
        ReferenceResolver(max_inline_bytes=1000).measure(str(path), "image_urls[0]")
    assert info.value.field == "image_urls[0]"
    assert "upload larger ones to S3" in info.value.allowed
    assert "at most 1,000 bytes" in info.value.allowed


def test_a_local_file_that_is_not_an_image_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(FluxValidationError) as info:
        ReferenceResolver().measure(str(path), "image_urls[2]")
    assert info.value.field == "image_urls[2]"


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("/no/such/file.png", "readable image file"),
        ("relative/dish.png", "an http(s) URL"),
        ("ftp://x/a.png", "an http(s) URL"),
    ],
)
def test_bad_local_references_are_refused(source, allowed):
    with pytest.raises(FluxValidationError) as info:
        ReferenceResolver().measure(source)
    assert allowed in info.value.allowed


def test_one_local_file_used_by_many_images_is_read_once(tmp_path, monkeypatch):
    path = tmp_path / "dish.png"
    path.write_bytes(_photo((320, 240)))
    opened: list[Path] = []
    real_open = Path.open  # Path.read_bytes opens through it too

    def counting_open(self, *args, **kwargs):
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    resolver = ReferenceResolver()
    requests = [build_input("pro", prompt=f"style {i}", image_urls=[str(path)]) for i in range(4)]
    urls = {resolver.resolve(request)[0].image_urls[0] for request in requests}
    assert len(urls) == 1
    assert opened.count(path) == 2  # its header measured once, its bytes inlined once, for the four images


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("/data/shots/dish.png", "/data/shots/dish.png"),
        ("file:///data/shots/dish%20photo.png", "/data/shots/dish photo.png"),
        ("file://localhost/data/dish.png", "/data/dish.png"),
    ],
)
def test_local_path_reads_paths_and_file_uris(source, path):
    assert local_path(source) == Path(path)


def test_local_path_refuses_a_file_uri_of_another_host():
    with pytest.raises(ValueError, match="another host"):
        local_path("file://fileserver/data/dish.png")


# -- URLs and the forms the validation accepts -------------------------------------------------------------


def test_http_references_pass_through_and_keep_the_minimum_price():
    request = build_input("pro", prompt="p", image_urls=["https://example.com/a.png"])
    wire, references = ReferenceResolver().resolve(request)
    assert wire.image_urls == ["https://example.com/a.png"]
    assert references[0].billed_mp == 1 and references[0].width is None


def test_a_request_without_references_is_returned_as_it_is():
    request = build_input("pro", prompt="p")
    assert ReferenceResolver().resolve(request) == (request, [])


def test_validation_accepts_storage_forms_and_still_names_bad_ones():
    build_input("pro", prompt="p", image_urls=["s3://b/k.jpg", "file:///a/b.png", "/a/b.png"])
    with pytest.raises(FluxValidationError) as info:
        build_input("pro", prompt="p", image_urls=["s3://bucket-only"])
    assert info.value.field == "image_urls"


# -- what is recorded -------------------------------------------------------------------------------------


def test_a_reference_is_billed_at_its_megapixels_or_the_assumed_minimum():
    assert Reference("s3://b/k.jpg", "s3", 2400, 1800).billed_mp == 5
    assert Reference("https://example.com/a.png", "url").billed_mp == 1


def test_the_recorded_form_never_carries_the_bytes_of_an_inline_reference():
    inline = "data:image/png;base64," + "A" * 5000
    shown = Reference(inline, "data", 10, 10).as_dict()
    assert len(shown["source"]) < 50 and shown["source"].endswith("…")
    assert shown == {"source": shown["source"], "width": 10, "height": 10, "billed_mp": 1}


def test_references_of_lists_each_distinct_reference_once():
    first = {"source": "s3://b/a.jpg", "width": 1600, "height": 1200, "billed_mp": 2}
    second = {"source": "/data/b.png", "width": 900, "height": 700, "billed_mp": 1}
    images = [
        SimpleNamespace(meta={"references": [first]}),
        SimpleNamespace(meta={"references": [first, second]}),
        SimpleNamespace(meta={}),
    ]
    assert references_of(images) == [first, second]


def test_attach_records_the_measured_references_and_keeps_the_image_as_planned(tmp_path):
    from airflow_provider_flux2.jobs import new_job
    from airflow_provider_flux2.models import resolve_variant

    path = tmp_path / "dish.png"
    path.write_bytes(_photo((900, 700)))
    identity = {"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": -1}
    image = new_job(identity, 0, resolve_variant("pro"), build_input("pro", prompt="the dish", image_urls=[str(path)]))
    attached = ReferenceResolver().attach(image)
    assert attached.request.image_urls[0].startswith("data:image/png;base64,")
    assert attached.meta["references"] == [{"source": str(path), "width": 900, "height": 700, "billed_mp": 1}]
    assert image.request.image_urls == [str(path)]  # the plan's own request and keys are untouched
    assert (attached.idempotency_key, attached.request_hash) == (image.idempotency_key, image.request_hash)


# -- estimate() measures local references on its own -------------------------------------------------------


def test_estimate_on_its_own_prices_a_local_reference_at_its_real_size(tmp_path):
    path = tmp_path / "dish.jpg"
    Image.new("RGB", (2400, 1800), "tan").save(path, "JPEG")  # 4,320,000 px: 5 MP
    result = estimate([{"prompt": "the dish, as a watercolour", "image_urls": [str(path)], "image_size": "square"}])
    (item,) = result.items
    assert (item.billed_mp, item.reference_mp) == (1, 5)
    assert result.total == Decimal("0.030") + 5 * Decimal("0.015")


def test_estimate_names_the_item_of_an_unreadable_reference(tmp_path):
    plan = [{"prompt": "ok"}, {"prompt": "a dish", "image_urls": [str(tmp_path / "missing.jpg")]}]
    with pytest.raises(FluxValidationError) as raised:
        estimate(plan)
    assert raised.value.field == "requests[1].image_urls[0]"
