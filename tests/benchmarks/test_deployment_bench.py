"""``make bench``'s real-deployment rows: the peers' clients against the emulator, and how rows are judged.

The peer tasks (``benchmarks/bench_operators.py``) run under ``dag.test()`` against the emulator as a
real HTTP server; the figures' arithmetic (``benchmarks/deployment_bench.py``) is checked on records
and entries written the way the tasks write them.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_operators  # noqa: E402
import deployment_bench  # noqa: E402
from deployment_bench import MB, Measured, Png, Triggerer, slot_seconds, targets  # noqa: E402

ITEMS = [{"prompt": f"catalogue item {i}", "image_size": "square", "seed": i} for i in range(5)]


@pytest.fixture
def bench_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUX2_DEPLOY_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("FLUX2_DEPLOY_ENTRIES", str(tmp_path / "entries.jsonl"))
    return tmp_path


def _entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_polling_client_submits_single_runs_polls_each_and_downloads(emulator, run_dag, bench_env):
    from airflow.sdk import DAG

    with DAG("bench_polling_client", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        bench_operators.PollingClientOperator(task_id="generate", prompts=ITEMS, poll_every=0.05, max_in_flight=2)
    dag_run = run_dag(dag)

    assert dag_run.state == "success"
    records = deployment_bench._rows(bench_env / "output", "bench_polling_client")
    assert sorted(r["index"] for r in records) == list(range(5))
    for record in records:
        timings = record["timings"]
        assert record["status"] == "succeeded"
        assert timings["submitted_at"] <= timings["detected_at"] <= timings["stored_at"]
        assert Path(unquote(urlparse(record["uri"]).path)).stat().st_size > 0
    stats = emulator.stats()
    assert stats["requests"]["create_run"] == 5
    assert stats["requests"]["download"] == 5
    assert stats["requests"]["get_run"] >= 5  # at least one poll per run, at a fixed interval
    assert stats["max_concurrent_runs"] <= 2
    assert len(emulator.ledger()["entries"]) == 5
    [entry] = _entries(bench_env / "entries.jsonl")  # one worker entry: the slot held throughout
    assert entry["outcome"] == "returned" and entry["method"] == "execute"


def test_polling_client_replays_under_its_keys_on_a_second_try(emulator, bench_env):
    """A retried task sends the same Idempotency-Keys: the API replays, nothing is billed twice."""
    from types import SimpleNamespace

    operator = bench_operators.PollingClientOperator(
        task_id="generate", prompts=ITEMS[:3], poll_every=0.05, max_in_flight=3
    )
    context = {"ti": SimpleNamespace(dag_id="bench_retry", run_id="r1", task_id="generate", try_number=1)}
    assert operator._run(context) == 3
    assert len(emulator.ledger()["entries"]) == 3
    context["ti"].try_number = 2
    assert operator._run(context) == 3
    assert len(emulator.ledger()["entries"]) == 3  # replayed, not paid again
    assert emulator.stats()["requests"]["create_run"] == 6


def test_http_operator_sensor_dag_generates_each_image_through_mapped_groups(emulator, run_dag, bench_env, monkeypatch):
    import airflow_provider_flux2.models  # noqa: F401  (the DAG builds wire inputs)

    monkeypatch.setenv(
        "AIRFLOW_CONN_FLUX2_HTTP",
        json.dumps(
            {
                "conn_type": "http",
                "host": emulator.base_url,
                "extra": json.dumps({"Authorization": f"Bearer {emulator.api_key}"}),
            }
        ),
    )
    from airflow.sdk import DAG, task_group

    ops = bench_operators

    with DAG("bench_http", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task_group(group_id="image")
        def image(index: int, body: str, key: str) -> None:
            submit = ops.HttpSubmitOperator(
                task_id="submit",
                http_conn_id=ops.HTTP_CONN_ID,
                endpoint=ops.MODEL_PATH.lstrip("/"),
                method="POST",
                data=body,
                headers={"Idempotency-Key": key, "Content-Type": "application/json"},
                response_filter=ops.run_id_of,
            )
            wait = ops.HttpRunSensor(
                task_id="wait",
                http_conn_id=ops.HTTP_CONN_ID,
                endpoint="v1/runs/{{ ti.xcom_pull(task_ids='image.submit', map_indexes=ti.map_index) }}",
                method="GET",
                response_check=ops.is_terminal,
                poke_interval=0.1,
                timeout=60,
                mode="poke",
            )
            fetch = ops.HttpDownloadOperator(
                task_id="download",
                run_id="{{ ti.xcom_pull(task_ids='image.submit', map_indexes=ti.map_index) }}",
                detected_at="{{ ti.xcom_pull(task_ids='image.wait', key='detected_at', map_indexes=ti.map_index) }}",
                index=index,
            )
            submit >> wait >> fetch

        image.expand_kwargs(
            [
                {"index": i, "body": json.dumps({"input": ops.wire_input(item)}), "key": f"k{i}"}
                for i, item in enumerate(ITEMS[:3])
            ]
        )
    dag_run = run_dag(dag)

    assert dag_run.state == "success"
    records = deployment_bench._rows(bench_env / "output", "bench_http")
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    assert all(r["timings"]["detected_at"] and r["timings"]["finished_at"] for r in records)
    assert len(emulator.ledger()["entries"]) == 3
    assert emulator.stats()["requests"]["create_run"] == 3
    tasks = {e["task_id"] for e in _entries(bench_env / "entries.jsonl")}
    assert tasks == {"image.submit", "image.wait", "image.download"}


# -- how rows are judged ------------------------------------------------------------------------------


def _measured(key: str, **figures) -> Measured:
    values = dict(
        key=key,
        label=key,
        mode="real deployment",
        images=1000,
        planned=1000,
        state="success",
        wall_s=260.0,
        mean_latency_s=8.0,
        entries=2,
        slot_s=10.0,
        requests=1400,
        billed=1000,
        lag_p50=0.8,
        lag_p95=1.9,
        tries=1,
        peak_in_flight=32,
    )
    values.update(figures)
    return Measured(**values)


def test_targets_met_when_every_figure_is_within():
    shipped, sync = _measured("shipped"), _measured("sync", entries=1, slot_s=260.0)
    trig = Triggerer(1000, 1000, 30.0, 150 * MB, 190 * MB, 120 * MB, 0.6, "success")
    rows = targets([shipped, sync], trig, [Png(240 * MB, 150 * MB, 5 * MB, 3.0)], max_in_flight=32, blocked=0)
    assert shipped.of_ideal(32) == pytest.approx(1000 * 8 / 32 / 260)
    assert [met for _, _, met in rows] == ["yes"] * len(rows)
    assert len(rows) == 10


def test_targets_missed_are_reported_missed_never_rounded_in():
    shipped = _measured("shipped", wall_s=300.0, entries=3, requests=1501, lag_p95=2.01, slot_s=14.0)
    sync = _measured("sync", entries=1, slot_s=270.0)
    trig = Triggerer(1000, 1000, 30.0, 300 * MB, 320 * MB, 201 * MB, 1.6, "success")
    rows = targets([shipped, sync], trig, [Png(251 * MB, 150 * MB, 5 * MB, 3.0)], max_in_flight=32, blocked=1)
    assert [met for _, _, met in rows] == ["**no**"] * len(rows)


def test_an_invalid_run_meets_no_target():
    """Images ≠ billed (or a failed run) makes the row invalid, whatever its speed."""
    shipped = _measured("shipped", billed=999)
    assert not shipped.valid
    rows = targets([shipped, _measured("sync", slot_s=1000.0)], None, [], max_in_flight=32)
    assert {met for _, _, met in rows} == {"**no**"}


def test_triggerer_without_every_run_in_flight_meets_nothing():
    trig = Triggerer(1000, 400, 30.0, 150 * MB, 150 * MB, 100 * MB, 0.1, "success")
    rows = targets([], trig, [], max_in_flight=32)
    assert {met for _, _, met in rows} == {"**no**"}


def test_worker_slot_ratio_compares_per_image_when_the_sync_row_is_smaller():
    shipped = _measured("shipped", slot_s=10.0)
    sync = _measured("sync", images=200, planned=200, billed=200, slot_s=52.0)  # 0.26 s/image vs 0.01
    [row] = [r for r in targets([shipped, sync], None, [], 32) if r[0].startswith("worker-slot")]
    assert row[1].startswith("26.0×") and "for 200 images" in row[1] and row[2] == "yes"


def test_slot_seconds_count_a_task_process_from_its_start_once():
    entries = [
        {"pid": 1, "process_start": 100.0, "enter": 103.0, "exit": 104.0},  # 4 s: start-up included
        {"pid": 2, "process_start": 200.0, "enter": 202.0, "exit": 205.0},  # 5 s
        {"pid": 2, "process_start": 200.0, "enter": 210.0, "exit": 211.0},  # 1 s: same process, from entry
    ]
    assert slot_seconds(entries) == pytest.approx(10.0)
    assert slot_seconds(entries, from_process_start=False) == pytest.approx(5.0)


def test_rows_of_one_dag_run_from_manifests_and_peer_records(tmp_path):
    manifest = tmp_path / "d" / "run-1" / "generate" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps({"images": [{"client_ref": "d/run-1/generate/-1/0/x"}, {"client_ref": "d/run-2/y"}]})
    )
    (tmp_path / "d" / "run-1" / "records.jsonl").write_text(json.dumps({"client_ref": "peer"}) + "\n")
    (tmp_path / "d" / "run-2").mkdir()
    (tmp_path / "d" / "run-2" / "records.jsonl").write_text(json.dumps({"client_ref": "other"}) + "\n")
    refs = sorted(r["client_ref"] for r in deployment_bench._rows(tmp_path, "d", "run-1"))
    assert refs == ["d/run-1/generate/-1/0/x", "peer"]


@pytest.mark.cluster
@pytest.mark.bench
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_bench_deployment_mode_runs_every_kind_of_row_valid_on_a_real_deployment():
    """``benchmarks/deployment_bench.py`` end to end at a tiny size: each kind of row on the loopback
    deployment (and under ``dag.test()``), the triggerer and the PNG measurements; every row valid
    (succeeded, images = billed: the script exits 1 otherwise), the targets table printed. The figures themselves are
    ``make bench``'s, not this test's."""
    import os
    import subprocess

    rows = "shipped,fal,http,triggerer,png"  # the operator's kinds of task: shipped, client loop, mapped HTTP
    command = [sys.executable, str(BENCHMARKS / "deployment_bench.py"), "--images", "4", "--max-in-flight", "2"]
    command += ["--time-scale", "0.1", "--http-images", "2", "--triggerer-images", "20", "--rows", rows, "--no-docs"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=850, env=os.environ.copy())

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for label in ("as shipped, deferrable", "fal-client"):
        assert label in out
    assert "HttpOperator + HttpSensor" in out and "dag.test()" in out
    assert "triggerer ≤ 200 MB RSS, 20 runs in flight (peak 20)" in out
    assert "one 4096×4096 PNG end to end ≤ 250 MB peak RSS: the emulator's PNG" in out


def test_the_bench_dags_parse_apart_from_the_chaos_dags(monkeypatch):
    """The bench's DAGs live in a file of their own: a chaos task's process parses only its DAG's file, so it
    neither builds the bench's DAGs (one of 1,000 prompts) nor imports ``bench_operators`` when it starts."""
    import ast

    from tests.dagbags import dag_bag

    folder = BENCHMARKS / "deployment_dags"
    monkeypatch.syspath_prepend(str(folder))
    bag = dag_bag(folder / "flux2_deploy_bench.py")
    assert bag.import_errors == {}
    assert set(bag.dags) == {
        "flux2_deploy_bench",
        "flux2_deploy_bench_sync",
        "flux2_deploy_bench_waves",
        "flux2_deploy_bench_triggerer",
        "flux2_deploy_bench_fal",
        "flux2_deploy_bench_bfl",
        "flux2_deploy_bench_runflow_js",
        "flux2_deploy_bench_http",
    }
    chaos = ast.parse((folder / "flux2_deploy.py").read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(chaos)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert "bench_operators" not in imported
    assert set(dag_bag(folder / "flux2_deploy.py").dags) == {
        "flux2_deploy_chaos",
        "flux2_deploy_chaos_sync",
        "flux2_deploy_sentinel",
    }
