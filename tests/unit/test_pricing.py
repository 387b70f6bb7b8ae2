from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_flux2.exceptions import BudgetExceededError, FluxValidationError
from airflow_provider_flux2.models import PRESETS, Variant, build_input
from airflow_provider_flux2.pricing import (
    DEFAULT_PRICES,
    MEGAPIXEL,
    Budget,
    PriceTable,
    billed_megapixels,
    estimate,
    item_cost,
    reference_megapixels,
    usd,
)


@pytest.mark.parametrize(
    ("width", "height", "mp", "price"),
    [
        (1024, 1024, 1, "0.030"),
        (1920, 1080, 2, "0.045"),
        (2048, 2048, 4, "0.075"),
        (4096, 4096, 16, "0.255"),
    ],
)
def test_seed_price_table_holds_exactly(width, height, mp, price):
    request = build_input("pro", prompt="p", image_size={"width": width, "height": height})
    cost = item_cost("pro", request)
    assert cost.billed_mp == mp
    assert cost.cost == Decimal(price)
    assert usd(cost.cost) == price


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_one_megapixel_on_pro(preset):
    request = build_input("pro", prompt="p", image_size=preset)
    assert item_cost("pro", request).cost == Decimal("0.030")


@pytest.mark.parametrize(
    ("width", "height", "mp"),
    [(1024, 1025, 2), (1, 1, 1), (64, 64, 1), (2048, 512, 1), (2048, 513, 2), (4096, 4095, 16), (3000, 3000, 9)],
)
def test_megapixels_round_up_per_image(width, height, mp):
    assert billed_megapixels(width, height) == mp


def test_megapixel_is_two_to_the_twentieth():
    assert MEGAPIXEL == 2**20
    assert billed_megapixels(1024, 1024) == 1
    assert billed_megapixels(1000, 1049) == 2  # 1,049,000 px > 2^20


def test_flex_is_flat_per_megapixel():
    request = build_input("flex", prompt="p", image_size="1920x1080")
    assert item_cost("flex", request).cost == Decimal("0.10")


def test_max_and_turbo_are_flagged_estimates():
    assert DEFAULT_PRICES[Variant.MAX].estimate
    assert DEFAULT_PRICES[Variant.TURBO].estimate
    assert not DEFAULT_PRICES[Variant.PRO].estimate


def test_reference_images_billed_per_megapixel_at_extra_rate():
    # an http reference cannot be measured before the run: one megapixel, the per-image minimum
    request = build_input("pro", prompt="p @ref", image_size="square_hd", image_urls=["https://x/a.png"] * 2)
    cost = item_cost("pro", request)
    assert cost.reference_mp == 2
    assert cost.cost == Decimal("0.030") + 2 * Decimal("0.015")


def test_data_uri_reference_is_measured():
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2048, 1024)).save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    assert reference_megapixels([uri]) == 2


def test_estimate_total_is_exact_over_many_items():
    requests = [("pro", build_input("pro", prompt=f"p{i}", image_size="1920x1080")) for i in range(1000)]
    result = estimate(requests)
    assert result.total == Decimal("45.000")
    assert result.total_mp == 2000
    assert result.by_size() == [
        {
            "model": "black-forest-labs/flux-2-pro",
            "width": 1920,
            "height": 1080,
            "count": 1000,
            "billed_mp": 2,
            "reference_mp": 0,
            "unit_cost": Decimal("0.045"),
            "subtotal": Decimal("45.000"),
            "estimated": False,
        }
    ]


def test_price_overrides_from_connection_extras():
    table = PriceTable().with_overrides({"pro": {"first_mp": "0.04", "extra_mp": "0.02"}, "max": 0.08})
    request = build_input("pro", prompt="p", image_size="2048x2048")
    assert item_cost("pro", request, table).cost == Decimal("0.10")
    assert table.price("max").first_mp == Decimal("0.08")
    assert table.price("max").extra_mp == Decimal("0.08")
    assert not table.price("max").estimate


def test_price_override_rejects_nonsense():
    with pytest.raises(FluxValidationError, match=r"prices\.pro"):
        PriceTable().with_overrides({"pro": {"first": "1"}})
    with pytest.raises(FluxValidationError, match=r"prices\.pro"):
        PriceTable().with_overrides({"pro": "-1"})


def test_budget_refuses_a_plan_over_its_limit_with_both_figures():
    requests = [("pro", build_input("pro", prompt="p", image_size="4096x4096"))] * 4
    plan = estimate(requests)
    with pytest.raises(BudgetExceededError) as info:
        Budget.of("1.00").check(plan)
    assert info.value.estimate == Decimal("1.020")
    assert "$1.020" in str(info.value) and "$1.00" in str(info.value)
    assert "4 images" in str(info.value)
    Budget.of("1.02").check(plan)  # exactly at the limit is allowed


def test_budget_counts_what_was_already_spent():
    budget = Budget.of(Decimal("0.10"))
    budget.check(Decimal("0.03"), spent=Decimal("0.07"))
    with pytest.raises(BudgetExceededError):
        budget.check(Decimal("0.031"), spent=Decimal("0.07"))


def test_budget_from_float_is_exact():
    assert Budget.of(0.1).limit == Decimal("0.1")
    assert Budget.of(None) is None


def test_estimate_takes_inputs_mappings_and_pairs():
    plan = estimate(
        [
            build_input("pro", prompt="a", image_size="1920x1080"),  # a FluxInput: its own variant
            {"prompt": "b", "image_size": "2048x2048"},  # parameters, pro by default
            {"prompt": "c", "image_size": "1024x1024", "model": "flex"},  # parameters with a model
            ("pro", {"prompt": "d", "image_size": "4096x4096"}),  # a (model, parameters) pair
            build_input("flex", prompt="e", image_size="square_hd"),
        ]
    )
    assert [str(i.cost) for i in plan.items] == ["0.045", "0.075", "0.05", "0.255", "0.05"]
    assert plan.total == Decimal("0.475")
    assert estimate([{"prompt": "x"}], model="flex").items[0].model == "black-forest-labs/flux-2-flex"


def test_estimate_names_the_bad_item():
    with pytest.raises(FluxValidationError) as info:
        estimate([{"prompt": "ok"}, {"prompt": "bad", "image_size": "10x10"}])
    assert info.value.field == "requests[1].image_size.width"
    with pytest.raises(FluxValidationError, match=r"requests\.0"):
        estimate([42])


@pytest.mark.parametrize("limit", ["0.10", 0.10, Decimal("0.10")])
def test_budget_built_directly_converts_its_limit(limit):
    budget = Budget(limit)
    assert budget.limit == Decimal("0.10")
    with pytest.raises(BudgetExceededError, match=r"\$0\.255.*\$0\.100"):
        budget.check(estimate([{"prompt": "p", "image_size": "4096x4096"}]))
