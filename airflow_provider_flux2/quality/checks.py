"""The quality checks. Each one measures one thing and returns a :class:`~airflow_provider_flux2.models.CheckVerdict`.

Per-image checks implement :meth:`ImageCheck.verdict`. Checks that compare images with each other
(:class:`NearDuplicateCheck`) implement :class:`BatchCheck`: a small fingerprint is taken while each
image is decoded, then the verdicts are given from the fingerprints alone, so a batch of large images
never has to be held in memory at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import imagehash
import numpy as np
from PIL import Image, ImageStat

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import CheckVerdict, ImageRecord
from airflow_provider_flux2.quality.decoding import PILLOW_FORMATS, DecodedImage


@dataclass(frozen=True)
class Sample:
    """One image under check: its record and its decoded bytes."""

    record: ImageRecord
    decoded: DecodedImage


class Check(ABC):
    """Base of all checks; subclasses are frozen dataclasses whose fields are their options."""

    name: ClassVar[str]
    #: Whether the check reads pixels; if so, an image that does not decode fails it without measuring.
    needs_pixels: ClassVar[bool] = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Check:
        """Build the check from user options, naming the allowed keys when one is unknown."""
        allowed = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise FluxValidationError(
                field=f"checks.{cls.name}.{unknown[0]}",
                value=options[unknown[0]],
                allowed=f"options {', '.join(allowed)}" if allowed else "no options",
            )
        return cls(**options)

    def options(self) -> dict[str, Any]:
        """The check's options, for the record of what was applied."""
        return asdict(self)  # type: ignore[call-overload]

    def undecoded(self, sample: Sample) -> CheckVerdict:
        """The verdict for an image whose pixels could not be read: failed, and says so."""
        return CheckVerdict(
            check=self.name, passed=False, reason=f"not measured: the image {sample.decoded.error}", value=None
        )


class ImageCheck(Check):
    """A check that judges each image on its own."""

    @abstractmethod
    def verdict(self, sample: Sample) -> CheckVerdict:
        """Judge one image."""


class BatchCheck(Check):
    """A check that judges images against each other, from a per-image fingerprint."""

    @abstractmethod
    def fingerprint(self, sample: Sample) -> Any:
        """What to keep of one decoded image for :meth:`verdicts`."""

    @abstractmethod
    def verdicts(
        self, records: Sequence[ImageRecord], prints: Sequence[Any], eligible: Sequence[bool]
    ) -> list[CheckVerdict]:
        """Judge every image, in batch order, from the fingerprints.

        :param prints: one fingerprint per record, ``None`` where the image did not decode.
        :param eligible: per record, whether it passed every per-image check (and so will be kept).
        """


# --------------------------------------------------------------------------------------------------
# Per-image checks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodesCheck(ImageCheck):
    """The bytes decode completely with Pillow (within its decompression-bomb guard)."""

    name: ClassVar[str] = "decodes"
    needs_pixels: ClassVar[bool] = False

    def verdict(self, sample: Sample) -> CheckVerdict:
        decoded = sample.decoded
        if decoded.image is None:
            return CheckVerdict(check=self.name, passed=False, reason=f"the image {decoded.error}", value=None)
        value = {"format": decoded.format, "width": decoded.image.width, "height": decoded.image.height}
        return CheckVerdict(check=self.name, passed=True, reason="decodes", value=value)


@dataclass(frozen=True)
class FormatCheck(ImageCheck):
    """The encoded format is the one the record asked for (``output_format``: jpeg or png)."""

    name: ClassVar[str] = "format"

    def verdict(self, sample: Sample) -> CheckVerdict:
        wanted = sample.record.output_format.lower()
        expected = PILLOW_FORMATS.get(wanted, wanted.upper())
        actual = sample.decoded.format or "unknown"
        passed = actual == expected
        reason = f"is {actual}" if passed else f"is {actual}, expected {expected} (output_format={wanted!r})"
        return CheckVerdict(check=self.name, passed=passed, reason=reason, value=actual.lower())


@dataclass(frozen=True)
class SizeCheck(ImageCheck):
    """The image is exactly the requested width × height."""

    name: ClassVar[str] = "size"

    def verdict(self, sample: Sample) -> CheckVerdict:
        assert sample.decoded.image is not None
        width, height = sample.decoded.image.size
        expected = (sample.record.width, sample.record.height)
        passed = (width, height) == expected
        reason = f"is {width}×{height}"
        if not passed:
            reason += f", expected {expected[0]}×{expected[1]}"
        return CheckVerdict(check=self.name, passed=passed, reason=reason, value=[width, height])


@dataclass(frozen=True)
class NotBlankCheck(ImageCheck):
    """The image is not blank or near-uniform.

    Two statistics, measured on an evenly spaced sample of at most ``sample_side`` pixels a side:

    * the standard deviation of the grayscale values (0–255): a flat or nearly flat image has almost
      none; an image fails when it is at or below ``max_std``;
    * the dominant-colour fraction: the share of pixels within ``colour_tolerance`` (per RGB channel)
      of the most common colour. A black frame with a few bright specks or a small caption has a
      large standard deviation but is still blank; it fails when the fraction is at or above
      ``max_dominant_fraction``.

    :param max_std: grayscale standard deviation at or below which the image is blank.
    :param max_dominant_fraction: dominant-colour share at or above which the image is blank.
    :param colour_tolerance: how far (0–255, each channel) a pixel may be from the dominant colour
        and still count as it; absorbs JPEG noise on flat areas.
    :param sample_side: the longest side of the sample the statistics are taken on.
    """

    name: ClassVar[str] = "not_blank"
    max_std: float = 4.0
    max_dominant_fraction: float = 0.98
    colour_tolerance: int = 8
    sample_side: int = 512

    def verdict(self, sample: Sample) -> CheckVerdict:
        assert sample.decoded.image is not None
        pixels = _sample_rgb(sample.decoded.image, self.sample_side)
        std = ImageStat.Stat(pixels.convert("L")).stddev[0]
        dominant = _dominant_fraction(np.asarray(pixels), self.colour_tolerance)
        value = {"std": round(std, 3), "dominant_fraction": round(dominant, 4)}
        if std <= self.max_std:
            reason = f"near-uniform: grayscale std {std:.2f} <= {self.max_std}"
        elif dominant >= self.max_dominant_fraction:
            reason = f"one colour covers {dominant:.1%} of the image (limit {self.max_dominant_fraction:.1%})"
        else:
            return CheckVerdict(
                check=self.name, passed=True, reason=f"std {std:.2f}, dominant colour {dominant:.1%}", value=value
            )
        return CheckVerdict(check=self.name, passed=False, reason=reason, value=value)


def _sample_rgb(image: Image.Image, side: int) -> Image.Image:
    # Nearest-neighbour keeps a true sample of the pixel values. An averaging filter would smooth
    # fine noise away and make a busy image look flat, which is the opposite of what is measured.
    rgb = image.convert("RGB")
    scale = max(rgb.width, rgb.height) / side
    if scale <= 1:
        return rgb
    size = (max(1, round(rgb.width / scale)), max(1, round(rgb.height / scale)))
    return rgb.resize(size, Image.Resampling.NEAREST)


def _dominant_fraction(rgb: np.ndarray, tolerance: int) -> float:
    """Share of pixels within ``tolerance`` of the most common colour (colours binned to 32 levels)."""
    flat = rgb.reshape(-1, 3).astype(np.int16)
    bins = (flat[:, 0] >> 3) << 10 | (flat[:, 1] >> 3) << 5 | (flat[:, 2] >> 3)
    mode = np.bincount(bins).argmax()
    centre = flat[bins == mode].mean(axis=0)
    close = np.all(np.abs(flat - centre) <= tolerance, axis=1)
    return float(close.mean())


@dataclass(frozen=True)
class NsfwCheck(ImageCheck):
    """The API did not flag the image as NSFW (``has_nsfw_concepts``, kept as ``record.nsfw``)."""

    name: ClassVar[str] = "nsfw"
    needs_pixels: ClassVar[bool] = False

    def verdict(self, sample: Sample) -> CheckVerdict:
        flagged = sample.record.nsfw
        reason = "flagged NSFW by the API" if flagged else "not flagged by the API"
        return CheckVerdict(check=self.name, passed=not flagged, reason=reason, value=flagged)


@dataclass(frozen=True)
class QualityScoreCheck(ImageCheck):
    """The API's quality score (``current_evaluation_summary.score``) is at least ``min_score``.

    Runflow does not publish the scale of the score; the default assumes 0–1. Set ``min_score`` for
    the scale your account reports.

    :param min_score: the lowest score that passes.
    :param required: fail images that have no score (by default they pass: not every run is scored).
    """

    name: ClassVar[str] = "quality_score"
    needs_pixels: ClassVar[bool] = False
    min_score: float = 0.5
    required: bool = False

    def verdict(self, sample: Sample) -> CheckVerdict:
        score = sample.record.quality_score
        if score is None:
            reason = "no score from the API" + (" (a score is required)" if self.required else "")
            return CheckVerdict(check=self.name, passed=not self.required, reason=reason, value=None)
        passed = score >= self.min_score
        relation = ">=" if passed else "<"
        return CheckVerdict(
            check=self.name, passed=passed, reason=f"score {score:g} {relation} {self.min_score:g}", value=score
        )


# --------------------------------------------------------------------------------------------------
# Batch checks
# --------------------------------------------------------------------------------------------------

_HASHES = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "average_hash": imagehash.average_hash,
    "whash": imagehash.whash,
}


@dataclass(frozen=True)
class NearDuplicateCheck(BatchCheck):
    """No two images of a batch look the same: perceptual hashes (``imagehash``) compared by Hamming distance.

    Images are compared in batch order; an image whose hash is within ``max_distance`` bits of an
    earlier *kept* image fails and names the index it duplicates, so of a pair the later one fails
    and the earlier one stays. Kept means passing: an image that failed as a duplicate, or failed a
    per-image check (blank, wrong size...), is never the reference another image is a duplicate of.
    So a chain of small drifts (A ≈ B ≈ C, A far from C) keeps A and C, and a good image is not
    dropped for resembling a blank one that is going to be dropped or regenerated anyway.

    :param max_distance: the largest Hamming distance (in bits) that still counts as a duplicate.
    :param hash: ``phash`` (default; robust to re-encoding and small edits), ``dhash``, ``average_hash``
        or ``whash``.
    :param hash_size: side of the hash grid; the hash has ``hash_size²`` bits (64 by default).
    """

    name: ClassVar[str] = "near_duplicate"
    max_distance: int = 8
    hash: str = "phash"
    hash_size: int = 8

    def __post_init__(self) -> None:
        if self.hash not in _HASHES:
            raise FluxValidationError(field="checks.near_duplicate.hash", value=self.hash, allowed=", ".join(_HASHES))

    def fingerprint(self, sample: Sample) -> int:
        assert sample.decoded.image is not None
        # Kept as an int: XOR and bit_count compare two hashes ~10× faster than ImageHash's own
        # subtraction, which matters because a batch compares every image with every kept one.
        return int(str(_HASHES[self.hash](sample.decoded.image, hash_size=self.hash_size)), 16)

    def verdicts(
        self, records: Sequence[ImageRecord], prints: Sequence[Any], eligible: Sequence[bool]
    ) -> list[CheckVerdict]:
        kept: list[tuple[ImageRecord, int]] = []
        result = []
        for record, digest, keepable in zip(records, prints, eligible, strict=True):
            if digest is None:
                result.append(self._verdict(False, "not measured: the image does not decode", None))
                continue
            match = _closest(digest, kept)
            if match is not None and match[1] <= self.max_distance:
                other, distance = match
                reason = f"near-duplicate of image {other.index} (distance {distance} <= {self.max_distance})"
                result.append(self._verdict(False, reason, {"duplicate_of": other.index, "distance": distance}))
                continue
            if keepable:
                kept.append((record, digest))
            nearest = None if match is None else {"nearest": match[0].index, "distance": match[1]}
            reason = "unique" if match is None else f"nearest is image {match[0].index} at distance {match[1]}"
            result.append(self._verdict(True, reason, nearest))
        return result

    def _verdict(self, passed: bool, reason: str, value: Any) -> CheckVerdict:
        return CheckVerdict(check=self.name, passed=passed, reason=reason, value=value)


def _closest(digest: int, kept: Sequence[tuple[ImageRecord, int]]) -> tuple[ImageRecord, int] | None:
    """The kept image nearest to ``digest`` and its Hamming distance (the number of differing bits)."""
    best: tuple[ImageRecord, int] | None = None
    for record, other in kept:
        distance = (digest ^ other).bit_count()
        if best is None or distance < best[1]:
            best = (record, distance)
    return best


#: Every check by name, in the order a default suite runs them.
CHECKS: dict[str, type[Check]] = {
    cls.name: cls
    for cls in (DecodesCheck, FormatCheck, SizeCheck, NotBlankCheck, NsfwCheck, NearDuplicateCheck, QualityScoreCheck)
}
