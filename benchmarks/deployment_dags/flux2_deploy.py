"""DAGs of the loopback deployment (``benchmarks/deployment.py``): the chaos DAGs and the benchmark DAGs.

Shapes come from the environment the harness gives every process, so one file serves the short
scenario of ``make test`` and the full ones of ``make soak``:

- ``FLUX2_DEPLOY_SMALL_TASKS`` (20) tasks of 3–5 images and one ``big`` task of
  ``FLUX2_DEPLOY_BIG_IMAGES`` (200) images, ``max_in_flight`` ``FLUX2_DEPLOY_MAX_IN_FLIGHT`` (16),
  ``retries=2``: ``flux2_deploy_chaos`` (deferrable) and ``flux2_deploy_chaos_sync`` (waits in the worker);
- one task of ``FLUX2_DEPLOY_BENCH_IMAGES`` (200) images: ``flux2_deploy_bench`` (deferrable) and
  ``flux2_deploy_bench_sync``.

Every task is the shipped operator, instrumented only to append one line per worker entry (when its
process started, when the method was entered and left) to ``FLUX2_DEPLOY_ENTRIES``: that is how the
harness counts worker entries and worker-slot seconds outside ``dag.test()``.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

SIZES = ("landscape_4_3", "square_hd", "1920x1080", "portrait_16_9", "2048x2048")
SMALL_TASKS = int(os.environ.get("FLUX2_DEPLOY_SMALL_TASKS", "20"))
BIG_IMAGES = int(os.environ.get("FLUX2_DEPLOY_BIG_IMAGES", "200"))
BENCH_IMAGES = int(os.environ.get("FLUX2_DEPLOY_BENCH_IMAGES", "200"))
MAX_IN_FLIGHT = int(os.environ.get("FLUX2_DEPLOY_MAX_IN_FLIGHT", "16"))
#: The emulator's time scale: the poll interval is compressed with the API's clock, as in ``make bench``.
TIME_SCALE = float(os.environ.get("FLUX2_DEPLOY_TIME_SCALE", "1"))
OUTPUT = os.environ.get("FLUX2_DEPLOY_OUTPUT", "/tmp/flux2-deploy-output")
ENTRIES = os.environ.get("FLUX2_DEPLOY_ENTRIES", "")


def _process_started() -> float:
    import psutil

    return float(psutil.Process().create_time())


class InstrumentedOperator(FluxGenerateImageOperator):
    """The shipped operator; each worker entry appends ``{task, try, method, process_start, enter, exit}``."""

    def _entry(self, context: Any, method: str, call: Any) -> Any:
        entered = time.time()
        outcome = "deferred"
        try:
            result = call()
            outcome = "returned"
            return result
        except BaseException as exc:
            outcome = "deferred" if type(exc).__name__ == "TaskDeferred" else f"raised {type(exc).__name__}"
            raise
        finally:
            if ENTRIES:
                ti = context["ti"]
                line = {
                    "dag_id": ti.dag_id,
                    "run_id": ti.run_id,
                    "task_id": ti.task_id,
                    "try_number": ti.try_number,
                    "method": method,
                    "outcome": outcome,
                    "process_start": _process_started(),
                    "enter": entered,
                    "exit": time.time(),
                    "pid": os.getpid(),
                    "host": os.environ.get("FLUX2_DEPLOY_HOSTNAME", ""),
                }
                with open(ENTRIES, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(line) + "\n")

    def execute(self, context: Any) -> Any:
        return self._entry(context, "execute", lambda: super(InstrumentedOperator, self).execute(context))

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        return self._entry(
            context, "execute_complete", lambda: super(InstrumentedOperator, self).execute_complete(context, event)
        )


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
    globals()[_dag_id] = _dag

for _dag_id, _deferrable in (("flux2_deploy_bench", True), ("flux2_deploy_bench_sync", False)):
    with DAG(
        _dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        default_args={"retries": 2, "retry_delay": timedelta(seconds=2)},
        tags=["flux2", "deployment", "bench"],
    ) as _dag:
        generate("generate", BENCH_IMAGES, deferrable=_deferrable)
    globals()[_dag_id] = _dag
