"""One image-header reader: format and size from the first bytes of an image, nothing decoded.

Pillow's ``Image.open`` reads only the header; every place that needs an image's size or format
before (or instead of) decoding it asks here: the reference resolver and ``estimate()`` (a
reference's billed megapixels), the hook (a download's format and size before it is decoded), the
doctor (an output's size) and the emulator (a fetched reference).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image


class HeaderError(Exception):
    """The bytes are no image Pillow can read the header of, or (``bomb``) declare a decompression bomb."""

    def __init__(self, message: str, *, bomb: bool = False) -> None:
        super().__init__(message)
        self.bomb = bomb


def read_header(data: bytes) -> tuple[str | None, tuple[int, int]]:
    """``(Pillow format name, (width, height))`` from an image's header; :class:`HeaderError` otherwise.

    A header of more than twice Pillow's pixel limit is refused here (a bomb); one between the limit
    and twice it is returned, for the caller to compare with the size it expects.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.format, image.size
    except Image.DecompressionBombError as error:
        raise HeaderError(str(error), bomb=True) from None
    except Exception as error:  # UnidentifiedImageError, a truncated header's struct.error/EOFError...
        raise HeaderError(f"{type(error).__name__}: {str(error)[:200]}") from None


def header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from an image's first bytes, or ``None`` when they are no readable header."""
    try:
        return read_header(data)[1]
    except HeaderError:
        return None


def header_format(data: bytes) -> str | None:
    """Pillow's name of the format (``JPEG``, ``PNG``), or ``None`` when the bytes are no readable image."""
    try:
        return read_header(data)[0]
    except HeaderError:
        return None


def data_uri_size(url: str) -> tuple[int, int] | None:
    """The size of a base64 ``data:image/`` URI's image, or ``None`` for anything else."""
    if not url.startswith("data:image/") or ";base64," not in url:
        return None
    try:
        raw = base64.b64decode(url.split(";base64,", 1)[1], validate=False)
    except (binascii.Error, ValueError):
        return None
    return header_size(raw)


__all__ = ["HeaderError", "data_uri_size", "header_format", "header_size", "read_header"]
