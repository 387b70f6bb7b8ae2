"""Image synthesis: a real JPEG or PNG of exactly the requested size, deterministic in its inputs.

A person (and a perceptual hash) must tell two prompts' images apart, so the picture is built from
the prompt: its palette comes from a hash of the prompt, large shapes are placed from the prompt and
the seed, and the prompt's text is drawn on it. The same (prompt, seed, size, format, style) always
gives identical bytes. Rendering a 4096×4096 PNG takes a while, so results are kept in an LRU cache
bounded by bytes; callers run :func:`render` off the event loop.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import random
import textwrap
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from airflow_provider_flux2.formats import IMAGE_FORMATS

Style = Literal["normal", "black", "blank", "duplicate"]
#: Views of the provider's one format table (the emulator serves what the provider expects).
CONTENT_TYPES = {name: IMAGE_FORMATS[name].content_type for name in ("jpeg", "png")}
EXTENSIONS = {name: IMAGE_FORMATS[name].extension for name in ("jpeg", "png")}

# The scene is painted on a small canvas and scaled up: soft, painterly shapes at any size for a
# fraction of the cost of drawing 16 megapixels. The text is drawn afterwards at full resolution.
_SCENE_SIDE = 256
_CACHE_BYTES = 256 * 1024 * 1024
# Seven to ten shapes of 12–40 % of the canvas each: measured over 1,770 prompt pairs, perceptual
# hashes of different prompts differ by 30 of 64 bits on average (as random images do), the closest
# pair by 18; the quality layer calls 8 or fewer a near-duplicate.
_SHAPES = (7, 10)
_RADIUS = (0.12, 0.4)


@dataclass(frozen=True)
class ImageSpec:
    """Everything an output image depends on.

    :param prompt: the prompt as the user wrote it (drawn on the image, and the palette's source).
    :param seed: the run's seed (places the shapes).
    :param width: width in pixels.
    :param height: height in pixels.
    :param fmt: ``jpeg`` or ``png``.
    :param style: ``normal``; ``black`` (moderated, blacked out); ``blank`` (one uniform colour);
        ``duplicate`` (the normal image with a small mark, a near-duplicate of it).
    """

    prompt: str
    seed: int
    width: int
    height: int
    fmt: Literal["jpeg", "png"] = "jpeg"
    style: Style = "normal"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


def palette(prompt: str) -> list[tuple[int, int, int]]:
    """Five colours derived from the prompt: a base hue and its companions, light and dark."""
    digest = _digest("palette", prompt)
    base = digest[0] / 255
    colours = []
    for i in range(5):
        hue = (base + digest[1 + i] / 255 * 0.35 + i * 0.21) % 1.0
        saturation = 0.45 + digest[6 + i] / 255 * 0.5
        # Alternate dark and light so the shapes stand out from each other in luminance, which is
        # what a perceptual hash sees.
        value = 0.25 + digest[11 + i] / 255 * 0.2 if i % 2 else 0.75 + digest[11 + i] / 255 * 0.25
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _scene(prompt: str, seed: int, width: int, height: int) -> Image.Image:
    """The picture without text, at full size."""
    scale = _SCENE_SIDE / max(width, height)
    w, h = max(8, round(width * scale)), max(8, round(height * scale))
    rng = random.Random(_digest("scene", prompt, seed))
    colours = palette(prompt)
    canvas = Image.new("RGB", (w, h), colours[1])
    draw = ImageDraw.Draw(canvas)
    # A diagonal wash between two palette colours, its direction set by the prompt.
    top, bottom = colours[rng.choice((0, 2))], colours[rng.choice((1, 3))]
    steps = w + h
    flip = rng.random() < 0.5
    for i in range(steps):
        t = i / steps
        colour = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        x = i if not flip else w + h - i
        draw.line([(x, 0), (x - h, h)], fill=colour, width=2)
    # Large shapes in alternating luminance: they dominate the low frequencies a perceptual
    # hash compares, so different prompts land far apart.
    for i in range(rng.randint(_SHAPES[0], _SHAPES[1])):
        colour = colours[(i + rng.randint(0, 4)) % 5]
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(*_RADIUS) * w, rng.uniform(*_RADIUS) * h
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        kind = rng.randrange(3)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry)], fill=colour)
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=1.2))
    return canvas.resize((width, height), Image.Resampling.BICUBIC)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled scalable font: the same glyphs on every machine, no system font needed.
    return ImageFont.load_default(size=size)


def _caption(image: Image.Image, prompt: str, seed: int, top: bool) -> None:
    """Draw the prompt, wrapped, on a translucent band; legible at 1024 px."""
    width, height = image.size
    size = max(10, min(width, height) // 24)
    font = _font(size)
    chars_per_line = max(8, int(width * 0.86 / (size * 0.55)))
    max_lines = max(1, int(height * 0.3 / (size * 1.25)))
    wrapped = textwrap.wrap(" ".join(prompt.split()), chars_per_line) or [""]
    lines = wrapped[:max_lines]
    if len(wrapped) > max_lines:
        lines[-1] = lines[-1][: max(0, chars_per_line - 3)] + "..."
    # ASCII only in the footer: the bundled font has no glyph for the multiplication sign.
    footer = f"FLUX 2 emulator - seed {seed} - {width}x{height}"
    small = _font(max(8, size * 2 // 3))
    line_height = int(size * 1.25)
    band = line_height * len(lines) + int(size * 1.6)
    y0 = int(height * 0.04) if top else height - band - int(height * 0.04)
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle([0, y0, width, y0 + band], fill=(0, 0, 0, 150))
    x = int(width * 0.05)
    for i, line in enumerate(lines):
        draw.text((x, y0 + size // 3 + i * line_height), line, font=font, fill=(255, 255, 255, 255))
    draw.text((x, y0 + size // 3 + len(lines) * line_height), footer, font=small, fill=(220, 220, 220, 255))
    image.paste(Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB"))


def _picture(spec: ImageSpec) -> Image.Image:
    if spec.style == "black":
        return Image.new("RGB", (spec.width, spec.height), (0, 0, 0))
    if spec.style == "blank":
        return Image.new("RGB", (spec.width, spec.height), palette(spec.prompt)[0])
    image = _scene(spec.prompt, spec.seed, spec.width, spec.height)
    _caption(image, spec.prompt, spec.seed, top=_digest("caption", spec.prompt)[0] < 128)
    if spec.style == "duplicate":
        # A small corner mark: different bytes, the same picture to a perceptual hash.
        side = max(2, min(spec.width, spec.height) // 40)
        ImageDraw.Draw(image).rectangle([0, 0, side, side], fill=(255, 0, 255))
    return image


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        # Level 3 compresses a 16 MP picture several times faster than the default for ~10% more bytes.
        image.save(buffer, format="PNG", compress_level=3)
    else:
        image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class _ByteCache:
    """An LRU of rendered images bounded by their total size; safe across threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[ImageSpec, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, spec: ImageSpec) -> bytes | None:
        with self._lock:
            data = self._items.get(spec)
            if data is not None:
                self._items.move_to_end(spec)
            return data

    def put(self, spec: ImageSpec, data: bytes) -> None:
        with self._lock:
            if spec in self._items or len(data) > self.max_bytes:
                return
            self._items[spec] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    @property
    def size(self) -> int:
        return self._size

    def resize(self, max_bytes: int) -> None:
        """Hold up to ``max_bytes`` from now on (the oldest images go first when it shrinks)."""
        with self._lock:
            self.max_bytes = max_bytes
            while self._size > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)


_cache = _ByteCache(_CACHE_BYTES)


def cache_status() -> dict[str, int]:
    """How much the rendered-image cache holds and may hold (bytes)."""
    return {"cache_bytes": _cache.size, "cache_max_bytes": _cache.max_bytes}


def resize_cache(max_bytes: int) -> None:
    """Let the rendered-image cache hold up to ``max_bytes`` (a benchmark pre-rendering its images)."""
    _cache.resize(max_bytes)


def render(spec: ImageSpec) -> bytes:
    """The encoded image for ``spec`` (cached; blocking: call it from a worker thread)."""
    data = _cache.get(spec)
    if data is None:
        data = encode(_picture(spec), spec.fmt)
        _cache.put(spec, data)
    return data
