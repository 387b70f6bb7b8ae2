"""The megapixel: the one unit every price is in, and the one function that counts it (the bottom).

One megapixel is 1,048,576 pixels (2^20), rounded up per image, at least one: the only unit that
reproduces every row of the vendor's table (1024×1024 → 1, 1920×1080 → 2, 4096×4096 → 16).
Pricing, the reference resolver and the emulator all count with :func:`billed_megapixels`.
"""

from __future__ import annotations

from airflow_provider_flux2.exceptions import FluxValidationError

MEGAPIXEL = 1_048_576
#: A reference image whose size cannot be known before the run (an http URL) is priced as one
#: megapixel, the minimum each reference image is billed. Data URIs are measured.
ASSUMED_REFERENCE_MP = 1


def billed_megapixels(width: int, height: int) -> int:
    """Billed megapixels of one image: ``ceil(width × height / 2^20)``, at least 1."""
    if width <= 0 or height <= 0:
        raise FluxValidationError(field="image_size", value=(width, height), allowed="positive sides")
    return max(1, -(-(width * height) // MEGAPIXEL))


__all__ = ["ASSUMED_REFERENCE_MP", "MEGAPIXEL", "billed_megapixels"]
