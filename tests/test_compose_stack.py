"""The compose stack works as written — what can be checked without Docker (no engine runs here).

Bindings, pins, the profile that holds the emulator and MinIO, the generated env and secret files
(read back by Airflow's own LocalFilesystemBackend), which container gets which secret, the FLUX
view's MinIO connection and links the host's browser opens, the emulator's key, the Compose version
the file needs, the login the docs give, and the build context.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.airflow.yml"
EMULATOR_PROFILE = {"flux2-emulator", "minio", "minio-init"}
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
#: The first Docker Compose release that reads each feature the file may use (Compose's reference:
#: ``depends_on.required`` "introduced in Docker Compose version 2.20.0", working as documented from
#: 2.20.2; ``env_file`` with ``path``/``required`` from 2.24.0).
FEATURE_VERSIONS = {"depends_on.required": (2, 20, 2), "env_file.required": (2, 24, 0)}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """``scripts/compose_env.py`` run as the docs say, into a scratch folder."""
    out = tmp_path_factory.mktemp("compose")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compose_env.py"), "--dir", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out


def _env_file(folder: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (folder / ".env").read_text().splitlines() if line)


def _variables(service: dict) -> set[str]:
    """The ``.env`` variables a service's environment takes (``${NAME...}``)."""
    return set(re.findall(r"\$\{(\w+)", json.dumps(service.get("environment") or {})))


def test_every_published_port_is_bound_to_loopback(compose):
    ports = [(name, p) for name, s in compose["services"].items() for p in s.get("ports", [])]

    assert {name for name, _ in ports} == {"airflow-apiserver", "flux2-emulator", "minio"}
    for name, port in ports:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_image_is_pinned(compose):
    for name, service in compose["services"].items():
        image = service.get("image")
        if image is None or image == "airflow-provider-flux2:local":
            continue
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", (name, image)
        assert re.search(r"\d", tag), (name, image)  # a version, not a moving name
    assert re.search(r"^ARG AIRFLOW_VERSION=3\.3\.\d+$", (REPO / "Dockerfile").read_text(), re.M)


def test_the_emulator_and_minio_are_a_profile_the_stack_runs_without(compose):
    services = compose["services"]
    profiled = {name for name, s in services.items() if s.get("profiles")}

    assert profiled == EMULATOR_PROFILE
    assert all(services[name]["profiles"] == ["emulator"] for name in profiled)
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            if dependency in EMULATOR_PROFILE and name not in EMULATOR_PROFILE:
                assert condition.get("required") is False, (name, dependency)


def test_secrets_are_never_defaults_in_the_compose_file(compose):
    text = COMPOSE.read_text()
    env = compose["services"]["airflow-scheduler"]["environment"]

    assert "minioadmin" not in text
    assert env["AIRFLOW__CORE__FERNET_KEY"].startswith("${AIRFLOW_FERNET_KEY:?")
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?")
    assert compose["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:?")
    assert "rf_live" not in json.dumps(compose) and "FLUX2_API_KEY" not in json.dumps(compose)  # comments aside
    assert compose["secrets"] == {"flux2_connections": {"file": "./secrets/flux2_connections.json"}}


def test_the_generated_env_has_a_real_fernet_key_and_fresh_secrets(generated, tmp_path):
    from cryptography.fernet import Fernet

    values = _env_file(generated)
    again = tmp_path / "again"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compose_env.py"), "--dir", str(again)], check=True, capture_output=True
    )

    token = Fernet(values["AIRFLOW_FERNET_KEY"].encode()).encrypt(b"x")  # a valid key, not a placeholder
    assert Fernet(values["AIRFLOW_FERNET_KEY"].encode()).decrypt(token) == b"x"
    for name in ("AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "_AIRFLOW_WWW_USER_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert len(values[name]) >= 16 and values[name] != _env_file(again)[name], name
    assert values["COMPOSE_PROFILES"] == "emulator"
    for path in (generated / ".env", generated / "secrets" / "flux2_connections.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_every_variable_the_compose_file_requires_is_generated(generated):
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))

    assert required <= set(_env_file(generated))
    example = set(re.findall(r"^(\w+)=", (REPO / ".env.example").read_text(), re.M))
    assert set(_env_file(generated)) <= example  # the example documents every variable


def test_airflow_reads_the_generated_connections_file(generated, monkeypatch):
    from airflow.secrets.local_filesystem import LocalFilesystemBackend

    backend = LocalFilesystemBackend(connections_file_path=str(generated / "secrets" / "flux2_connections.json"))
    flux = backend.get_connection("flux2_default")
    minio = backend.get_connection("aws_minio")

    assert (flux.conn_type, flux.host, flux.password) == ("flux2", "http://flux2-emulator:8787", "rf_test_compose_key")
    from airflow_provider_flux2.hooks.connection import FluxConnectionConfig

    # Plain http off loopback is refused unless the connection allows it for its own host.
    config = FluxConnectionConfig.build(
        api_key=flux.password, base_url=flux.host, extra=flux.extra_dejson, conn_id="compose"
    )
    assert config.plain_http_hosts == ("flux2-emulator",)
    assert minio.extra_dejson["endpoint_url"] == "http://minio:9000"
    assert minio.password == _env_file(generated)["MINIO_ROOT_PASSWORD"]  # the same MinIO the stack starts


def test_the_real_api_setup_keeps_the_key_in_the_secret_file_only(tmp_path):
    key = "rf_live_0123456789abcdef"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compose_env.py"), "--dir", str(tmp_path), "--real-api"],
        check=True,
        capture_output=True,
        env={"FLUX2_API_KEY": key, "PATH": "/usr/bin:/bin"},
    )

    connections = json.loads((tmp_path / "secrets" / "flux2_connections.json").read_text())
    assert connections["flux2_default"] == {"conn_type": "flux2", "host": "https://api.runflow.io", "password": key}
    env = (tmp_path / ".env").read_text()
    assert key not in env and "COMPOSE_PROFILES" not in env  # no emulator, no MinIO
    assert "FLUX2_OUTPUT_URI=file:///opt/airflow/flux2-output" in env


def test_the_documented_login_is_the_one_the_stack_creates(compose, generated):
    common = compose["services"]["airflow-scheduler"]["environment"]
    init = compose["services"]["airflow-init"]["environment"]
    docs = (REPO / "docs" / "deployment.md").read_text()

    # The FAB auth manager is the one whose users airflow-init creates (_AIRFLOW_WWW_USER_CREATE).
    assert common["AIRFLOW__CORE__AUTH_MANAGER"] == "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    assert "apache-airflow[fab]" in (REPO / "Dockerfile").read_text()
    assert init["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert init["_AIRFLOW_WWW_USER_USERNAME"] == "${_AIRFLOW_WWW_USER_USERNAME:-airflow}"
    assert init["_AIRFLOW_WWW_USER_PASSWORD"].startswith("${_AIRFLOW_WWW_USER_PASSWORD:?")
    user = _env_file(generated)["_AIRFLOW_WWW_USER_USERNAME"]
    assert user == "airflow"
    assert f"login **{user}**" in docs and "_AIRFLOW_WWW_USER_PASSWORD" in docs
    assert "http://127.0.0.1:8080" in docs


def test_the_build_context_leaves_out_the_venv_git_and_secrets():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}

    assert {".venv", ".git", ".env", "secrets"} <= ignored
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", (REPO / "Dockerfile").read_text(), re.M)
    for paths in copied:
        for path in paths.split():
            assert path not in ignored, path


def test_the_docs_say_what_was_not_run_here():
    docs = (REPO / "docs" / "deployment.md").read_text()

    assert "has not been started" in docs


# -- each container gets only what it needs ------------------------------------------------------------


def test_no_container_takes_the_whole_env_file(compose):
    code = [line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")]

    assert not [line for line in code if "env_file" in line]  # the x-airflow-common anchor included
    for name, service in compose["services"].items():
        assert "env_file" not in service, name


def test_each_secret_reaches_only_the_containers_that_use_it(compose):
    services = compose["services"]
    takers = {
        secret: {name for name, service in services.items() if secret in _variables(service)}
        for secret in ("AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "_AIRFLOW_WWW_USER_PASSWORD", "MINIO_ROOT_PASSWORD")
    }

    assert takers["AIRFLOW_FERNET_KEY"] == AIRFLOW_SERVICES
    assert takers["AIRFLOW_JWT_SECRET"] == AIRFLOW_SERVICES
    assert takers["_AIRFLOW_WWW_USER_PASSWORD"] == {"airflow-init"}
    assert takers["MINIO_ROOT_PASSWORD"] == {"minio", "minio-init"}
    # The connections file (the API key, MinIO's login) goes to Airflow's services only.
    assert {name for name, service in services.items() if service.get("secrets")} == AIRFLOW_SERVICES


def test_the_emulator_gets_its_key_and_nothing_of_airflows(compose, generated):
    emulator = compose["services"]["flux2-emulator"]
    connections = json.loads((generated / "secrets" / "flux2_connections.json").read_text())

    assert set(emulator["environment"]) == {"FLUX2_EMULATOR_API_KEY"}
    assert "secrets" not in emulator and "volumes" not in emulator and "user" not in emulator
    # The key it accepts is the one the generated flux2_default connection sends.
    assert emulator["environment"]["FLUX2_EMULATOR_API_KEY"] == connections["flux2_default"]["password"]
    assert emulator["image"] == compose["services"]["airflow-worker"]["image"]  # the provider's image


def test_the_stacks_emulator_refuses_any_other_key(compose, tmp_path):
    """The emulator's compose command and environment, on loopback: a wrong key is a 401, as from the real API."""
    import httpx

    emulator = compose["services"]["flux2-emulator"]
    command = list(emulator["command"])
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = "0"
    port_file = tmp_path / "port"
    key = emulator["environment"]["FLUX2_EMULATOR_API_KEY"]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "FLUX2_EMULATOR_API_KEY": key}
    process = subprocess.Popen([*command, "--port-file", str(port_file)], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1/runs/{uuid.uuid4()}"
        wrong = httpx.get(url, headers={"Authorization": "Bearer rf_test_some_other_key"}, trust_env=False)
        right = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, trust_env=False)
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert wrong.status_code == 401
    assert right.status_code == 404  # the key is accepted; the run does not exist


# -- MinIO in the FLUX view and in the host's browser ---------------------------------------------------


def test_the_flux_view_reads_minio_with_the_tasks_connection(compose, generated, tmp_path):
    from airflow.secrets.local_filesystem import LocalFilesystemBackend

    for name in AIRFLOW_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["AIRFLOW__FLUX2__UI_AWS_CONN_ID"] == env["AIRFLOW_VAR_FLUX2_AWS_CONN_ID"] == "${FLUX2_AWS_CONN_ID:-}"
    conn_id = _env_file(generated)["FLUX2_AWS_CONN_ID"]
    backend = LocalFilesystemBackend(connections_file_path=str(generated / "secrets" / "flux2_connections.json"))
    minio = backend.get_connection(conn_id)
    assert (conn_id, minio.conn_type, minio.extra_dejson["endpoint_url"]) == ("aws_minio", "aws", "http://minio:9000")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compose_env.py"), "--dir", str(tmp_path), "--real-api"],
        check=True,
        capture_output=True,
        env={"FLUX2_API_KEY": "rf_live_0123456789abcdef", "PATH": "/usr/bin:/bin"},
    )
    assert _env_file(tmp_path)["FLUX2_AWS_CONN_ID"] == ""  # the real API: boto3's default chain


def test_a_gallery_link_opens_through_the_view_not_at_minios_network_name(compose, generated, monkeypatch):
    from airflow_provider_flux2.links import gallery_link
    from airflow_provider_flux2.ui.app import _view_path

    env = compose["services"]["airflow-worker"]["environment"]  # links are made where the task runs
    mapping = json.loads(env["AIRFLOW__FLUX2__PUBLIC_BASE_URLS"])
    output = _env_file(generated)["FLUX2_OUTPUT_URI"]
    bucket = output.split("/")[2]
    assert f"local/{bucket}" in " ".join(compose["services"]["minio-init"]["command"])  # the bucket made at start
    assert list(mapping) == [f"s3://{bucket}"]
    monkeypatch.setenv("AIRFLOW__FLUX2__PUBLIC_BASE_URLS", env["AIRFLOW__FLUX2__PUBLIC_BASE_URLS"])

    gallery = f"{output}/flux2_product_image_refresh/manual__2026-12-01T12-38-50.911527Z/publish/index.html"
    link = gallery_link(gallery, aws_conn_id="aws_minio")

    # The view's own route for that gallery, on the UI's origin (relative): it opens from the host.
    assert link == _view_path(gallery) and link.startswith("/flux2/s3/")
    assert "minio" not in link.replace(f"/{bucket}/", "/")


# -- the Compose version ----------------------------------------------------------------------------------


def _features(compose: dict) -> set[str]:
    used = set()
    for service in compose["services"].values():
        if any(isinstance(d, dict) and "required" in d for d in (service.get("depends_on") or {}).values()):
            used.add("depends_on.required")
        if any(isinstance(e, dict) for e in service.get("env_file") or []):
            used.add("env_file.required")
    return used


def test_the_compose_version_the_file_needs_is_stated(compose):
    stated = re.search(r"^# Needs Docker Compose (\d+)\.(\d+)\.(\d+) or later", COMPOSE.read_text(), re.M)
    assert stated, "the compose file's header states the Compose version it needs"
    needed = max(FEATURE_VERSIONS[feature] for feature in _features(compose))

    assert tuple(int(part) for part in stated.groups()) == needed
    readme = (REPO / "README.md").read_text()
    assert "Docker Compose {}.{}.{}".format(*needed) in readme
