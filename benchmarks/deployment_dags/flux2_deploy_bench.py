"""``make bench``'s DAGs on the loopback deployment (``benchmarks/deployment_bench.py``): one per compared
way of running ``FLUX2_DEPLOY_BENCH_IMAGES`` (the shipped operator: ``flux2_deploy_bench``, deferrable,
and ``flux2_deploy_bench_sync``) or ``FLUX2_DEPLOY_PEER_IMAGES`` images (``_waves``, the polling clients
``_fal``, ``_bfl``, ``_runflow_js``, and ``_http``: ``HttpOperator`` + ``HttpSensor``), and
``flux2_deploy_bench_triggerer`` (every run of the task in flight at once); their tasks are in
``benchmarks/bench_operators.py``. The prompts, window, output folder and time scale are read as the
chaos DAGs read them (``benchmarks/deployment_shape.py``).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

import bench_operators as ops
from airflow.sdk import DAG
from deployment_shape import MAX_IN_FLIGHT, OUTPUT, TIME_SCALE, prompts

BENCH_IMAGES = int(os.environ.get("FLUX2_DEPLOY_BENCH_IMAGES", "200"))

#: Images of the peer rows (``--peer-images``): the baselines and other clients may run at a smaller N.
PEER_IMAGES = int(os.environ.get("FLUX2_DEPLOY_PEER_IMAGES", str(BENCH_IMAGES)))
#: Images of the HttpOperator + HttpSensor DAG (``--http-images``).
HTTP_IMAGES = int(os.environ.get("FLUX2_DEPLOY_HTTP_IMAGES", str(PEER_IMAGES)))
#: Images (and window) of the triggerer measurement: every run of the task in flight at once.
TRIGGERER_IMAGES = int(os.environ.get("FLUX2_DEPLOY_TRIGGERER_IMAGES", "1000"))
#: Fixed per-run poll intervals of the clients a user would otherwise pick, in seconds of the API's clock.
CLIENT_POLL_INTERVALS = {"fal": 0.1, "bfl": 1.0, "runflow_js": 2.0}
#: The ``HttpSensor``'s poke interval, in seconds of the API's clock.
HTTP_POKE_INTERVAL = 5.0
BENCH_DEFAULTS = {"retries": 2, "retry_delay": timedelta(seconds=2)}


def bench_dag(dag_id: str, **kwargs: Any) -> DAG:
    return DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        default_args=BENCH_DEFAULTS,
        tags=["flux2", "deployment", "bench"],
        **kwargs,
    )


def bench_operator(cls: type, count: int, max_in_flight: int = MAX_IN_FLIGHT, **kwargs: Any) -> Any:
    return cls(
        task_id="generate",
        prompts=prompts("generate", count),
        output_uri=f"file://{OUTPUT}",
        max_in_flight=max_in_flight,
        poll_interval=2.0 * TIME_SCALE,
        progress_interval=5.0 * TIME_SCALE,
        timeout=3600,
        clock_scale=TIME_SCALE,
        **kwargs,
    )


def _bench_dags() -> dict[str, DAG]:
    dags: dict[str, DAG] = {}
    for dag_id, cls, count, extra in (
        ("flux2_deploy_bench", ops.ShippedBenchOperator, BENCH_IMAGES, {"deferrable": True}),
        ("flux2_deploy_bench_sync", ops.ShippedBenchOperator, BENCH_IMAGES, {"deferrable": False}),
        ("flux2_deploy_bench_waves", ops.WavesOperator, PEER_IMAGES, {"deferrable": True}),
    ):
        with bench_dag(dag_id) as dag:
            bench_operator(cls, count, **extra)
        dags[dag_id] = dag
    with bench_dag("flux2_deploy_bench_triggerer") as dag:
        bench_operator(ops.ShippedBenchOperator, TRIGGERER_IMAGES, TRIGGERER_IMAGES, deferrable=True)
    dags["flux2_deploy_bench_triggerer"] = dag
    for client, interval in CLIENT_POLL_INTERVALS.items():
        dag_id = f"flux2_deploy_bench_{client}"
        with bench_dag(dag_id) as dag:
            ops.PollingClientOperator(
                task_id="generate",
                prompts=prompts("generate", PEER_IMAGES),
                poll_every=interval * TIME_SCALE,
                max_in_flight=MAX_IN_FLIGHT,
            )
        dags[dag_id] = dag
    with bench_dag("flux2_deploy_bench_http") as dag:
        dags["flux2_deploy_bench_http"] = dag
        _http_dag()
    return dags


def _http_dag() -> None:
    """``HttpOperator`` → ``HttpSensor`` (5 s poke) → download, one mapped task group per image."""
    from airflow.sdk import task_group

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
            poke_interval=HTTP_POKE_INTERVAL * TIME_SCALE,
            timeout=3600,
            deferrable=True,
            # The provider's deferrable HttpSensor ignores `deferrable` when given a response_check
            # (its trigger can only wait for a 2xx); "reschedule" is then how it lets go of the slot.
            mode="reschedule",
        )
        fetch = ops.HttpDownloadOperator(
            task_id="download",
            run_id="{{ ti.xcom_pull(task_ids='image.submit', map_indexes=ti.map_index) }}",
            detected_at="{{ ti.xcom_pull(task_ids='image.wait', key='detected_at', map_indexes=ti.map_index) }}",
            index=index,
        )
        submit >> wait >> fetch

    calls = []
    for i, item in enumerate(prompts("generate", HTTP_IMAGES)):
        body = {"input": ops.wire_input(item), "client_ref": f"flux2_deploy_bench_http/{i}"}
        calls.append({"index": i, "body": json.dumps(body), "key": f"http-bench-{i}"})
    image.expand_kwargs(calls)


globals().update(_bench_dags())
