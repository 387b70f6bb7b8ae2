"""
### FLUX 2 — nightly product-image refresh

Every night, one product image per catalogue row, paid for only when the row changed.

**Flow**: read the catalogue → plan (hash each row, compare with the last published manifest, render a
prompt per new or changed product, price the plan, refuse it over budget) → generate (deferrable:
no worker slot while the API works) → quality checks (regenerate a failing image once, within the
budget) → publish the passing images with a manifest and a gallery, and refresh ``{output}/latest/``
(always the current image of each product: ``latest/<product id>.jpg``, indexed by ``latest.json``)
→ asset event ``flux2_product_images`` (the creative pipeline is scheduled on it).

**Connections**: ``flux2_default`` (type ``flux2``: API key, base URL); for ``s3://`` outputs the
AWS connection named by the ``flux2_aws_conn_id`` variable (or boto3's default chain).

**Variables** (all optional):

| Variable | Meaning | Default |
|---|---|---|
| ``flux2_catalogue_uri`` | the catalogue (CSV/JSON/JSONL; ``file://`` or ``s3://``) | ``dags/data/products.csv`` |
| ``flux2_catalogue_json`` | the catalogue itself, as JSON rows (wins over the URI) | — |
| ``flux2_output_uri`` | where published images, manifests and galleries go | ``$AIRFLOW_HOME/flux2-output`` |
| ``flux2_staging_uri`` | where images wait for their checks | ``<output>-staging`` |
| ``flux2_aws_conn_id`` | AWS connection for ``s3://`` | boto3's chain |
| ``flux2_nightly_budget_usd`` | the most one night may spend | ``5.00`` |
| ``flux2_model`` | ``pro``, ``flex``, ``max``, ``turbo``, ``klein-4b`` or ``klein-9b`` | ``pro`` |

**Cost on defaults**: the shipped 16-product catalogue is 15 × 1 MP + 1 × 2 MP on FLUX 2 [pro] =
**$0.495** the first night; a night with no catalogue change costs **$0**; a changed product costs
$0.030 (1 MP) to $0.045 (2 MP), plus at most one regeneration each.

**Sentinel gate** (off by default): ``SENTINEL = True`` in this file (or ``FLUX2_SENTINEL=1`` in the
environment of every Airflow process) has Runflow Sentinel judge each image that passed its byte
checks against the catalogue brief; a failing image is regenerated once, then dropped. It adds one
evaluation per judged image (the job class's price, e.g. $0.010 on the emulator: +$0.160 a first night).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Variable, task

from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.publish import FluxPublishOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator

PRODUCT_IMAGES = Asset(name="flux2_product_images", uri="flux2://product-images", group="flux2")
SHIPPED_CATALOGUE = (Path(__file__).parent / "data" / "products.csv").resolve().as_uri()
#: Judge every stored image with Runflow Sentinel before it is published (off: byte checks only).
SENTINEL = os.environ.get("FLUX2_SENTINEL", "") == "1"
PROMPT_TEMPLATE = "{style}. {name}: {description}. Commercial product photography, sharp focus, true-to-life colour."


def _default_output() -> str:
    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    return (home / "flux2-output").resolve().as_uri()


with DAG(
    dag_id="flux2_product_image_refresh",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["flux2", "images", "catalogue"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=2)},
) as dag:

    @task(multiple_outputs=True)
    def settings() -> dict[str, Any]:
        """Read the variables once, at run time (never at parse time)."""
        output = Variable.get("flux2_output_uri", default=_default_output()).rstrip("/")
        return {
            "catalogue_uri": Variable.get("flux2_catalogue_uri", default=SHIPPED_CATALOGUE),
            "output_uri": output,
            # A sibling of the output, not inside it: publishing copies what passed out of staging.
            "staging_uri": Variable.get("flux2_staging_uri", default=f"{output}-staging"),
            # One stable object per product, whatever night it last changed.
            "latest_uri": f"{output}/latest",
            "aws_conn_id": Variable.get("flux2_aws_conn_id", default=None) or None,
            "budget_usd": Variable.get("flux2_nightly_budget_usd", default="5.00"),
            "model": Variable.get("flux2_model", default="pro"),
        }

    @task(multiple_outputs=True, inlets=[PRODUCT_IMAGES])
    def plan(config: dict[str, Any], inlet_events=None) -> dict[str, Any]:
        """Prompts for new or changed products only; the estimate is printed and checked before anything is sent."""
        import json

        from airflow_provider_flux2.pricing import Budget, usd
        from airflow_provider_flux2.prompts import parse_rows, plan_refresh, read_rows
        from airflow_provider_flux2.storage import uri_reader

        read = uri_reader(aws_conn_id=config["aws_conn_id"])
        inline = Variable.get("flux2_catalogue_json", default=None)
        rows = parse_rows(inline.encode(), "catalogue.json") if inline else read_rows(config["catalogue_uri"], read)

        previous = None
        events = list(inlet_events[PRODUCT_IMAGES]) if inlet_events is not None else []
        if events and events[-1].extra.get("manifest_uri"):
            previous = json.loads(read(events[-1].extra["manifest_uri"]))
            print(f"Comparing with the last published manifest: {events[-1].extra['manifest_uri']}")

        refresh = plan_refresh(rows, template=PROMPT_TEMPLATE, previous_manifest=previous)
        hook = FluxHook()
        requests = []
        for item in refresh.items:
            params = {k: v for k, v in item.items() if k not in ("id", "source_hash")}
            requests.append(hook.build_request(config["model"], **params))
        estimate = hook.estimate(requests)
        print(f"Catalogue: {len(rows)} products · {refresh.summary()}")
        for row in estimate.by_size():
            print(
                f"  {row['count']:>4} × {row['width']}x{row['height']} ({row['billed_mp']} MP) "
                f"@ ${usd(row['unit_cost'])} = ${usd(row['subtotal'])}"
            )
        budget = Budget.of(config["budget_usd"], scope="nightly")
        print(f"Estimate: ${usd(estimate.total)} for {estimate.count} image(s); budget ${usd(budget.limit)}")
        budget.check(estimate)  # raises BudgetExceededError: nothing has been sent
        return {"prompts": refresh.items, "carried": refresh.carried, "summary": refresh.summary()}

    @task.short_circuit
    def anything_changed(prompts: list[dict[str, Any]]) -> bool:
        """Nothing new or changed in the catalogue: nothing to pay for tonight."""
        return bool(prompts)

    config = settings()
    planned = plan(config)

    generate = FluxGenerateImageOperator(
        task_id="generate",
        prompts=planned["prompts"],
        model=config["model"],
        output_uri=config["staging_uri"],
        aws_conn_id=config["aws_conn_id"],
        budget_usd=config["budget_usd"],
        prompt_source=config["catalogue_uri"],
        deferrable=True,
        max_in_flight=8,
        poll_interval=2.0,
        on_moderation="record",
        # The generate step keeps its own manifest beside the staged images: a night that fails before
        # publishing still has its spend on record (the FLUX view counts each run once per night).
    )
    check = FluxQualityCheckOperator(
        task_id="quality_check",
        records=generate.output,
        checks=["decodes", "format", "size", "not_blank", "nsfw", "near_duplicate"],
        on_failure="regenerate",
        max_regenerations=1,
        budget_usd=config["budget_usd"],
        output_uri=config["staging_uri"],
        aws_conn_id=config["aws_conn_id"],
        poll_interval=2.0,
        deferrable=True,  # a regeneration round waits on the triggerer too
        # Runflow Sentinel as a gate (billed per image judged; see docs/quality-and-publishing.md):
        # off by default, on with this one switch (or FLUX2_SENTINEL=1 in the environment).
        sentinel=SENTINEL,
        sentinel_task_type="product",
        sentinel_task_description=(
            "Catalogue packshot: the product as described, true to its colours, nothing else in frame"
        ),
        sentinel_require_passed=True,
    )
    publish = FluxPublishOperator(
        task_id="publish",
        records=[check.output, planned["carried"]],
        destination_uri=config["output_uri"],
        aws_conn_id=config["aws_conn_id"],
        asset=PRODUCT_IMAGES,
        title="Product images — nightly refresh",
        latest_uri=config["latest_uri"],
    )

    anything_changed(planned["prompts"]) >> generate
