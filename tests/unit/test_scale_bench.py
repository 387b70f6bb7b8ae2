"""``make bench-scale``'s own checks (``benchmarks/scale_bench.py``): the figures' arithmetic, the SCALE line,
and the correctness checks — billed = planned, nothing twice, nothing lost, manifests = ledger — that must
fail a night when they are not met."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import scale_bench
from scale_bench import DAG_ID, Night, mean_latency_model, verify

RUN_ID = "manual__2026-12-07T01:00:00+00:00"
SCALE_LINE = re.compile(
    r"^SCALE frac=\d+\.\d{3} share_429=\d+\.\d{4} req_per_image=\d+\.\d{3} billed=\d+ planned=\d+ duplicates=\d+ "
    r"lost=\d+ tries=\d+ triggerer_rss_mb=\d+ db_bytes_per_image=\d+$"
)


def test_the_modelled_latency_of_a_1_mp_run():
    # queued 0.3–0.8, dispatching 0.2–0.7, a 5–10 s cold start on a fifth of the runs, 4 s + 1.5 s per MP
    assert mean_latency_model() == pytest.approx(0.55 + 0.45 + 0.2 * 7.5 + 4.0 + 1.5)


def test_the_scale_line_is_machine_readable_and_its_figures_add_up():
    night = Night(key="shipped", images=1000, cap=64, shards=4, wall_s=100.0, mean_latency_s=5.12)
    night.requests, night.rate_limited, night.billed = 1100, 11, 1000
    night.peak_rss, night.db_growth = {"triggerer-1": 300 * 2**20, "triggerer-2": 410 * 2**20}, 900_000
    assert night.ideal_s == pytest.approx(80.0) and night.frac == pytest.approx(0.8)
    line = night.line()
    assert SCALE_LINE.match(line), line
    assert "frac=0.800 share_429=0.0100 req_per_image=1.100" in line
    assert "triggerer_rss_mb=410 db_bytes_per_image=900" in line


def ledger_entry(shard: int, item: int, *, key: str | None = None, cost: str = "0.030") -> dict:
    ref = f"{DAG_ID}/{RUN_ID}/generate/{shard}/{item}"
    return {
        "kind": "run",
        "run_id": f"run-{shard}-{item}",
        "idempotency_key": key or f"key-{shard}-{item}",
        "client_ref": ref,
        "batch_id": None,
        "cost": cost,
        "latency_s": 8.0,
    }


def write_shard(output: Path, shard: int, count: int, *, skip: int | None = None, cost: str = "0.030") -> None:
    folder = output / DAG_ID / "run" / "generate" / str(shard)
    folder.mkdir(parents=True)
    for index in range(count):
        if index != skip:
            (folder / f"{index:05d}-{index:012x}.jpg").write_bytes(b"jpeg")
    rows = [{"index": i, "cost_usd": cost} for i in range(count)]
    (folder / "manifest.json").write_text(json.dumps({"run_id": RUN_ID, "images": rows}))


def deployment(tmp_path: Path, entries: list[dict]) -> SimpleNamespace:
    return SimpleNamespace(output=tmp_path, emu=SimpleNamespace(ledger=lambda: {"entries": entries}))


def night() -> Night:
    return Night(key="shipped", images=6, cap=64, shards=2)


def test_a_night_billed_once_per_image_stored_once_and_on_record_to_the_cent_passes(tmp_path):
    for shard in (0, 1):
        write_shard(tmp_path, shard, 3)
    checked = night()
    verify(deployment(tmp_path, [ledger_entry(s, i) for s in (0, 1) for i in range(3)]), RUN_ID, checked)
    assert checked.ok and (checked.billed, checked.stored, checked.lost, checked.duplicates) == (6, 6, 0, 0)
    assert checked.mean_latency_s == 8.0 and str(checked.ledger_usd) == str(checked.manifest_usd) == "0.180"


@pytest.mark.parametrize(
    ("entries", "skip", "problem"),
    [
        ([ledger_entry(s, i) for s in (0, 1) for i in range(3)][:-1], None, "5 billed runs for 6 planned images"),
        (
            [ledger_entry(s, i) for s in (0, 1) for i in range(3)] + [ledger_entry(1, 2, key="again")],
            None,
            "billed twice",
        ),
        ([ledger_entry(s, i) for s in (0, 1) for i in range(3)], 1, "1 images not stored exactly once"),
    ],
)
def test_a_night_that_paid_twice_billed_too_few_or_lost_an_image_fails(tmp_path, entries, skip, problem):
    write_shard(tmp_path, 0, 3)
    write_shard(tmp_path, 1, 3, skip=skip)
    checked = night()
    verify(deployment(tmp_path, entries), RUN_ID, checked)
    assert not checked.ok and any(problem in p for p in checked.problems), checked.problems


def test_a_manifest_off_the_ledger_by_a_cent_fails(tmp_path):
    write_shard(tmp_path, 0, 3)
    write_shard(tmp_path, 1, 3, cost="0.040")
    checked = night()
    verify(deployment(tmp_path, [ledger_entry(s, i) for s in (0, 1) for i in range(3)]), RUN_ID, checked)
    assert not checked.ok and any("manifests $0.210 ≠ ledger $0.180" in p for p in checked.problems)


def test_the_bench_exits_non_zero_when_a_night_fails(monkeypatch):
    assert scale_bench.NIGHTS == ("shipped", "no_limiter", "one_triggerer", "triggerer_kill")
    with pytest.raises(SystemExit):
        scale_bench.main(["--nights", "tonight"])  # an unknown night is refused before anything starts
