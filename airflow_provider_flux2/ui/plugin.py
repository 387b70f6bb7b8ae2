"""The Airflow plugin: the ``/flux2`` FastAPI app and its entry in the UI's Browse menu.

``[flux2] ui_enabled = False`` switches the view off: Airflow loads the plugin class from the
``airflow.plugins`` entry point and mounts whatever its ``fastapi_apps`` and ``external_views`` hold
(``airflow.plugins_manager``), so the class then holds neither — the app is not even built — and a
local gallery's task link is not routed to a view that is not there.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_flux2 import links
from airflow_provider_flux2.config import get_bool, get_option
from airflow_provider_flux2.ui.app import URL_PREFIX, create_app


def ui_enabled() -> bool:
    """``[flux2] ui_enabled``: whether the api-server mounts the view and the UI lists it."""
    return get_bool("ui_enabled")


def gallery_link(path: str) -> str:
    """The task's "FLUX images" link for a gallery on local disk: the view serving it."""
    return f"{URL_PREFIX}/gallery?uri={quote('file://' + path, safe='')}"


def register_gallery_link() -> None:
    """Make a local gallery's task link open through the view, unless ``[flux2] local_link_template`` is set."""
    if (get_option("local_link_template") or "{path}") == "{path}":
        links.set_local_link(gallery_link)


def view_apps(enabled: bool) -> list[dict[str, Any]]:
    """The view's app for the api-server to mount (none when it is switched off)."""
    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "FLUX 2 view"}] if enabled else []


def menu_entries(enabled: bool) -> list[dict[str, Any]]:
    """The view's entry under Browse in the Airflow UI (none when it is switched off)."""
    view = {
        "name": "FLUX 2",
        "href": f"{URL_PREFIX}/",
        "icon": f"{URL_PREFIX}/icon.svg",
        "destination": "nav",
        "category": "browse",
        "url_route": "flux2",
    }
    return [view] if enabled else []


_ENABLED = ui_enabled()
# The api-server loads this plugin and renders the extra links.
if _ENABLED:
    register_gallery_link()


class Flux2Plugin(AirflowPlugin):
    """Spend per DAG per day, every batch of a range, failures and regenerations, and every batch's gallery."""

    name = "flux2"
    fastapi_apps = view_apps(_ENABLED)
    external_views = menu_entries(_ENABLED)
