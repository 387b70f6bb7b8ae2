"""The one table of image formats: what Pillow, HTTP and file names call each ``output_format``.

No dependencies, so storage can import it without loading pydantic or Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    """One output format as Pillow, HTTP and file names know it."""

    pillow: str
    content_type: str
    extension: str


#: The one format table: ``output_format`` (and the alias ``jpg``) → Pillow name, content type, extension.
IMAGE_FORMATS: dict[str, ImageFormat] = {
    "jpeg": ImageFormat("JPEG", "image/jpeg", "jpg"),
    "jpg": ImageFormat("JPEG", "image/jpeg", "jpg"),
    "png": ImageFormat("PNG", "image/png", "png"),
}


def image_format(name: str) -> ImageFormat | None:
    """The format for an ``output_format`` value (any case), or ``None`` when unknown."""
    return IMAGE_FORMATS.get(name.lower())


__all__ = ["IMAGE_FORMATS", "ImageFormat", "image_format"]
