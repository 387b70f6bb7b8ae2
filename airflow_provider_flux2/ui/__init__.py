"""The FLUX view in the Airflow UI: an Airflow plugin (a FastAPI app and an external view).

Registered through the ``airflow.plugins`` entry point (``pyproject.toml``): the API server mounts
:func:`~airflow_provider_flux2.ui.app.create_app` at ``/flux2`` and the UI lists "FLUX 2" under
Browse, unless ``[flux2] ui_enabled`` is false. See ``docs/ui.md``.
"""
