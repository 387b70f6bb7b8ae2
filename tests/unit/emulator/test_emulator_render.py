"""Image synthesis: exact sizes, deterministic bytes, prompts told apart, the fault styles."""

from __future__ import annotations

import io
import itertools

import imagehash
import pytest
from PIL import Image

from airflow_provider_flux2.emulator.images import ImageSpec, palette, render
from airflow_provider_flux2.models import PRESETS

PROMPTS = [
    "a red fox in fresh snow",
    "a red fox in fresh snow at night",
    "a lighthouse on a cliff at dusk",
    "product photo of a white sneaker",
    "product photo of a black sneaker",
    "a bowl of ramen, top view",
    "portrait of an old fisherman",
    "a city street in the rain, neon signs",
    "an astronaut riding a horse",
    "a watercolour map of an island",
    "a",
    "b",
]


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(("width", "height"), [*PRESETS.values(), (1920, 1080), (333, 517), (64, 4096)])
@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("png", "PNG")])
def test_render_is_exactly_the_requested_size_and_format(width, height, fmt, pil_format):
    image = _decode(render(ImageSpec("size check", 1, width, height, fmt)))
    assert image.size == (width, height)
    assert image.format == pil_format


def test_same_inputs_give_identical_bytes_even_uncached():
    from airflow_provider_flux2.emulator.images import _picture, encode

    spec = ImageSpec("a teapot", 3, 640, 480, "png")
    assert render(spec) == render(spec) == encode(_picture(spec), "png")


def test_seed_and_prompt_both_change_the_picture():
    base = render(ImageSpec("a teapot", 3, 256, 256))
    assert render(ImageSpec("a teapot", 4, 256, 256)) != base
    assert render(ImageSpec("a teapot!", 3, 256, 256)) != base


def test_different_prompts_are_never_near_duplicates():
    hashes = {p: imagehash.phash(_decode(render(ImageSpec(p, 42, 1024, 768)))) for p in PROMPTS}
    distances = {(a, b): hashes[a] - hashes[b] for a, b in itertools.combinations(PROMPTS, 2)}
    closest = min(distances, key=distances.get)
    assert distances[closest] > 16, closest


def test_the_palette_comes_from_the_prompt():
    assert palette("a") == palette("a")
    assert palette("a") != palette("b")
    assert len(palette("a")) == 5


def test_black_style_is_all_black():
    image = _decode(render(ImageSpec("flagged", 1, 300, 200, "png", style="black"))).convert("RGB")
    assert image.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_blank_style_is_one_colour_from_the_prompt():
    image = _decode(render(ImageSpec("blank", 1, 300, 200, "png", style="blank"))).convert("RGB")
    assert all(low == high for low, high in image.getextrema())
    assert image.getpixel((10, 10)) == palette("blank")[0]


def test_duplicate_style_is_a_near_duplicate_with_different_bytes():
    original = render(ImageSpec("original", 5, 1024, 768))
    copy = render(ImageSpec("original", 5, 1024, 768, style="duplicate"))
    assert original != copy
    assert imagehash.phash(_decode(original)) - imagehash.phash(_decode(copy)) <= 8


def test_long_prompts_are_wrapped_and_cut_to_fit():
    image = _decode(render(ImageSpec("word " * 2000, 1, 512, 512)))
    assert image.size == (512, 512)
