"""
### FLUX 2 — one photo, several styled versions

A team's own photo (a quick phone snap of a dish, a product shot) turned into several styled
versions — menu card, social post, magazine spread — with the photo as a reference image. The
photo is read from where the team keeps it: ``s3://bucket/key`` (sent to the API as a presigned
URL, through the AWS connection) or a file on the worker (sent inline, up to 4 MiB). Its real size
is read from its header — a ranged read, not a download — and priced in the plan, before anything
is sent.

**Trigger** with params (UI form, or ``airflow dags trigger flux2_photo_restyle --conf '{...}'``):

| Param | Meaning | Default |
|---|---|---|
| ``photo`` | ``s3://bucket/key``, ``file:///…`` or an absolute path | ``dags/data/sample_dish.jpg`` |
| ``subject`` | what the photo shows, woven into every prompt | a plate of pasta |
| ``styles`` | one styled version per entry | four styles |
| ``image_size`` | preset or ``WxH`` of every version | ``square_hd`` |
| ``model`` | ``pro``, ``flex``, ``max``, ``turbo``, ``klein-4b``, ``klein-9b`` | ``pro`` |
| ``budget_usd`` | the most this run may spend | ``1.00`` |

**Connections**: ``flux2_default``; the AWS connection named by the ``flux2_aws_conn_id`` variable
for an ``s3://`` photo and output (else boto3's default chain).
**Variables**: ``flux2_restyle_output_uri`` (default ``$AIRFLOW_HOME/flux2-restyled``).

**Cost on defaults**: the shipped photo is 1200×900 (1,080,000 px → 2 MP, billed at the extra-MP
rate as a reference); each version is 1 MP. Per version on FLUX 2 [pro]: $0.030 + 2 × $0.015 =
$0.060; four styles = **$0.240**. (Priced as an unmeasured URL, the photo would have been assumed
1 MP: $0.180 — short by a quarter.) With ``model=klein-4b`` the versions go to Runflow's edit model
``black-forest-labs/flux-2-klein-4b/edit`` at $0.005 each (1024×1024 JPEG), whatever the photo weighs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, Variable, task

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

RESTYLED = Asset(name="flux2_restyled_photos", uri="flux2://restyled-photos", group="flux2")
SAMPLE_PHOTO = str((Path(__file__).parent / "data" / "sample_dish.jpg").resolve())
SAMPLE_STYLES = [
    "restaurant menu card, overhead shot on white linen, soft daylight",
    "social media post, bold colours, hard flash, playful props",
    "food magazine spread, moody low-key lighting, dark slate background",
    "watercolour illustration on textured paper",
]
PROMPT = "{subject} from the reference photo @image1, restyled: {style}. Keep the dish recognisable."


def _default_output() -> str:
    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    return (home / "flux2-restyled").resolve().as_uri()


with DAG(
    dag_id="flux2_photo_restyle",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["flux2", "images", "image-to-image"],
    doc_md=__doc__,
    params={
        "photo": Param(SAMPLE_PHOTO, type="string", description="s3://bucket/key, file:///… or an absolute path"),
        "subject": Param("a plate of spaghetti with tomatoes and basil", type="string"),
        "styles": Param(SAMPLE_STYLES, type="array", minItems=1, description="one version per style"),
        "image_size": Param("square_hd", type="string", description="preset or WxH"),
        "model": Param("pro", type="string", description="pro, flex, max, turbo, klein-4b, klein-9b"),
        "budget_usd": Param("1.00", type="string", description="the most this run may spend, in dollars"),
    },
) as dag:

    @task(multiple_outputs=True)
    def plan(params=None) -> dict[str, Any]:
        """Measure the photo (header only), price every version with it, refuse the plan over budget."""
        from airflow_provider_flux2.hooks.flux import FluxHook
        from airflow_provider_flux2.pricing import Budget, usd
        from airflow_provider_flux2.references import ReferenceResolver

        aws_conn_id = Variable.get("flux2_aws_conn_id", default=None) or None
        resolver = ReferenceResolver(aws_conn_id=aws_conn_id)
        photo = resolver.measure(params["photo"], "params.photo")  # FluxValidationError: nothing sent
        print(f"Reference {params['photo']}: {photo.width}x{photo.height}, billed as {photo.billed_mp} MP")
        prompts = [
            {"prompt": PROMPT.format(subject=params["subject"], style=style), "extra": {"style": style}}
            for style in params["styles"]
        ]
        hook = FluxHook()
        requests = []
        for item in prompts:
            _, request = hook.build_request(
                params["model"], prompt=item["prompt"], image_size=params["image_size"], image_urls=[params["photo"]]
            )
            requests.append(resolver.resolve(request)[0])
        estimate = hook.estimate(requests, model=params["model"])
        budget = Budget.of(params["budget_usd"], scope="run")
        print(f"Estimate: {estimate.count} version(s), {estimate.total_mp} MP, ${usd(estimate.total)}")
        if budget is not None:
            budget.check(estimate)
        return {
            "prompts": prompts,
            "output_uri": Variable.get("flux2_restyle_output_uri", default=_default_output()).rstrip("/"),
            "aws_conn_id": aws_conn_id,
        }

    planned = plan()

    FluxGenerateImageOperator(
        task_id="restyle",
        prompts=planned["prompts"],
        image_urls=["{{ params.photo }}"],
        image_size="{{ params.image_size }}",
        model="{{ params.model }}",
        budget_usd="{{ params.budget_usd }}",
        output_uri=planned["output_uri"],
        aws_conn_id=planned["aws_conn_id"],
        prompt_source="{{ params.photo }}",
        deferrable=True,
        max_in_flight=4,
        poll_interval=1.0,
        outlets=[RESTYLED],
    )
