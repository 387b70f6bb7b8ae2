"""The Airflow plugin: the ``/flux2`` FastAPI app and its entry in the UI's Browse menu."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_flux2.ui.app import URL_PREFIX, create_app


class Flux2Plugin(AirflowPlugin):
    """Spend per DAG per day, recent batches, failures and regenerations, and every batch's gallery."""

    name = "flux2"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "FLUX 2 view"}]
    external_views = [
        {
            "name": "FLUX 2",
            "href": f"{URL_PREFIX}/",
            "icon": f"{URL_PREFIX}/icon.svg",
            "destination": "nav",
            "category": "browse",
            "url_route": "flux2",
        }
    ]
