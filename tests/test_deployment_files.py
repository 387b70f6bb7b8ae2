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


def test_connections_are_set_by_environment_and_parse(compose):
    env = compose["services"]["airflow-worker"]["environment"]
    flux = json.loads(re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", env["AIRFLOW_CONN_FLUX2_DEFAULT"]))
    assert flux["conn_type"] == "flux2" and flux["host"] == "http://flux2-emulator:8787"
    from airflow_provider_flux2.hooks.connection import FluxConnectionConfig

    # Plain http off loopback is refused unless the connection allows it for its own host.
    config = FluxConnectionConfig.build(
        api_key=flux["password"], base_url=flux["host"], extra=flux["extra"], conn_id="compose"
    )
    assert config.plain_http_hosts == ("flux2-emulator",)
    aws = json.loads(env["AIRFLOW_CONN_AWS_MINIO"])
    assert aws["conn_type"] == "aws" and aws["extra"]["endpoint_url"] == "http://minio:9000"
    assert env["AIRFLOW_VAR_FLUX2_AWS_CONN_ID"] == "aws_minio"
    assert env["AIRFLOW_VAR_FLUX2_OUTPUT_URI"].startswith("s3://flux2-images/")


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
