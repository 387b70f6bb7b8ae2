"""The whole path after generation: check a batch, apply a policy, publish to S3 (moto), write the report.

A batch of 20 with 2 blank images and 2 near-duplicates injected ends with 16 published images under
``drop``, or 20 after one round of ``regenerate`` — and a manifest whose numbers add up either way.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest
from synthetic_images import Pictures, image_record

from airflow_provider_flux2.exceptions import BudgetExceededError
from airflow_provider_flux2.models import ImageRecord
from airflow_provider_flux2.pricing import Budget
from airflow_provider_flux2.quality.policy import apply_failure_policy
from airflow_provider_flux2.quality.regeneration import Regeneration, supersede
from airflow_provider_flux2.quality.suite import CheckSuite, run_checks
from airflow_provider_flux2.storage import BatchLocation, LocalPublisher, publisher_for
from airflow_provider_flux2.storage.publish import publish_records
from airflow_provider_flux2.storage.report import write_batch_report

BLANK = {4, 13}
DUPLICATES = {9: 2, 17: 11}  # index → the earlier image it copies
GENERATED = BatchLocation("catalogue", "manual__1", "generate")
PUBLISHED = BatchLocation("catalogue", "manual__1", "publish")


def render(index: int, seed: int):
    """What the 'model' draws: a distinct scene per (index, seed), except the injected faults."""
    if index in BLANK and seed < 2000:
        return Pictures.flat((250, 250, 250))
    if index in DUPLICATES and seed < 2000:
        return Pictures.perturbed(Pictures.scene(DUPLICATES[index] * 7919 + 1000 + DUPLICATES[index]))
    return Pictures.scene(index * 7919 + seed)


def generate(staging: LocalPublisher, index: int, seed: int, **fields) -> ImageRecord:
    data = Pictures.encode(render(index, seed))
    uri = staging.put_image(GENERATED, index, data, "image/png")
    return image_record(index, seed=seed, uri=uri, run_id=f"run-{index}-{seed}", **fields)


@pytest.fixture
def staged(tmp_path):
    staging = LocalPublisher((tmp_path / "staging").as_uri())
    records = [generate(staging, i, 1000 + i) for i in range(20)]
    return staging, records


def test_drop_policy_publishes_the_16_good_images_and_a_manifest_that_adds_up(aws_env, s3_admin, bucket, staged):
    staging, records = staged

    checked = run_checks(records, reader=staging.get)
    outcome = apply_failure_policy(checked, "drop")
    destination = publisher_for(f"s3://{bucket}/flux")
    published = publish_records(outcome.records, destination, PUBLISHED, reader=staging.get)
    uris = write_batch_report(destination, PUBLISHED, published)  # dropped images are read from staging

    assert sorted(outcome.dropped) == [4, 9, 13, 17]
    dropped = {r.index: r.failure_message for r in outcome.records if r.status == "dropped"}
    assert dropped[9].startswith("near_duplicate: near-duplicate of image 2")
    assert dropped[17].startswith("near_duplicate: near-duplicate of image 11")
    assert dropped[4].startswith("not_blank: near-uniform")
    image_keys = [
        k for k in (o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket)["Contents"]) if "/publish/0" in k
    ]
    assert len(image_keys) == 16
    manifest = json.loads(destination.get(uris["manifest_uri"]))
    summary = manifest["summary"]
    counts = ("count", "passed", "dropped", "superseded", "regenerated")
    assert tuple(summary[k] for k in counts) == (20, 16, 4, 0, 0)
    assert summary["model"] == "black-forest-labs/flux-2-pro"
    # All 20 were paid for — the 4 dropped included.
    assert summary["total_cost_usd"] == "0.600" and summary["dropped_cost_usd"] == "0.120"
    rows = list(csv.DictReader(io.StringIO(destination.get(uris["manifest_csv_uri"]).decode())))
    assert sum(Decimal(r["billed_cost_usd"]) for r in rows) == Decimal(summary["total_cost_usd"])
    page = destination.get(uris["gallery_uri"]).decode()
    assert page.count("<img ") == 20  # the dropped four too, their thumbnails made from staging
    assert page.count('data-outcome="dropped"') == 4
    published_uris = {r["index"]: r["uri"] for r in manifest["images"] if r["outcome"] == "passed"}
    assert all(uri.startswith(f"s3://{bucket}/flux/catalogue/manual__1/publish/") for uri in published_uris.values())


def test_regenerate_policy_ends_with_20_good_images_within_budget(aws_env, bucket, staged):
    staging, records = staged
    suite = CheckSuite.from_config()

    checked = suite.run((r, staging.get(r.uri)) for r in records).records
    outcome = apply_failure_policy(checked, "regenerate", max_regenerations=2, budget=Budget.of("0.75"))
    plan = outcome.plan
    assert [item.index for item in plan.items] == [4, 9, 13, 17]
    assert plan.total == Decimal("0.120") and plan.spent == Decimal("0.600")

    new = [generate(staging, item.index, item.seed) for item in plan.items]  # what the hook would return
    batch = supersede(outcome.records, new)
    rechecked = suite.run((r, staging.get(r.uri) if r.status == "succeeded" else None) for r in batch)
    final = apply_failure_policy(rechecked.records, "regenerate", max_regenerations=2, budget=Budget.of("0.75"))

    assert final.finished and final.dropped == []
    assert sorted(rechecked.passed) == list(range(20))
    destination = publisher_for(f"s3://{bucket}/flux")
    published = publish_records(final.records, destination, PUBLISHED, reader=staging.get)
    uris = write_batch_report(destination, PUBLISHED, published)  # dropped images are read from staging
    manifest = json.loads(destination.get(uris["manifest_uri"]))
    summary = manifest["summary"]
    # 24 rows, 20 delivered: the 4 replaced images were superseded, not dropped — none was lost.
    counts = ("count", "passed", "dropped", "superseded", "regenerated")
    assert tuple(summary[k] for k in counts) == (24, 20, 0, 4, 4)
    assert summary["total_cost_usd"] == "0.720"  # 20 originals + 4 regenerations, all billed
    assert sum(Decimal(row["billed_cost_usd"]) for row in manifest["images"]) == Decimal("0.720")
    assert (summary["superseded_cost_usd"], summary["dropped_cost_usd"]) == ("0.120", "0.000")
    page = destination.get(uris["gallery_uri"]).decode()
    assert page.count('data-outcome="superseded"') == 4 and 'data-outcome="dropped"' not in page


def test_a_regeneration_round_that_would_break_the_budget_is_refused_before_sending(staged):
    staging, records = staged
    checked = run_checks(records, reader=staging.get)

    with pytest.raises(BudgetExceededError, match=r"\$0\.720.*\$0\.700"):
        apply_failure_policy(checked, "regenerate", max_regenerations=1, budget=Budget.of("0.70"))


def test_regeneration_seeds_are_the_same_when_the_task_is_retried(staged):
    staging, records = staged
    checked = run_checks(records, reader=staging.get)

    first = apply_failure_policy(checked, "regenerate").plan.items
    again = apply_failure_policy(checked, "regenerate").plan.items

    assert [i.seed for i in first] == [i.seed for i in again]
    assert all(isinstance(i, Regeneration) and i.seed != i.previous_seed for i in first)
