"""The Sentinel gate without a socket: what is evaluated and under which key, what a verdict means,
and how verdicts reach the record, the manifest (JSON and CSV) and the gallery."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from airflow_provider_flux2 import sentinel
from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import CheckVerdict, ImageRecord
from airflow_provider_flux2.quality.sentinel import (
    SENTINEL_CHECK,
    SentinelGate,
    evaluation_spend,
    rejudged,
    with_verdict,
)
from airflow_provider_flux2.storage.gallery import Card, render_gallery
from airflow_provider_flux2.storage.manifest import build_manifest

IDENTITY = {"dag_id": "nightly", "task_id": "check", "run_id": "scheduled__1", "map_index": -1}
RUN_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


def record(index: int = 0, **fields) -> ImageRecord:
    base = {
        "index": index,
        "model": "black-forest-labs/flux-2-pro",
        "prompt": f"a white sneaker {index}",
        "upsampled_prompt": f"a white sneaker {index}, rendered in soft light",
        "width": 512,
        "height": 512,
        "billed_mp": 1,
        "cost_usd": "0.030",
        "estimated_cost_usd": "0.030",
        "status": "succeeded",
        "run_id": RUN_ID,
        "uri": f"file:///staging/{index:05d}.jpg",
        "content_hash": f"hash{index}",
        "checks": [CheckVerdict(check="decodes", passed=True)],
    }
    return ImageRecord(**{**base, **fields})


def local(uri: str, field: str) -> str:
    return uri


GATE = SentinelGate(task_type="product", task_description="white sneaker on white")


def test_only_stored_images_passing_their_byte_checks_are_evaluated():
    records = [
        record(0),
        record(1, checks=[CheckVerdict(check="not_blank", passed=False)]),
        record(2, status="failed", uri=None),
        record(3, status="dropped"),
    ]
    jobs = GATE.plan(records, IDENTITY, local)
    assert [job.index for job in jobs] == [0]
    body = jobs[0].body
    assert body["generated_image_url"] == "file:///staging/00000.jpg"
    assert body["generation_prompt"] == "a white sneaker 0, rendered in soft light"  # the upsampled prompt
    assert (body["task_type"], body["task_description"], body["run_id"]) == (
        "product",
        "white sneaker on white",
        RUN_ID,
    )
    assert body["client_ref"] == jobs[0].ref and jobs[0].key.startswith("flux2-eval-")


def test_an_items_extra_overrides_the_task_and_its_first_four_references_go_along():
    refs = ["s3://refs/a.jpg", "/refs/b.png", "https://x.example/c.png", "https://x.example/d.png", "/refs/e.png"]
    item = record(
        0,
        extra={"sentinel_task_type": "garment", "sentinel_task_description": "denim jacket", "id": "SKU-1"},
        params={"image_urls": refs},
    )
    gate = SentinelGate(task_type="product", reference_kind="garment")
    (job,) = gate.plan([item], IDENTITY, lambda uri, field: uri.replace("s3://refs/", "https://signed.example/"))
    assert (job.body["task_type"], job.body["task_description"]) == ("garment", "denim jacket")
    assert job.body["reference_images"] == [
        {"url": "https://signed.example/a.jpg", "kind": "garment"},
        {"url": "/refs/b.png", "kind": "garment"},
        {"url": "https://x.example/c.png", "kind": "garment"},
        {"url": "https://x.example/d.png", "kind": "garment"},
    ]


def test_the_key_depends_on_the_image_and_its_attempt_not_on_the_signature():
    one = GATE.plan([record(0)], IDENTITY, lambda uri, field: uri + "?sig=1")[0]
    two = GATE.plan([record(0)], IDENTITY, lambda uri, field: uri + "?sig=2")[0]
    assert one.key == two.key  # re-signing a URL does not change the key
    assert GATE.plan([record(0, attempt=2)], IDENTITY, local)[0].key != one.key
    assert GATE.plan([record(0, content_hash="other")], IDENTITY, local)[0].key != one.key


def test_an_image_judged_under_its_key_is_not_sent_again():
    (job,) = GATE.plan([record(0)], IDENTITY, local)
    verdict = GATE.verdict(
        sentinel.parse_evaluation(
            {"id": "e0", "status_code": "completed", "overall_passed": True, "weighted_pass_rate": 0.9, "cost": "0.01"}
        ),
        job,
        price=Decimal("0.01"),
    )
    judged = with_verdict(record(0), verdict, GATE.check(verdict))
    assert GATE.plan([judged], IDENTITY, local) == []


def test_a_missing_task_type_names_the_item():
    with pytest.raises(FluxValidationError, match=r"images\[4\].*sentinel_task_type"):
        SentinelGate(task_type=None).plan([record(4)], IDENTITY, local)


def completed(**fields) -> sentinel.Evaluation:
    return sentinel.parse_evaluation({"id": "e1", "status_code": "completed", "cost": "0.012", **fields})


@pytest.mark.parametrize(
    ("gate", "fields", "passed"),
    [
        (SentinelGate("p"), {"overall_passed": True, "weighted_pass_rate": 0.5}, True),
        (SentinelGate("p"), {"overall_passed": False, "weighted_pass_rate": 0.95}, False),
        (SentinelGate("p"), {"overall_passed": None, "weighted_pass_rate": 0.95}, False),
        (SentinelGate("p", min_pass_rate=Decimal("0.8")), {"overall_passed": True, "weighted_pass_rate": 0.79}, False),
        (SentinelGate("p", min_pass_rate=Decimal("0.8")), {"overall_passed": True, "weighted_pass_rate": 0.8}, True),
        (
            SentinelGate("p", min_pass_rate=Decimal("0.8"), require_passed=False),
            {"overall_passed": False, "weighted_pass_rate": 0.85},
            True,
        ),
        (SentinelGate("p", require_passed=False), {"overall_passed": False}, None),
    ],
)
def test_the_gate_is_overall_passed_and_or_the_minimum_score(gate, fields, passed):
    (job,) = gate.plan([record(0)], IDENTITY, local)
    verdict = gate.verdict(completed(**fields), job, price=Decimal("0.01"))
    assert verdict.passed is passed
    assert gate.check(verdict).passed is (passed is not False)


def test_a_verdict_keeps_what_the_api_said_and_billed():
    gate = SentinelGate("p", min_pass_rate=Decimal("0.8"))
    (job,) = gate.plan([record(0)], IDENTITY, local)
    verdict = gate.verdict(
        completed(
            overall_passed=True,
            weighted_pass_rate=0.62,
            top_issues=["six laces", "off-brand red"],
            top_strengths=["lighting"],
            job_class_code="standard",
        ),
        job,
        price=Decimal("0.01"),
    )
    assert verdict.model_dump() == {
        "evaluation_id": "e1",
        "status": "completed",
        "passed": False,
        "overall_passed": True,
        "score": 0.62,
        "top_issues": ["six laces", "off-brand red"],
        "top_strengths": ["lighting"],
        "cost_usd": "0.012",
        "failure_code": None,
        "job_class": "standard",
        "idempotency_key": job.key,
    }
    check = gate.check(verdict)
    assert check.check == SENTINEL_CHECK and not check.passed
    assert check.reason == "passed, score 0.62 < 80%; issues: six laces; off-brand red"


def test_a_failed_or_unfinished_evaluation_is_not_judged_and_fails_the_gate():
    (job,) = GATE.plan([record(0)], IDENTITY, local)
    failed = GATE.verdict(
        sentinel.parse_evaluation({"id": "e", "status_code": "failed", "failure_code": "IMAGE_UNREADABLE"}),
        job,
        price=Decimal("0.01"),
    )
    assert (failed.passed, failed.cost_usd) == (False, None)
    assert GATE.check(failed).reason == "not judged: the evaluation failed (IMAGE_UNREADABLE)"
    missing = GATE.verdict(None, job, price=Decimal("0.01"))
    assert missing.status == "not_sent" and GATE.check(missing).reason == "not judged: the evaluation was not sent"


def test_a_completed_evaluation_without_a_reported_cost_counts_at_the_price():
    (job,) = GATE.plan([record(0)], IDENTITY, local)
    verdict = GATE.verdict(completed(cost=None, overall_passed=True), job, price=Decimal("0.0125"))
    assert verdict.cost_usd == "0.0125"


def judged(index: int, *, passed: bool, cost: str = "0.010", **fields) -> ImageRecord:
    (job,) = GATE.plan([record(index, **fields)], IDENTITY, local)
    evaluation = completed(
        id=f"e{index}",
        overall_passed=passed,
        weighted_pass_rate=0.9 if passed else 0.3,
        cost=cost,
        top_issues=[] if passed else ['=HYPERLINK("x")'],
        top_strengths=["light"],
    )
    verdict = GATE.verdict(evaluation, job, price=Decimal("0.01"))
    return with_verdict(record(index, **fields), verdict, GATE.check(verdict))


def test_verdicts_survive_a_byte_check_run_and_are_summed_exactly():
    records = [judged(0, passed=True, cost="0.0105"), judged(1, passed=False, cost="0.0105")]
    rerun = [r.model_copy(update={"checks": [CheckVerdict(check="decodes", passed=True)]}) for r in records]
    again = rejudged(GATE, rerun)
    assert [c.check for c in again[1].checks] == ["decodes", "sentinel"] and not again[1].checks[-1].passed
    assert evaluation_spend(again) == Decimal("0.021")


def test_the_manifest_counts_evaluations_in_its_total_and_the_csv_and_gallery_show_the_verdict():
    records = [judged(0, passed=True), judged(1, passed=False), record(2, status="failed", uri=None, cost_usd="0")]
    manifest = build_manifest(records)
    summary = manifest.summary
    assert (summary["generation_cost_usd"], summary["evaluation_cost_usd"], summary["total_cost_usd"]) == (
        "0.060",
        "0.020",
        "0.080",
    )
    assert summary["evaluated"] == 2 and "Sentinel" in summary["cost_rule"]
    rows = {row["index"]: row for row in manifest.rows}
    assert rows[1]["outcome"] == "failed_checks" and rows[1]["failed_checks"] == ["sentinel"]
    assert rows[1]["evaluation_cost_usd"] == "0.010" and rows[2]["evaluation_cost_usd"] == "0.000"
    table = list(csv.DictReader(io.StringIO(manifest.to_csv().decode())))
    header = list(table[0])
    assert header.index("sentinel.passed") < header.index("check.decodes")
    second = table[1]
    assert (second["sentinel.passed"], second["sentinel.score"], second["sentinel.cost_usd"]) == (
        "false",
        "0.3",
        "0.010",
    )
    assert second["sentinel.top_issues"].startswith("'=HYPERLINK")  # a formula is shown as text, never run
    assert table[2]["sentinel.passed"] == ""  # not evaluated
    page = render_gallery(manifest, [Card(row) for row in manifest.rows])
    assert "$0.020 for 2 evaluation(s)" in page and "failed · score 0.30 · gate failed · $0.010" in page
    assert "=HYPERLINK(&quot;x&quot;)" in page and "<script" not in page
