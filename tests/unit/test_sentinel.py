"""Sentinel without a socket: the request as documented, the answers read tolerantly, the price, the keys,
and the window waiting for evaluations as it waits for runs."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_flux2 import sentinel
from airflow_provider_flux2.exceptions import FluxAPIError, FluxServerError, FluxValidationError
from airflow_provider_flux2.models import RunStatus
from airflow_provider_flux2.window import JobSpec, Window

T0 = 1_000_000.0
IDENTITY = {"dag_id": "nightly", "task_id": "check", "run_id": "scheduled__2026-01-01", "map_index": -1}


# -- the request --------------------------------------------------------------------------------------


def test_the_body_carries_only_the_documented_fields_it_was_given():
    body = sentinel.evaluation_body(
        generated_image_url="https://cdn.example.com/a.jpg",
        task_type="product",
        task_description="white sneaker on white",
        generation_prompt="a white sneaker",
        reference_images=[{"url": "https://cdn.example.com/ref.jpg", "kind": "product", "description": None}],
        client_ref="nightly/1",
    )
    assert body == {
        "generated_image_url": "https://cdn.example.com/a.jpg",
        "task_type": "product",
        "task_description": "white sneaker on white",
        "generation_prompt": "a white sneaker",
        "client_ref": "nightly/1",
        "job_class": "standard",
        "reference_images": [{"url": "https://cdn.example.com/ref.jpg", "kind": "product"}],
    }
    request = sentinel.create_evaluation(body, idempotency_key="flux2-eval-x")
    assert (request.method, request.path, request.headers) == (
        "POST",
        "/v1/evaluations",
        {"Idempotency-Key": "flux2-eval-x"},
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://x.example/a.png",
        "runflow://assets/3c90c3cc-0d44-4b50-8888-8dd25736052a",
        "data:image/png;base64,AAA=",
        "file:///data/a.png",
        "/data/a.png",
        "http://127.0.0.1:9000/b/a.png",
    ],
)
def test_the_image_may_be_a_url_an_asset_a_data_uri_or_a_local_file(url):
    assert sentinel.image_source_problem(url) is None


@pytest.mark.parametrize("url", ["s3://bucket/a.png", "ftp://x/a.png", "", "data:image/png", "file://host/a.png"])
def test_an_image_the_api_cannot_fetch_is_refused_before_sending(url):
    with pytest.raises(FluxValidationError, match="generated_image_url"):
        sentinel.evaluation_body(generated_image_url=url, task_type="product")


def test_task_type_is_required_and_at_most_four_references():
    with pytest.raises(FluxValidationError, match="task_type"):
        sentinel.evaluation_body(generated_image_url="https://x.example/a.png", task_type=" ")
    refs = [{"url": f"https://x.example/{i}.png"} for i in range(5)]
    with pytest.raises(FluxValidationError, match="at most 4"):
        sentinel.evaluation_body(generated_image_url="https://x.example/a.png", task_type="t", reference_images=refs)


def test_image_urls_are_converted_in_place_for_sending():
    body = sentinel.evaluation_body(
        generated_image_url="/data/a.png", task_type="t", reference_images=[{"url": "/data/r.png", "kind": "face"}]
    )
    sent = sentinel.with_image_urls(body, lambda url, field: f"data:image/png;base64,{field}")
    assert sent["generated_image_url"] == "data:image/png;base64,generated_image_url"
    assert sent["reference_images"] == [{"url": "data:image/png;base64,reference_images[0].url", "kind": "face"}]
    assert body["generated_image_url"] == "/data/a.png"  # the carried body is untouched
    assert [f for f, _ in sentinel.image_urls(body)] == ["generated_image_url", "reference_images[0].url"]


def test_keys_are_deterministic_per_task_image_attempt_and_request():
    h = sentinel.body_hash({"task_type": "t"})
    key = sentinel.evaluation_key(IDENTITY, 3, 1, h)
    assert key == sentinel.evaluation_key(dict(IDENTITY), 3, 1, h) and key.startswith("flux2-eval-")
    others = {
        sentinel.evaluation_key(IDENTITY, 4, 1, h),
        sentinel.evaluation_key(IDENTITY, 3, 2, h),
        sentinel.evaluation_key({**IDENTITY, "run_id": "other"}, 3, 1, h),
        sentinel.evaluation_key(IDENTITY, 3, 1, sentinel.body_hash({"task_type": "u"})),
    }
    assert key not in others and len(others) == 4
    ref = sentinel.evaluation_ref(IDENTITY, 3, 1, h)
    assert ref.endswith(f"/3.1/sentinel/{h[:12]}") and len(ref) <= 255


# -- the answers --------------------------------------------------------------------------------------


def test_the_documented_202_is_a_pending_evaluation():
    evaluation = sentinel.parse_evaluation(
        {"id": "a1b2", "status_code": "pending", "job_class_code": "standard", "client_ref": "c"}
    )
    assert evaluation.run_status == RunStatus.QUEUED and not evaluation.terminal
    assert evaluation.cost is None and evaluation.overall_passed is None


def test_a_completed_evaluation_is_read_for_its_verdict_and_exact_cost():
    evaluation = sentinel.parse_evaluation(
        {
            "id": "e1",
            "status_code": "COMPLETED",
            "overall_passed": False,
            "weighted_pass_rate": 0.42,
            "top_issues": ["six laces", {"label": "off-brand colour"}, 7, ""],
            "top_strengths": ["lighting"],
            "cost": "0.012",
            "judges": [{"whatever": 1}],
            "unknown_field": {"x": 1},
        }
    )
    assert evaluation.completed and evaluation.terminal
    assert evaluation.weighted_pass_rate == Decimal("0.42")
    assert evaluation.top_issues == ["six laces", "off-brand colour"]
    assert evaluation.cost == Decimal("0.012")
    run = evaluation.as_run()
    assert (run.id, run.status_code, run.cost) == ("e1", RunStatus.SUCCEEDED, Decimal("0.012"))


def test_an_unknown_status_is_not_finished_and_failed_carries_its_code():
    assert not sentinel.parse_evaluation({"id": "e", "status_code": "judging"}).terminal
    assert not sentinel.parse_evaluation({"id": "e"}).terminal
    failed = sentinel.parse_evaluation({"id": "e", "status_code": "failed", "failure_code": "IMAGE_FETCH_FAILED"})
    assert failed.as_run().status_code == RunStatus.FAILED and failed.as_run().failure_code == "IMAGE_FETCH_FAILED"


def test_a_bad_cost_or_shape_is_a_typed_error():
    with pytest.raises(FluxAPIError, match="cost"):
        sentinel.parse_evaluation({"id": "e", "status_code": "completed", "cost": "-1"})
    with pytest.raises(FluxAPIError):
        sentinel.parse_evaluation(["not", "an", "object"])
    with pytest.raises(FluxAPIError):
        sentinel.parse_evaluation({"status_code": "completed"})


@pytest.mark.parametrize(
    "answer",
    [
        [{"code": "standard", "price": "0.010"}],
        {"items": [{"job_class_code": "premium", "price": "0.5"}, {"job_class_code": "standard", "price_usd": 0.01}]},
        {"data": [{"name": "Standard", "price": {"amount": "0.010", "currency": "USD"}}]},
        {"standard": "0.01"},
        {"standard": {"unit_price": "0.0100"}},
    ],
)
def test_the_job_class_price_is_read_tolerantly(answer):
    assert sentinel.job_class_price(answer) == Decimal("0.01")


def test_an_inactive_or_missing_class_has_no_price():
    assert sentinel.job_class_price([{"code": "standard", "price": "0.01", "is_active": False}]) is None
    assert sentinel.job_class_price([{"code": "premium", "price": "0.01"}]) is None
    assert sentinel.job_class_price("nonsense") is None
    assert sentinel.job_class_price([{"code": "standard", "price": "free"}]) is None


# -- the window waits for evaluations -----------------------------------------------------------------


def evaluation_window(count: int = 3, **kwargs) -> Window:
    jobs = [
        JobSpec(
            index=i,
            model="sentinel",
            key=f"flux2-eval-{i}",
            ref=f"ref/{i}",
            input={"generated_image_url": f"/img/{i}.png", "task_type": "product"},
            cost=Decimal("0.010"),
            expected=sentinel.EXPECTED_SECONDS,
        )
        for i in range(count)
    ]
    return Window(
        jobs=jobs,
        max_in_flight=kwargs.pop("max_in_flight", 2),
        chunk_size=8,
        end_time=T0 + 3600,
        poll_interval=1.0,
        kind="evaluation",
        **kwargs,
    )


def evaluation(eid: str, status: str, **fields) -> sentinel.Evaluation:
    return sentinel.parse_evaluation({"id": eid, "status_code": status, **fields})


def test_evaluations_go_one_by_one_at_most_max_in_flight_and_are_polled_as_evaluations():
    win = evaluation_window(3)
    first = win.submissions(T0)
    assert [(s.jobs, s.kind, s.is_batch) for s in first] == [((0,), "evaluation", False), ((1,), "evaluation", False)]
    entries = [win.entries(s)[0] for s in first]
    assert [e.idempotency_key for e in entries] == ["flux2-eval-0", "flux2-eval-1"]
    assert entries[0].request.to_wire()["task_type"] == "product"
    for n, submit in enumerate(first):
        win.submitted(submit, [f"e{n}"], None, T0)
    polls = win.polls(T0 + 100)
    assert {(p.kind, p.id) for p in polls} == {("evaluation", "e0"), ("evaluation", "e1")}
    win.observe_run(evaluation("e0", "completed", cost="0.010", overall_passed=True).as_run(), T0 + 100)
    (third,) = win.submissions(T0 + 100)  # a slot freed: topped up at once
    assert third.jobs == (2,)


def test_a_failed_evaluation_is_resubmitted_under_a_derived_key_and_the_event_says_where_each_stands():
    win = evaluation_window(1, resubmit_failed=1)
    (submit,) = win.submissions(T0)
    win.submitted(submit, ["e0"], None, T0)
    win.observe_run(evaluation("e0", "failed", failure_code="INTERNAL").as_run(), T0 + 5)
    (again,) = win.submissions(T0 + 5)
    assert win.entries(again)[0].idempotency_key == "flux2-eval-0-r2"
    win.submitted(again, ["e1"], None, T0 + 5)
    win.observe_run(evaluation("e1", "completed", cost="0.010").as_run(), T0 + 10)
    event = win.event(T0 + 10)
    assert event["status"] == "success"
    assert event["jobs"] == [
        {"i": 0, "p": "done", "a": 2, "r": "e1", "s": "succeeded", "t": T0 + 5, "d": T0 + 10, "$": "0.010", "v": ["e0"]}
    ]


def test_a_transient_submit_failure_is_sent_again_under_the_same_key():
    win = evaluation_window(1)
    (submit,) = win.submissions(T0)
    win.submit_failed(submit, FluxServerError(status_code=503, code="MODEL_UNAVAILABLE", message="x"), T0)
    assert win.error is None
    (again,) = win.submissions(T0 + 2)
    assert win.entries(again)[0].idempotency_key == "flux2-eval-0" and again.kind == "evaluation"


def test_evaluations_stop_at_the_running_budget_and_the_kill_line_names_them():
    win = evaluation_window(3, budget=Decimal("0.020"), max_in_flight=3)
    sent = win.submissions(T0)
    assert len(sent) == 2 and win.budget_stop is not None
    for n, submit in enumerate(sent):
        win.submitted(submit, [f"e{n}"], None, T0)
    assert "2 evaluation(s) still at the API" in win.kill_line() and "evaluation ids: e0, e1" in win.kill_line()


def test_an_evaluation_sent_by_an_earlier_try_is_waited_for_not_sent_again():
    win = evaluation_window(2)
    win.reattach(0, "e-old", submitted_at=T0)
    (submit,) = win.submissions(T0)
    assert submit.jobs == (1,)
    assert ("evaluation", "e-old") in {(p.kind, p.id) for p in win.polls(T0)}
