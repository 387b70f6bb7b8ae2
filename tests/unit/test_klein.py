"""FLUX.2 [klein] 4B and 9B: resolver, their own validation, and the price table."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import (
    FluxKlein4BInput,
    FluxKlein9BInput,
    Variant,
    build_input,
    resolve_variant,
)
from airflow_provider_flux2.pricing import DEFAULT_PRICES, PriceTable, estimate, item_cost


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        ("klein-4b", Variant.KLEIN_4B),
        ("flux-2-klein-4b", Variant.KLEIN_4B),
        ("black-forest-labs/flux-2-klein-4b", Variant.KLEIN_4B),
        ("KLEIN-9B", Variant.KLEIN_9B),
        ("black-forest-labs/flux-2-klein-9b", Variant.KLEIN_9B),
    ],
)
def test_resolver_knows_both_klein_models(name, variant):
    assert resolve_variant(name) is variant


def test_unknown_model_error_lists_the_klein_names():
    with pytest.raises(FluxValidationError) as info:
        resolve_variant("klein")
    assert "black-forest-labs/flux-2-klein-4b" in info.value.allowed
    assert "klein-9b" in info.value.allowed


@pytest.mark.parametrize(("variant", "cls"), [("klein-4b", FluxKlein4BInput), ("klein-9b", FluxKlein9BInput)])
def test_klein_takes_steps_and_guidance_and_sends_no_safety_tolerance(variant, cls):
    request = build_input(variant, prompt="a bowl of ramen", num_inference_steps=4, guidance_scale=1.0)
    assert isinstance(request, cls)
    wire = request.to_wire()
    assert wire["num_inference_steps"] == 4
    assert wire["guidance_scale"] == 1.0
    assert "safety_tolerance" not in wire


@pytest.mark.parametrize(
    ("params", "field", "allowed"),
    [
        ({"num_inference_steps": 51}, "num_inference_steps", "1..50 on black-forest-labs/flux-2-klein-4b"),
        ({"guidance_scale": 20.5}, "guidance_scale", "0.0..20.0 on black-forest-labs/flux-2-klein-4b"),
        ({"safety_tolerance": "2"}, "safety_tolerance", "enable_safety_checker only"),
        ({"image_size": "2048x2049"}, "image_size", "at most 4,194,304 pixels"),
        ({"image_urls": ["https://x/a.png"] * 5}, "image_urls", "at most 4 reference images"),
    ],
)
def test_klein_refuses_what_its_page_does_not_allow(params, field, allowed):
    with pytest.raises(FluxValidationError) as info:
        build_input("klein-4b", prompt="p", **params)
    assert info.value.field == field
    assert allowed in info.value.allowed


def test_klein_accepts_exactly_four_megapixels_and_guidance_zero():
    request = build_input("klein-9b", prompt="p", image_size="2048x2048", guidance_scale=0)
    assert (request.width, request.height) == (2048, 2048)


def test_pro_still_refuses_tuning_and_names_where_it_is_allowed():
    with pytest.raises(FluxValidationError) as info:
        build_input("pro", prompt="p", num_inference_steps=4)
    assert "flux-2-klein-4b" in info.value.allowed
    assert "flux-2-flex" in info.value.allowed


def test_flex_ranges_are_unchanged_by_klein():
    with pytest.raises(FluxValidationError) as info:
        build_input("flex", prompt="p", guidance_scale=1.0)  # fine on klein, below flex's 1.5
    assert info.value.field == "guidance_scale"
    assert "1.5..10.0" in info.value.allowed


@pytest.mark.parametrize(("variant", "per_mp"), [(Variant.KLEIN_4B, "0.005"), (Variant.KLEIN_9B, "0.006")])
def test_klein_prices_are_flat_per_megapixel_estimates(variant, per_mp):
    price = DEFAULT_PRICES[variant]
    assert price.estimate
    assert price.first_mp == price.extra_mp == Decimal(per_mp)
    request = build_input(variant, prompt="p", image_size="1920x1080")  # 2 MP
    assert item_cost(variant, request).cost == 2 * Decimal(per_mp)


def test_klein_price_is_overridable_from_the_connection():
    table = PriceTable().with_overrides({"klein-4b": "0.014"})
    assert table.price("black-forest-labs/flux-2-klein-4b").first_mp == Decimal("0.014")
    assert not table.price("klein-4b").estimate
    plan = estimate([{"prompt": "p", "model": "klein-4b"}] * 3, table)
    assert plan.total == Decimal("0.042")
    assert "black-forest-labs/flux-2-klein-9b" in table.as_dict()
