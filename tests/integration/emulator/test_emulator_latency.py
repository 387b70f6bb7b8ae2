"""The latency model, the fleet's slots, and the in-flight statistics tests rely on."""

from __future__ import annotations

import time
from datetime import datetime

import pytest


def _instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_fleet_size_keeps_extra_runs_queued(api):
    api.emulator.configure(fleet_size=2, latency={"queued": 0, "dispatching": 0, "running": 0.8})
    run_ids = [api.create_run(f"fleet {i}").json()["id"] for i in range(4)]
    statuses = [api.get_run(run_id)["status_code"] for run_id in run_ids]
    assert statuses == ["running", "running", "queued", "queued"]
    runs = [api.wait(run_id) for run_id in run_ids]
    assert all(run["status_code"] == "succeeded" for run in runs)
    # The last two started only when the first two freed their slots.
    assert _instant(runs[2]["started_at"]) >= _instant(runs[0]["completed_at"]) - 0.002
    stats = api.emulator.stats()
    assert stats["max_running_runs"] == 2
    assert stats["max_concurrent_runs"] == 4


def test_max_concurrent_runs_is_the_peak_of_runs_in_flight(api):
    for i in range(3):
        api.run(f"one at a time {i}")
    assert api.emulator.stats()["max_concurrent_runs"] == 1
    api.emulator.configure(latency={"queued": 2.0, "dispatching": 0, "running": 0})
    for i in range(3):
        api.create_run(f"together {i}")
    assert api.emulator.stats()["max_concurrent_runs"] == 3


def test_fast_profile_runs_finish_within_about_100_ms(api):
    run = api.run("quick", image_size={"width": 2048, "height": 2048})
    assert _instant(run["completed_at"]) - _instant(run["created_at"]) < 0.12


def test_time_scale_stretches_every_phase(api):
    api.emulator.configure(time_scale=10)
    run = api.run("slow motion")
    assert _instant(run["completed_at"]) - _instant(run["created_at"]) > 0.25


@pytest.mark.timeout(30)
def test_realistic_profile_cold_starts_and_grows_with_megapixels(api):
    api.emulator.configure(profile="realistic", time_scale=0.02, cold_start_fraction=1.0)
    small = api.create_run("small", image_size="square_hd").json()["id"]
    large = api.create_run("large", image_size={"width": 4096, "height": 4096}).json()["id"]
    small_run, large_run = api.wait(small), api.wait(large)
    for run in (small_run, large_run):
        # Queue (0.3–0.8 s), dispatch (0.2–0.7 s) and a 5–10 s cold start, all × 0.02.
        waited = _instant(run["started_at"]) - _instant(run["created_at"])
        assert 0.02 * 5.5 <= waited <= 0.02 * 11.5 + 0.01
    # Generation: (4 s + 1.5 s per MP) ± 15%, × 0.02 → about 110 ms for 1 MP and 560 ms for 16 MP.
    assert 0.02 * 5.5 * 0.85 * 1000 - 2 <= small_run["duration_ms"] <= 0.02 * 5.5 * 1.15 * 1000 + 2
    assert large_run["duration_ms"] > 3 * small_run["duration_ms"]


def test_pinned_latency_is_exact(api):
    api.emulator.configure(latency={"queued": 0.05, "dispatching": 0.05, "running": 0.1})
    run = api.run("pinned")
    assert _instant(run["started_at"]) - _instant(run["created_at"]) == pytest.approx(0.1, abs=0.002)
    assert run["duration_ms"] == 100


def test_cold_start_fraction_zero_means_no_cold_starts(api):
    api.emulator.configure(profile="realistic", time_scale=0.01, cold_start_fraction=0.0)
    started = time.monotonic()
    run = api.run("warm")
    assert _instant(run["started_at"]) - _instant(run["created_at"]) < 0.02
    assert time.monotonic() - started < 2
