"""A configurable set of checks applied to a batch: ``CheckSuite``, and for ``@task`` functions
``run_checks`` (records in, records out) and ``check_image`` / ``check_images`` (bytes in, verdicts out).

A suite is built from a list of check names or dicts, e.g.::

    CheckSuite.from_config(["decodes", {"check": "not_blank", "max_std": 6}, "near_duplicate"])

Only records with ``status == "succeeded"`` are checked (the others have no image); their ``checks``
are replaced by this run's verdicts, so checking a batch again after regeneration gives a fresh,
complete picture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import CheckVerdict, ImageRecord
from airflow_provider_flux2.quality.checks import CHECKS, BatchCheck, Check, ImageCheck, Sample
from airflow_provider_flux2.quality.decoding import decode_image

CheckConfig = str | Mapping[str, Any]
DEFAULT_CHECKS: tuple[str, ...] = tuple(CHECKS)


def failed_checks(record: ImageRecord) -> list[CheckVerdict]:
    """The verdicts a record failed (empty when it passed every check, or was not checked)."""
    return [verdict for verdict in record.checks if not verdict.passed]


def _check_from(config: CheckConfig | Check) -> Check:
    if isinstance(config, Check):
        return config
    if isinstance(config, str):
        name, options = config, {}
    elif isinstance(config, Mapping) and "check" in config:
        name, options = str(config["check"]), {k: v for k, v in config.items() if k != "check"}
    else:
        raise FluxValidationError(
            field="checks", value=config, allowed='a check name or a dict with a "check" key and its options'
        )
    if name not in CHECKS:
        raise FluxValidationError(field="checks", value=name, allowed=f"one of {', '.join(CHECKS)}")
    return CHECKS[name].from_options(options)


@dataclass(frozen=True)
class SuiteResult:
    """What a suite found: every record (checked ones updated) and which passed or failed.

    :param records: the batch in its original order, checked records carrying this run's verdicts.
    :param passed: indices (``record.index``) of checked records that passed every check.
    :param failed: indices of checked records that failed at least one check.
    :param unchecked: indices of records that were not checked (no image: failed, moderated, dropped...).
    """

    records: list[ImageRecord]
    passed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    unchecked: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every checked image passed."""
        return not self.failed

    def failures(self) -> list[ImageRecord]:
        """The checked records that failed, in batch order."""
        return [r for r in self.records if r.status == "succeeded" and failed_checks(r)]


@dataclass(frozen=True)
class CheckSuite:
    """An ordered set of configured checks.

    :param checks: the checks to apply, in order.
    """

    checks: tuple[Check, ...]

    @classmethod
    def from_config(cls, config: Iterable[CheckConfig | Check] | CheckSuite | None = None) -> CheckSuite:
        """Build a suite from names and ``{"check": name, **options}`` dicts; ``None`` means every check
        with its defaults.
        """
        if isinstance(config, CheckSuite):
            return config
        checks = tuple(_check_from(item) for item in (DEFAULT_CHECKS if config is None else config))
        names = [check.name for check in checks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise FluxValidationError(field="checks", value=duplicates, allowed="each check at most once")
        return cls(checks)

    @property
    def names(self) -> list[str]:
        return [check.name for check in self.checks]

    def as_config(self) -> list[dict[str, Any]]:
        """The suite as JSON-able config (what :meth:`from_config` takes), for logs and manifests."""
        return [{"check": check.name, **check.options()} for check in self.checks]

    def run(self, items: Iterable[tuple[ImageRecord, bytes | None]]) -> SuiteResult:
        """Check a batch of ``(record, bytes)``; ``items`` may be a generator, read one image at a time."""
        batch_checks = [check for check in self.checks if isinstance(check, BatchCheck)]
        records: list[ImageRecord] = []
        positions: list[int] = []  # where the checked records sit in ``records``
        per_image: list[dict[str, CheckVerdict]] = []
        prints: dict[str, list[Any]] = {check.name: [] for check in batch_checks}
        for record, data in items:
            records.append(record)
            if record.status != "succeeded":
                continue
            sample = Sample(record, decode_image(data))
            positions.append(len(records) - 1)
            per_image.append(self._image_verdicts(sample))
            for check in batch_checks:
                prints[check.name].append(check.fingerprint(sample) if sample.decoded.ok else None)
            # The decoded image is dropped here: only fingerprints outlive the loop.
        checked = [records[i] for i in positions]
        eligible = [all(v.passed for v in verdicts.values()) for verdicts in per_image]
        for check in batch_checks:
            judged = check.verdicts(checked, prints[check.name], eligible)
            for verdicts, verdict in zip(per_image, judged, strict=True):
                verdicts[check.name] = verdict
        for position, verdicts in zip(positions, per_image, strict=True):
            records[position] = self._with_verdicts(records[position], verdicts)
        return _result(records)

    def _image_verdicts(self, sample: Sample) -> dict[str, CheckVerdict]:
        verdicts: dict[str, CheckVerdict] = {}
        for check in self.checks:
            if not isinstance(check, ImageCheck):
                continue
            ready = sample.decoded.ok or not check.needs_pixels
            verdicts[check.name] = check.verdict(sample) if ready else check.undecoded(sample)
        return verdicts

    def _with_verdicts(self, record: ImageRecord, verdicts: dict[str, CheckVerdict]) -> ImageRecord:
        ordered = [verdicts[name] for name in self.names]  # the suite's order, whatever order they ran in
        return record.model_copy(update={"checks": ordered})


def _result(records: list[ImageRecord]) -> SuiteResult:
    checked = [r for r in records if r.status == "succeeded"]
    return SuiteResult(
        records=records,
        passed=[r.index for r in checked if not failed_checks(r)],
        failed=[r.index for r in checked if failed_checks(r)],
        unchecked=[r.index for r in records if r.status != "succeeded"],
    )


def run_checks(
    records: Iterable[ImageRecord | Mapping[str, Any]],
    reader: Callable[[str], bytes],
    checks: Iterable[CheckConfig | Check] | CheckSuite | None = None,
) -> list[dict[str, Any]]:
    """Check a batch of stored images; for ``@task`` functions (records in and out as XCom dicts).

    :param records: the batch's records (``ImageRecord`` or their ``to_xcom()`` dicts).
    :param reader: reads an image's bytes from its URI, e.g. ``publisher_for(uri).get``.
    :param checks: the checks to apply (names or dicts); ``None`` applies every check with its defaults.
    :return: the records with ``checks`` filled, as XCom dicts.
    """
    batch = [r if isinstance(r, ImageRecord) else ImageRecord.model_validate(r) for r in records]
    result = CheckSuite.from_config(checks).run(read_each(batch, reader))
    return [record.to_xcom() for record in result.records]


def read_each(
    records: Sequence[ImageRecord], reader: Callable[[str], bytes]
) -> Iterable[tuple[ImageRecord, bytes | None]]:
    """``(record, bytes)`` for :meth:`CheckSuite.run`, reading one image at a time (a generator)."""
    for record in records:
        if record.status != "succeeded" or not record.uri:
            yield record, None
            continue
        try:
            yield record, reader(record.uri)
        except FileNotFoundError:
            # A missing object fails "decodes" (no image bytes); any other read error (credentials,
            # network) is not the image's fault and propagates.
            yield record, None


# --------------------------------------------------------------------------------------------------
# Bytes in, verdicts out
# --------------------------------------------------------------------------------------------------

#: What a check compares the image with, when it is given bytes rather than a record. Without these
#: arguments the check has nothing to compare against, so it is left out of the default set, and
#: asking for it is refused rather than passing the image against an expectation nobody stated.
_EXPECTS: dict[str, tuple[str, ...]] = {"format": ("output_format",), "size": ("width", "height"), "nsfw": ("nsfw",)}
#: ``quality_score`` is in the default set only with scores: an unscored image passes it (not every
#: run is scored), so without scores it would say nothing. Asked for explicitly, it runs either way.
_DEFAULT_NEEDS: dict[str, tuple[str, ...]] = {**_EXPECTS, "quality_score": ("score",)}
#: Checks that compare images with each other: in the default set of :func:`check_images` only.
_BATCH_ONLY = frozenset(name for name, cls in CHECKS.items() if issubclass(cls, BatchCheck))


def check_image(
    data: bytes | None,
    *,
    width: int | None = None,
    height: int | None = None,
    output_format: str | None = None,
    nsfw: bool | None = None,
    score: float | None = None,
    checks: Iterable[CheckConfig | Check] | CheckSuite | None = None,
) -> list[CheckVerdict]:
    """Check one image's bytes, e.g. in a ``@task`` that has bytes rather than an ``ImageRecord``.

    The checks are the same classes :class:`CheckSuite` runs; only the record they read the
    expectations from is made here, from the arguments.

    :param data: the encoded image (``None`` or empty fails ``decodes``).
    :param width: the requested width; with ``height``, enables the ``size`` check.
    :param height: the requested height.
    :param output_format: the requested format (``jpeg`` or ``png``); enables the ``format`` check.
    :param nsfw: the API's ``has_nsfw_concepts`` flag for this image; enables the ``nsfw`` check.
    :param score: the API's quality score; enables the ``quality_score`` check.
    :param checks: the checks to apply (names, dicts or check objects). By default, every per-image
        check that has what it needs: ``decodes`` and ``not_blank`` always, the others when their
        argument is given.
    :return: one verdict per check, in the suite's order.
    :raises FluxValidationError: a check was asked for without the argument it compares against.
    """
    given = {"width": width, "height": height, "output_format": output_format, "nsfw": nsfw, "score": score}
    suite = _suite_for_bytes(checks, given, batch=False)
    record = _bare_record(0, width, height, output_format, nsfw, score)
    return suite.run([(record, data)]).records[0].checks


def check_images(
    images: Iterable[bytes | None],
    *,
    width: int | None = None,
    height: int | None = None,
    output_format: str | None = None,
    nsfw: Sequence[bool] | None = None,
    scores: Sequence[float | None] | None = None,
    checks: Iterable[CheckConfig | Check] | CheckSuite | None = None,
) -> list[list[CheckVerdict]]:
    """Check several images' bytes as one batch, so ``near_duplicate`` compares them with each other.

    Arguments are those of :func:`check_image`, with the per-image ones as sequences in the order of
    ``images``. The default checks add ``near_duplicate``; its verdicts name images by their position
    in ``images`` (``duplicate_of``), and of a pair the later one fails.

    :param nsfw: one ``has_nsfw_concepts`` flag per image.
    :param scores: one quality score (or ``None``) per image.
    :return: one list of verdicts per image, in the order of ``images``.
    :raises FluxValidationError: a check was asked for without its argument, or ``nsfw`` or ``scores``
        does not have one entry per image.
    """
    blobs = list(images)
    for name, values in (("nsfw", nsfw), ("scores", scores)):
        if values is not None and len(values) != len(blobs):
            raise FluxValidationError(field=name, value=len(values), allowed=f"one entry per image ({len(blobs)})")
    given = {"width": width, "height": height, "output_format": output_format, "nsfw": nsfw, "score": scores}
    suite = _suite_for_bytes(checks, given, batch=True)
    flags = [None] * len(blobs) if nsfw is None else list(nsfw)
    marks = [None] * len(blobs) if scores is None else list(scores)
    items = [
        (_bare_record(position, width, height, output_format, flag, mark), data)
        for position, (data, flag, mark) in enumerate(zip(blobs, flags, marks, strict=True))
    ]
    return [record.checks for record in suite.run(items).records]


def _suite_for_bytes(
    checks: Iterable[CheckConfig | Check] | CheckSuite | None, given: Mapping[str, object], *, batch: bool
) -> CheckSuite:
    """The checks asked for, or by default every check that has what it needs in ``given``."""
    if checks is None:
        return CheckSuite.from_config(
            name
            for name in DEFAULT_CHECKS
            if all(given[arg] is not None for arg in _DEFAULT_NEEDS.get(name, ()))
            and (batch or name not in _BATCH_ONLY)
        )
    suite = CheckSuite.from_config(checks)
    for name in suite.names:
        missing = [arg for arg in _EXPECTS.get(name, ()) if given[arg] is None]
        if missing:
            raise FluxValidationError(
                field=missing[0], value=None, allowed=f"a value: the {name!r} check compares the image with it"
            )
    return suite


def _bare_record(
    position: int,
    width: int | None,
    height: int | None,
    output_format: str | None,
    nsfw: bool | None,
    score: float | None,
) -> ImageRecord:
    """A record that carries only what the checks read; the rest is unknown here and left empty."""
    return ImageRecord(
        index=position,
        model="",
        prompt="",
        width=width or 0,
        height=height or 0,
        output_format=output_format or "",
        billed_mp=0,
        cost_usd="0",
        estimated_cost_usd="0",
        status="succeeded",
        nsfw=bool(nsfw),
        quality_score=score,
    )
