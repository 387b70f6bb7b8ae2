from __future__ import annotations

import json

import pytest

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import (
    PRESETS,
    FluxFlexInput,
    FluxInput,
    FluxProInput,
    FluxTurboInput,
    Variant,
    build_input,
    resolve_variant,
    size_of,
)

BAD_INPUTS = [
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": "   "}, "prompt", "non-empty"),
    ({"prompt": "x" * 10_001}, "prompt", "10000"),
    ({"prompt": "p", "image_size": "huge"}, "image_size", "square_hd"),
    ({"prompt": "p", "image_size": {"width": 63, "height": 100}}, "image_size.width", "64..4096"),
    ({"prompt": "p", "image_size": {"width": 100, "height": 4097}}, "image_size.height", "64..4096"),
    ({"prompt": "p", "image_size": "100x5000"}, "image_size.height", "64..4096"),
    ({"prompt": "p", "image_size": {"width": 100.5, "height": 100}}, "image_size.width", "integer"),
    ({"prompt": "p", "image_size": {"width": 100}}, "image_size", "width, height"),
    ({"prompt": "p", "output_format": "gif"}, "output_format", "'jpeg' or 'png'"),
    ({"prompt": "p", "safety_tolerance": "6"}, "safety_tolerance", "'1'..'5'"),
    ({"prompt": "p", "safety_tolerance": 0}, "safety_tolerance", "'1'..'5'"),
    ({"prompt": "p", "seed": -1}, "seed", "0..4294967295"),
    ({"prompt": "p", "seed": 2**32}, "seed", "0..4294967295"),
    ({"prompt": "p", "image_urls": ["https://x"] * 9}, "image_urls", "at most 8"),
    ({"prompt": "p", "image_urls": ["ftp://x"]}, "image_urls", "http(s)"),
    ({"prompt": "p", "colors": ["#12345"]}, "colors", "#RRGGBB"),
    ({"prompt": "p", "colors": ["red"]}, "colors", "#RRGGBB"),
    ({"prompt": "p", "colors": "#1A2B3"}, "colors", "#RRGGBB"),
    ({"prompt": {"scene": "a vase", "color_palette": ["#ZZZZZZ"]}}, "prompt.color_palette.0", "#RRGGBB"),
    ({"prompt": {"scene": "a vase", "background_colour": "#12"}}, "prompt.background_colour", "#RRGGBB"),
    ({"prompt": "p", "guidance_scale": 3.5}, "guidance_scale", "only with the flex variant"),
    ({"prompt": "p", "num_inference_steps": 20}, "num_inference_steps", "only with the flex variant"),
    ({"prompt": "p", "enable_safety_checker": "maybe"}, "enable_safety_checker", "true or false"),
    ({"prompt": "p", "strength": 1}, "strength", "one of the parameters"),
    ({}, "prompt", "non-empty"),
]


@pytest.mark.parametrize(("params", "field", "allowed"), BAD_INPUTS)
def test_bad_input_names_field_value_and_what_is_allowed(params, field, allowed):
    with pytest.raises(FluxValidationError) as info:
        build_input("pro", **params)
    assert info.value.field == field
    assert allowed in str(info.value)
    assert str(info.value).startswith(f"Invalid {field}:")


@pytest.mark.parametrize(
    ("params", "field"),
    [({"num_inference_steps": 0}, "num_inference_steps"), ({"guidance_scale": 11}, "guidance_scale")],
)
def test_flex_parameter_ranges(params, field):
    with pytest.raises(FluxValidationError) as info:
        build_input("flex", prompt="p", **params)
    assert info.value.field == field


def test_flex_accepts_its_parameters():
    wire = build_input("flex", prompt="p", num_inference_steps=28, guidance_scale=3.5).to_wire()
    assert wire["num_inference_steps"] == 28
    assert wire["guidance_scale"] == 3.5


def test_unknown_model_lists_the_four_variants():
    with pytest.raises(FluxValidationError) as info:
        resolve_variant("flux-3-ultra")
    for variant in Variant:
        assert variant.model_id in str(info.value)


@pytest.mark.parametrize("name", ["pro", "flux-2-pro", "black-forest-labs/flux-2-pro", "PRO", None])
def test_model_names_resolve(name):
    assert resolve_variant(name) is Variant.PRO


def test_sizes_accept_presets_dicts_strings_and_pairs():
    assert size_of("portrait_16_9") == (576, 1024)
    assert size_of({"width": 1920, "height": 1080}) == (1920, 1080)
    assert size_of("1920x1080") == (1920, 1080)
    assert size_of((333, 517)) == (333, 517)
    assert size_of(None) == PRESETS["landscape_4_3"]
    assert build_input("pro", prompt="p", image_size="1920x1080").to_wire()["image_size"] == {
        "width": 1920,
        "height": 1080,
    }


def test_safety_tolerance_int_is_normalised_to_string():
    assert build_input("pro", prompt="p", safety_tolerance=4).safety_tolerance == "4"


def test_json_prompt_is_serialised_canonically():
    a = build_input("pro", prompt={"scene": "shoe", "light": "soft"}).prompt
    b = build_input("pro", prompt={"light": "soft", "scene": "shoe"}).prompt
    assert a == b == json.dumps({"light": "soft", "scene": "shoe"}, separators=(",", ":"))


def test_hex_colours_are_validated_normalised_and_woven_in():
    text = build_input("pro", prompt="a sneaker", colors=["#1a2b3c", "#FFFFFF"]).prompt
    assert text == "a sneaker Colour palette: #1A2B3C, #FFFFFF."
    structured = json.loads(build_input("pro", prompt={"scene": "x"}, colors=["#00ff00"]).prompt)
    assert structured["color_palette"] == ["#00FF00"]


def test_several_errors_are_all_reported():
    with pytest.raises(FluxValidationError) as info:
        build_input("pro", prompt="p", output_format="gif", safety_tolerance="9")
    assert {d["field"] for d in info.value.details} == {"output_format", "safety_tolerance"}


def test_each_variant_has_its_own_input_model_and_direct_construction_raises_our_error():
    assert isinstance(build_input("flex", prompt="p", num_inference_steps=8), FluxFlexInput)
    assert build_input("max", prompt="p").variant is Variant.MAX
    assert FluxTurboInput(prompt="p", image_size="1920x1080").width == 1920
    with pytest.raises(FluxValidationError) as info:
        FluxInput(prompt="")
    assert info.value.field == "prompt"
    with pytest.raises(FluxValidationError) as info:
        FluxProInput(prompt="p", image_size={"width": 10, "height": 100})
    assert info.value.field == "image_size.width" and "64..4096" in str(info.value)
    with pytest.raises(FluxValidationError) as info:
        FluxProInput(prompt="p", guidance_scale=3.0)
    assert "only with the flex variant" in str(info.value)


def test_a_single_hex_colour_string_is_one_colour_and_named_colours_in_json_prompts_pass():
    assert build_input("pro", prompt="a mug", colors="#a0b0c0").prompt == "a mug Colour palette: #A0B0C0."
    prompt = build_input("pro", prompt={"scene": "a mug", "colors": ["navy", "#A0B0C0"]}).prompt
    assert json.loads(prompt)["colors"] == ["navy", "#A0B0C0"]
