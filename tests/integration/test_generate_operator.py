"""FluxGenerateImageOperator end to end: dag.test() on SQLite against the emulator over HTTP."""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from airflow.sdk import DAG

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

_ids = itertools.count()


def dag_id(name: str) -> str:
    return f"t_{name}_{next(_ids)}"


def generate_dag(name: str, output: Path, **kwargs) -> DAG:
    with DAG(dag_id(name), schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            output_uri=output.as_uri(),
            poll_interval=0.02,
            progress_interval=0,
            **kwargs,
        )
    return dag


def stored_files(folder: Path) -> list[Path]:
    """The stored images (``00007-<hash>.jpg``), not thumbnails or contact sheets."""
    images = folder.rglob("[0-9][0-9][0-9][0-9][0-9]-*")
    return sorted(p for p in images if p.suffix in (".jpg", ".png") and "thumbs" not in p.parts)


def ledger_total(emulator) -> Decimal:
    return sum((Decimal(e["cost"]) for e in emulator.ledger()["entries"]), Decimal("0"))


@pytest.mark.parametrize("deferrable", [True, False])
def test_single_prompt_generates_and_stores_one_image(emulator, run_dag, xcom, tmp_path, deferrable):
    dag = generate_dag("single", tmp_path, prompt="a red sneaker", image_size="square", seed=3, deferrable=deferrable)
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "generate")
    assert len(records) == 1
    record = records[0]
    assert record["status"] == "succeeded" and record["seed"] == 3
    assert (record["width"], record["height"], record["billed_mp"], record["cost_usd"]) == (512, 512, 1, "0.030")
    assert record["uri"].startswith("file://") and Path(record["uri"][7:]).is_file()
    assert record["upsampled_prompt"]
    assert record["request_id"]  # the API's X-Request-Id of the response that reported the finished run
    assert set(record["timings"]) >= {"submitted_at", "finished_at", "detected_at", "stored_at"}
    assert "data:image" not in json.dumps(records) and "base64" not in json.dumps(records)  # no bytes
    assert len(json.dumps(records)) < 4000
    assert len(emulator.ledger()["entries"]) == 1


@pytest.mark.parametrize("deferrable", [True, False])
def test_batch_uses_batch_endpoint_and_records_every_image(emulator, run_dag, xcom, tmp_path, deferrable):
    prompts = [f"product shot {i}" for i in range(10)]
    dag = generate_dag("batch", tmp_path, prompts=prompts, image_size="square", max_in_flight=8, deferrable=deferrable)
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "generate")
    assert [r["index"] for r in records] == list(range(10))
    assert [r["prompt"] for r in records] == prompts
    assert all(r["batch_id"] for r in records)
    stats = emulator.stats()
    assert stats["requests"].get("create_batch", 0) == 5  # chunks of max_in_flight // 4
    assert stats["requests"].get("create_run", 0) == 0
    # Finished runs of one batch are read together from /items, not one GET /v1/runs each.
    assert stats["requests"].get("get_batch_items", 0) >= 1
    assert stats["requests"].get("get_run", 0) < 10
    assert stats["max_concurrent_runs"] <= 8
    assert len(stored_files(tmp_path)) == 10
    assert len(emulator.ledger()["entries"]) == 10


def test_mapped_over_prompts(emulator, run_dag, xcom, tmp_path):
    with DAG(dag_id("mapped"), schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        FluxGenerateImageOperator.partial(
            task_id="generate", output_uri=tmp_path.as_uri(), image_size="square", poll_interval=0.02, deferrable=True
        ).expand(prompt=["a cat", "a dog", "a fox"])
    dr = run_dag(dag)
    assert dr.state == "success"
    prompts = [xcom(dr, "generate", map_index=i)[0]["prompt"] for i in range(3)]
    assert prompts == ["a cat", "a dog", "a fox"]
    keys = {e["idempotency_key"] for e in emulator.ledger()["entries"]}
    assert len(keys) == 3


def test_falls_back_to_single_runs_when_the_model_has_no_batches(emulator, run_dag, xcom, tmp_path):
    emulator.configure(batch_unsupported_models=["pro"])
    dag = generate_dag("fallback", tmp_path, prompts=["a", "b", "c", "d"], image_size="square", deferrable=True)
    dr = run_dag(dag)
    assert dr.state == "success"
    assert all(r["batch_id"] is None for r in xcom(dr, "generate"))
    assert emulator.stats()["requests"]["create_run"] == 4


def test_fifty_images_deferrable_manifest_cost_equals_ledger(emulator, run_dag, xcom, tmp_path):
    prompts = [f"catalogue item {i}" for i in range(50)]
    dag = generate_dag("fifty", tmp_path, prompts=prompts, image_size="1920x1080", deferrable=True)
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "generate")
    assert len(records) == 50 and len(stored_files(tmp_path)) == 50
    assert len(emulator.ledger()["entries"]) == 50
    assert sum(Decimal(r["cost_usd"]) for r in records) == ledger_total(emulator) == Decimal("2.250")
    # One record per image in the metadata DB: the return value; no other XCom carries records.
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids="generate")).all()
        stored = {row.key: len(json.dumps(XComModel.deserialize_value(row))) for row in rows}
    assert set(stored) == {"return_value", "flux_gallery_url", "flux_manifest_uri", "_link_FluxImagesLink"}
    per_image = sum(stored.values()) / 50
    print(f"metadata DB per image: {per_image:.0f} B of XCom")
    assert per_image < 2_000  # docs/deployment.md quotes this figure (1.6 KB with short prompts)
    manifest = xcom(dr, "generate", key="flux_manifest_uri")
    if manifest:  # written by the storage layer's report writer
        summary = json.loads(Path(manifest[7:]).read_text())["summary"]
        assert Decimal(summary["total_cost_usd"]) == ledger_total(emulator)


def test_window_never_exceeds_max_in_flight(emulator, run_dag, xcom, tmp_path):
    emulator.configure(latency={"queued": 0.005, "dispatching": 0.005, "running": 0.03})
    prompts = [f"p{i}" for i in range(200)]
    dag = generate_dag("window", tmp_path, prompts=prompts, image_size="square", max_in_flight=8, deferrable=False)
    dr = run_dag(dag)
    assert dr.state == "success"
    assert len(xcom(dr, "generate")) == 200
    stats = emulator.stats()
    assert stats["max_concurrent_runs"] <= 8
    assert stats["max_concurrent_runs"] >= 4  # and the window was actually used
    assert len(emulator.ledger()["entries"]) == 200


def test_over_budget_plan_sends_nothing(emulator, run_dag, task_states, tmp_path):
    dag = generate_dag("budget", tmp_path, prompts=["a"] * 10, image_size="4096x4096", budget_usd="1.00")
    dr = run_dag(dag)
    assert dr.state == "failed"
    assert task_states(dr)["generate"] == "failed"
    stats = emulator.stats()
    assert stats["requests"].get("create_run", 0) == 0 and stats["requests"].get("create_batch", 0) == 0


def test_invalid_prompt_item_fails_when_the_dag_is_parsed(tmp_path):
    from airflow_provider_flux2.exceptions import FluxValidationError

    with pytest.raises(FluxValidationError, match=r"prompts\[1\]: Invalid image_size: 'huge'"):
        generate_dag("invalid", tmp_path, prompts=["ok", {"prompt": "x", "image_size": "huge"}])


def test_invalid_templated_prompt_item_fails_before_anything_is_sent(emulator, run_dag, tmp_path, capfd):
    with DAG(
        dag_id("invalid_templated"),
        schedule=None,
        start_date=datetime(2026, 1, 1),
        render_template_as_native_obj=True,
        params={"items": ["ok", {"prompt": "x", "image_size": "huge"}]},
    ) as dag:
        FluxGenerateImageOperator(
            task_id="generate", prompts="{{ params['items'] }}", output_uri=tmp_path.as_uri(), poll_interval=0.02
        )
    assert run_dag(dag).state == "failed"
    assert emulator.stats()["runs_created"] == 0
    assert "prompts[1]: Invalid image_size: 'huge'" in "".join(capfd.readouterr())


@pytest.mark.parametrize(
    ("policy", "dag_state", "returned"),
    [("fail", "failed", None), ("skip", "success", 1), ("record", "success", 2)],
)
def test_moderation_policies(emulator, run_dag, xcom, tmp_path, policy, dag_state, returned):
    dag = generate_dag(
        f"moderation_{policy}",
        tmp_path,
        prompts=["a calm lake", "NSFW_TEST scene"],
        image_size="square",
        on_moderation=policy,
        deferrable=True,
    )
    dr = run_dag(dag)
    assert dr.state == dag_state
    records = xcom(dr, "generate")
    if returned is None:
        assert records is None
    else:
        assert len(records) == returned
        if policy == "record":
            assert [r["status"] for r in records] == ["succeeded", "moderated"]
    # the calm lake is stored whatever the policy
    assert len([p for p in stored_files(tmp_path) if p.name.startswith("00000-")]) == 1


def test_failed_run_is_resubmitted_under_a_derived_key_and_billed_once(emulator, run_dag, xcom, tmp_path):
    emulator.faults({"rules": [{"endpoint": "create_run", "fault": "run_failure", "count": 1}]})
    dag = generate_dag("resubmit", tmp_path, prompt="a lighthouse", image_size="square", deferrable=True)
    dr = run_dag(dag)
    assert dr.state == "success"
    record = xcom(dr, "generate")[0]
    assert record["attempt"] == 2 and record["idempotency_key"].endswith("-r2")
    assert len(emulator.ledger()["entries"]) == 1


class CrashAfterTheWindow(FluxGenerateImageOperator):
    """Dies on its first try when the trigger fired: every run was submitted and paid, nothing stored."""

    def execute_complete(self, context, event=None):
        if context["ti"].try_number == 1:
            raise RuntimeError("simulated worker crash before collecting")
        return super().execute_complete(context, event)


class CrashAfterStoring(FluxGenerateImageOperator):
    """Dies on its first try after every image was stored, before the manifest: a crash at the very end."""

    def _finish(self, context, plan, records, *args):
        if context["ti"].try_number == 1:
            raise RuntimeError("simulated crash before the report")
        return super()._finish(context, plan, records, *args)


@pytest.mark.parametrize("operator", [CrashAfterTheWindow, CrashAfterStoring])
def test_task_retried_after_a_crash_creates_no_new_run(emulator, run_dag, xcom, tmp_path, operator):
    prompts = [f"retry {i}" for i in range(50)]
    with DAG(dag_id("crash"), schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        operator(
            task_id="generate",
            prompts=prompts,
            image_size="square",
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
            max_in_flight=6,
            deferrable=True,
            retries=1,
            retry_delay=timedelta(seconds=0),
        )
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "generate")
    assert len(records) == 50 and len(stored_files(tmp_path)) == 50
    ledger = emulator.ledger()["entries"]
    assert len(ledger) == 50
    assert len({e["run_id"] for e in ledger}) == 50
    assert emulator.stats()["runs_created"] == 50
    assert sum(Decimal(r["cost_usd"]) for r in records) == ledger_total(emulator)


def test_api_cost_is_recorded_beside_the_estimate_and_a_mismatch_is_logged(emulator, run_dag, xcom, tmp_path, capfd):
    emulator.configure(prices={"pro": {"first_mp": "0.04", "extra_mp": "0.02"}})
    dag = generate_dag("mismatch", tmp_path, prompt="a brass compass", image_size="square", deferrable=True)
    dr = run_dag(dag)
    assert dr.state == "success"
    record = xcom(dr, "generate")[0]
    assert (record["cost_usd"], record["api_cost_usd"], record["estimated_cost_usd"]) == ("0.040", "0.040", "0.030")
    out = capfd.readouterr()
    assert (
        f"Run {record['run_id']} (image 0) was billed $0.040 by the API; the estimate was $0.030" in out.out + out.err
    )


def test_an_image_that_cannot_be_fetched_yet_is_collected_on_the_next_cycle(emulator, run_dag, xcom, tmp_path):
    # Three expired URLs in a row outlast the hook's two refreshes: the first collect fails, the next succeeds.
    emulator.faults({"rules": [{"endpoint": "download", "fault": "url_expired", "count": 3}]})
    dag = generate_dag("collect_again", tmp_path, prompts=["a red kite", "a blue kite"], image_size="square")
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "generate")
    assert [r["status"] for r in records] == ["succeeded", "succeeded"]
    assert len(stored_files(tmp_path)) == 2
    assert len(emulator.ledger()["entries"]) == 2


def test_progress_lines_and_final_summary_a_person_can_follow(emulator, run_dag, xcom, tmp_path, capfd):
    emulator.faults({"rules": [{"endpoint": "create_batch", "fault": "run_failure", "count": 2}]})
    prompts = [f"poster variant {i}" for i in range(12)]
    dag = generate_dag(
        "progress",
        tmp_path,
        prompts=prompts,
        image_size="square",
        max_in_flight=4,
        batch_size=2,
        budget_usd="6",
        deferrable=True,
    )
    dr = run_dag(dag)
    assert dr.state == "success"
    out = capfd.readouterr()
    text = out.out + out.err
    progress = r"(\d+)/12 done · (\d+) failed · \$(\d+\.\d\d) of \$6\.00 budget(?: · ETA \w+)? · \d+ in flight"
    lines = re.findall(progress, text)
    assert lines, text[-3000:]
    done = [int(d) for d, _, _ in lines]
    assert done == sorted(done) and done[-1] == 12
    # Failed runs were resubmitted, so the batch ends with 12 images billed and nothing failed.
    assert emulator.stats()["runs_by_status"] == {"failed": 2, "succeeded": 12}
    assert lines[-1][1:] == ("0", "0.36")
    assert re.search(r"Finished 12 image\(s\): 12 stored, failures by kind none, 12 MP billed, \$0\.360", text)


def test_without_output_uri_images_go_to_a_folder_under_airflow_home(emulator, run_dag, xcom, tmp_path, monkeypatch):
    import airflow.configuration

    monkeypatch.setattr(airflow.configuration, "AIRFLOW_HOME", str(tmp_path))
    with DAG(dag_id("no_output"), schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        FluxGenerateImageOperator(task_id="generate", prompt="a plain mug", image_size="square", poll_interval=0.02)
    dr = run_dag(dag)
    assert dr.state == "success"
    record = xcom(dr, "generate")[0]
    assert record["uri"].startswith((tmp_path / "flux2-images").as_uri())
    assert len(stored_files(tmp_path / "flux2-images")) == 1


def test_clearing_a_finished_task_replays_its_runs_and_stores_missing_or_changed_images_again(
    emulator, run_dag, xcom, tmp_path
):
    # dag.test() wipes task_state_store when it clears, so this is the path without recorded progress:
    # every image is fetched again and written under its deterministic key (the kept/re-stored path with
    # progress is tested on collect itself, in tests/unit/test_jobs.py).
    when = datetime(2026, 3, 1, tzinfo=timezone.utc)
    prompts = [f"clearing {i}" for i in range(5)]
    dag = generate_dag("clear", tmp_path, prompts=prompts, image_size="square", max_in_flight=4, deferrable=True)
    first = run_dag(dag, logical_date=when, run_after=when)
    assert first.state == "success"
    before = {p.name: p.read_bytes() for p in stored_files(tmp_path)}
    files = stored_files(tmp_path)
    files[1].unlink()  # someone deleted an image
    files[3].write_bytes(b"not the image any more")  # and overwrote another

    again = run_dag(dag, logical_date=when, run_after=when)  # dag.test() on the same date clears the task first
    assert again.state == "success" and again.run_id == first.run_id
    assert emulator.stats()["runs_created"] == 5  # the API replayed the same runs: same keys
    assert len(emulator.ledger()["entries"]) == 5  # nothing billed twice
    assert {p.name: p.read_bytes() for p in stored_files(tmp_path)} == before
    records = xcom(again, "generate")
    assert [r["status"] for r in records] == ["succeeded"] * 5
    assert sum(Decimal(r["cost_usd"]) for r in records) == ledger_total(emulator) == Decimal("0.150")


def test_durable_false_makes_a_retry_start_over_under_new_keys(emulator, run_dag, tmp_path):
    with DAG(dag_id("not_durable"), schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        CrashAfterTheWindow(
            task_id="generate",
            prompts=["a", "b", "c"],
            image_size="square",
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
            deferrable=True,
            durable=False,
            retries=1,
            retry_delay=timedelta(seconds=0),
        )
    assert run_dag(dag).state == "success"
    assert emulator.stats()["runs_created"] == 6  # each try paid for its own runs, as asked
    assert len({e["run_id"] for e in emulator.ledger()["entries"]}) == 6


def test_one_plan_line_and_a_warning_when_no_budget_caps_the_task(emulator, run_dag, tmp_path, capfd):
    dag = generate_dag("plan_line", tmp_path, prompts=[f"p{i}" for i in range(3)], image_size="1920x1080")
    assert run_dag(dag).state == "success"
    text = "".join(capfd.readouterr())
    assert text.count("Plan: 3 images · 6 MP · $0.14, no budget · max 8 in flight") == 1
    assert "No budget: this task may spend $0.135" in text


def test_the_connections_max_task_spend_caps_every_task_without_a_budget(emulator, run_dag, tmp_path, monkeypatch):
    connection = json.loads(emulator.connection_json())
    connection["extra"] = {**connection.get("extra", {}), "max_task_spend_usd": "0.10"}
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_DEFAULT", json.dumps(connection))
    over = generate_dag("conn_cap", tmp_path, prompts=["a", "b", "c", "d"], image_size="square")
    assert run_dag(over).state == "failed"  # $0.12 > $0.10
    assert emulator.stats()["runs_created"] == 0
    own = generate_dag("own_budget", tmp_path, prompts=["a", "b", "c", "d"], image_size="square", budget_usd="1")
    assert run_dag(own).state == "success"  # a task's own budget wins


def test_a_running_budget_stop_fails_the_task_naming_the_figures_after_storing_what_was_made(
    emulator, run_dag, xcom, tmp_path, capfd
):
    emulator.configure(prices={"pro": {"first_mp": "0.05", "extra_mp": "0.02"}})  # the API bills more than the table
    prompts = [f"priced {i}" for i in range(6)]
    dag = generate_dag(
        "running_budget", tmp_path, prompts=prompts, image_size="square", max_in_flight=2, budget_usd="0.18"
    )
    assert run_dag(dag).state == "failed"
    text = "".join(capfd.readouterr())
    stop = re.search(
        r"Stopped submitting: \$(\d\.\d+) spent or in flight plus \$0\.030 for the next submission would pass "
        r"the task budget of \$0\.180; (\d) image\(s\) were not sent",
        text,
    )
    assert stop, text[-3000:]
    assert Decimal(stop[1]) + Decimal("0.030") > Decimal("0.180")
    ledger = emulator.ledger()["entries"]
    assert len(ledger) == 6 - int(stop[2]) == len(stored_files(tmp_path)) < 6


def test_on_budget_stop_record_finishes_with_the_images_not_sent_as_pending_records(emulator, run_dag, xcom, tmp_path):
    emulator.configure(prices={"pro": {"first_mp": "0.05", "extra_mp": "0.02"}})
    prompts = [f"priced {i}" for i in range(6)]
    dag = generate_dag(
        "running_budget_record",
        tmp_path,
        prompts=prompts,
        image_size="square",
        max_in_flight=2,
        budget_usd="0.18",
        on_budget_stop="record",
        deferrable=True,  # the same window, run by the trigger
    )
    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "generate")
    pending = [r for r in records if r["status"] == "pending"]
    assert pending and all(r["failure_code"] == "BUDGET_STOPPED" and r["cost_usd"] == "0" for r in pending)
    assert len(records) == 6 and [r["index"] for r in records] == list(range(6))
    assert len(emulator.ledger()["entries"]) == 6 - len(pending) == len(stored_files(tmp_path))
    assert sum(Decimal(r["cost_usd"]) for r in records) == ledger_total(emulator)
