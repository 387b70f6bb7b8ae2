"""What a task leaves for people and other tasks: its XCom keys, its state key, and the extra link.

Small on purpose: the operators import it without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperator, BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

#: The gallery (or, until it is written, the folder) of a task's stored images.
XCOM_GALLERY = "flux_gallery_url"
#: The manifest of a finished task (``manifest.json``): the record of every image.
XCOM_MANIFEST = "flux_manifest_uri"
#: ``task_state_store`` key (Airflow >= 3.3) of a task's :class:`~airflow_provider_flux2.jobs.Progress`.
STATE_KEY = "flux/progress"


class FluxImagesLink(BaseOperatorLink):
    """ "FLUX images": the gallery of the task's stored output (or its folder)."""

    name = "FLUX images"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        uri = XCom.get_value(key=XCOM_GALLERY, ti_key=ti_key)
        return browsable_url(uri) if uri else ""


def browsable_url(uri: str) -> str:
    """A link a browser can open: S3 URIs go to the S3 console; file URIs stay as they are."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={folder}"
    return uri


__all__ = ["STATE_KEY", "XCOM_GALLERY", "XCOM_MANIFEST", "FluxImagesLink", "browsable_url"]
