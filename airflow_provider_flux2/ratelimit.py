"""One adaptive request-rate limiter per connection and process: how fast this process may call the API.

Runflow limits requests per organisation (429 ``RATE_LIMITED``, with no ``Retry-After`` or
``X-RateLimit-*`` header) and documents no figure, so the provider learns it, as the AWS SDK's
``adaptive`` retry mode does: no limit until the first 429; then the rate is set to half what this
process was sending, and grows again slowly while the API answers; every further 429 halves it.
Requests wait for a token of a bucket filled at that rate. A connection that knows its limit sets
``max_requests_per_second``: the rate never goes above it, from the first request. A connection with
``adaptive_rate_limit: false`` keeps only that fixed ceiling, if any, and does not slow down on a 429
(for a proxy in front of the API that paces the requests itself, and for measuring what the limiter buys).

One limiter is shared by every trigger of a triggerer and every thread of a worker that use the same
connection (:func:`limiter_for`): ten tasks polling their batches slow down together instead of each
meeting its own 429s. Sans-I/O: :meth:`AdaptiveRateLimiter.reserve` says how long to wait, the
caller sleeps (``time.sleep`` or ``asyncio.sleep``).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

#: The lowest rate a run of 429s can bring the limiter to (requests per second).
MIN_RATE = 0.5
#: After a 429: the new rate, as a share of what was being sent.
BACKOFF = 0.5
#: While the API answers: the rate grows by this share of the rate it was cut to, per second.
GROWTH = 0.05
#: Seconds of sending over which the sending rate is measured.
WINDOW = 2.0


@dataclass
class AdaptiveRateLimiter:
    """A token bucket whose rate adapts to the API's 429s (see the module docstring).

    :param max_rate: the connection's ``max_requests_per_second`` (``None``: learned from 429s only).
    :param adaptive: whether a 429 cuts the rate (the connection's ``adaptive_rate_limit``).
    """

    max_rate: float | None = None
    adaptive: bool = True
    rate: float | None = field(init=False, default=None)  # None: not limiting
    throttles: int = field(init=False, default=0)
    _floor: float = field(init=False, default=MIN_RATE)  # the rate of the last cut, for the growth step
    _tokens: float = field(init=False, default=1.0)
    _filled_at: float | None = field(init=False, default=None)
    _grown_at: float | None = field(init=False, default=None)
    _cut_at: float | None = field(init=False, default=None)  # when the rate was last cut
    _sent: deque[float] = field(init=False, default_factory=deque)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.max_rate is not None:
            self.rate = self.max_rate

    def reserve(self, now: float) -> float:
        """Take a token for one request sent at ``now`` + the returned wait (seconds; 0 when none)."""
        with self._lock:
            self._sent.append(now)
            while self._sent and self._sent[0] < now - WINDOW:
                self._sent.popleft()
            if self.rate is None:
                return 0.0
            self._grow(now)
            if self._filled_at is not None:
                self._tokens = min(max(1.0, self.rate), self._tokens + (now - self._filled_at) * self.rate)
            self._filled_at = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def throttled(self, now: float, *, sent_at: float | None = None) -> None:
        """The API answered 429 to a request sent at ``sent_at``: cut the rate to half what was being sent
        (never below :data:`MIN_RATE`).

        A 429 to a request sent before the last cut says nothing new — it was sent at the pace already
        cut — so it does not cut again: eight polls of one burst refused together halve the rate once,
        not eight times.
        """
        with self._lock:
            self.throttles += 1
            if not self.adaptive:
                return
            if sent_at is not None and self._cut_at is not None and sent_at <= self._cut_at:
                return
            self._cut_at = now
            sending = len(self._sent) / WINDOW if self._sent else MIN_RATE
            current = min(self.rate, sending) if self.rate is not None else sending
            self.rate = max(MIN_RATE, current * BACKOFF)
            self._floor, self._grown_at = self.rate, now
            self._tokens = min(self._tokens, 0.0)  # the next request waits for a fresh token
            self._filled_at = now

    def answered(self, now: float) -> None:
        """The API answered (not a 429): the rate may grow."""
        with self._lock:
            self._grow(now)

    def _grow(self, now: float) -> None:
        if self.rate is None or self._grown_at is None:
            return
        self.rate += GROWTH * self._floor * max(0.0, now - self._grown_at)
        self._grown_at = now
        if self.max_rate is not None:
            self.rate = min(self.rate, self.max_rate)


_LIMITERS: dict[tuple[str, str], AdaptiveRateLimiter] = {}
_REGISTRY = threading.Lock()


def limiter_for(
    conn_id: str, base_url: str, max_rate: float | None = None, *, adaptive: bool = True
) -> AdaptiveRateLimiter:
    """The process's limiter for a connection (one per connection id and API URL)."""
    with _REGISTRY:
        limiter = _LIMITERS.get((conn_id, base_url))
        if limiter is None or limiter.max_rate != max_rate or limiter.adaptive != adaptive:
            limiter = _LIMITERS[(conn_id, base_url)] = AdaptiveRateLimiter(max_rate, adaptive)
        return limiter


def forget_rates() -> None:
    """Forget what this process learned of every API's rate (its limiters start again at no limit). For a
    process reused for unrelated work — a test session, each test a night of its own."""
    with _REGISTRY:
        _LIMITERS.clear()


__all__ = ["AdaptiveRateLimiter", "forget_rates", "limiter_for"]
