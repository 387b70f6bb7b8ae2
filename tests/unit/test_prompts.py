from __future__ import annotations

import json

import pytest

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.prompts import (
    parse_rows,
    plan_refresh,
    previous_images,
    render_prompt,
    row_hash,
    split_colours,
)

ROWS = [
    {
        "sku": "A",
        "name": "Lamp",
        "description": "desk lamp",
        "colours": "#112233; #FFFFFF",
        "style": "studio",
        "size": "square_hd",
    },
    {"sku": "B", "name": "Mug", "description": "ceramic mug", "colours": "", "style": "kitchen", "size": "1920x1080"},
]
TEMPLATE = "{style}: {name}, {description}"


def manifest_of(plan, run_id="night-1"):
    """A published manifest as the publish step writes it, for the rows of a plan."""
    rows = []
    for index, item in enumerate(plan.items):
        rows.append(
            {
                "index": index,
                "model": "black-forest-labs/flux-2-pro",
                "prompt": item["prompt"],
                "width": 1024,
                "height": 1024,
                "billed_mp": 1,
                "cost_usd": "0.030",
                "estimated_cost_usd": "0.030",
                "status": "succeeded",
                "uri": f"s3://b/p/{index:05d}-abc.jpg",
                "source_hash": item["source_hash"],
                "extra": {"id": item["id"]},
            }
        )
    return {"run_id": run_id, "images": rows}


def test_csv_json_and_jsonl_parse_to_rows():
    csv_rows = parse_rows(b"sku,name\nA,Lamp\nB,Mug\n", "c.csv")
    json_rows = parse_rows(json.dumps([{"sku": "A", "name": "Lamp"}]).encode(), "c.json")
    jsonl_rows = parse_rows(b'{"sku": "A"}\n\n{"sku": "B"}\n', "c.jsonl")
    assert [r["sku"] for r in csv_rows] == ["A", "B"]
    assert json_rows == [{"sku": "A", "name": "Lamp"}]
    assert [r["sku"] for r in jsonl_rows] == ["A", "B"]
    with pytest.raises(FluxValidationError, match="catalogue"):
        parse_rows(b"x", "c.xlsx")


def test_row_hash_ignores_key_order_and_padding_but_not_content():
    assert row_hash({"a": "1", "b": " 2 "}) == row_hash({"b": "2", "a": "1"})
    assert row_hash({"a": "1"}) != row_hash({"a": "2"})


def test_render_prompt_names_missing_columns():
    assert render_prompt(TEMPLATE, ROWS[0]) == "studio: Lamp, desk lamp"
    with pytest.raises(FluxValidationError, match="missing: material"):
        render_prompt("{material}", ROWS[0])


def test_split_colours():
    assert split_colours("#112233; #FFFFFF") == ["#112233", "#FFFFFF"]
    assert split_colours("#112233,#FFFFFF") == ["#112233", "#FFFFFF"]
    assert split_colours("") == [] and split_colours(None) == []


def test_first_run_generates_every_product_with_its_size_colours_and_hash():
    plan = plan_refresh(ROWS, template=TEMPLATE)
    assert plan.summary() == {"to_generate": 2, "new": 2, "changed": 0, "unchanged": 0}
    first = plan.items[0]
    assert first["id"] == "A" and first["image_size"] == "square_hd" and first["colors"] == ["#112233", "#FFFFFF"]
    assert first["source_hash"] == row_hash(ROWS[0])
    assert "colors" not in plan.items[1]


def test_unchanged_products_are_carried_at_no_cost_and_changed_ones_regenerated():
    manifest = manifest_of(plan_refresh(ROWS, template=TEMPLATE))
    changed = [ROWS[0], {**ROWS[1], "description": "stoneware mug"}]
    plan = plan_refresh(changed, template=TEMPLATE, previous_manifest=manifest)
    assert plan.summary() == {"to_generate": 1, "new": 0, "changed": 1, "unchanged": 1}
    assert [i["id"] for i in plan.items] == ["B"]
    carried = plan.carried[0]
    assert carried["cost_usd"] == "0.000" and carried["uri"] == "s3://b/p/00000-abc.jpg"
    assert carried["extra"] == {"id": "A", "carried_from": "night-1"}
    assert carried["index"] == 1  # after the generated ones


def test_new_product_is_generated_and_dropped_rows_are_not_kept():
    manifest = manifest_of(plan_refresh(ROWS, template=TEMPLATE))
    manifest["images"][1]["status"] = "dropped"
    plan = plan_refresh([*ROWS, {**ROWS[0], "sku": "C"}], template=TEMPLATE, previous_manifest=manifest)
    # B had no published image (it was dropped), so it is generated again like a new product
    assert plan.new == ["B", "C"] and plan.changed == [] and plan.unchanged == ["A"]
    assert set(previous_images(manifest)) == {"A"}


@pytest.mark.parametrize(("rows", "message"), [([{"sku": ""}], "non-empty"), ([ROWS[0], ROWS[0]], "unique")])
def test_bad_catalogue_rows_are_refused(rows, message):
    with pytest.raises(FluxValidationError, match=message):
        plan_refresh(rows, template="{sku}")
