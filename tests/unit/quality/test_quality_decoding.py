from __future__ import annotations

import pytest
from PIL import Image
from synthetic_images import Pictures

from airflow_provider_flux2.quality.decoding import decode_image


@pytest.mark.parametrize(("fmt", "pillow_name"), [("png", "PNG"), ("jpeg", "JPEG")])
def test_a_whole_image_decodes_with_its_format_and_size(fmt, pillow_name):
    decoded = decode_image(Pictures.encode(Pictures.scene(1, (300, 200)), fmt))

    assert decoded.ok
    assert decoded.format == pillow_name
    assert decoded.image.size == (300, 200)
    assert decoded.error is None


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_bytes_do_not_decode(fmt):
    data = Pictures.encode(Pictures.noise(2), fmt)

    decoded = decode_image(data[: len(data) // 2])

    assert not decoded.ok
    assert "does not decode" in decoded.error
    assert "truncated" in decoded.error.lower()


def test_bytes_that_are_no_image_say_so():
    decoded = decode_image(b"<html>403 Forbidden</html>")

    assert not decoded.ok
    assert decoded.error == "is not in a format Pillow recognises"


@pytest.mark.parametrize("data", [b"", None])
def test_no_bytes_is_not_an_image(data):
    assert decode_image(data).error == "has no bytes (missing or empty)"


def test_a_png_with_a_corrupted_chunk_fails_verification():
    data = bytearray(Pictures.encode(Pictures.scene(3)))
    data[60] ^= 0xFF  # inside the first IDAT chunk: its CRC no longer matches

    decoded = decode_image(bytes(data))

    assert not decoded.ok


def test_the_decompression_bomb_guard_refuses_images_over_the_limit(monkeypatch):
    data = Pictures.encode(Pictures.scene(4, (256, 192)))
    # 256×192 = 49,152 pixels; a limit just under it stands in for Pillow's 89 MP default.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 49_000)

    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own warning; decode_image then refuses
        decoded = decode_image(data)

    assert not decoded.ok
    assert "decompression-bomb limit of 49000" in decoded.error
    assert decoded.format == "PNG"


def test_an_image_at_the_limit_still_decodes(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 256 * 192)

    assert decode_image(Pictures.encode(Pictures.scene(4, (256, 192)))).ok
