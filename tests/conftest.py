"""Shared fixtures: an isolated Airflow home on SQLite, and the emulator as a real HTTP server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from dagbags import dag_bag, dagbag_module
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="flux2-airflow-home-"))

# Airflow reads its configuration at import: set it before anything imports airflow.
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")

EMULATOR_API_KEY = "rf_test_emulator_key_5f2c9a"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database for ``dag.test()`` (created once per session)."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _AIRFLOW_HOME


@pytest.fixture(autouse=True)
def _each_test_meets_the_api_afresh():
    """Each test is a night of its own: what a hook learned of the API's rate in an earlier test (the
    process's adaptive limiter, kept per connection on purpose) must not slow this one down."""
    from airflow_provider_flux2.ratelimit import forget_rates

    forget_rates()
    yield


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[object]:
    from airflow_provider_flux2.emulator import Emulator

    with Emulator(profile="fast", api_key=EMULATOR_API_KEY) as emu:
        yield emu


@pytest.fixture
def emulator(emulator_server, monkeypatch):
    """The session's emulator, reset (runs, ledger, faults, config) for this test, wired as flux2_default."""
    emulator_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_DEFAULT", emulator_server.connection_json())
    yield emulator_server
    emulator_server.reset()


def register_dag(dag) -> None:
    """Serialize an in-memory DAG into the metadata DB so ``dag.test()`` can run it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()  # the dag row refers to its bundle
    bag = dag_bag(os.devnull)
    bag.bag_dag(dag)
    dagbag_module().sync_bag_to_db(bag, "dags-folder", None)


@pytest.fixture
def run_dag(airflow_db):
    """Run a DAG object end to end with ``dag.test()`` on SQLite; returns the DagRun."""

    def run(dag, **kwargs):
        register_dag(dag)
        return dag.test(**kwargs)

    return run


def _xcom_value(dag_run, task_id: str, key: str = "return_value", map_index: int = -1):
    """Read one XCom of a finished test run from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, key=key, dag_ids=dag_run.dag_id, task_ids=task_id, map_indexes=map_index
            )
        ).all()
        return XComModel.deserialize_value(rows[0]) if rows else None


def _task_states(dag_run) -> dict[str, str]:
    """``{task_id or task_id[map_index]: state}`` of a finished test run."""
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = dag_run.get_task_instances(session=session)
        return {(ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): str(ti.state) for ti in tis}


@pytest.fixture
def xcom():
    """``xcom(dag_run, task_id, key="return_value", map_index=-1)`` → the stored value."""
    return _xcom_value


@pytest.fixture
def task_states():
    """``task_states(dag_run)`` → ``{task_id or task_id[map_index]: state}``."""
    return _task_states


# -- S3: a real endpoint on loopback (moto's server) -------------------------------------------

REGION = "eu-west-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<free port>`` served by moto for the whole session."""
    # One access-log line per request would bury a failing test's report.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def isolated_aws(monkeypatch, tmp_path) -> None:
    """No AWS settings from the machine: no profile, no credentials file, no endpoint."""
    for name in (
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws_env(isolated_aws, monkeypatch, moto_endpoint) -> str:
    """boto3's default chain pointed at moto through the standard environment variables."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_admin(moto_endpoint):
    """A client of our own, to look at what the publisher wrote."""
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
    )


@pytest.fixture
def bucket(s3_admin) -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    name = f"flux-{uuid.uuid4().hex[:16]}"
    s3_admin.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


@pytest.fixture
def moto_aws_conn(monkeypatch, moto_endpoint, isolated_aws) -> str:
    """An Airflow AWS connection to the moto server, configured as a MinIO user would (endpoint_url in extras)."""
    import json

    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_TEST",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIATEST",
                "password": "secret",
                "extra": {"endpoint_url": moto_endpoint, "region_name": REGION},
            }
        ),
    )
    return "aws_test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first (the real deployments, then the other ``slow`` ones), each group in its
    own order: pytest-xdist hands tests out in this order, so the long ones start while the short ones
    fill the gaps, instead of one of them starting last and running alone (``make test``)."""

    def weight(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("cluster") else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=weight)
