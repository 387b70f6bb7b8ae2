"""The latency model, the fleet's slots and the peak-overlap count."""

from __future__ import annotations

import random

import pytest

from airflow_provider_flux2.emulator.config import parse_config
from airflow_provider_flux2.emulator.schedule import Fleet, Phases, Timeline, peak_overlap, sample_phases


def test_timeline_phases():
    timeline = Timeline(created=0, dispatch=1, start=2, end=3)
    assert [timeline.phase_at(t) for t in (0, 0.99, 1, 1.5, 2, 2.99, 3, 10)] == [
        "queued", "queued", "dispatching", "dispatching", "running", "running", "ended", "ended"
    ]  # fmt: skip


def test_unlimited_fleet_starts_every_run_when_ready():
    fleet = Fleet(None)
    phases = Phases(queued=1, dispatching=1, running=5)
    timelines = [fleet.place(0, phases) for _ in range(10)]
    assert {(t.dispatch, t.start, t.end) for t in timelines} == {(1, 2, 7)}


def test_full_fleet_keeps_runs_queued_until_a_slot_frees():
    fleet = Fleet(2)
    phases = Phases(queued=0, dispatching=1, running=10, cold_start=2)
    first, second, third, fourth, fifth = (fleet.place(0, phases) for _ in range(5))
    assert (first.start, second.start) == (3, 3)
    assert third.start == fourth.start == 13  # when the first two end
    assert third.dispatch == 10  # still queued until it can be dispatched in time for its slot
    assert fifth.start == 23
    assert peak_overlap((t.start, t.end) for t in (first, second, third, fourth, fifth)) == 2


def test_a_smaller_fleet_keeps_the_slots_busy_longest():
    fleet = Fleet(1, busy_until=[5, 9, 7])
    assert fleet.place(0, Phases(0, 0, 1)).start == 9


def test_peak_overlap_treats_intervals_as_half_open():
    assert peak_overlap([]) == 0
    assert peak_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert peak_overlap([(0, 3), (1, 2), (1.5, 4), (3, 5)]) == 3


def test_fast_profile_is_tens_of_milliseconds():
    config = parse_config({"profile": "fast"})
    rng = random.Random(1)
    for mp in (1, 4, 16):
        for _ in range(50):
            p = sample_phases(config, mp, rng)
            assert p.queued <= 0.015 and p.dispatching <= 0.015 and p.cold_start == 0
            assert p.queued + p.dispatching + p.running < 0.1


def test_realistic_profile_cold_starts_on_a_fraction_and_grows_with_megapixels():
    config = parse_config({"profile": "realistic"})
    rng = random.Random(2)
    samples = [sample_phases(config, 1, rng) for _ in range(2000)]
    cold = [p.cold_start for p in samples if p.cold_start]
    assert 0.15 < len(cold) / len(samples) < 0.25
    assert all(5 <= c <= 10 for c in cold)
    assert all(0.5 <= p.queued + p.dispatching <= 1.5 for p in samples)
    mean_1 = sum(p.running for p in samples) / len(samples)
    mean_16 = sum(sample_phases(config, 16, rng).running for _ in range(500)) / 500
    assert mean_1 == pytest.approx(5.5, rel=0.05)
    assert mean_16 == pytest.approx(28, rel=0.05)


def test_time_scale_multiplies_and_pinned_latency_is_exact():
    rng = random.Random(3)
    scaled = sample_phases(parse_config({"profile": "realistic", "time_scale": 0.01}), 1, rng)
    assert scaled.running < 0.07
    pinned = sample_phases(
        parse_config({"time_scale": 5, "latency": {"queued": 0.5, "dispatching": 0, "running": 2}}), 16, rng
    )
    assert (pinned.queued, pinned.dispatching, pinned.running) == (0.5, 0, 2)


def test_pinned_cold_start_follows_the_fraction():
    config = parse_config({"latency": {"cold_start": 3}, "cold_start_fraction": 1.0})
    assert sample_phases(config, 1, random.Random(0)).cold_start == 3
    config = parse_config({"latency": {"cold_start": 3}, "cold_start_fraction": 0.0})
    assert sample_phases(config, 1, random.Random(0)).cold_start == 0
