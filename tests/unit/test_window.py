"""The window's decisions, without a socket: top-up, chunks and keys, resubmission, budget, deadline, one event."""

from __future__ import annotations

import itertools
import json
import math
from decimal import Decimal

import pytest

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import FluxAPIError, FluxServerError, FluxValidationError
from airflow_provider_flux2.models import Batch, BatchItem, Run, RunStatus
from airflow_provider_flux2.window import JobSpec, JobState, Submit, Window, batch_key, rows_of

T0 = 1_000_000.0
MODEL = "black-forest-labs/flux-2-pro"


def specs(count: int, cost: str = "0.030") -> list[JobSpec]:
    return [
        JobSpec(
            index=i, model=MODEL, key=f"flux2-key{i}", ref=f"ref/{i}", input={"prompt": f"p{i}"}, cost=Decimal(cost)
        )
        for i in range(count)
    ]


def window(count: int = 10, *, max_in_flight: int = 4, chunk: int = 2, **kwargs) -> Window:
    return Window(
        jobs=specs(count),
        max_in_flight=max_in_flight,
        chunk_size=chunk,
        end_time=kwargs.pop("end_time", T0 + 3600),
        batch_keys=[f"batch-key-{n}" for n in range(math.ceil(count / chunk))],
        poll_interval=kwargs.pop("poll_interval", 1.0),
        **kwargs,
    )


class FakeAPI:
    """Hands out run and batch ids the way the API does, so tests read like the loop."""

    def __init__(self) -> None:
        self.runs = 0
        self.batches = 0

    def accept(self, win: Window, submit: Submit, now: float) -> list[str]:
        ids = [f"run-{self.runs + n}" for n in range(len(submit.jobs))]
        self.runs += len(ids)
        batch_id = None
        if submit.is_batch:
            batch_id = f"batch-{self.batches}"
            self.batches += 1
        win.submitted(submit, ids, batch_id, now)
        return ids


def batch(win: Window, batch_id: str, statuses: dict[int, RunStatus]) -> Batch:
    items = []
    for seq, state in enumerate(s for s in win.states.values() if s.batch_id == batch_id):
        status = statuses.get(state.index, RunStatus.RUNNING)
        items.append(BatchItem(sequence_index=seq, run_id=state.run_id, status_code=status))
    return Batch(id=batch_id, status_code=RunStatus.RUNNING, items=items)


def run(run_id: str, status: RunStatus, *, cost: str | None = None, failure_code: str | None = None) -> Run:
    return Run(id=run_id, status_code=status, cost=cost, failure_code=failure_code, request_id="req-1")


def test_first_turn_fills_the_window_with_whole_chunks_under_their_fixed_keys():
    win = window()
    first = win.submissions(T0)
    assert [s.jobs for s in first] == [(0, 1), (2, 3)]
    assert [s.batch_key for s in first] == ["batch-key-0", "batch-key-1"]
    assert win.in_flight() == 4
    assert win.submissions(T0) == []  # full


def test_the_window_derives_its_batch_keys_from_the_chunks_job_keys():
    """Nothing but specs and options: the same chunks give the same keys in any window, the plan's included."""
    derived = Window(jobs=specs(5), max_in_flight=4, chunk_size=2, end_time=T0 + 60)
    again = Window(jobs=specs(5), max_in_flight=4, chunk_size=2, end_time=T0 + 99)
    assert derived.batch_keys == again.batch_keys and len(set(derived.batch_keys)) == 3
    assert derived.batch_keys[0] == batch_key(["flux2-key0", "flux2-key1"])
    first = derived.submissions(T0)
    assert [s.batch_key for s in first] == derived.batch_keys[:2]


def test_a_rebuilt_window_makes_exactly_the_same_submissions():
    one, two = window(), window()
    assert one.submissions(T0) == two.submissions(T0 + 50)


def test_the_window_is_topped_up_the_moment_a_chunk_fits():
    win, api = window(), FakeAPI()
    for submit in win.submissions(T0):
        api.accept(win, submit, T0)
    win.observe_batch(batch(win, "batch-0", {0: RunStatus.SUCCEEDED}), T0 + 5)
    assert win.submissions(T0 + 5) == []  # one slot free, the next chunk needs two
    win.observe_batch(batch(win, "batch-0", {0: RunStatus.SUCCEEDED, 1: RunStatus.SUCCEEDED}), T0 + 6)
    (submit,) = win.submissions(T0 + 6)
    assert submit.jobs == (4, 5) and submit.batch_key == "batch-key-2"


def test_polls_are_one_per_batch_and_wait_for_their_interval():
    win, api = window(poll_interval=1.0), FakeAPI()
    for submit in win.submissions(T0):
        api.accept(win, submit, T0)
    assert win.polls(T0) == []  # a fresh batch is queued: not polled at once
    wake = win.wakeup(T0)
    assert T0 < wake < T0 + 5
    due = win.polls(wake)
    assert sorted((p.kind, p.id) for p in due) == [("batch", "batch-0"), ("batch", "batch-1")]


def test_a_replayed_submission_is_polled_at_once_so_a_rebuilt_window_catches_up_fast():
    win = window()
    fresh, replayed = win.submissions(T0)
    win.submitted(fresh, ["run-0", "run-1"], "batch-0", T0)
    win.submitted(replayed, ["run-2", "run-3"], "batch-1", T0, replayed=True)
    assert [(p.kind, p.id) for p in win.polls(T0)] == [("batch", "batch-1")]


def test_a_failed_run_is_resubmitted_alone_under_derived_keys_until_the_limit():
    win, api = window(2, max_in_flight=2, chunk=2, resubmit_failed=2), FakeAPI()
    (submit,) = win.submissions(T0)
    api.accept(win, submit, T0)
    keys = []
    for attempt in (1, 2, 3):
        state = win.states[0]
        if attempt == 1:
            win.observe_batch(batch(win, "batch-0", {0: RunStatus.FAILED, 1: RunStatus.SUCCEEDED}), T0 + attempt)
            (poll,) = [p for p in win.polls(T0 + attempt) if p.kind == "run"]  # the failure code decides
            assert poll.id == state.run_id
        win.observe_run(run(state.run_id, RunStatus.FAILED, failure_code="GPU_ERROR"), T0 + attempt)
        if attempt == 3:
            break
        (resubmit,) = win.submissions(T0 + attempt)
        assert resubmit.jobs == (0,) and not resubmit.is_batch
        keys.append(win.entries(resubmit)[0].idempotency_key)
        api.accept(win, resubmit, T0 + attempt)
    assert keys == ["flux2-key0-r2", "flux2-key0-r3"]
    final = win.states[0]
    assert final.phase == "done" and final.status == "failed" and final.attempt == 3
    assert final.previous == ["run-0", "run-2"]
    assert win.finished(T0 + 4) and win.status(T0 + 4) == "success"
    assert win.counts()["failed"] == 1


def test_a_moderated_run_is_never_resubmitted():
    win, api = window(1, max_in_flight=1, chunk=1), FakeAPI()
    (submit,) = win.submissions(T0)
    (run_id,) = api.accept(win, submit, T0)
    win.observe_run(run(run_id, RunStatus.FAILED, failure_code="CONTENT_MODERATED"), T0 + 1)
    assert win.submissions(T0 + 1) == []
    assert win.states[0].phase == "done" and win.counts()["moderated"] == 1


def test_the_running_budget_stops_submitting_on_the_spend_the_api_reports():
    # Six images estimated at $0.030 (=$0.18 = the budget); the API bills $0.040 each.
    win, api = window(6, max_in_flight=2, chunk=2, budget=Decimal("0.18")), FakeAPI()
    (submit,) = win.submissions(T0)
    api.accept(win, submit, T0)
    (items,) = win.polls(T0 + 5)
    assert (items.kind, items.id) == ("items", "batch-0")  # statuses and costs come from one read of the batch
    billed = [run("run-0", RunStatus.SUCCEEDED, cost="0.040"), run("run-1", RunStatus.SUCCEEDED, cost="0.040")]
    win.observe_items("batch-0", billed, T0 + 5)
    assert win.spent() == Decimal("0.080")
    (second,) = win.submissions(T0 + 5)  # $0.08 + $0.06 = $0.14: fits
    api.accept(win, second, T0 + 5)
    assert win.submissions(T0 + 5) == []  # the window is full, nothing decided yet
    billed = [run("run-2", RunStatus.SUCCEEDED, cost="0.040"), run("run-3", RunStatus.SUCCEEDED, cost="0.040")]
    win.observe_items("batch-1", billed, T0 + 9)
    assert win.submissions(T0 + 9) == []  # $0.16 + $0.06 would pass $0.18
    assert win.budget_stop == {"committed": "0.160", "next": "0.060", "limit": "0.180", "jobs": "2"}
    assert [s.phase for s in win.states.values()][4:] == ["stopped", "stopped"]
    assert win.finished(T0 + 9)
    event = win.event(T0 + 9)
    assert event["status"] == "success" and event["budget_stop"]["limit"] == "0.180"
    assert "2 not sent (budget)" in win.progress_line(T0, T0 + 9)


@pytest.mark.parametrize("cost", ["-0.030", "NaN", "abc"])
def test_a_reported_cost_that_is_negative_or_not_a_number_is_a_typed_error(cost):
    """The cost is checked once, where the run is read: a bad one never reaches the window's budget."""
    win, api = window(1, max_in_flight=1, chunk=1), FakeAPI()
    (submit,) = win.submissions(T0)
    (run_id,) = api.accept(win, submit, T0)
    with pytest.raises(FluxAPIError, match=rf"BAD_COST.*{run_id}") as caught:
        protocol.parse_run({"id": run_id, "status_code": "succeeded", "cost": cost, "request_id": "req-1"})
    assert caught.value.request_id == "req-1"
    win.poll_failed(win.polls(T0 + 1000)[0], caught.value, T0 + 1)  # not transient: the window stops
    assert win.status(T0 + 1) == "error" and "BAD_COST" in win.event(T0 + 1)["message"]


def test_the_deadline_ends_the_window_with_one_timeout_event_naming_the_runs_out():
    win, api = window(3, max_in_flight=3, chunk=1, end_time=T0 + 10), FakeAPI()
    for submit in win.submissions(T0):
        api.accept(win, submit, T0)
    assert not win.finished(T0 + 9)
    assert win.wakeup(T0 + 9) <= T0 + 10
    assert win.finished(T0 + 10) and win.submissions(T0 + 10) == []
    event = win.event(T0 + 10)
    assert event["status"] == "timeout"
    assert all(f"run-{n}" in event["message"] for n in range(3))


def test_transient_submit_errors_send_the_same_request_again_then_give_up():
    win = window(2, max_in_flight=2, chunk=2)
    (submit,) = win.submissions(T0)
    error = FluxServerError(status_code=503, code="MODEL_UNAVAILABLE", message="busy")
    for n in range(4):
        win.submit_failed(submit, error, T0 + n)
        again = win.submissions(T0 + n + 1.5)
        assert again == [submit]  # same chunk, same batch key: a replay if the first one did land
    win.submit_failed(submit, error, T0 + 10)
    assert win.status(T0 + 10) == "error" and "MODEL_UNAVAILABLE" in (win.error or "")


def test_a_model_without_batches_gets_each_job_alone_under_its_own_key():
    win = window(4, max_in_flight=4, chunk=2)
    first = win.submissions(T0)
    refused = FluxValidationError(field="input", value=None, allowed="batches are not supported", status_code=422)
    win.submit_failed(first[0], refused, T0)
    win.submit_failed(first[1], refused, T0)
    singles = win.submissions(T0)
    assert [s.jobs for s in singles] == [(0,), (1,), (2,), (3,)] and not any(s.is_batch for s in singles)
    assert [win.entries(s)[0].idempotency_key for s in singles] == [f"flux2-key{i}" for i in range(4)]


def test_a_permanent_submit_error_stops_the_window():
    win = window(2, max_in_flight=2, chunk=2)
    (submit,) = win.submissions(T0)
    win.submit_failed(submit, FluxAPIError(status_code=402, code="INSUFFICIENT_CREDIT", message="top up"), T0)
    assert win.finished(T0) and win.event(T0)["status"] == "error"


def test_a_refused_submission_waits_for_the_runs_already_at_the_api_then_ends_in_error():
    """Runs already sent bill whatever happens: after a refusal (402) nothing more is sent, but the window
    reads the runs in flight to their end, so their images are collected rather than left behind."""
    win, api = window(6, max_in_flight=4, chunk=2), FakeAPI()
    first, second = win.submissions(T0)
    api.accept(win, first, T0)
    win.submit_failed(second, FluxAPIError(status_code=402, code="INSUFFICIENT_CREDIT", message="top up"), T0)
    assert win.error and not win.finished(T0 + 1) and win.submissions(T0 + 1) == []
    assert [win.states[i].stopped for i in (2, 3)] == ["refused", "refused"]
    assert [win.states[i].phase for i in (2, 3)] == ["waiting", "waiting"]
    assert win.wakeup(T0 + 1) > T0 + 1  # no busy loop on the refused submission
    win.observe_batch(batch(win, "batch-0", dict.fromkeys(range(2), RunStatus.SUCCEEDED)), T0 + 7)
    assert win.finished(T0 + 7) and win.event(T0 + 7)["status"] == "error"
    assert [rows_of(win.event(T0 + 7))[i].succeeded for i in (0, 1)] == [True, True]


def test_every_job_terminal_makes_exactly_one_success_event_whose_rows_round_trip():
    win, api = window(4, max_in_flight=4, chunk=2), FakeAPI()
    for submit in win.submissions(T0):
        api.accept(win, submit, T0)
    for batch_id in ("batch-0", "batch-1"):
        win.observe_batch(batch(win, batch_id, dict.fromkeys(range(4), RunStatus.SUCCEEDED)), T0 + 7)
    assert win.finished(T0 + 7) and win.status(T0 + 7) == "success"
    event = win.event(T0 + 7)
    states = rows_of(event)
    assert sorted(states) == [0, 1, 2, 3]
    assert states[2].batch_id == "batch-1" and states[2].detected_at == T0 + 7 and states[2].succeeded
    assert JobState.from_row(states[3].to_row()) == states[3]


def test_a_ten_minute_outage_is_ridden_out_polls_backing_off_to_a_minute():
    """Polls failing for a reason that may go away (the API down) never end the wait before its deadline."""
    from airflow_provider_flux2.exceptions import FluxConnectionError

    win, api = window(4, max_in_flight=4, chunk=2, end_time=T0 + 3 * 3600), FakeAPI()
    for submit in win.submissions(T0):
        api.accept(win, submit, T0)
    down = FluxConnectionError("Could not reach the FLUX API: ConnectError", attempts=5, url="https://x/v1/batches/b")
    now, gaps, said = T0 + 5, [], []
    while now < T0 + 600:  # ten minutes without an answer
        polls = win.polls(now)
        for poll in polls:
            win.poll_failed(poll, down, now)
        if (line := win.outage_line(now)) is not None:
            said.append((now, line))
        nxt = win.wakeup(now)
        gaps.append(nxt - now)
        now = nxt
    assert not win.finished(now) and win.error is None and win.status(now) == "running"
    assert max(gaps) <= 60.0 * 1.25 + 1e-6  # capped, with jitter
    assert win.poll_failures > 5  # far more than the submissions' limit: no try is spent
    assert 5 <= len(said) <= 10 and "has not answered for" in said[0][1] and "ConnectError" in said[0][1]
    assert all(b - a >= 60 for (a, _), (b, _) in itertools.pairwise(said))  # once a minute, not once a poll
    for batch_id in ("batch-0", "batch-1"):  # the API is back
        win.observe_batch(batch(win, batch_id, dict.fromkeys(range(4), RunStatus.SUCCEEDED)), now)
    assert win.finished(now) and win.status(now) == "success" and win.outage_since is None


def test_a_lasting_poll_error_still_stops_the_window_and_a_refused_submission_still_gives_up():
    win, api = window(2, max_in_flight=2, chunk=2), FakeAPI()
    (submit,) = win.submissions(T0)
    api.accept(win, submit, T0)
    win.poll_failed(win.polls(T0 + 100)[0], FluxValidationError(field="x", value=1, allowed="y"), T0 + 100)
    assert win.status(T0 + 100) == "error"


def test_a_429_is_not_a_failed_poll_the_read_comes_again_a_little_later():
    from airflow_provider_flux2.exceptions import FluxRateLimitError

    win, api = window(2, max_in_flight=2, chunk=2), FakeAPI()
    (submit,) = win.submissions(T0)
    api.accept(win, submit, T0)
    (poll,) = win.polls(T0 + 100)
    slow_down = FluxRateLimitError(status_code=429, code="RATE_LIMITED", message="slow down", retry_after=None)
    for n in range(20):
        win.poll_failed(poll, slow_down, T0 + 100 + n)
    assert win.poll_failures == 0 and win.outage_since is None and win.outage_line(T0 + 1000) is None
    assert win.error is None and not win.finished(T0 + 200)
    assert win.wakeup(T0 + 119) >= T0 + 119 + 2 * win.poll_interval  # backed off, not hammered


def test_submissions_to_a_silent_api_are_sent_again_until_the_deadline_not_given_up():
    """Four batch submissions timing out together for ten minutes: no error, backoff capped, one outage."""
    from airflow_provider_flux2.exceptions import FluxRequestTimeoutError

    win = window(8, max_in_flight=8, chunk=2, end_time=T0 + 6 * 3600)
    silent = FluxRequestTimeoutError("The FLUX API did not answer in time", attempts=5, url="https://x/v1/models")
    now, sends = T0, 0
    while now < T0 + 600:
        for submit in win.submissions(now):
            sends += 1
            win.submit_failed(submit, silent, now)
        now = max(now + 0.001, win.wakeup(now))
    assert win.error is None and win.status(now) == "running" and sends > 4 * 5
    assert "has not answered for" in (win.outage_line(now) or "")
    api = FakeAPI()
    for submit in win.submissions(now + 120):  # the API is back: the same keys go again
        api.accept(win, submit, now + 120)
    assert win.outage_since is None and win.in_flight() == 8


def test_submissions_refused_with_an_answer_still_give_up_after_five_turns_counted_once_each():
    from airflow_provider_flux2.exceptions import FluxServerError

    win = window(8, max_in_flight=8, chunk=2)
    down = FluxServerError(status_code=500, code="INTERNAL", message="boom")
    now, turns = T0, 0
    while win.error is None and turns < 20:
        turns += 1
        for submit in win.submissions(now):
            win.submit_failed(submit, down, now)  # four batches fail in the same turn: one failure
        now = win.wakeup(now)
    assert win.error and turns == 5


def test_under_a_running_budget_a_batch_is_polled_through_its_items_statuses_and_costs_in_one_read():
    win, api = window(4, max_in_flight=4, chunk=2, budget=Decimal("1.00")), FakeAPI()
    for submit in win.submissions(T0):
        api.accept(win, submit, T0)
    polls = win.polls(T0 + 60)
    assert sorted((p.kind, p.id) for p in polls) == [("items", "batch-0"), ("items", "batch-1")]
    win.observe_items(
        "batch-0",
        [run("run-0", RunStatus.SUCCEEDED, cost="0.040"), run("run-1", RunStatus.FAILED, failure_code="GPU_OOM")],
        T0 + 60,
    )
    assert win.spent() == Decimal("0.040")  # the API's figure, no second read
    assert win.states[1].phase == "resubmit"  # the failure code came with the items: no read of the run
    win.observe_items("batch-1", [run("run-2", RunStatus.RUNNING), run("run-3", RunStatus.RUNNING)], T0 + 60)
    assert {(p.kind, p.id) for p in win.polls(T0 + 3600)} == {("items", "batch-1")}  # polled again, still items
    # A failed read of an items poll is the batch's poll failing: it comes back, as the batch's.
    (poll,) = win.polls(T0 + 3600)
    win.poll_failed(poll, FluxServerError(status_code=503, code="UNAVAILABLE", message="busy"), T0 + 3600)
    assert not win.polls(T0 + 3600) and win.polls(T0 + 3700)[0].id == "batch-1"


def test_without_a_budget_a_batch_is_polled_lean():
    win, api = window(2, max_in_flight=2, chunk=2), FakeAPI()
    (submit,) = win.submissions(T0)
    api.accept(win, submit, T0)
    assert [(p.kind, p.id) for p in win.polls(T0 + 60)] == [("batch", "batch-0")]


def test_specs_travel_in_their_row_form_with_shared_inputs_kept_once():
    from airflow_provider_flux2.window import JobSpec, pack_specs, unpack_specs

    specs = [
        JobSpec(i, "flux-2-pro", f"k{i}", f"r{i}", {"prompt": f"p{i}", "image_size": "square"}, Decimal("0.03"), 7.5)
        for i in range(3)
    ]
    rows, common = pack_specs(specs)
    assert common == {"image_size": "square"}
    assert rows[0] == [0, "flux-2-pro", "k0", "r0", {"prompt": "p0"}, "0.03", 7.5]
    assert unpack_specs(json.loads(json.dumps(rows)), common) == specs
    one, shared = pack_specs(specs[:1])  # a single job keeps its whole input
    assert shared == {} and unpack_specs(one) == specs[:1]
