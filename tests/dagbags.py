"""DagBag across Airflow 3 minor versions (3.1 keeps it in ``airflow.models``; 3.2+ in ``dag_processing``)."""

from __future__ import annotations

import os
from types import ModuleType


def dagbag_module() -> ModuleType:
    try:
        from airflow.dag_processing import dagbag
    except ImportError:  # Airflow 3.1
        from airflow.models import dagbag  # type: ignore[no-redef]
    return dagbag


def dag_bag(path: str | os.PathLike):
    """A DagBag of ``path`` (a folder or one DAG file)."""
    return dagbag_module().DagBag(dag_folder=str(path))
