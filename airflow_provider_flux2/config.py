"""The ``[flux2]`` section of Airflow's configuration: its options, their defaults, and how they are read.

Declared to Airflow through ``get_provider_info()["config"]``, so ``airflow config list --section flux2``
shows every option with its description, and ``AIRFLOW__FLUX2__<OPTION>`` sets it like any other.
"""

from __future__ import annotations

from typing import Any

SECTION = "flux2"
#: The default name of a stored image, before its extension: batch index, the item's id when the
#: prompt source gives one, and 12 hex digits of the content hash (a re-run with other bytes never
#: overwrites an image someone may already have fetched).
DEFAULT_NAME_TEMPLATE = "{index}-{id}-{hash}"

OPTIONS: dict[str, dict[str, Any]] = {
    "default_output_uri": {
        "description": "Where operators store images when they set no ``output_uri``: ``file:///path``, "
        "``s3://bucket/prefix`` or any scheme Airflow's ObjectStoragePath knows (``gs://conn_id@bucket/p``). "
        "Empty: ``$AIRFLOW_HOME/flux2-images`` on the worker, with a warning.\n",
        "version_added": "0.1.0",
        "type": "string",
        "example": "s3://my-bucket/flux2",
        "default": "",
    },
    "output_name_template": {
        "description": "The name of each stored image (the extension is added). Fields: ``{index}`` (5 digits), "
        "``{id}`` (the item's id from the prompt source, empty when none), ``{seed}``, ``{hash}`` (12 hex "
        "digits of the content). Empty fields and their separators are dropped; ``/`` makes sub-folders.\n",
        "version_added": "0.2.0",
        "type": "string",
        "example": "{id}/{index}-{seed}",
        "default": DEFAULT_NAME_TEMPLATE,
        # Our placeholders, not Airflow's: without this, Airflow 3.1 expands "{index}" in the default
        # with its own variables at start-up and fails (KeyError: 'index') in every command.
        "is_template": True,
    },
    "public_base_urls": {
        "description": "JSON object mapping a storage prefix to the public URL that serves it, used by the "
        "task's link (the longest matching prefix wins). Without one, an ``s3://`` gallery link is a "
        "presigned URL.\n",
        "version_added": "0.2.0",
        "type": "string",
        "example": '{"s3://my-bucket/flux2": "https://images.example.com/flux2"}',
        "default": "",
    },
    "link_expiry_seconds": {
        "description": "Lifetime of a presigned ``s3://`` link (at most 604800, seven days, for SigV4; "
        "credentials from an assumed role end sooner).\n",
        "version_added": "0.2.0",
        "type": "integer",
        "example": "86400",
        "default": "604800",
    },
    "local_link_template": {
        "description": "The task's link for a ``file://`` gallery. ``{path}`` is the gallery's absolute path "
        "(URL-quoted in ``{quoted_path}``). Left at the default, the link opens the gallery through the "
        "provider's FLUX view in the Airflow UI (``/flux2/gallery``) where the api-server loads the plugin, "
        "and shows the path otherwise.\n",
        "version_added": "0.2.0",
        "type": "string",
        "example": "https://files.example.com{path}",
        "default": "{path}",
        "is_template": True,
    },
    "ui_aws_conn_id": {
        "description": "The AWS connection the FLUX view in the Airflow UI reads ``s3://`` galleries and "
        "manifests with; empty uses boto3's default credential chain.\n",
        "version_added": "0.2.0",
        "type": "string",
        "example": "aws_default",
        "default": "",
    },
    "ui_enabled": {
        "description": "Load the FLUX view in the Airflow UI: the api-server mounts it at ``/flux2`` and lists "
        '"FLUX 2" under Browse, and a local gallery\'s task link opens through it. ``False`` registers no app, '
        "no menu entry and no link (the provider's plugin is still listed, empty); restart the api-server after "
        "changing it.\n",
        "version_added": "0.2.0",
        "type": "boolean",
        "example": "False",
        "default": "True",
    },
    "metrics": {
        "description": "Emit the provider's metrics through Airflow's StatsD/OpenTelemetry client "
        "(``[metrics]`` decides where they go).\n",
        "version_added": "0.2.0",
        "type": "boolean",
        "example": "False",
        "default": "True",
    },
}


def provider_config() -> dict[str, Any]:
    """The ``config`` entry of ``get_provider_info()``."""
    return {
        SECTION: {
            "description": "Settings of the FLUX 2 provider (airflow-provider-flux2).\n",
            "options": OPTIONS,
        }
    }


def get_option(name: str) -> str:
    """An option's value from Airflow's configuration, else its declared default."""
    try:
        from airflow.sdk import conf
    except ImportError:  # Airflow < 3.2
        from airflow.configuration import conf  # type: ignore[assignment]

    return str(conf.get(SECTION, name, fallback=OPTIONS[name]["default"]) or "")


def get_int(name: str) -> int:
    return int(get_option(name) or OPTIONS[name]["default"])


def get_bool(name: str) -> bool:
    return get_option(name).strip().lower() in ("true", "1", "yes", "on")
