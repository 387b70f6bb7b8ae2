"""Loading the FLUX view's plugin makes a local gallery's task link open through the view."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from airflow_provider_flux2 import links


def test_loading_the_plugin_routes_local_gallery_links_through_the_view():
    from airflow_provider_flux2.ui import plugin

    plugin.register_gallery_link()  # what importing the plugin does (the module may be imported already)
    try:
        link = links.local_link("file:///data/flux/night/run 1/generate/index.html")
        parts = urlsplit(link)
        assert parts.path == "/flux2/gallery"
        assert parse_qs(parts.query)["uri"] == ["file:///data/flux/night/run 1/generate/index.html"]
        assert plugin.gallery_link("/x/index.html") == link.replace(
            "%2Fdata%2Fflux%2Fnight%2Frun%201%2Fgenerate%2Findex.html", "%2Fx%2Findex.html"
        )
    finally:
        links.set_local_link(None)
    assert links.local_link("file:///data/g/index.html") == "/data/g/index.html"
