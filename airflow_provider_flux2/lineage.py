"""OpenLineage datasets for where prompts come from and where images go.

Only used when ``apache-airflow-providers-openlineage`` is installed: the operators import this
module inside ``get_openlineage_facets_on_complete``, which Airflow calls only then.
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
    if parsed.scheme == "s3":
        return f"s3://{parsed.netloc}", parsed.path.lstrip("/") or "/"
    if parsed.scheme in ("file", ""):
        return "file", parsed.path or uri
    return f"{parsed.scheme}://{parsed.netloc}", parsed.path.lstrip("/") or "/"


def lineage(inputs: Iterable[str], outputs: Iterable[str]) -> Any:
    """An ``OperatorLineage`` with one dataset per distinct input and output URI."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

    def datasets(uris: Iterable[str]) -> list[Any]:
        names = dict.fromkeys(dataset_name(u) for u in uris if u)
        return [Dataset(namespace=namespace, name=name) for namespace, name in names]

    return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))
