"""The adaptive request-rate limiter: no limit until a 429, then half the sending rate, growing back slowly;
a known limit from the first request; one limiter per connection and process."""

from __future__ import annotations

import pytest

from airflow_provider_flux2.ratelimit import MIN_RATE, AdaptiveRateLimiter, limiter_for


def send(limiter: AdaptiveRateLimiter, now: float, count: int, spacing: float) -> float:
    """Send ``count`` requests ``spacing`` apart, each after its wait; returns the clock after the last."""
    for _ in range(count):
        now += limiter.reserve(now)
        now += spacing
    return now


def test_no_limit_until_the_first_429():
    limiter = AdaptiveRateLimiter()
    assert all(limiter.reserve(100.0 + i * 0.001) == 0.0 for i in range(500))
    assert limiter.rate is None


def test_a_429_halves_what_was_being_sent_and_requests_then_wait_their_turn():
    limiter = AdaptiveRateLimiter()
    now = send(limiter, 0.0, 40, 0.05)  # 20 requests a second
    limiter.throttled(now)
    assert limiter.rate == pytest.approx(10.0, rel=0.1)
    start = now
    now = send(limiter, now, 50, 0.0)  # as fast as allowed
    assert (now - start) == pytest.approx(50 / limiter.rate, rel=0.15)


def test_every_further_429_halves_it_again_never_below_the_floor():
    limiter = AdaptiveRateLimiter()
    now = send(limiter, 0.0, 10, 0.1)
    for _ in range(20):
        limiter.throttled(now)
        now = send(limiter, now, 2, 0.0)
    assert limiter.rate < 2 * MIN_RATE and limiter.throttles == 20  # it grew a little while requests waited
    limiter.throttled(now)
    assert limiter.rate == MIN_RATE


def test_the_rate_grows_back_while_the_api_answers():
    limiter = AdaptiveRateLimiter()
    now = send(limiter, 0.0, 40, 0.05)
    limiter.throttled(now)
    cut = limiter.rate
    limiter.answered(now + 60)
    assert limiter.rate == pytest.approx(cut * (1 + 0.05 * 60))


def test_a_known_limit_paces_from_the_first_request_and_caps_the_growth():
    limiter = AdaptiveRateLimiter(max_rate=5.0)
    now = send(limiter, 0.0, 26, 0.0)
    assert now == pytest.approx(5.0, rel=0.05)  # 26 requests at 5 a second: 1 at once, 25 over 5 s
    limiter.answered(now + 3600)
    assert limiter.rate == 5.0


def test_one_limiter_per_connection_and_process():
    assert limiter_for("flux2_a", "https://api") is limiter_for("flux2_a", "https://api")
    assert limiter_for("flux2_a", "https://api") is not limiter_for("flux2_b", "https://api")
    assert limiter_for("flux2_c", "https://api", 3.0).max_rate == 3.0


def test_not_adaptive_a_429_is_counted_but_never_slows_the_connection():
    limiter = AdaptiveRateLimiter(adaptive=False)
    now = send(limiter, 0.0, 40, 0.05)
    limiter.throttled(now)
    assert limiter.throttles == 1 and limiter.rate is None
    assert all(limiter.reserve(now + i * 0.001) == 0.0 for i in range(100))
    capped = AdaptiveRateLimiter(max_rate=5.0, adaptive=False)
    capped.throttled(0.0)
    assert capped.rate == 5.0  # the known ceiling stays, no cut below it


def test_the_connection_extra_switches_the_adaptation_off():
    from airflow_provider_flux2.exceptions import FluxValidationError
    from airflow_provider_flux2.hooks.connection import FluxConnectionConfig

    def config(extra):
        return FluxConnectionConfig.build(api_key="k", base_url="http://127.0.0.1:1", extra=extra, conn_id="c")

    assert config({}).adaptive_rate_limit is True
    assert config({"adaptive_rate_limit": "false"}).adaptive_rate_limit is False
    with pytest.raises(FluxValidationError, match="adaptive_rate_limit"):
        config({"adaptive_rate_limit": "sometimes"})
    assert limiter_for("c", "u", adaptive=False) is limiter_for("c", "u", adaptive=False)
    assert limiter_for("c", "u", adaptive=False) is not limiter_for("c", "u")


def test_a_burst_refused_together_halves_the_rate_once():
    limiter = AdaptiveRateLimiter()
    now = send(limiter, 0.0, 40, 0.05)  # 20 requests a second
    sent = now
    for i in range(8):  # eight polls sent together, all refused
        limiter.throttled(now + 0.01 * i, sent_at=sent)
    assert limiter.rate == pytest.approx(10.0, rel=0.1) and limiter.throttles == 8
    limiter.throttled(now + 1.0, sent_at=now + 0.5)  # sent after the cut, and refused: a new cut
    assert limiter.rate < 6.0
