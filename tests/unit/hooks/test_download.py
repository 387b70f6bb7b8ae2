"""hooks/download.py: what one output URL's bytes must be before they are stored."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from airflow_provider_flux2.exceptions import FluxImageError, FluxValidationError
from airflow_provider_flux2.hooks.download import decode_data_uri, header_of, size_of_run, verify_image
from airflow_provider_flux2.models import Run


def encoded(width: int, height: int, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, fmt)
    return out.getvalue()


def test_an_image_of_the_size_and_format_asked_is_verified():
    data = encoded(64, 48)
    image = verify_image(data, "image/jpeg", width=64, height=48, output_format="jpeg", run_id="r1")
    assert (image.width, image.height, image.format, image.size_bytes) == (64, 48, "jpeg", len(data))
    assert image.content_type == "image/jpeg"


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (encoded(64, 64), "image/jpeg", "Expected 64x48, got 64x64"),
        (encoded(64, 48, "PNG"), "image/png", "Expected a JPEG image, got PNG"),
        (encoded(64, 48), "text/html", "Expected content type image/jpeg, got text/html"),
        (b"<html>not an image</html>", "image/jpeg", "not a readable image"),
    ],
)
def test_anything_else_is_refused_naming_the_run(data, content_type, message):
    with pytest.raises(FluxImageError, match=message) as caught:
        verify_image(data, content_type, width=64, height=48, output_format="jpeg", run_id="run-7")
    assert caught.value.run_id == "run-7"


def test_a_header_declaring_a_bomb_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(FluxImageError, match="more pixels than Pillow's limit"):
        header_of(encoded(64, 48), "run-8")


def test_a_base64_data_uri_is_decoded_and_anything_else_refused():
    data = encoded(8, 8)
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    assert decode_data_uri(uri, "r") == (data, "image/jpeg")
    with pytest.raises(FluxImageError, match="not base64"):
        decode_data_uri("data:image/jpeg,rawbytes", "r")
    with pytest.raises(FluxImageError, match="Undecodable"):
        decode_data_uri("data:image/jpeg;base64,@@@", "r")


def test_the_size_a_run_asked_for():
    assert size_of_run(Run(id="r", input={"image_size": "square_hd"})) == (1024, 1024)
    assert size_of_run(Run(id="r", input={"image_size": "1920x1080"})) == (1920, 1080)
    unknown = Run(id="r", input={"image_size": "huge"})
    assert size_of_run(unknown) == size_of_run(Run(id="r"))  # the API's default
    with pytest.raises(FluxValidationError):
        size_of_run(unknown, strict=True)
