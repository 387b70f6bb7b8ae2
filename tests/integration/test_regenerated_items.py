"""A regenerated image is the same catalogue item: it keeps the item's id (its name) and its source hash."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator


def test_a_regenerated_image_keeps_the_items_id_and_source_hash(emulator, run_dag, xcom, tmp_path):
    emulator.faults(
        {
            "rules": [
                {
                    "endpoint": "create_batch",
                    "fault": "blank_image",
                    "match": {"prompt_contains": "blank mug"},
                    "count": 1,
                }
            ]
        }
    )
    staging = (tmp_path / "staging").as_uri()
    prompts = [
        {"prompt": "a red mug", "id": "MUG-1", "source_hash": "h1"},
        {"prompt": "a blank mug", "id": "MUG-2", "source_hash": "h2"},
    ]
    with DAG("t_regenerated_items", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        generate = FluxGenerateImageOperator(
            task_id="generate", prompts=prompts, image_size="square", output_uri=staging, poll_interval=0.02
        )
        FluxQualityCheckOperator(
            task_id="check",
            records=generate.output,
            checks=["decodes", "not_blank"],
            on_failure="regenerate",
            max_regenerations=1,
            output_uri=staging,
            poll_interval=0.02,
        )

    dr = run_dag(dag)

    checked = xcom(dr, "check")
    again = [r for r in checked if r["attempt"] == 2]
    assert len(again) == 1
    assert (again[0]["extra"]["id"], again[0]["source_hash"]) == ("MUG-2", "h2")
    assert Path(again[0]["uri"][7:]).name.startswith("00001-MUG-2-")
