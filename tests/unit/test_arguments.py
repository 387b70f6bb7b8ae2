"""arguments.py: every operator argument checked before anything is sent, naming the field and what is allowed."""

from __future__ import annotations

import warnings
from decimal import Decimal

import pytest
from airflow.exceptions import AirflowProviderDeprecationWarning

from airflow_provider_flux2.arguments import (
    check_image_urls,
    check_int,
    check_output_uri,
    check_pass_rate,
    check_seconds,
    is_templated,
    renamed_argument,
)
from airflow_provider_flux2.exceptions import FluxValidationError


def test_known_only_at_run_time():
    assert is_templated("{{ params.shards }}") and is_templated(["a", "{% if x %}b{% endif %}"])
    assert is_templated({"prompt": "{{ ds }}"}) and is_templated(object())  # an XComArg, say
    assert not is_templated("a red cube") and not is_templated([1, 2.5, Decimal("1")]) and not is_templated({})


def test_whole_numbers_are_numbers_not_text_nor_booleans():
    assert check_int("max_in_flight", 8, 1, 500) == 8
    for bad in ("8", True, 0, 501, 2.0):
        with pytest.raises(FluxValidationError, match=r"max_in_flight.*a whole number 1\.\.500"):
            check_int("max_in_flight", bad, 1, 500)


def test_seconds_are_finite_and_positive_unless_zero_is_allowed():
    assert check_seconds("timeout", 30) == 30.0 and check_seconds("delay", 0, allow_zero=True) == 0.0
    for bad in (0, -1, float("inf"), float("nan"), "30", 31 * 86400):
        with pytest.raises(FluxValidationError, match="timeout"):
            check_seconds("timeout", bad)


@pytest.mark.parametrize(("given", "rate"), [(0.9, "0.9"), ("90%", "0.9"), (" 95 % ", "0.95"), (1, "1"), (0, "0")])
def test_a_pass_rate_is_a_share_or_a_percentage(given, rate):
    assert check_pass_rate("min_pass_rate", given) == Decimal(rate)


@pytest.mark.parametrize("bad", [1.5, "110%", "-1", "ninety", True, None, float("nan")])
def test_anything_else_is_not_a_pass_rate(bad):
    with pytest.raises(FluxValidationError, match="min_pass_rate"):
        check_pass_rate("min_pass_rate", bad)


@pytest.mark.parametrize("good", [None, "file:///data/flux", "/data/flux", "s3://my-bucket/nightly"])
def test_output_locations_a_worker_can_resolve(good):
    assert check_output_uri(good) == good


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("images/out", "relative path"),
        ("file://data/flux", "three slashes"),
        ("s3://A_Bad_Bucket!", "valid bucket name"),
        ("ftp2://nowhere/x", "scheme an installed Airflow provider registers"),
        ("", "file:///absolute/path"),
    ],
)
def test_output_locations_that_would_surprise_are_refused(bad, hint):
    with pytest.raises(FluxValidationError, match=hint):
        check_output_uri(bad)
    assert check_output_uri("{{ var.value.out }}", unless_templated=True) == "{{ var.value.out }}"


def test_reference_urls_are_checked_one_by_one_naming_the_index():
    assert check_image_urls(["https://example.com/a.png"]) == ["https://example.com/a.png"]
    with pytest.raises(FluxValidationError, match=r"image_urls\[1\]"):
        check_image_urls(["https://example.com/a.png", "ftp://example.com/b.png"])
    with pytest.raises(FluxValidationError, match="a list of"):
        check_image_urls("https://example.com/a.png")


def test_an_old_argument_name_still_works_with_a_warning_and_a_clash_is_an_error():
    with pytest.warns(AirflowProviderDeprecationWarning, match="`on_run_failure` is deprecated; use `on_failure`"):
        assert renamed_argument("Op", "on_run_failure", "on_failure", "skip", "fail", "fail") == "skip"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed_argument("Op", "on_run_failure", "on_failure", None, "skip", "fail") == "skip"
    with pytest.warns(AirflowProviderDeprecationWarning), pytest.raises(FluxValidationError, match="on_failure"):
        renamed_argument("Op", "on_run_failure", "on_failure", "skip", "retry", "fail")
