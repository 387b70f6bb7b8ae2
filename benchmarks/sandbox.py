"""An isolated Airflow for a benchmark process: its own home on SQLite, DAGs run with ``dag.test()``.

The same set-up as ``tests/conftest.py``, for scripts: :func:`prepare` must run before anything
imports airflow, because Airflow reads its configuration at import time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def prepare(prefix: str) -> Path:
    """Point Airflow at a fresh home in a temp dir (SQLite) and migrate its database; returns the home."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
    # Task logs go to the console at INFO; a benchmark only wants warnings and its own table.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    # A subprocess, as in the tests: the migration must not import airflow into this process early.
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return home


@contextmanager
def emulator(api_key: str, extra: dict[str, Any] | None = None, **settings: Any) -> Iterator[Any]:
    """The emulator in this process (``settings``: its profile, time scale, seed…), wired as
    ``flux2_default`` (with ``extra``, else the emulator's own test extra); stopped at the end of the block."""
    from airflow_provider_flux2.emulator import Emulator

    with Emulator(api_key=api_key, **settings) as running:
        connection = json.loads(running.connection_json())
        if extra is not None:
            connection["extra"] = extra
        os.environ["AIRFLOW_CONN_FLUX2_DEFAULT"] = json.dumps(connection)
        yield running


def run_dag(dag: Any) -> Any:
    """Serialize an in-memory DAG into the metadata DB and run it with ``dag.test()``; returns the DagRun."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    try:
        from airflow.dag_processing import dagbag
    except ImportError:  # Airflow 3.1 keeps it in airflow.models
        from airflow.models import dagbag  # type: ignore[no-redef]

    DagBundlesManager().sync_bundles_to_db()  # the dag row refers to its bundle
    bag = dagbag.DagBag(dag_folder=os.devnull)
    bag.bag_dag(dag)
    dagbag.sync_bag_to_db(bag, "dags-folder", None)
    return dag.test()


def xcom_value(dag_run: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """One XCom of a finished run, read from the metadata DB (``None`` when absent)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, key=key, dag_ids=dag_run.dag_id, task_ids=task_id, map_indexes=map_index
            )
        ).all()
        return XComModel.deserialize_value(rows[0]) if rows else None


def try_numbers(dag_run: Any) -> dict[str, int]:
    """``{task_id: try_number}`` of a finished run (how many tries each task took)."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: ti.try_number for ti in dag_run.get_task_instances(session=session)}
