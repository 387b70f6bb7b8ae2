"""
### FLUX 2 — pre-production batch (key art, posters, banners)

Triggered by hand with the briefs to explore. Every brief × variant is a mapped task; each one
renders the brief at every size and seed asked for. A plan step prints the estimate for the whole
run and refuses it — before anything is sent — when it is over the budget. The images land in one
gallery for the creative director.

**Trigger** with params (UI form, or ``airflow dags trigger flux2_preproduction_batch --conf '{...}'``):

| Param | Meaning | Default |
|---|---|---|
| ``briefs`` | the ideas to explore (text or JSON-structured prompts) | two sample briefs |
| ``variants`` | variants: ``pro``, ``flex``, ``max``, ``turbo``, ``klein-4b``, ``klein-9b`` | ``["pro", "flex"]`` |
| ``sizes`` | presets or ``WxH`` | ``["1920x1080", "portrait_4_3"]`` |
| ``seeds`` | seeds to explore (one image per seed) | ``[1, 2]`` |
| ``budget_usd`` | the most this run may spend | ``2.00`` |

**Connections**: ``flux2_default``; an AWS connection (variable ``flux2_aws_conn_id``) for ``s3://``.
**Variables**: ``flux2_output_uri`` (default ``$AIRFLOW_HOME/flux2-output``).

**Cost on defaults**: 2 briefs × (pro + flex) × 2 sizes × 2 seeds = 16 images. Pro: 4 × 2 MP at
$0.045 + 4 × 1 MP at $0.030 = $0.300; flex: 4 × 2 MP at $0.10 + 4 × 1 MP at $0.05 = $0.600;
**$0.900** in all.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, Variable, task

from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.publish import FluxPublishOperator

SAMPLE_BRIEFS = [
    "Key art for a neo-noir detective film: a lone figure under a flickering neon sign in the rain",
    "Festival poster for a summer jazz series: saxophone silhouette against a sunset skyline",
]


def _default_output() -> str:
    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    return (home / "flux2-output").resolve().as_uri()


with DAG(
    dag_id="flux2_preproduction_batch",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["flux2", "images", "pre-production"],
    doc_md=__doc__,
    params={
        "briefs": Param(SAMPLE_BRIEFS, type="array", minItems=1, description="ideas to explore"),
        "variants": Param(
            ["pro", "flex"], type="array", minItems=1, description="pro, flex, max, turbo, klein-4b, klein-9b"
        ),
        "sizes": Param(["1920x1080", "portrait_4_3"], type="array", minItems=1, description="presets or WxH"),
        "seeds": Param([1, 2], type="array", minItems=1, description="one image per seed"),
        "budget_usd": Param("2.00", type="string", description="the most this run may spend, in dollars"),
    },
) as dag:

    @task
    def plan(params=None) -> list[dict[str, Any]]:
        """One mapped task per brief × variant; the whole run is priced and budget-checked here."""
        from airflow_provider_flux2.pricing import Budget, usd

        hook = FluxHook()
        tasks, requests = [], []
        for number, (brief, variant) in enumerate(itertools.product(params["briefs"], params["variants"])):
            prompts = [
                {"prompt": brief, "image_size": size, "seed": int(seed)}
                for size, seed in itertools.product(params["sizes"], params["seeds"])
            ]
            for item in prompts:
                requests.append(hook.build_request(variant, **item))  # validates before any money is spent
            tasks.append({"prompts": prompts, "model": variant})
            print(f"brief {number // len(params['variants']) + 1} × {variant}: {len(prompts)} image(s)")
        estimate = hook.estimate(requests)
        for row in estimate.by_size():
            print(
                f"  {row['model']:<32} {row['count']:>3} × {row['width']}x{row['height']} "
                f"({row['billed_mp']} MP) @ ${usd(row['unit_cost'])} = ${usd(row['subtotal'])}"
            )
        budget = Budget.of(params["budget_usd"], scope="run")
        print(f"Estimate: ${usd(estimate.total)} for {estimate.count} image(s); budget ${usd(budget.limit)}")
        budget.check(estimate)  # BudgetExceededError: nothing has been sent
        return tasks

    @task
    def output_uri() -> str:
        return Variable.get("flux2_output_uri", default=_default_output()).rstrip("/")

    @task
    def aws_conn_id() -> str | None:
        return Variable.get("flux2_aws_conn_id", default=None) or None

    destination = output_uri()
    aws = aws_conn_id()
    generate = FluxGenerateImageOperator.partial(
        task_id="generate",
        output_uri=destination,
        aws_conn_id=aws,
        deferrable=True,
        max_in_flight=8,
        poll_interval=2.0,
        on_moderation="record",
        write_manifest=False,  # one gallery for the whole run, below
    ).expand_kwargs(plan())

    FluxPublishOperator(
        task_id="gallery",
        records=generate.output,
        destination_uri=destination,
        aws_conn_id=aws,
        title="Pre-production batch — {{ dag_run.run_id }}",
    )
