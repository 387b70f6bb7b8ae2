"""Decode image bytes once, safely, for every check that needs pixels."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from airflow_provider_flux2.formats import IMAGE_FORMATS

#: Pillow's format names for the protocol's ``output_format`` values (a view of ``formats.IMAGE_FORMATS``).
PILLOW_FORMATS = {name: fmt.pillow for name, fmt in IMAGE_FORMATS.items()}


@dataclass(frozen=True)
class DecodedImage:
    """The result of decoding: the loaded image, or why there is none.

    :param image: the fully loaded image (``None`` when decoding failed).
    :param format: Pillow's name of the encoded format (``"JPEG"``, ``"PNG"``), when recognised.
    :param error: why the bytes did not decode.
    """

    image: Image.Image | None
    format: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None


def decode_image(data: bytes | None) -> DecodedImage:
    """Decode ``data`` fully, keeping Pillow's decompression-bomb guard.

    The header is read first and the pixel count compared with ``Image.MAX_IMAGE_PIXELS`` before
    anything is decompressed: the API's largest image is 4096×4096 (16.8 MP), far under Pillow's
    89 MP default, so an image past the guard is refused outright rather than merely warned about.
    ``verify()`` then checks the structure (PNG chunk CRCs), and ``load()`` decodes every pixel, which
    is what catches truncated files.
    """
    if not data:
        return DecodedImage(None, error="has no bytes (missing or empty)")
    fmt: str | None = None
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            refuse_bombs(probe)
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        return DecodedImage(None, error="is not in a format Pillow recognises")
    # Untrusted bytes can make a decoder fail in many ways (OSError for truncation, SyntaxError,
    # struct.error, ValueError...); each one means the same thing here: this is not a usable image.
    except Exception as exc:
        return DecodedImage(None, format=fmt, error=f"does not decode: {type(exc).__name__}: {exc}")
    return DecodedImage(image, format=fmt)


def refuse_bombs(image: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit is not None and pixels > limit:
        raise Image.DecompressionBombError(
            f"{image.width}×{image.height} = {pixels} pixels is over the decompression-bomb limit of {limit}"
        )
