"""DAGs of the loopback deployment (``benchmarks/deployment.py``): the chaos DAGs and the benchmark DAGs.

Shapes come from the environment the harness gives every process, so one file serves the short
scenario of ``make test`` and the full ones of ``make soak``:

- ``FLUX2_DEPLOY_SMALL_TASKS`` (20) tasks of 3–5 images, one ``big`` task of
  ``FLUX2_DEPLOY_BIG_IMAGES`` (200) images and one ``@task.flux2`` task, ``decorated``, of
  ``FLUX2_DEPLOY_DECORATED_IMAGES`` (4) images whose prompts a function returns; ``max_in_flight``
  ``FLUX2_DEPLOY_MAX_IN_FLIGHT`` (16), ``retries=2``: ``flux2_deploy_chaos`` (deferrable) and
  ``flux2_deploy_chaos_sync`` (waits in the worker);
- ``flux2_deploy_sentinel``: one deferrable task of ``FLUX2_DEPLOY_SENTINEL_IMAGES`` (8) images, each
  judged by Sentinel in a deferrable quality task, ``check`` (the ``sentinel_triggerer_kill`` scenario);
- ``make bench``'s DAGs (``benchmarks/deployment_bench.py``), one per compared way of running
  ``FLUX2_DEPLOY_BENCH_IMAGES`` (the shipped operator: ``flux2_deploy_bench``, deferrable, and
  ``flux2_deploy_bench_sync``) or ``FLUX2_DEPLOY_PEER_IMAGES`` images (``_waves``, the
  polling clients ``_fal``, ``_bfl``, ``_runflow_js``, and ``_http``: ``HttpOperator`` + ``HttpSensor``),
  and ``flux2_deploy_bench_triggerer`` (every run of the task in flight at once); their tasks are in
  ``benchmarks/bench_operators.py``.

Every task is the shipped operator, instrumented only to append one line per worker entry (when its
process started, when the method was entered and left) to ``FLUX2_DEPLOY_ENTRIES``: that is how the
harness counts worker entries and worker-slot seconds outside ``dag.test()``. The chaos DAGs' tasks
also append one line to ``FLUX2_DEPLOY_COLLECTING`` when a resumed task starts collecting (its
``execute_complete`` entered, Airflow's own preparation done): the database crash strikes then.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task
from entries import EntryLogged

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator

SIZES = ("landscape_4_3", "square_hd", "1920x1080", "portrait_16_9", "2048x2048")
SMALL_TASKS = int(os.environ.get("FLUX2_DEPLOY_SMALL_TASKS", "20"))
BIG_IMAGES = int(os.environ.get("FLUX2_DEPLOY_BIG_IMAGES", "200"))
DECORATED_IMAGES = int(os.environ.get("FLUX2_DEPLOY_DECORATED_IMAGES", "4"))
SENTINEL_IMAGES = int(os.environ.get("FLUX2_DEPLOY_SENTINEL_IMAGES", "8"))
BENCH_IMAGES = int(os.environ.get("FLUX2_DEPLOY_BENCH_IMAGES", "200"))
MAX_IN_FLIGHT = int(os.environ.get("FLUX2_DEPLOY_MAX_IN_FLIGHT", "16"))
#: The emulator's time scale: the poll interval is compressed with the API's clock, as in ``make bench``.
TIME_SCALE = float(os.environ.get("FLUX2_DEPLOY_TIME_SCALE", "1"))
OUTPUT = os.environ.get("FLUX2_DEPLOY_OUTPUT", "/tmp/flux2-deploy-output")
COLLECTING = os.environ.get("FLUX2_DEPLOY_COLLECTING", "")


class InstrumentedOperator(EntryLogged, FluxGenerateImageOperator):
    """The shipped operator; each worker entry appends one line to ``FLUX2_DEPLOY_ENTRIES`` (``entries.py``),
    and each start of a collection one line to ``FLUX2_DEPLOY_COLLECTING``."""

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        if COLLECTING:
            ti = context["ti"]
            line = {"run_id": ti.run_id, "task_id": ti.task_id, "try_number": ti.try_number, "entered": time.time()}
            with open(COLLECTING, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
        return super().execute_complete(context, event)


def prompts(task: str, count: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"{task} catalogue item {i}", "image_size": SIZES[i % len(SIZES)], "seed": i} for i in range(count)
    ]


def generate(task_id: str, count: int, *, deferrable: bool) -> InstrumentedOperator:
    return InstrumentedOperator(
        task_id=task_id,
        prompts=prompts(task_id, count),
        output_uri=f"file://{OUTPUT}",
        max_in_flight=MAX_IN_FLIGHT,
        poll_interval=2.0 * TIME_SCALE,
        progress_interval=5.0 * TIME_SCALE,
        deferrable=deferrable,
        timeout=3600,
    )


def decorated(count: int, *, deferrable: bool) -> Any:
    """The same kind of task written with ``@task.flux2``: a function returns the prompts (run once, on the worker)."""

    @task.flux2(
        task_id="decorated",
        output_uri=f"file://{OUTPUT}",
        max_in_flight=MAX_IN_FLIGHT,
        poll_interval=2.0 * TIME_SCALE,
        progress_interval=5.0 * TIME_SCALE,
        deferrable=deferrable,
        timeout=3600,
    )
    def product_shots() -> list[dict[str, Any]]:
        return prompts("decorated", count)

    return product_shots()


DEFAULTS = {"retries": 2, "retry_delay": timedelta(seconds=2)}

for _dag_id, _deferrable in (("flux2_deploy_chaos", True), ("flux2_deploy_chaos_sync", False)):
    with DAG(
        _dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        default_args=DEFAULTS,
        max_active_tasks=64,
        tags=["flux2", "deployment"],
    ) as _dag:
        for _i in range(SMALL_TASKS):
            generate(f"small_{_i:02d}", 3 + _i % 3, deferrable=_deferrable)
        generate("big", BIG_IMAGES, deferrable=_deferrable)
        decorated(DECORATED_IMAGES, deferrable=_deferrable)
    globals()[_dag_id] = _dag

with DAG(
    "flux2_deploy_sentinel",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULTS,
    tags=["flux2", "deployment"],
) as flux2_deploy_sentinel:
    # Every image is judged (min_pass_rate 0, failures dropped): the verdict counts evaluations, not passes.
    FluxQualityCheckOperator(
        task_id="check",
        records=generate("generate", SENTINEL_IMAGES, deferrable=True).output,
        on_failure="drop",
        min_pass_rate=0,
        output_uri=f"file://{OUTPUT}",
        poll_interval=2.0 * TIME_SCALE,
        deferrable=True,
        timeout=3600,
        sentinel=True,
        sentinel_task_type="product",
        sentinel_require_passed=True,
    )

# -- make bench (benchmarks/deployment_bench.py): one DAG per compared way of running N images ----------

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
    import bench_operators as ops

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
        _http_dag(ops)
    return dags


def _http_dag(ops: Any) -> None:
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
