"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_flux2 import __version__
from airflow_provider_flux2.config import provider_config


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-flux2",
        "name": "FLUX 2 (Runflow)",
        "description": "FLUX 2 image generation by Black Forest Labs, through the Runflow API: "
        "deferrable, budgeted, restart-safe batches with quality checks and publishing.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "FLUX 2 (Runflow)",
                "external-doc-url": "https://www.runflow.io/models/black-forest-labs/flux-2-pro",
                "tags": ["ai"],
            }
        ],
        "hooks": [
            {
                "integration-name": "FLUX 2 (Runflow)",
                "python-modules": ["airflow_provider_flux2.hooks.flux"],
            }
        ],
        "operators": [
            {
                "integration-name": "FLUX 2 (Runflow)",
                "python-modules": [
                    "airflow_provider_flux2.operators.flux",
                    "airflow_provider_flux2.operators.quality",
                    "airflow_provider_flux2.operators.publish",
                    "airflow_provider_flux2.operators.night",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": "FLUX 2 (Runflow)",
                "python-modules": ["airflow_provider_flux2.triggers.flux"],
            }
        ],
        "task-decorators": [{"name": "flux2", "class-name": "airflow_provider_flux2.decorators.flux2.flux2_task"}],
        "config": provider_config(),
        "extra-links": ["airflow_provider_flux2.operators.flux.FluxImagesLink"],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_flux2.hooks.flux.FluxHook",
                "hook-name": "FLUX 2 (Runflow)",
                "connection-type": "flux2",
                "conn-fields": {
                    "model": {
                        "label": "Default model",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": [
                                "black-forest-labs/flux-2-pro",
                                "black-forest-labs/flux-2-flex",
                                "black-forest-labs/flux-2-max",
                                "black-forest-labs/flux-2-turbo",
                                "black-forest-labs/flux-2-klein-4b",
                                "black-forest-labs/flux-2-klein-9b",
                                None,
                            ],
                            "default": "black-forest-labs/flux-2-pro",
                        },
                        "description": "Model used when a task does not name one.",
                    },
                    "organization_id": {
                        "label": "Organization id",
                        "schema": {"type": ["string", "null"]},
                        "description": "Sent as X-Organization-Id when set.",
                    },
                    "timeout": {
                        "label": "Request timeout (s)",
                        "schema": {"type": ["number", "null"], "default": 30},
                        "description": "Per-request HTTP timeout in seconds.",
                    },
                    "request_deadline": {
                        "label": "Request deadline (s)",
                        "schema": {"type": ["number", "null"], "default": 120},
                        "description": "Total seconds one API call may take (connect and every read), per attempt.",
                    },
                    "download_deadline": {
                        "label": "Download deadline (s)",
                        "schema": {"type": ["number", "null"], "default": 300},
                        "description": "Total seconds one image download may take, redirects included.",
                    },
                    "max_response_mb": {
                        "label": "Max API response (MB)",
                        "schema": {"type": ["number", "null"], "default": 16},
                        "description": "Cap on one API response after decompression.",
                    },
                    "max_download_mb": {
                        "label": "Max image download (MB)",
                        "schema": {"type": ["number", "null"], "default": 128},
                        "description": "Cap on one downloaded image after decompression.",
                    },
                    "max_attempts": {
                        "label": "Max attempts",
                        "schema": {"type": ["integer", "null"], "default": 5},
                        "description": "Attempts per request on 429, 5xx and network errors (never on other 4xx).",
                    },
                    "retry_base_delay": {
                        "label": "Retry base delay (s)",
                        "schema": {"type": ["number", "null"], "default": 1},
                        "description": "First pause before a retried request; doubles per attempt, with jitter "
                        "(a Retry-After from the API wins).",
                    },
                    "retry_max_delay": {
                        "label": "Retry max delay (s)",
                        "schema": {"type": ["number", "null"], "default": 32},
                        "description": "Longest pause between two attempts of one request.",
                    },
                    "max_task_spend_usd": {
                        "label": "Max spend per task (USD)",
                        "schema": {"type": ["string", "null"]},
                        "description": "Budget of a task that sets no budget_usd, e.g. 25.00 (exact, in dollars). "
                        "Empty: no cap (the plan line warns).",
                    },
                    "max_requests_per_second": {
                        "label": "Max requests per second",
                        "schema": {"type": ["number", "null"]},
                        "description": "The organisation's request-rate limit, when known; empty: learned from "
                        "the API's 429s.",
                    },
                    "allow_plain_http": {
                        "label": "Allow plain HTTP",
                        "schema": {"type": ["boolean", "null"], "default": False},
                        "description": "Allow plain http:// to the API's own host when it is not loopback (the "
                        "emulator on a private container network). Never for the real API: the key travels in clear.",
                    },
                    "prices": {
                        "label": "Price overrides (JSON)",
                        "schema": {"type": ["object", "null"]},
                        "description": 'e.g. {"pro": {"first_mp": "0.03", "extra_mp": "0.015"}}',
                    },
                    "edit_models": {
                        "label": "Edit models (JSON)",
                        "schema": {"type": ["object", "null"]},
                        "description": "Where reference images go, by variant, as flux2 doctor recorded it, "
                        'e.g. {"pro": "black-forest-labs/flux-2-pro"}',
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"password": "API Key", "host": "Base URL"},
                    "placeholders": {
                        "host": "https://api.runflow.io",
                        "password": "rf_live_...",
                        "extra": '{"model": "black-forest-labs/flux-2-pro", "timeout": 30, "max_attempts": 5}',
                    },
                },
            }
        ],
    }
