"""When a run moves from phase to phase: the latency model and the fleet's slots.

Every instant of a run's life is decided when it is created, so its status can be derived from the
clock alone (no background loop advances runs): ``queued`` until ``dispatch``, ``dispatching``
until ``start``, ``running`` until ``end``, then terminal.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass

from airflow_provider_flux2.emulator.config import EmulatorConfig


@dataclass(frozen=True)
class ProfileTimes:
    """Seconds per phase for one profile (before ``time_scale``); ranges are sampled uniformly."""

    queued: tuple[float, float]
    dispatching: tuple[float, float]
    cold_start: tuple[float, float]
    run_base: float
    run_per_mp: float
    jitter: float


PROFILES: dict[str, ProfileTimes] = {
    # Tens of milliseconds per phase so a test's run is done in well under 100 ms; no cold starts.
    "fast": ProfileTimes(
        queued=(0.005, 0.015),
        dispatching=(0.005, 0.015),
        cold_start=(0.0, 0.0),
        run_base=0.02,
        run_per_mp=0.002,
        jitter=0.15,
    ),
    # The seed page: cold starts of 5–10 s (not billed), generation growing with the megapixels.
    "realistic": ProfileTimes(
        queued=(0.3, 0.8),
        dispatching=(0.2, 0.7),
        cold_start=(5.0, 10.0),
        run_base=4.0,
        run_per_mp=1.5,
        jitter=0.15,
    ),
}


@dataclass(frozen=True)
class Phases:
    """Durations in seconds of one run's phases (``cold_start`` is spent while dispatching)."""

    queued: float
    dispatching: float
    running: float
    cold_start: float = 0.0


def sample_phases(config: EmulatorConfig, megapixels: int, rng: random.Random) -> Phases:
    """Draw one run's phase durations from the profile, scaled by ``time_scale``.

    Durations pinned in ``config.latency`` are used as given (not scaled): a test pins them to know
    exactly when a run changes state. A pinned ``cold_start`` still only happens on
    ``cold_start_fraction`` of the runs.

    :param config: the emulator's configuration.
    :param megapixels: billed megapixels of the output (generation time grows with them).
    :param rng: the emulator's random source.
    """
    times = PROFILES[config.profile]
    pinned = config.latency or {}
    scale = config.time_scale
    jitter = rng.uniform(1 - times.jitter, 1 + times.jitter)
    cold = rng.random() < config.cold_start_fraction
    return Phases(
        queued=pinned.get("queued", rng.uniform(*times.queued) * scale),
        dispatching=pinned.get("dispatching", rng.uniform(*times.dispatching) * scale),
        running=pinned.get("running", (times.run_base + times.run_per_mp * megapixels) * jitter * scale),
        cold_start=(pinned.get("cold_start", rng.uniform(*times.cold_start) * scale) if cold else 0.0),
    )


@dataclass(frozen=True)
class Timeline:
    """The instants (epoch seconds) at which a run enters each phase."""

    created: float
    dispatch: float
    start: float
    end: float
    cold_start: float = 0.0
    #: Seconds the run waited ``queued`` for a slot under the model's concurrency cap (beyond its own queue time).
    cap_wait: float = 0.0

    @property
    def latency(self) -> float:
        """The run's own time at the API, created to finished, without the wait for a slot under the cap."""
        return self.end - self.created - self.cap_wait

    def phase_at(self, now: float) -> str:
        """``queued``, ``dispatching``, ``running`` or ``ended``."""
        if now < self.dispatch:
            return "queued"
        if now < self.start:
            return "dispatching"
        if now < self.end:
            return "running"
        return "ended"


class Fleet:
    """At most ``size`` runs in ``running`` at once; ``None`` is an unlimited fleet.

    Slots are handed out in creation order from a heap of the instants each slot becomes free,
    so a busy fleet keeps new runs ``queued`` (the protocol's behaviour) instead of refusing them.
    """

    def __init__(self, size: int | None, busy_until: Iterable[float] = ()) -> None:
        self.size = size
        ends = sorted(busy_until, reverse=True)
        # A smaller fleet keeps the slots that stay busy longest: those runs are still running.
        self._free: list[float] = ends[:size] if size is not None else []
        heapq.heapify(self._free)

    def place(self, created: float, phases: Phases) -> Timeline:
        """Schedule a run created at ``created`` and return its timeline (occupying a slot)."""
        lead = phases.dispatching + phases.cold_start
        ready = created + phases.queued + lead
        start = ready
        if self.size is not None:
            if len(self._free) >= self.size:
                start = max(ready, heapq.heappop(self._free))
            heapq.heappush(self._free, start + phases.running)
        return Timeline(
            created=created,
            dispatch=start - lead,
            start=start,
            end=start + phases.running,
            cold_start=phases.cold_start,
            cap_wait=start - ready,
        )


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of half-open ``[begin, end)`` intervals that hold at one instant."""
    events = []
    for begin, end in intervals:
        events.append((begin, 1))
        events.append((end, -1))
    # At equal instants an end sorts before a begin: a run that finishes as another is created
    # was not in flight at the same time.
    events.sort()
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
