"""The Airflow plugin: the ``/flux2`` FastAPI app and its entry in the UI's Browse menu."""

from __future__ import annotations

from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_flux2 import links
from airflow_provider_flux2.config import get_option
from airflow_provider_flux2.ui.app import URL_PREFIX, create_app


def gallery_link(path: str) -> str:
    """The task's "FLUX images" link for a gallery on local disk: the view serving it."""
    return f"{URL_PREFIX}/gallery?uri={quote('file://' + path, safe='')}"


def register_gallery_link() -> None:
    """Make a local gallery's task link open through the view, unless ``[flux2] local_link_template`` is set."""
    if (get_option("local_link_template") or "{path}") == "{path}":
        links.set_local_link(gallery_link)


# The api-server loads this plugin and renders the extra links.
register_gallery_link()


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
