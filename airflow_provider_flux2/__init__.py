"""Apache Airflow provider for the FLUX 2 image-generation API (Black Forest Labs, sold through Runflow)."""

from __future__ import annotations

__version__ = "0.1.0"
