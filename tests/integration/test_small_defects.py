"""The small defects of issue 14, each proved fixed where a user meets it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

REPO = Path(__file__).resolve().parents[2]


def _plan(operator: FluxGenerateImageOperator):
    from types import SimpleNamespace

    ti = SimpleNamespace(dag_id="d", run_id="r", task_id=operator.task_id, map_index=-1, try_number=1)
    return operator.plan({"ti": ti})  # type: ignore[arg-type]


def test_an_operator_level_size_is_reported_as_the_operators_parameter_not_prompts_0(emulator):
    # Not templated: refused when the DAG is parsed, as the operator's own parameter.
    with pytest.raises(FluxValidationError) as err:
        FluxGenerateImageOperator(task_id="g", prompts=["a", "b"], image_size="1080p")

    assert str(err.value).startswith("Invalid image_size: '1080p' is not allowed")
    assert "prompts[0]" not in str(err.value)


def test_an_items_own_bad_size_still_names_the_item():
    # Caught when the DAG is parsed (the plan checks again, for templated prompts).
    with pytest.raises(FluxValidationError, match=r"^prompts\[1\]: Invalid image_size: '1080p'"):
        FluxGenerateImageOperator(
            task_id="g", prompts=["a", {"prompt": "b", "image_size": "1080p"}], image_size="square"
        )


def test_airflow_connections_test_shows_the_request_id(emulator, airflow_db):
    conn = json.loads(emulator.connection_json())
    conn["password"] = "rf_wrong_key_for_the_test"
    env = {
        **os.environ,
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW_CONN_FLUX2_BAD_KEY": json.dumps(conn),
    }

    result = subprocess.run(
        [sys.executable, "-m", "airflow", "connections", "test", "flux2_bad_key"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )

    assert "Connection failed" in result.stdout
    # The probe reads a random, well-formed run id (ids are UUIDs): the message names it and the request id.
    uuid_re = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    assert re.search(rf"HTTP 401 \w+: .*\(request id req_[0-9a-f]+, run {uuid_re}\)", result.stdout), result.stdout
    assert "rf_wrong_key_for_the_test" not in result.stdout + result.stderr


def test_the_emulator_docs_link_a_protocol_page_that_exists():
    emulator_doc = (REPO / "docs" / "emulator.md").read_text()
    targets = re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", emulator_doc)

    assert "protocol.md" in targets
    for target in targets:
        assert (REPO / "docs" / target).is_file(), target


def test_the_readme_names_one_python_floor_and_it_matches_pyproject():
    readme = (REPO / "README.md").read_text()
    floor = re.search(r'^requires-python = ">=(3\.\d+)"', (REPO / "pyproject.toml").read_text(), re.M)
    versions = set(re.findall(r"Python (3\.\d+)\+", readme)) | set(re.findall(r"Python ≥ ?(3\.\d+)", readme))

    assert floor is not None
    assert versions == {floor.group(1)}


def test_a_bad_name_template_is_refused_when_the_dag_is_parsed_or_before_anything_is_billed(
    emulator, run_dag, tmp_path, capfd
):
    from datetime import datetime

    from airflow.sdk import DAG

    with pytest.raises(FluxValidationError, match="output_name_template"):
        FluxGenerateImageOperator(task_id="g", prompt="a", output_name_template="{sku}")

    with DAG("t_bad_template", schedule=None, start_date=datetime(2026, 1, 1), params={"names": "{sku}"}) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            prompts=["a", "b"],
            image_size="square",
            output_uri=tmp_path.as_uri(),
            output_name_template="{{ params.names }}",  # known only when the task runs
            poll_interval=0.02,
        )

    assert run_dag(dag).state == "failed"
    assert emulator.ledger()["entries"] == []
    assert emulator.stats().get("runs_created", 0) == 0
    out = capfd.readouterr()
    assert "Invalid output_name_template: '{sku}'" in out.out + out.err
