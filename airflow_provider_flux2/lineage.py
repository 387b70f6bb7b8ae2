"""OpenLineage datasets for where prompts come from and where images go.

Only used when ``apache-airflow-providers-openlineage`` is installed: the operators import this
module inside ``get_openlineage_facets_on_complete``, which Airflow calls only then.

Dataset names are stable: the output *prefix* (``s3://bucket/staging``), never a run's folder, so the
generate task's output, the check task's input and output and the publish task's input are one
dataset, and lineage joins across runs instead of growing one dataset per run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a storage URI, per the naming spec.

    ``s3://bucket/a/b`` → ``("s3://bucket", "a/b")``; ``file:///a/b`` or ``/a/b`` → ``("file", "/a/b")``.
    """
    parsed = urlparse(uri)
    netloc = parsed.netloc.rpartition("@")[2]  # gs://my_conn@bucket: the connection is not the dataset
    if parsed.scheme == "s3":
        return f"s3://{parsed.netloc}", parsed.path.lstrip("/") or "/"
    if parsed.scheme in ("file", ""):
        return "file", parsed.path or uri
    return f"{parsed.scheme}://{netloc}", parsed.path.lstrip("/") or "/"


def output_prefix(uri: str, dag_id: str | None = None, run_id: str | None = None) -> str:
    """The stable prefix an image or batch folder was written under: what comes before ``/{dag}/{run}/``.

    ``s3://b/staging/catalogue/manual__2026-12-01T12-38-50Z/generate/00000-x.jpg`` → ``s3://b/staging``.
    Without the run's identity (or when the URI does not hold it), the folder holding the object.
    """
    from airflow_provider_flux2.storage.base import folder_of
    from airflow_provider_flux2.storage.naming import safe_segment

    if dag_id and run_id:
        marker = f"/{safe_segment(dag_id)}/{safe_segment(run_id)}/"
        if marker in uri + "/":
            return (uri + "/").split(marker, 1)[0]
    return folder_of(uri)


def _run_of(task_instance: Any) -> tuple[str | None, str | None]:
    return getattr(task_instance, "dag_id", None), getattr(task_instance, "run_id", None)


def prefixes(uris: Iterable[str | None], task_instance: Any) -> list[str]:
    """The distinct stable prefixes of some URIs, written by the task instance's DAG run."""
    dag_id, run_id = _run_of(task_instance)
    return sorted({output_prefix(u, dag_id, run_id) for u in uris if u})


def lineage(inputs: Iterable[str], outputs: Iterable[str]) -> Any:
    """An ``OperatorLineage`` with one dataset per distinct input and output URI."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

    def datasets(uris: Iterable[str]) -> list[Any]:
        names = dict.fromkeys(dataset_name(u) for u in uris if u)
        return [Dataset(namespace=namespace, name=name) for namespace, name in names]

    return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))
