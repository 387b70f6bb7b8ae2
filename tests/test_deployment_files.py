"""docker-compose.airflow.yml and its Dockerfile, checked without a Docker engine (none runs here)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.airflow.yml"
AIRFLOW_SERVICES = {
    "airflow-init": None,
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_validates_against_the_compose_spec(compose):
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose, schema)


def test_the_official_celery_stack_is_there_with_its_commands(compose):
    services = compose["services"]
    assert {"postgres", "redis"} <= set(services)
    for name, command in AIRFLOW_SERVICES.items():
        assert name in services, name
        if command:
            assert services[name]["command"] == command
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")


def test_provider_image_emulator_and_minio(compose):
    services = compose["services"]
    for name in AIRFLOW_SERVICES:
        assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    emulator = services["flux2-emulator"]
    assert emulator["command"][:2] == ["flux2", "emulator"] and "0.0.0.0" in emulator["command"]
    assert "minio" in services and "server" in services["minio"]["command"]
    init = " ".join(services["minio-init"]["command"])
    assert "mc mb" in init and "flux2-images" in init


def test_connections_come_from_the_secret_file_not_the_environment(compose):
    env = compose["services"]["airflow-worker"]["environment"]
    assert not [name for name in env if name.startswith("AIRFLOW_CONN_")]
    assert env["AIRFLOW__SECRETS__BACKEND"] == "airflow.secrets.local_filesystem.LocalFilesystemBackend"
    kwargs = json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    assert kwargs == {"connections_file_path": "/run/secrets/flux2_connections"}
    assert compose["services"]["airflow-worker"]["secrets"] == ["flux2_connections"]
    assert env["AIRFLOW_VAR_FLUX2_AWS_CONN_ID"] == "${FLUX2_AWS_CONN_ID:-}"
    assert env["AIRFLOW_VAR_FLUX2_OUTPUT_URI"].startswith("${FLUX2_OUTPUT_URI:-")


def test_every_referenced_file_exists(compose):
    for service in compose["services"].values():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), source
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"FROM apache/airflow:\$\{AIRFLOW_VERSION\}", dockerfile)
    assert re.search(r"ARG AIRFLOW_VERSION=3\.3\.\d+", dockerfile)
    for copied in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", dockerfile, flags=re.MULTILINE):
        for path in copied.split():
            assert (REPO / path).exists(), path


# -- CI ----------------------------------------------------------------------------------------------------

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def _supported_pythons() -> tuple[list[str], str]:
    """The ``3.x`` classifiers of pyproject.toml, oldest first, and requires-python's floor."""
    pyproject = (REPO / "pyproject.toml").read_text()  # as text: tomllib needs Python 3.11
    floor = re.search(r'^requires-python = ">=(3\.\d+)"', pyproject, re.M)
    assert floor, "requires-python is a single floor (>=3.x)"
    found = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    return sorted(found, key=lambda v: int(v.split(".")[1])), floor.group(1)


def _workflow() -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    workflow["on"] = workflow.pop(True)  # YAML 1.1 reads the key `on` as a boolean
    return workflow


def test_ci_workflow_validates_and_runs_the_readmes_test_command():
    workflow = _workflow()
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "github-workflows.json"
    jsonschema.validate(workflow, json.loads(schema_file.read_text()))

    (job,) = workflow["jobs"].values()
    assert job["container"] == "python:${{ matrix.python }}-bookworm"
    assert [step.get("run") for step in job["steps"] if "run" in step] == ["bash .ci/run"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_ci_runs_the_oldest_and_the_newest_supported_python():
    matrix = _workflow()["jobs"]["test"]["strategy"]["matrix"]["python"]
    classifiers, floor = _supported_pythons()

    assert matrix[0] == floor  # requires-python's floor is the oldest
    assert classifiers, "pyproject.toml names the supported versions ('Programming Language :: Python :: 3.x')"
    assert classifiers[0] == floor
    assert matrix == [classifiers[0], classifiers[-1]]
