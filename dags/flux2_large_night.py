"""
### FLUX 2 — a large night, sharded (10,000 images across mapped tasks)

One night's prompts split across mapped generate tasks, under one budget and the API's limits:

1. **plan** (`FluxPlanNightOperator`) prices every image, checks the night's budget and the
   organisation's credit balance, and fails before any shard starts; it prints the night's plan line
   (`Night plan: 10 shard(s) × 1,000 image(s) × $0.030 = $300.00 for 10,000 images · budget …`) and hands
   each shard its prompts and its share of the budget.
2. **generate** (`FluxGenerateImageOperator`, mapped with `expand_kwargs`): deferrable shards, each
   with `max_in_flight` runs at the API, in a pool that counts deferred tasks, with
   `pool_slots = max_in_flight` — so the runs in flight across the night never pass the pool's size.

**Before the first night**, create the pool from your account's concurrency cap (runs of one model at
once, from Runflow's rate-limits page or your contract): a quarter more than the cap, so the API's
slots stay busy while finished runs wait to be seen (the excess waits ``queued`` at the API, free).
For a cap of 64, and point the DAG at it::

    airflow pools set flux2_api 80 "FLUX 2 runs in flight" --include-deferred
    export FLUX2_POOL=flux2_api      # in every Airflow process' environment

Then set ``shards`` to the pool ÷ ``MAX_IN_FLIGHT`` (every shard running at once) and raise
``MAX_IN_FLIGHT`` for a large night: 10,000 images at a cap of 64 were measured as 4 shards of 2,500 at 20
(docs/deployment.md, "Sizing a night").

Without it the shards share `default_pool`, which does not count deferred tasks. See
docs/deployment.md ("Sizing a night") for sizing the pool, the shards and the triggerers.

**Trigger** with params: ``prompts`` (a list; default: a generated catalogue of ``count`` products),
``count`` (default 40), ``shards`` (default 4), ``budget_usd`` (default 2.00).
**Variables**: ``flux2_output_uri`` (default ``$AIRFLOW_HOME/flux2-output``), ``flux2_aws_conn_id``.

**Cost on defaults**: 40 square images (1 MP) at $0.030 = **$1.200**, in 4 shards of 10.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Param, Variable, task

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.night import FluxPlanNightOperator

#: Runs at the API per shard; a shard takes this many slots of the pool.
MAX_IN_FLIGHT = 8
#: The pool that caps the runs in flight across every shard (create it with --include-deferred).
POOL = os.environ.get("FLUX2_POOL", "default_pool")
IMAGE_SIZE = "square"


def _default_output() -> str:
    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    return (home / "flux2-output").resolve().as_uri()


with DAG(
    dag_id="flux2_large_night",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["flux2", "images", "scale"],
    doc_md=__doc__,
    params={
        "prompts": Param([], type="array", description="the night's prompts (empty: a generated catalogue)"),
        "count": Param(40, type="integer", minimum=1, description="products in the generated catalogue"),
        "shards": Param(4, type="integer", minimum=1, description="mapped generate tasks"),
        "budget_usd": Param("2.00", type="string", description="the whole night's budget"),
    },
    render_template_as_native_obj=True,
) as dag:

    @task
    def catalogue(params=None) -> list[str]:
        """The night's prompts: the ones given, or a generated catalogue of ``count`` products."""
        if params["prompts"]:
            return list(params["prompts"])
        return [f"studio photograph of product #{i:05d} on a white background" for i in range(params["count"])]

    @task
    def output_uri() -> str:
        return Variable.get("flux2_output_uri", default=_default_output()).rstrip("/")

    @task
    def aws_conn_id() -> str | None:
        return Variable.get("flux2_aws_conn_id", default=None) or None

    plan = FluxPlanNightOperator(
        task_id="plan",
        prompts=catalogue(),
        shards="{{ params.shards }}",
        budget_usd="{{ params.budget_usd }}",
        image_size=IMAGE_SIZE,
    )
    FluxGenerateImageOperator.partial(
        task_id="generate",
        image_size=IMAGE_SIZE,
        output_uri=output_uri(),
        aws_conn_id=aws_conn_id(),
        max_in_flight=MAX_IN_FLIGHT,
        pool=POOL,
        pool_slots=MAX_IN_FLIGHT,
        deferrable=True,
        retries=2,
    ).expand_kwargs(plan.output)
