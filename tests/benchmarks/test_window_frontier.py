"""The window's speed/requests model (benchmarks/window_frontier.py): it runs the shipped window to the end."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import window_frontier


def test_every_image_finishes_and_every_request_is_counted():
    outcome = window_frontier.simulate(64, max_in_flight=8, batch_size=1, poll_interval=1.0)
    assert outcome.images == 64
    # single runs: a submission, at least one poll and a download per image, plus one items read per "batch"
    assert outcome.per_image >= 3
    assert 0.3 < outcome.of_ideal <= 1.0
    assert outcome.lag_p95 >= 0


def test_batches_cost_fewer_requests_and_more_time_than_single_runs():
    single = window_frontier.simulate(256, max_in_flight=16, batch_size=1, poll_interval=2.0)
    batched = window_frontier.simulate(256, max_in_flight=16, batch_size=16, poll_interval=2.0)
    assert batched.per_image < single.per_image
    assert batched.of_ideal < single.of_ideal


def test_the_table_is_written_between_its_markers(tmp_path):
    page = tmp_path / "performance.md"
    page.write_text(f"# P\n\n{window_frontier.START}\nold\n{window_frontier.END}\n\nafter\n")
    rows = window_frontier.frontier(40, 8, [2], [2.0], 1)
    window_frontier.write_docs(window_frontier.table(rows, 8), page)
    text = page.read_text()
    assert "old" not in text and "| 2 (shipped) | 2 |" in text and text.endswith("after\n")
