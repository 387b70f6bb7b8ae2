from __future__ import annotations

from airflow_provider_flux2.hooks.flux import FluxHook

__all__ = ["FluxHook"]
