"""
### FLUX 2 — creative pipeline (asset-scheduled)

Runs whenever new product images are published (the ``flux2_product_images`` asset, updated by
``flux2_product_image_refresh``) or a team drops new creative briefs (the ``flux2_creative_briefs``
asset, whose event carries ``{"briefs": [...]}`` or ``{"briefs_uri": "s3://.../briefs.json"}``).
Triggered by hand, it uses the shipped ``dags/data/creative_briefs.json``.

**Flow**: collect briefs (social-ad briefs for each newly published product, plus any briefs
dropped) → generate (deferrable) → **quality gate** with bounded regeneration (up to two new seeds
per failing image, within the budget) → **branch** on the outcome: publish the passed set (and
record the rejections when some images were dropped), or stop when nothing passed → asset
``flux2_creatives``.

**Connections**: ``flux2_default``; an AWS connection (variable ``flux2_aws_conn_id``) for ``s3://``.
**Variables**: ``flux2_creative_output_uri`` (default ``$AIRFLOW_HOME/flux2-creatives``),
``flux2_creative_budget_usd`` (default ``3.00``).

**Cost on defaults**: the four shipped briefs are 1 × 2 MP ($0.045) + 3 × 1 MP ($0.030) =
**$0.135** on FLUX 2 [pro]; a product event adds $0.030 per product (square); each regeneration
costs the same as the image it replaces.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Variable, task

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.publish import FluxPublishOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator

PRODUCT_IMAGES = Asset(name="flux2_product_images", uri="flux2://product-images", group="flux2")
CREATIVE_BRIEFS = Asset(name="flux2_creative_briefs", uri="flux2://creative-briefs", group="flux2")
CREATIVES = Asset(name="flux2_creatives", uri="flux2://creatives", group="flux2")
SHIPPED_BRIEFS = Path(__file__).parent / "data" / "creative_briefs.json"
AD_TEMPLATE = "Social media ad creative, bold layout with copy space: {prompt}"


def _default_output() -> str:
    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    return (home / "flux2-creatives").resolve().as_uri()


with DAG(
    dag_id="flux2_creative_pipeline",
    schedule=(PRODUCT_IMAGES | CREATIVE_BRIEFS),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["flux2", "images", "creative"],
    doc_md=__doc__,
) as dag:

    @task(multiple_outputs=True)
    def settings() -> dict[str, Any]:
        output = Variable.get("flux2_creative_output_uri", default=_default_output()).rstrip("/")
        return {
            "output_uri": output,
            "staging_uri": f"{output}-staging",  # images wait here for the gate; publish copies what passed
            "aws_conn_id": Variable.get("flux2_aws_conn_id", default=None) or None,
            "budget_usd": Variable.get("flux2_creative_budget_usd", default="3.00"),
        }

    @task
    def collect_briefs(config: dict[str, Any], triggering_asset_events=None) -> list[dict[str, Any]]:
        """Briefs from the events that triggered this run; the shipped briefs when run by hand."""
        from airflow_provider_flux2.prompts import read_rows
        from airflow_provider_flux2.storage import uri_reader

        read = uri_reader(aws_conn_id=config["aws_conn_id"])
        briefs: list[dict[str, Any]] = []
        events = triggering_asset_events

        def of(asset: Asset) -> list[Any]:
            # Index the accessor itself: it resolves the asset (Asset objects are not hashable on 3.1).
            if not events:
                return []
            try:
                return list(events[asset])
            except KeyError:
                return []

        for event in of(PRODUCT_IMAGES):
            manifest = json.loads(read(event.extra["manifest_uri"]))
            for row in manifest["images"]:
                fresh = row["status"] == "succeeded" and not (row.get("extra") or {}).get("carried_from")
                if fresh:  # only products regenerated tonight get new ads
                    product = (row.get("extra") or {}).get("id", row["index"])
                    briefs.append({"prompt": AD_TEMPLATE.format(prompt=row["prompt"]), "id": f"ad-{product}"})
        for event in of(CREATIVE_BRIEFS):
            briefs.extend(event.extra.get("briefs") or [])
            if event.extra.get("briefs_uri"):
                briefs.extend(read_rows(event.extra["briefs_uri"], read))
        if not events:
            briefs = json.loads(SHIPPED_BRIEFS.read_text())
        print(f"{len(briefs)} brief(s) to render")
        return briefs

    @task.short_circuit
    def has_briefs(briefs: list[dict[str, Any]]) -> bool:
        return bool(briefs)

    config = settings()
    briefs = collect_briefs(config)
    generate = FluxGenerateImageOperator(
        task_id="generate",
        prompts=briefs,
        image_size="square_hd",
        output_uri=config["staging_uri"],
        aws_conn_id=config["aws_conn_id"],
        budget_usd=config["budget_usd"],
        deferrable=True,
        poll_interval=2.0,
        on_moderation="record",
        write_manifest=False,
    )
    gate = FluxQualityCheckOperator(
        task_id="quality_gate",
        records=generate.output,
        on_failure="regenerate",
        max_regenerations=2,
        on_exhausted="drop",
        budget_usd=config["budget_usd"],
        output_uri=config["staging_uri"],
        aws_conn_id=config["aws_conn_id"],
        poll_interval=2.0,
        deferrable=True,  # a regeneration round waits on the triggerer too
    )

    @task.branch
    def outcome(records: list[dict[str, Any]]) -> list[str]:
        """Publish what passed; record the rejections too when some images were dropped."""
        passed = [r for r in records if r["status"] == "succeeded" and all(c["passed"] for c in r["checks"])]
        rejected = [r for r in records if r["status"] in ("dropped", "failed", "moderated")]
        print(f"{len(passed)} passed, {len(rejected)} rejected")
        if not passed:
            return ["nothing_passed"]
        return ["publish", "record_rejections"] if rejected else ["publish"]

    publish = FluxPublishOperator(
        task_id="publish",
        records=gate.output,
        destination_uri=config["output_uri"],
        aws_conn_id=config["aws_conn_id"],
        asset=CREATIVES,
        title="Creatives — {{ dag_run.run_id }}",
    )

    @task
    def record_rejections(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The images that did not make it, and why: for the creative team's review."""
        rejected = [
            {
                "index": r["index"],
                "id": (r.get("extra") or {}).get("id"),
                "status": r["status"],
                "why": r.get("failure_message") or r.get("failure_code"),
            }
            for r in records
            if r["status"] in ("dropped", "failed", "moderated")
        ]
        for item in rejected:
            print(f"rejected #{item['index']} ({item['id']}): {item['status']} — {item['why']}")
        return rejected

    @task
    def nothing_passed() -> None:
        raise RuntimeError("No image passed the quality gate: nothing was published")

    has_briefs(briefs) >> generate
    outcome(gate.output) >> [publish, record_rejections(gate.output), nothing_passed()]
