"""``flux2_deploy_scale``: the large-night template (``dags/flux2_large_night.py``) at the scale row's size.

``make bench-scale`` (``benchmarks/scale_bench.py``) runs it on the loopback deployment: a ``catalogue``
task returns ``FLUX2_DEPLOY_SCALE_IMAGES`` prompts, ``plan`` (``FluxPlanNightOperator``) prices the night,
checks its budget and the organisation's balance and splits it into ``FLUX2_DEPLOY_SCALE_SHARDS`` shards,
and ``generate`` is the shipped operator mapped over them with ``expand_kwargs``: deferrable, each shard
``FLUX2_DEPLOY_SCALE_MAX_IN_FLIGHT`` runs at the API, in pool ``FLUX2_POOL`` with ``pool_slots`` equal
to that. As in the template, except that the poll interval is compressed with the emulator's clock
(``FLUX2_DEPLOY_TIME_SCALE``) and each worker entry is logged for the bench (``entries.py``).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task
from entries import EntryLogged

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.night import FluxPlanNightOperator

IMAGES = int(os.environ.get("FLUX2_DEPLOY_SCALE_IMAGES", "400"))
SHARDS = int(os.environ.get("FLUX2_DEPLOY_SCALE_SHARDS", "8"))
MAX_IN_FLIGHT = int(os.environ.get("FLUX2_DEPLOY_SCALE_MAX_IN_FLIGHT", "8"))
POOL = os.environ.get("FLUX2_POOL", "default_pool")
TIME_SCALE = float(os.environ.get("FLUX2_DEPLOY_TIME_SCALE", "1"))
OUTPUT = os.environ.get("FLUX2_DEPLOY_OUTPUT", "/tmp/flux2-deploy-output")
IMAGE_SIZE = "square_hd"
#: The night's budget: every image at its worst-case price, with room to spare.
BUDGET_USD = "100000"


def catalogue_prompts(count: int) -> list[dict[str, object]]:
    """The night's prompts, each with its seed, so the bench can pre-render the very images in the emulator."""
    return [{"prompt": f"studio photograph of product #{i:05d} on a white background", "seed": i} for i in range(count)]


class InstrumentedOperator(EntryLogged, FluxGenerateImageOperator):
    """The shipped operator; each worker entry appends one line to ``FLUX2_DEPLOY_ENTRIES``."""


with DAG(
    "flux2_deploy_scale",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=2)},
    max_active_tasks=64,
    tags=["flux2", "deployment", "scale"],
) as flux2_deploy_scale:

    @task
    def catalogue() -> list[dict[str, object]]:
        return catalogue_prompts(IMAGES)

    plan = FluxPlanNightOperator(
        task_id="plan", prompts=catalogue(), shards=SHARDS, budget_usd=BUDGET_USD, image_size=IMAGE_SIZE
    )
    InstrumentedOperator.partial(
        task_id="generate",
        image_size=IMAGE_SIZE,
        output_uri=f"file://{OUTPUT}",
        max_in_flight=MAX_IN_FLIGHT,
        pool=POOL,
        pool_slots=MAX_IN_FLIGHT,
        poll_interval=2.0 * TIME_SCALE,
        progress_interval=5.0 * TIME_SCALE,
        deferrable=True,
        timeout=6 * 3600,
    ).expand_kwargs(plan.output)
