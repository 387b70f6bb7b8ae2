"""Checks of operator arguments, run where they are given — before anything is sent or billed.

Each check raises :class:`FluxValidationError` naming the argument, the value and what is
allowed. Operators call :func:`check_operator_arguments` from ``__init__`` (values already known)
and again from ``execute`` (templated values, now rendered); a value still holding Jinja at
``__init__`` is left for the second call.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.urls import image_url_problem as image_url_problem
from airflow_provider_flux2.urls import reference_url_problem as reference_url_problem

#: One vocabulary across the operators and the trigger: the same name and the same default for the
#: same idea. ``on_failure``: what a task does when an image fails (a run failed at the API, or an
#: image failed its checks); ``poll_interval``: the shortest pause between polls, in seconds;
#: ``timeout``: the seconds a task may wait for its runs (the deadline).
DEFAULT_ON_FAILURE: Final = "fail"
DEFAULT_POLL_INTERVAL: Final = 2.0
DEFAULT_TIMEOUT: Final = 6 * 60 * 60.0
#: The quality step's ``min_pass_rate``: fail the task when fewer images than this share pass.
DEFAULT_MIN_PASS_RATE = Decimal("0.9")

#: Output URI forms the storage layer understands.
OUTPUT_URI_ALLOWED = "file:///absolute/path, an absolute path, or s3://bucket[/prefix]"
#: S3 bucket names (the rules AWS enforces for new buckets, lenient on dots).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")


def is_templated(value: Any) -> bool:
    """Whether ``value`` is known only at run time: Jinja, or an XComArg or other lazy object."""
    if not isinstance(value, (str, int, float, Decimal, list, tuple, dict)):
        return True
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, (list, tuple)):
        return any(is_templated(v) for v in value)
    if isinstance(value, dict):
        return any(is_templated(v) for v in value.values())
    return False


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """A whole number in ``low..high`` (``"8"`` is text, not a number: refused, not guessed)."""
    allowed = f"a whole number {low}..{high}" if high is not None else f"a whole number >= {low}"
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise FluxValidationError(field=name, value=value, allowed=allowed)
    return value


def check_seconds(name: str, value: Any, *, allow_zero: bool = False, high: float = 30 * 86400.0) -> float:
    """A finite number of seconds, more than 0 (or at least 0 with ``allow_zero``), at most ``high``."""
    allowed = f"a number of seconds {'>= 0' if allow_zero else '> 0'} and <= {high:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise FluxValidationError(field=name, value=value, allowed=allowed)
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero) or number > high:
        raise FluxValidationError(field=name, value=value, allowed=allowed)
    return number


def renamed_argument(operator: str, old: str, new: str, old_value: Any, new_value: Any, default: Any) -> Any:
    """The value of ``new`` when a DAG still passes the argument's old name ``old`` (with a warning).

    Both given with different values is an error naming both; the old name alone wins over the default.
    """
    if old_value is None:
        return new_value
    import warnings

    from airflow.exceptions import AirflowProviderDeprecationWarning

    warnings.warn(
        f"{operator}: `{old}` is deprecated; use `{new}` (the same name in every FLUX 2 operator).",
        AirflowProviderDeprecationWarning,
        stacklevel=3,
    )
    if new_value != default and new_value != old_value:
        raise FluxValidationError(field=new, value=new_value, allowed=f"unset, or the same as {old}={old_value!r}")
    return old_value


def check_pass_rate(name: str, value: Any) -> Decimal:
    """A share of images, ``0..1`` (``0.9``) or a percentage as text (``"90%"``); exact, never a float."""
    allowed = "a number 0..1 (e.g. 0.9) or a percentage such as '90%'"
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
            raise ValueError
        text = str(value).strip()
        rate = Decimal(text[:-1].strip()) / 100 if text.endswith("%") else Decimal(text)
    except (ArithmeticError, ValueError):
        raise FluxValidationError(field=name, value=value, allowed=allowed) from None
    if not rate.is_finite() or not 0 <= rate <= 1:
        raise FluxValidationError(field=name, value=value, allowed=allowed)
    return rate


def check_output_uri(value: Any, name: str = "output_uri", *, unless_templated: bool = False) -> Any:
    """``None`` (the default location), ``file:///abs``, an absolute path or ``s3://bucket[/prefix]``.

    A relative path is refused: it would be resolved against whatever directory the worker runs in.
    With ``unless_templated``, a value known only at run time is returned unchecked.
    """
    if value is None or (unless_templated and is_templated(value)):
        return value
    if not isinstance(value, str) or not value.strip():
        raise FluxValidationError(field=name, value=value, allowed=OUTPUT_URI_ALLOWED)
    if value.startswith("s3://"):
        bucket = urlsplit(value).netloc
        if not _BUCKET.match(bucket):
            raise FluxValidationError(
                field=name, value=value, allowed=f"{OUTPUT_URI_ALLOWED} (a valid bucket name after s3://)"
            )
        return value
    if value.startswith("file://"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise FluxValidationError(
                field=name, value=value, allowed=f"{OUTPUT_URI_ALLOWED} (file:// takes three slashes: file:///abs)"
            )
        return value
    if "://" in value and _object_store(value.split("://", 1)[0]):
        return value  # gs://conn@bucket/prefix, sftp://…: a filesystem an Airflow provider registered
    if "://" in value or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", value):
        raise FluxValidationError(
            field=name,
            value=value,
            allowed=f"{OUTPUT_URI_ALLOWED}, or a scheme an installed Airflow provider registers for ObjectStoragePath",
        )
    if not value.startswith("/"):
        raise FluxValidationError(
            field=name, value=value, allowed=f"{OUTPUT_URI_ALLOWED} (a relative path would depend on the worker's cwd)"
        )
    return value


def _object_store(scheme: str) -> bool:
    """Whether Airflow's ObjectStoragePath can open ``scheme://`` here (file and s3 have their own rules)."""
    if scheme in ("file", "s3") or not re.match(r"^[a-z][a-z0-9+.-]*$", scheme):
        return False
    try:
        from airflow_provider_flux2.storage.objectstore import has_filesystem

        return has_filesystem(scheme)
    except ImportError:
        return False


def check_image_urls(value: Any, name: str = "image_urls") -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        allowed = "a list of http(s) or data:image/ URLs, s3://bucket/key or local files"
        raise FluxValidationError(field=name, value=value, allowed=allowed)
    for index, url in enumerate(value):
        problem = image_url_problem(url)
        if problem is not None:
            raise FluxValidationError(field=f"{name}[{index}]", value=url, allowed=problem)
    return list(value)


def check_operator_arguments(operator: Any, *, rendered: bool = False) -> None:
    """Check the arguments an operator carries (those it has); templated ones only once ``rendered``."""

    def given(name: str) -> bool:
        if not hasattr(operator, name):
            return False
        value = getattr(operator, name)
        return value is not None and (rendered or not is_templated(value))

    for name in ("max_in_flight", "batch_size"):
        if given(name):
            check_int(name, getattr(operator, name), 1, 100 if name == "batch_size" else 1000)
    for name in ("resubmit_failed", "max_regenerations"):
        if given(name):
            check_int(name, getattr(operator, name), 0, 100)
    for name in ("timeout", "poll_interval"):
        if given(name):
            check_seconds(name, getattr(operator, name))
    if given("min_pass_rate"):
        check_pass_rate("min_pass_rate", operator.min_pass_rate)
    if given("progress_interval"):
        check_seconds("progress_interval", operator.progress_interval, allow_zero=True)
    for name in ("output_uri", "destination_uri", "latest_uri"):
        if given(name):
            check_output_uri(getattr(operator, name), name)
    if given("output_name_template"):
        from airflow_provider_flux2.storage.naming import check_template

        check_template(operator.output_name_template)
    if given("image_urls"):
        check_image_urls(operator.image_urls)
    check_generation_arguments(operator, given)
    if given("budget_usd"):
        from airflow_provider_flux2.pricing import Budget

        Budget.of(operator.budget_usd)


#: Operator arguments that are generation parameters, checked with the model when the DAG is parsed.
GENERATION_ARGUMENTS = (
    "image_size",
    "output_format",
    "seed",
    "safety_tolerance",
    "enable_safety_checker",
    "sync_mode",
    "colors",
    "num_inference_steps",
    "guidance_scale",
)
#: Parameters only some variants take: checked at parse time only when the model is known then.
VARIANT_ONLY = ("num_inference_steps", "guidance_scale", "safety_tolerance")


def check_generation_arguments(operator: Any, given: Any) -> None:
    """``model`` and the generation parameters an operator was given, checked as the API would take
    them (``model="klein"`` or ``image_size="1080p"`` fail when the DAG is parsed, naming the field and
    what is allowed). Templated values wait for the plan, when they are rendered; so does a check that
    needs the model when only the connection (or a template) names it."""
    from airflow_provider_flux2.models import build_input, resolve_variant

    model = resolve_variant(operator.model) if given("model") else None
    params = {name: getattr(operator, name) for name in GENERATION_ARGUMENTS if given(name)}
    if model is None:  # no model yet (the connection's, or templated): leave what depends on it
        params = {k: v for k, v in params.items() if k not in VARIANT_ONLY}
    if model is not None or params:
        build_input(model, prompt="(checked when the DAG is parsed)", **params)
