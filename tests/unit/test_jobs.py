"""The job's home: plans, typed progress, and the worker's concurrent collect (against the emulator)."""

from __future__ import annotations

import json
import logging
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_flux2.exceptions import FluxError
from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.jobs import Plan, Progress, collect, collect_workers, default_chunk_size, new_job
from airflow_provider_flux2.models import Variant, build_input
from airflow_provider_flux2.pricing import Budget, estimate
from airflow_provider_flux2.storage import BatchLocation
from airflow_provider_flux2.storage.local import LocalPublisher
from airflow_provider_flux2.window import JobState

IDENTITY = {"dag_id": "catalogue", "task_id": "generate", "run_id": "scheduled__2026-12-01", "map_index": -1}
LOCATION = BatchLocation(dag_id="catalogue", run_id="scheduled__2026-12-01", task_id="generate")


def plan_of(count: int, size: str = "square", budget: str | None = None, chunk: int = 4) -> Plan:
    jobs = [
        new_job(IDENTITY, i, Variant.PRO, build_input(Variant.PRO, prompt=f"mug {i}", image_size=size))
        for i in range(count)
    ]
    return Plan.of(jobs, estimate([(j.variant, j.request) for j in jobs]), chunk, Budget.of(budget))


def test_the_plan_line_says_count_megapixels_money_budget_and_window():
    plan = plan_of(1000, size="1920x1080", budget="50")
    assert plan.line(32) == "Plan: 1,000 images · 2,000 MP · $45.00 of $50.00 budget · max 32 in flight"
    assert plan_of(1).line(8) == "Plan: 1 image · 1 MP · $0.03, no budget · max 8 in flight"


def test_chunks_are_a_quarter_of_the_window_unless_told_and_never_past_the_batch_limit():
    assert default_chunk_size(32, None, True) == 8
    assert default_chunk_size(3, None, True) == 1
    assert default_chunk_size(32, 12, True) == 12
    assert default_chunk_size(1000, 500, True) == 100
    assert default_chunk_size(32, 12, False) == 1


def test_fewer_images_are_collected_at_once_when_they_are_large():
    assert collect_workers(plan_of(3).jobs) == 8  # 512×512
    assert collect_workers(plan_of(3, size="4096x4096").jobs) == 4  # 16.8 MP: 134 MB each at most
    assert collect_workers([]) == 1


def test_chunks_and_keys_are_fixed_by_index():
    plan = plan_of(10, chunk=4)
    assert [len(plan.chunk(n)) for n in range(plan.chunks)] == [4, 4, 2]
    assert plan.batch_keys() == plan_of(10, chunk=4).batch_keys()
    assert len(set(plan.batch_keys())) == 3


def test_progress_of_a_thousand_images_stays_under_airflows_state_store_limit():
    digest = "0123456789abcdef" * 4
    stored = {
        str(i): (f"s3://team-bucket/flux2/nightly_refresh/2026-12-01T02-00-00/{i:05d}-sku-{i:06d}.jpg", digest)
        for i in range(1000)
    }
    progress = Progress.of("d" * 64, [f"batch_{k:024d}" for k in range(125)], stored)
    size = len(json.dumps(progress.model_dump(mode="json")))
    assert size < 65535, size  # [state_store] max_value_storage_bytes' default
    assert progress.root == "s3://team-bucket/flux2/nightly_refresh/2026-12-01T02-00-00/"
    assert progress.objects()["7"] == (stored["7"][0], digest[:16])
    assert Progress.of("p", [], {"0": ("a b.jpg", digest)}).objects() == {"0": ("a b.jpg", digest[:16])}


def test_progress_is_checked_on_load(caplog):
    plan = plan_of(3)
    saved = Progress.of(plan.digest, ["b1"], {"0": ("file:///x/00000-ab.jpg", "ab")})
    assert Progress.load(saved.model_dump(mode="json"), plan) == saved
    assert saved.objects() == {"0": ("file:///x/00000-ab.jpg", "ab")}
    with caplog.at_level(logging.WARNING):
        assert Progress.load({"version": 1, "plan": plan.digest, "inflight": {}}, plan) is None
        assert Progress.load(saved.model_dump(mode="json"), plan_of(4)) is None
    assert "unknown shape" in caplog.text and "different plan" in caplog.text


class CountingPublisher(LocalPublisher):
    """A local folder that is slow to write and counts how many writes overlap."""

    def __init__(self, base_uri: str) -> None:
        super().__init__(base_uri)
        self.lock = threading.Lock()
        self.active = self.peak = self.writes = 0

    def _put(self, uri, data, content_type, metadata):
        with self.lock:
            self.active += 1
            self.writes += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.05)
        try:
            super()._put(uri, data, content_type, metadata)
        finally:
            with self.lock:
                self.active -= 1


def finished_states(hook: FluxHook, plan: Plan) -> dict[int, JobState]:
    """Submit the plan's chunks as batches and wait until every run has finished (what the trigger does)."""
    states = {}
    for number in range(plan.chunks):
        chunk = plan.chunk(number)
        done = hook.create_batch(
            [job.entry(1) for job in chunk], model=Variant.PRO, batch_key=plan.batch_keys()[number], metadata=None
        )
        for job, run_id in zip(chunk, done.run_ids, strict=True):
            states[job.index] = JobState(job.index, phase="done", run_id=run_id, batch_id=done.batch_id)
    for state in states.values():
        state.status = hook.wait(state.run_id or "", timeout=30, poll_interval=0.02).status_code.value
    return states


def test_collect_stores_every_finished_image_concurrently_with_one_items_read_per_batch(
    emulator, tmp_path, monkeypatch
):
    monkeypatch.setattr("airflow_provider_flux2.jobs.CHECKPOINT_EVERY", 5)
    checkpoints: list[int] = []
    hook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
    plan = plan_of(12, chunk=4)
    states = finished_states(hook, plan)
    before = emulator.stats()["requests"]
    publisher = CountingPublisher(tmp_path.as_uri())
    collected = collect(
        hook,
        plan,
        states,
        publisher,
        LOCATION,
        on_moderation="fail",
        progress=None,
        workers=4,
        checkpoint=lambda done: checkpoints.append(len(done.records)),
    )
    after = emulator.stats()["requests"]
    records = [collected.records[i] for i in range(12)]
    assert all(r.status == "succeeded" and r.uri and Path(r.uri[7:]).is_file() for r in records)
    assert sum(Decimal(r.cost_usd) for r in records) == Decimal("0.360")
    assert after["get_batch_items"] - before.get("get_batch_items", 0) == 3  # one read per batch
    assert after.get("get_run", 0) == before.get("get_run", 0)  # no run read one by one
    assert 1 < publisher.peak <= 4  # concurrent, and bounded by the pool
    assert checkpoints == [5, 10]  # what is stored is recorded as it goes, not only at the end


def test_collect_keeps_intact_objects_and_stores_missing_or_changed_ones_again(emulator, tmp_path):
    hook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
    plan = plan_of(5, chunk=5)
    states = finished_states(hook, plan)
    publisher = CountingPublisher(tmp_path.as_uri())
    first = collect(hook, plan, states, publisher, LOCATION, on_moderation="fail", progress=None)
    progress = Progress.of(
        plan.digest, [], {str(i): (r.uri or "", r.content_hash or "") for i, r in first.records.items()}
    )
    original = {i: Path(r.uri[7:]).read_bytes() for i, r in first.records.items() if r.uri}
    Path(first.records[1].uri[7:]).unlink()
    Path(first.records[3].uri[7:]).write_bytes(b"someone else's bytes")
    downloads = emulator.stats()["requests"]["download"]
    writes = publisher.writes

    again = collect(hook, plan, states, publisher, LOCATION, on_moderation="fail", progress=progress)
    assert sorted(again.kept) == [0, 2, 4] and sorted(again.restored) == [1, 3]
    assert emulator.stats()["requests"]["download"] - downloads == 2  # only what was missing or changed
    assert publisher.writes - writes == 2
    assert {i: Path(r.uri[7:]).read_bytes() for i, r in again.records.items()} == original
    assert [again.records[i].content_hash for i in range(5)] == [first.records[i].content_hash for i in range(5)]


@pytest.mark.parametrize("fault_count", [1, 2])
def test_collect_fetches_an_image_again_when_its_url_keeps_expiring(emulator, tmp_path, fault_count):
    # Each download() refreshes an expired URL twice; three expiries in a row outlast one call.
    emulator.faults({"rules": [{"endpoint": "download", "fault": "url_expired", "count": 3 * fault_count}]})
    hook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
    plan = plan_of(2, chunk=2)
    states = finished_states(hook, plan)
    collected = collect(
        hook,
        plan,
        states,
        LocalPublisher(tmp_path.as_uri()),
        LOCATION,
        on_moderation="fail",
        progress=None,
        sleep=lambda _: None,
    )
    assert [collected.records[i].status for i in range(2)] == ["succeeded", "succeeded"]


class BrokenForOne(LocalPublisher):
    """A store that refuses image 2 for good (not an error worth retrying)."""

    def _put(self, uri, data, content_type, metadata):
        if "/00002-" in uri:
            raise PermissionError("bucket policy denies this key")
        super()._put(uri, data, content_type, metadata)


def test_one_image_that_cannot_be_stored_fails_the_collect_after_the_others_are_stored_and_recorded(emulator, tmp_path):
    hook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
    plan = plan_of(5, chunk=5)
    states = finished_states(hook, plan)
    recorded: list[list[int]] = []
    with pytest.raises(PermissionError, match="bucket policy"):
        collect(
            hook,
            plan,
            states,
            BrokenForOne(tmp_path.as_uri()),
            LOCATION,
            on_moderation="fail",
            progress=None,
            sleep=lambda _: None,
            checkpoint=lambda done: recorded.append(sorted(done.records)),
        )
    assert recorded[-1] == [0, 1, 3, 4]  # what was stored is recorded before the task fails
    assert len(list(tmp_path.rglob("0000[0-9]-*.jpg"))) == 4


def test_a_batch_that_cannot_be_read_fails_its_images_only_after_the_other_batches_are_stored(emulator, tmp_path):
    hook = FluxHook(api_key=emulator.api_key, base_url=emulator.base_url)
    plan = plan_of(6, chunk=3)
    states = finished_states(hook, plan)
    emulator.faults({"rules": [{"endpoint": "get_batch_items", "fault": "http_error", "status": 403, "count": 1}]})
    recorded: list[list[int]] = []
    with pytest.raises(FluxError, match="403"):
        collect(
            hook,
            plan,
            states,
            LocalPublisher(tmp_path.as_uri()),
            LOCATION,
            on_moderation="fail",
            progress=None,
            workers=1,  # the batches one after the other: the first read is the refused one
            sleep=lambda _: None,
            checkpoint=lambda done: recorded.append(sorted(done.records)),
        )
    assert recorded[-1] == [3, 4, 5]  # the other batch's images are stored and recorded before the task fails
    assert len(list(tmp_path.rglob("0000[0-9]-*.jpg"))) == 3


# -- one record form for every job, collected or not ------------------------------------------------


def test_a_job_with_nothing_collected_gets_a_pending_record_saying_why_and_what_it_cost():
    from airflow_provider_flux2.jobs import records
    from airflow_provider_flux2.pricing import billed_total

    plan = plan_of(5)
    states = {
        0: JobState(index=0, phase="in_flight", run_id="run-0", batch_id="b-1", status="running"),
        1: JobState(index=1, phase="done", run_id="run-1", batch_id="b-1", status="succeeded", cost=Decimal("0.045")),
        2: JobState(index=2, phase="stopped", stopped="budget"),
        3: JobState(index=3, phase="stopped", stopped="refused"),
    }
    out = records(plan, states, {})
    assert [r.index for r in out] == [0, 1, 2, 3, 4]
    assert {r.status for r in out} == {"pending"}
    codes = [r.failure_code for r in out]
    assert codes == ["STILL_RUNNING", "NOT_STORED", "BUDGET_STOPPED", "REFUSED", "NOT_SENT"]
    assert out[0].run_id == "run-0" and out[0].batch_id == "b-1" and out[4].run_id is None
    # Only the image the API finished and billed (but that was not stored) costs anything: what it reported.
    assert [r.cost_usd for r in out] == ["0", "0.045", "0", "0", "0"]
    assert billed_total(out) == (Decimal("0.045"), 1)
    # A pending record carries the same job fields as a collected one.
    job = plan.jobs[4]
    assert (out[4].prompt, out[4].width, out[4].client_ref, out[4].estimated_cost_usd) == (
        job.prompt,
        job.request.width,
        job.client_ref,
        "0.030",
    )


def test_progress_after_a_try_keeps_an_earlier_trys_batches_runs_and_objects():
    from airflow_provider_flux2.models import ImageRecord

    plan = plan_of(4)
    earlier = Progress.of(plan.digest, ["b-0"], {"0": ("file:///out/0.png", "a" * 64)}, {"3": ("run-3", 2)})
    states = {1: JobState(index=1, phase="done", run_id="run-1", batch_id="b-1"), 2: JobState(index=2, run_id="r2")}
    stored = {
        1: ImageRecord(
            index=1, model="m", prompt="p", width=512, height=512, output_format="png", billed_mp=1,
            cost_usd="0.03", estimated_cost_usd="0.03", uri="file:///out/1.png", content_hash="b" * 64,
        )
    }  # fmt: skip
    progress = Progress.after(plan, states, stored, earlier)
    assert progress.batch_ids == ["b-0", "b-1"]
    assert progress.objects() == {"0": ("file:///out/0.png", "a" * 16), "1": ("file:///out/1.png", "b" * 16)}
    assert progress.single_runs() == {"3": ("run-3", 2), "2": ("r2", 1)}
    assert Progress.load(progress.model_dump(mode="json"), plan) == progress
