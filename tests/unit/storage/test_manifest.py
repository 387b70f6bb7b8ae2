from __future__ import annotations

import csv
import io
import json
import random
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from synthetic_images import image_record

from airflow_provider_flux2.models import CheckVerdict
from airflow_provider_flux2.pricing import PriceTable, billed_megapixels
from airflow_provider_flux2.storage import BatchLocation, LocalPublisher
from airflow_provider_flux2.storage.manifest import (
    COST_RULE,
    build_manifest,
    write_manifest,
)

WHEN = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
PASS = CheckVerdict(check="not_blank", passed=True, reason="std 40.1", value={"std": 40.1})
BLANK = CheckVerdict(check="not_blank", passed=False, reason="near-uniform", value={"std": 0.0})
DUP = CheckVerdict(check="near_duplicate", passed=False, reason="near-duplicate of image 2", value={"duplicate_of": 2})


def csv_rows(manifest) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(manifest.to_csv().decode("utf-8"))))


def priced_batch(n: int, seed: int = 7):
    """``n`` images of random sizes and variants, priced by the real table, with a mix of outcomes."""
    rng = random.Random(seed)
    table = PriceTable()
    records = []
    for i in range(n):
        width, height = rng.randint(64, 4096), rng.randint(64, 4096)
        model = rng.choice(["pro", "flex", "max", "turbo"])
        mp = billed_megapixels(width, height)
        cost = table.price(model).cost(mp)
        status = rng.choices(["succeeded", "dropped", "failed", "moderated", "skipped"], [70, 10, 10, 5, 5])[0]
        billed = status != "failed"
        records.append(
            image_record(
                i,
                model=f"black-forest-labs/flux-2-{model}",
                width=width,
                height=height,
                billed_mp=mp,
                cost_usd=str(cost if billed else Decimal("0.000")),
                estimated_cost_usd=str(cost),
                status=status,
                checks=[rng.choice([PASS, PASS, BLANK])] if status == "succeeded" else [],
            )
        )
    return records


def test_the_total_is_the_exact_sum_of_the_rows_over_many_mixed_prices():
    records = priced_batch(500)

    manifest = build_manifest(records, generated_at=WHEN)

    # Priced independently of the manifest: the table's price for every run that was not a failure.
    table = PriceTable()
    billed = [r for r in records if r.status != "failed"]
    expected = sum((table.price(r.model).cost(r.billed_mp) for r in billed), Decimal("0"))
    assert Decimal(manifest.summary["total_cost_usd"]) == expected
    assert sum(Decimal(row["billed_cost_usd"]) for row in manifest.rows) == expected
    assert manifest.summary["total_billed_mp"] == sum(r.billed_mp for r in billed)
    assert manifest.summary["billed"] == len(billed) > 300


def test_csv_and_json_agree_on_every_row_and_on_the_total():
    manifest = build_manifest(priced_batch(120, seed=3), generated_at=WHEN)
    from_json = json.loads(manifest.to_json())
    from_csv = csv_rows(manifest)

    assert len(from_csv) == len(from_json["images"]) == from_json["summary"]["count"] == 120
    for row, line in zip(from_json["images"], from_csv, strict=True):
        assert line["index"] == str(row["index"])
        assert line["billed_cost_usd"] == row["billed_cost_usd"]
        assert line["cost_usd"] == row["cost_usd"]
        assert line["outcome"] == row["outcome"]
    total_csv = sum(Decimal(line["billed_cost_usd"]) for line in from_csv)
    assert total_csv == Decimal(from_json["summary"]["total_cost_usd"])


def test_sums_are_exact_where_floats_would_drift():
    # 0.1 + 0.2 style amounts: 1,000 × $0.015 is exactly $15.000, not 14.999999...
    records = [image_record(i, cost_usd="0.015", estimated_cost_usd="0.015") for i in range(1000)]

    summary = build_manifest(records, generated_at=WHEN).summary

    assert summary["total_cost_usd"] == "15.000"
    assert summary["estimated_cost_usd"] == "15.000"


def test_dropped_images_were_paid_for_and_count_but_failed_runs_do_not():
    records = [
        image_record(0, checks=[PASS]),
        image_record(1, status="dropped", checks=[BLANK], cost_usd="0.045"),
        image_record(2, status="failed", uri=None, cost_usd="0.030"),  # a failed run is never billed
        image_record(3, status="skipped", nsfw=True, uri=None, cost_usd="0.030"),  # succeeded, then skipped
        image_record(4, status="pending", uri=None, cost_usd="0.030"),
    ]

    summary = build_manifest(records, generated_at=WHEN).summary

    assert summary["total_cost_usd"] == "0.105"
    assert summary["dropped_cost_usd"] == "0.045"
    assert summary["superseded_cost_usd"] == "0.000"
    assert summary["billed"] == 3
    assert summary["cost_rule"] == COST_RULE


def test_the_summary_counts_outcomes_and_regenerations():
    records = [
        image_record(0, checks=[PASS]),
        image_record(1, status="dropped", checks=[BLANK]),  # superseded by its attempt 2
        image_record(1, attempt=2, regenerated_from="run-1", checks=[PASS]),
        image_record(2, checks=[PASS]),
        image_record(3, checks=[DUP]),
        image_record(4, status="failed", uri=None, cost_usd="0"),
        image_record(5, status="moderated", nsfw=True),
        image_record(6),  # not checked: passes
        image_record(7, status="dropped", checks=[BLANK]),  # dropped for good
        image_record(8, status="skipped", nsfw=True, uri=None),
    ]

    summary = build_manifest(records, generated_at=WHEN).summary

    counts = ("count", "passed", "failed", "dropped", "superseded", "regenerated")
    assert {k: summary[k] for k in counts} == {
        "count": 10,
        "passed": 4,
        "failed": 3,
        "dropped": 1,
        "superseded": 1,
        "regenerated": 1,
    }
    assert summary["outcomes"] == {
        "dropped": 1,
        "failed": 1,
        "failed_checks": 1,
        "moderated": 1,
        "passed": 4,
        "skipped": 1,
        "superseded": 1,
    }
    assert summary["count"] == sum(summary["outcomes"].values())
    assert summary["generated_at"] == "2026-05-01T12:00:00+00:00"


def test_images_replaced_by_a_regeneration_are_superseded_not_dropped():
    # 20 delivered out of an original 20: four were regenerated once, and the four they replaced
    # stay in the manifest because they were paid for.
    originals = [
        image_record(i, status="dropped", checks=[BLANK]) if i in {4, 9, 13, 17} else image_record(i, checks=[PASS])
        for i in range(20)
    ]
    again = [image_record(i, attempt=2, regenerated_from=f"run-{i}", checks=[PASS]) for i in (4, 9, 13, 17)]

    manifest = build_manifest(originals + again, generated_at=WHEN)
    summary = manifest.summary

    counts = ("count", "passed", "dropped", "superseded", "regenerated")
    assert {k: summary[k] for k in counts} == {
        "count": 24,  # rows: every image paid for
        "passed": 20,  # delivered
        "dropped": 0,
        "superseded": 4,
        "regenerated": 4,
    }
    assert summary["total_cost_usd"] == "0.720"
    assert sum(Decimal(row["billed_cost_usd"]) for row in manifest.rows) == Decimal("0.720")
    assert (summary["superseded_cost_usd"], summary["dropped_cost_usd"]) == ("0.120", "0.000")
    assert [(r["index"], r["attempt"]) for r in manifest.rows if r["outcome"] == "superseded"] == [
        (4, 1),
        (9, 1),
        (13, 1),
        (17, 1),
    ]
    assert {line["outcome"] for line in csv_rows(manifest)} == {"passed", "superseded"}


def test_a_regeneration_that_still_failed_and_was_dropped_counts_once_each():
    records = [
        image_record(0, status="dropped", checks=[BLANK], cost_usd="0.030"),
        image_record(0, attempt=2, status="dropped", checks=[BLANK], cost_usd="0.045"),  # out of attempts
        image_record(1, checks=[PASS]),
    ]

    summary = build_manifest(records, generated_at=WHEN).summary

    assert (summary["count"], summary["passed"], summary["dropped"], summary["superseded"]) == (3, 1, 1, 1)
    assert (summary["dropped_cost_usd"], summary["superseded_cost_usd"]) == ("0.045", "0.030")
    assert summary["total_cost_usd"] == "0.105"


def test_the_summary_names_the_batch_model_or_says_mixed():
    one = build_manifest([image_record(0), image_record(1)], generated_at=WHEN).summary
    two = build_manifest(
        [image_record(0), image_record(1, model="black-forest-labs/flux-2-flex")], generated_at=WHEN
    ).summary

    assert one["model"] == "black-forest-labs/flux-2-pro"
    assert one["models"] == ["black-forest-labs/flux-2-pro"]
    assert two["model"] == "mixed"
    assert two["models"] == ["black-forest-labs/flux-2-flex", "black-forest-labs/flux-2-pro"]
    assert build_manifest([], generated_at=WHEN).summary["model"] is None


def test_rows_are_in_batch_order_with_attempts_together():
    records = [image_record(2), image_record(0, attempt=2), image_record(1), image_record(0, status="dropped")]

    rows = build_manifest(records, generated_at=WHEN).rows

    assert [(r["index"], r["attempt"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (2, 1)]


def test_rows_carry_every_record_field_and_the_verdicts():
    record = image_record(0, checks=[PASS, DUP], quality_score=0.8, params={"seed": 1})

    row = build_manifest([record], generated_at=WHEN).rows[0]

    assert set(record.to_xcom()) <= set(row)
    assert row["checks_passed"] is False
    assert row["failed_checks"] == ["near_duplicate"]
    assert row["uri"] == record.uri
    assert row["billed"] is True


def test_csv_flattens_checks_into_columns_and_nested_fields_into_json():
    record = image_record(
        0, checks=[PASS, DUP], params={"image_size": "square_hd"}, timings={"submitted_at": "2026-05-01T11:59:00Z"}
    )

    [line] = csv_rows(build_manifest([record], generated_at=WHEN))

    assert line["check.not_blank"] == "pass"
    assert line["check.near_duplicate"] == "fail"
    assert line["check.near_duplicate.reason"] == "near-duplicate of image 2"
    assert json.loads(line["check.near_duplicate.value"]) == {"duplicate_of": 2}
    assert line["failed_checks"] == "near_duplicate"
    assert json.loads(line["params"]) == {"image_size": "square_hd"}
    assert line["timings.submitted_at"] == "2026-05-01T11:59:00Z"
    assert line["nsfw"] == "false"
    assert "checks" not in line


def test_csv_columns_are_the_union_over_rows_grouped_fields_timings_checks():
    records = [image_record(0), image_record(1, checks=[PASS]), image_record(2, checks=[DUP])]

    header = next(csv.reader(io.StringIO(build_manifest(records, generated_at=WHEN).to_csv().decode())))

    first_timing = header.index("timings.submitted_at")
    first_check = header.index("check.not_blank")
    assert header.index("billed_cost_usd") < first_timing < first_check
    assert header[first_check:] == [
        "check.not_blank",
        "check.not_blank.reason",
        "check.not_blank.value",
        "check.near_duplicate",
        "check.near_duplicate.reason",
        "check.near_duplicate.value",
    ]


@pytest.mark.parametrize("prompt", ['=HYPERLINK("http://evil")', "+1", "-2", "@SUM(A1)"])
def test_prompts_cannot_become_spreadsheet_formulas(prompt):
    [line] = csv_rows(build_manifest([image_record(0, prompt=prompt)], generated_at=WHEN))

    assert line["prompt"] == "'" + prompt


def test_prompts_with_commas_quotes_and_newlines_survive_the_csv():
    prompt = 'a "red" chair,\nstudio light, 東京'

    [line] = csv_rows(build_manifest([image_record(0, prompt=prompt)], generated_at=WHEN))

    assert line["prompt"] == prompt


def test_prices_used_are_listed_for_the_batch_models_only():
    records = [image_record(0), image_record(1, model="flex")]
    table = PriceTable().with_overrides({"pro": "0.04"})

    summary = build_manifest(records, table, generated_at=WHEN).summary

    assert summary["models"] == ["black-forest-labs/flux-2-pro", "flex"]
    assert summary["prices"] == {
        "black-forest-labs/flux-2-pro": {
            "first_mp": "0.04",
            "extra_mp": "0.04",
            "estimate": False,
            "source": "connection override",
        },
        "black-forest-labs/flux-2-flex": table.as_dict()["black-forest-labs/flux-2-flex"],
    }


def test_a_price_dict_may_be_passed_instead_of_a_table():
    prices = PriceTable().as_dict()

    summary = build_manifest([image_record(0)], prices, generated_at=WHEN).summary

    assert summary["prices"] == {"black-forest-labs/flux-2-pro": prices["black-forest-labs/flux-2-pro"]}


def test_records_may_be_xcom_dicts_and_context_goes_on_top():
    manifest = build_manifest([image_record(0).to_xcom()], generated_at=WHEN, context={"dag_id": "d"})

    data = json.loads(manifest.to_json())
    assert (data["version"], data["dag_id"]) == (1, "d")
    assert list(data)[-2:] == ["summary", "images"]


def test_write_manifest_puts_both_files_beside_the_images(tmp_path):
    publisher = LocalPublisher(tmp_path.as_uri())
    location = BatchLocation("d", "r", "t")

    json_uri, csv_uri = write_manifest(publisher, location, build_manifest([image_record(0)], generated_at=WHEN))

    assert json_uri == publisher.uri_for(location, "manifest.json")
    assert csv_uri == publisher.uri_for(location, "manifest.csv")
    assert publisher.head(json_uri).content_type == "application/json"
    assert publisher.head(csv_uri).content_type == "text/csv; charset=utf-8"
    assert json.loads(publisher.get(json_uri))["summary"]["count"] == 1
