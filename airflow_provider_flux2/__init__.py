"""Apache Airflow provider for the FLUX 2 image-generation API (Black Forest Labs, sold through Runflow).

The common names are importable from here (``from airflow_provider_flux2 import FluxHook``); they
load on first use, so the provider entry point stays cheap.
"""

from __future__ import annotations

from airflow_provider_flux2._lazy import lazy_exports

__version__ = "0.3.2"

_LAZY = {
    "FluxHook": "airflow_provider_flux2.hooks.flux",
    "FluxGenerationTrigger": "airflow_provider_flux2.triggers.flux",
    "FluxGenerateImageOperator": "airflow_provider_flux2.operators.flux",
    "FluxQualityCheckOperator": "airflow_provider_flux2.operators.quality",
    "FluxPublishOperator": "airflow_provider_flux2.operators.publish",
    "ImageRecord": "airflow_provider_flux2.models",
    "build_input": "airflow_provider_flux2.models",
    "Budget": "airflow_provider_flux2.pricing",
    "estimate": "airflow_provider_flux2.pricing",
    "billed_megapixels": "airflow_provider_flux2.pricing",
    **{
        name: "airflow_provider_flux2.exceptions"
        for name in (
            "FluxError",
            "FluxAPIError",
            "FluxAuthError",
            "FluxValidationError",
            "FluxInsufficientCreditError",
            "FluxRateLimitError",
            "FluxServerError",
            "FluxConnectionError",
            "FluxModerationError",
            "FluxRunFailedError",
            "FluxTimeoutError",
            "FluxImageError",
            "BudgetExceededError",
        )
    },
}

__all__ = ["__version__", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
