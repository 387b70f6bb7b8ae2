"""Synthetic images (Pillow) and records describing them, for the quality and storage tests.

A module rather than a conftest so tests under ``unit/`` and ``integration/`` can share it
(``tests/`` is on ``sys.path`` because the root ``conftest.py`` lives there).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from airflow_provider_flux2.models import ImageRecord


class Pictures:
    """Synthetic images: busy scenes (pass), noise, gradients, flat colours, near-copies."""

    @staticmethod
    def scene(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
        """A busy picture: coloured ellipses on a coloured ground, different for every seed."""
        rng = np.random.default_rng(seed)
        width, height = size
        image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(14):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            w, h = int(rng.integers(width // 10, width // 2)), int(rng.integers(height // 10, height // 2))
            draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        return image

    @staticmethod
    def noise(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))

    @staticmethod
    def gradient(size: tuple[int, int] = (256, 192)) -> Image.Image:
        return Image.linear_gradient("L").resize(size).convert("RGB")

    @staticmethod
    def flat(colour: tuple[int, int, int] = (120, 130, 140), size: tuple[int, int] = (256, 192)) -> Image.Image:
        return Image.new("RGB", size, colour)

    @staticmethod
    def perturbed(image: Image.Image, seed: int = 0, amplitude: int = 6) -> Image.Image:
        """The same picture with a little per-pixel noise: what a near-duplicate looks like."""
        rng = np.random.default_rng(seed)
        pixels = np.asarray(image).astype(np.int16) + rng.integers(-amplitude, amplitude + 1, (*image.size[::-1], 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    @staticmethod
    def reframed(image: Image.Image, margin: int = 8) -> Image.Image:
        """The same picture cropped by ``margin`` pixels at the top left and scaled back: a near-duplicate
        whose perceptual hash moves a few bits."""
        return image.crop((margin, margin, image.width, image.height)).resize(image.size)

    @staticmethod
    def encode(image: Image.Image, fmt: str = "png", **options: Any) -> bytes:
        out = io.BytesIO()
        image.save(out, {"png": "PNG", "jpeg": "JPEG"}[fmt], **options)
        return out.getvalue()


def image_record(index: int = 0, **fields: Any) -> ImageRecord:
    """A succeeded record for a 256×192 PNG at ``index``; any field can be overridden."""
    values: dict[str, Any] = {
        "index": index,
        "model": "black-forest-labs/flux-2-pro",
        "prompt": f"prompt {index}",
        "seed": 1000 + index,
        "width": 256,
        "height": 192,
        "output_format": "png",
        "billed_mp": 1,
        "cost_usd": "0.030",
        "estimated_cost_usd": "0.030",
        "status": "succeeded",
        "run_id": f"run-{index}",
        "uri": f"file:///batch/{index:05d}.png",
    }
    values.update(fields)
    return ImageRecord(**values)
