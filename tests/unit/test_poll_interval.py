from __future__ import annotations

import pytest

from airflow_provider_flux2.hooks.flux import adaptive_poll_interval, expected_duration


def test_expected_duration_grows_with_megapixels():
    assert expected_duration(1024, 1024) == 5.5
    assert expected_duration(4096, 4096) == 28.0


@pytest.mark.parametrize(
    ("expected", "interval"),
    [(5.5, 4.0), (10.0, 5.0), (28.0, 8.0)],  # 2 × base, expected / 2, capped at 4 × base
)
def test_a_queue_is_polled_slowly(expected, interval):
    assert adaptive_poll_interval(["queued"], base=2.0, elapsed=0.0, expected=expected) == interval


def test_running_runs_far_from_their_end_are_polled_every_half_of_the_time_left():
    assert adaptive_poll_interval(["running", "queued"], base=2.0, elapsed=0.0, expected=28.0) == 8.0
    assert adaptive_poll_interval(["running"], base=2.0, elapsed=16.0, expected=28.0) == 6.0


def test_near_their_expected_end_runs_are_polled_every_base_and_never_faster():
    assert adaptive_poll_interval(["running"], base=2.0, elapsed=3.0, expected=5.5) == 2.0
    assert adaptive_poll_interval(["dispatching"], base=2.0, elapsed=60.0, expected=5.5) == 2.0
    assert adaptive_poll_interval([], base=2.0, elapsed=0.0, expected=5.5) == 2.0
    for elapsed in range(0, 40):
        for status in ("queued", "dispatching", "running"):
            assert 2.0 <= adaptive_poll_interval([status], base=2.0, elapsed=elapsed, expected=28.0) <= 8.0
