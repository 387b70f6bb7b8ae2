"""The two loops around the window: one in a worker's thread, one on the triggerer's event loop.

:class:`~airflow_provider_flux2.window.Window` decides (what to send, what to read, when to look again)
and does no I/O; these loops do the I/O it asks for and report what came back, nothing else. They are
written side by side so they stay the same loop: polls first (a slot freed this turn is topped up this
turn), then submissions, then the progress and outage lines, then sleep until the window's next wakeup.

- :func:`run_window` drives a window synchronously: a non-deferrable task, the quality step's waits in
  the worker, and :meth:`FluxHook.wait <airflow_provider_flux2.hooks.flux.FluxHook.wait>`;
- :func:`arun_window` drives it on the event loop (the trigger), at most :data:`CONCURRENCY` requests
  at once.

``hook`` is a :class:`~airflow_provider_flux2.hooks.flux.FluxHook`; it is passed in, never imported
here, so the hook itself can wait through a window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_flux2.exceptions import FluxError
from airflow_provider_flux2.window import POLL_ROUNDS, Poll, Submit, Window

if TYPE_CHECKING:
    from airflow_provider_flux2.hooks.flux import FluxHook

log = logging.getLogger(__name__)

#: Requests one trigger has at the API at once (polls of a turn, or its submissions).
CONCURRENCY = 8


# -- in a worker ----------------------------------------------------------------------------------------


def run_window(
    hook: FluxHook,
    window: Window,
    *,
    metadata: Mapping[str, Any] | None,
    logger: Any = log,
    progress_interval: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Drive ``window`` in this thread until it is finished; returns its one event."""
    started, last_at, last = time.time(), 0.0, ""
    while not window.finished(time.time()):
        acted = False
        for _ in range(POLL_ROUNDS):  # polls first: slots freed this turn are topped up this turn
            polls = window.polls(time.time())
            if not polls:
                break
            acted = True
            for poll in polls:
                _observe(window, poll, hook)
        for submit in window.submissions(time.time()):
            acted = True
            _send(window, submit, hook, metadata)
        now = time.time()
        if 0 <= progress_interval <= now - last_at and (line := window.progress_line(started, now)) != last:
            last, last_at = line, now
            logger.info("%s", line)
        if (outage := window.outage_line(now)) is not None:
            logger.warning("%s", outage)
        if not acted:
            sleep(max(0.0, min(window.wakeup(now), window.end_time) - now))
    return window.event(time.time())


def _observe(window: Window, poll: Poll, hook: FluxHook) -> None:
    try:
        if poll.kind == "batch":
            window.observe_batch(hook.get_batch(poll.id, deadline=window.end_time), time.time())
        elif poll.kind == "items":
            window.observe_items(poll.id, hook.get_batch_items(poll.id, deadline=window.end_time), time.time())
        elif poll.kind == "evaluation":
            window.observe_run(hook.get_evaluation(poll.id, deadline=window.end_time).as_run(), time.time())
        else:
            window.observe_run(hook.get_run(poll.id, deadline=window.end_time), time.time())
    except FluxError as error:
        window.poll_failed(poll, error, time.time())


def _send(window: Window, submit: Submit, hook: FluxHook, metadata: Mapping[str, Any] | None) -> None:
    try:
        if submit.kind == "evaluation":
            (entry,) = window.entries(submit)
            done = hook.submit_evaluation(entry)
        elif submit.is_batch:
            entries = window.entries(submit)
            done = hook.create_batch(entries, model=submit.model, batch_key=submit.batch_key or "", metadata=metadata)
        else:
            (entry,) = window.entries(submit)
            done = hook.submit_one(entry, model=submit.model, metadata=metadata)
        window.submitted(submit, done.run_ids, done.batch_id, time.time(), replayed=done.replayed)
    except FluxError as error:
        window.submit_failed(submit, error, time.time())


# -- on the event loop ----------------------------------------------------------------------------------


async def arun_window(
    hook: FluxHook,
    window: Window,
    *,
    metadata: Mapping[str, Any] | None,
    logger: Any = log,
    progress_interval: float = 5.0,
) -> dict[str, Any]:
    """The async twin of :func:`run_window`: a turn's requests go at once (at most :data:`CONCURRENCY`).

    The window's methods never await, so the coroutines cannot interleave inside a decision. Logs the
    last progress line when the window is done; returns its one event.
    """
    started = last_at = time.time()
    last = ""
    while not window.finished(time.time()):
        acted = False
        for _ in range(POLL_ROUNDS):
            polls = window.polls(time.time())
            if not polls:
                break
            acted = True
            await _bounded([_aobserve(window, poll, hook) for poll in polls])
        submissions = window.submissions(time.time())
        await _bounded([_asend(window, submit, hook, metadata) for submit in submissions])
        acted = acted or bool(submissions)
        now = time.time()
        if now - last_at >= progress_interval and (line := window.progress_line(started, now)) != last:
            last, last_at = line, now
            logger.info("%s", line)
        if (outage := window.outage_line(now)) is not None:
            logger.warning("%s", outage)
        if not acted:
            await asyncio.sleep(max(0.0, min(window.wakeup(now), window.end_time) - now))
    if (line := window.progress_line(started, time.time())) != last:
        logger.info("%s", line)
    return window.event(time.time())


async def _aobserve(window: Window, poll: Poll, hook: FluxHook) -> None:
    try:
        if poll.kind == "batch":
            window.observe_batch(await hook.aget_batch(poll.id, deadline=window.end_time), time.time())
        elif poll.kind == "items":
            window.observe_items(poll.id, await hook.aget_batch_items(poll.id, deadline=window.end_time), time.time())
        elif poll.kind == "evaluation":
            evaluation = await hook.aget_evaluation(poll.id, deadline=window.end_time)
            window.observe_run(evaluation.as_run(), time.time())
        else:
            window.observe_run(await hook.aget_run(poll.id, deadline=window.end_time), time.time())
    except FluxError as error:
        window.poll_failed(poll, error, time.time())


async def _asend(window: Window, submit: Submit, hook: FluxHook, metadata: Mapping[str, Any] | None) -> None:
    try:
        if submit.kind == "evaluation":
            (entry,) = window.entries(submit)
            done = await hook.asubmit_evaluation(entry)
        elif submit.is_batch:
            entries = window.entries(submit)
            done = await hook.acreate_batch(
                entries, model=submit.model, batch_key=submit.batch_key or "", metadata=metadata
            )
        else:
            (entry,) = window.entries(submit)
            done = await hook.asubmit(entry, model=submit.model, metadata=metadata)
        window.submitted(submit, done.run_ids, done.batch_id, time.time(), replayed=done.replayed)
    except FluxError as error:
        window.submit_failed(submit, error, time.time())


async def _bounded(calls: list[Any]) -> None:
    """Run a turn's requests at once, at most :data:`CONCURRENCY` at a time (one shared client)."""
    if not calls:
        return
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Any) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(call) for call in calls))


__all__ = ["CONCURRENCY", "arun_window", "run_window"]
