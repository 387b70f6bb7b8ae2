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
- ``make bench``'s DAGs are in ``flux2_deploy_bench.py``, apart: a task process parses only its own
  DAG file, so a chaos task does not build the bench's DAGs nor import ``bench_operators`` (the HTTP
  provider) each time it starts.

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
from deployment_shape import MAX_IN_FLIGHT, OUTPUT, TIME_SCALE, prompts
from entries import EntryLogged

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator

SMALL_TASKS = int(os.environ.get("FLUX2_DEPLOY_SMALL_TASKS", "20"))
BIG_IMAGES = int(os.environ.get("FLUX2_DEPLOY_BIG_IMAGES", "200"))
DECORATED_IMAGES = int(os.environ.get("FLUX2_DEPLOY_DECORATED_IMAGES", "4"))
SENTINEL_IMAGES = int(os.environ.get("FLUX2_DEPLOY_SENTINEL_IMAGES", "8"))
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
