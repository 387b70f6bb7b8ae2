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
        # Airflow 3 calls this in the worker as the task ends (the UI reads the stored value), on
        # the operator that ran: what it stored is on it (links.remember_gallery), so a failed task
        # looks up no missing XCom. The URL itself is made in links.py.
        from airflow_provider_flux2 import links

        return links.operator_link(operator)


__all__ = ["STATE_KEY", "XCOM_GALLERY", "XCOM_MANIFEST", "FluxImagesLink"]
