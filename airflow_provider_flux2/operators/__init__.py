from __future__ import annotations

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator, FluxImagesLink
from airflow_provider_flux2.operators.publish import FluxPublishOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator

__all__ = ["FluxGenerateImageOperator", "FluxImagesLink", "FluxPublishOperator", "FluxQualityCheckOperator"]
