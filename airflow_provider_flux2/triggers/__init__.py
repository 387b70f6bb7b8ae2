from __future__ import annotations

from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger

__all__ = ["FluxGenerationTrigger"]
