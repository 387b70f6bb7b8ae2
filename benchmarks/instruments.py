"""The operator as shipped, instrumented; and the baselines it is measured against.

Nothing here changes what the operator decides, except where a baseline says so in its name:
:class:`WaveOperator` (waits for a whole wave) and :func:`fixed_poll_interval` (no adaptation). Wave 1's
chunked operator is no longer run: its figures are recorded in docs/performance.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import airflow_provider_flux2.window as window_module
from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_flux2.jobs import Collected, Plan
    from airflow_provider_flux2.triggers.flux import FluxGenerationTrigger


@dataclass
class SlotUse:
    """How one task used its worker slot: seconds inside ``execute``/``execute_complete``, and span.

    ``parts`` splits the held time by what the operator was doing (the steps do not overlap).
    """

    seconds: float = 0.0
    entries: int = 0
    first_entry: float | None = None
    last_exit: float | None = None
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def span(self) -> float:
        """From the first entry to the last exit: the task's wall time, waits included."""
        return (self.last_exit or 0.0) - (self.first_entry or 0.0)


#: dag_id → slot use. Keyed by DAG, not kept on the operator: ``dag.test()`` runs a copy of the task.
SLOT_USE: dict[str, SlotUse] = {}


#: The DAG whose task holds the slot right now (``dag.test()`` runs one task at a time).
_OPEN_SLOT: list[str] = []


def _current_dag_id() -> str:
    return _OPEN_SLOT[-1] if _OPEN_SLOT else "unknown"


@contextmanager
def worker_slot(dag_id: str) -> Iterator[None]:
    """Account the time a worker slot is held; a deferral leaves by an exception, so ``finally``."""
    use = SLOT_USE.setdefault(dag_id, SlotUse())
    _OPEN_SLOT.append(dag_id)
    started = time.perf_counter()
    use.entries += 1
    use.first_entry = use.first_entry if use.first_entry is not None else started
    try:
        yield
    finally:
        ended = time.perf_counter()
        use.seconds += ended - started
        use.last_exit = ended
        _OPEN_SLOT.pop()


@contextmanager
def step(dag_id: str, name: str) -> Iterator[None]:
    """Account the time of one step of the operator inside the worker slot."""
    use = SLOT_USE.setdefault(dag_id, SlotUse())
    started = time.perf_counter()
    try:
        yield
    finally:
        use.parts[name] = use.parts.get(name, 0.0) + time.perf_counter() - started


class BenchOperator(FluxGenerateImageOperator):
    """The shipped operator on the emulator's compressed clock, with its worker time accounted.

    :param clock_scale: the emulator's ``time_scale``. The hook guesses a run's duration in real
        seconds (``expected_duration``); on a clock compressed 20×, an uncompressed guess would make
        the adaptive interval treat every run as just started. So the guess is compressed with the
        clock, as ``poll_interval`` is by the caller; the rule that picks the interval is untouched.
    """

    def __init__(self, *, clock_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock_scale = clock_scale

    def execute(self, context: Context) -> list[dict[str, Any]]:
        with worker_slot(context["ti"].dag_id):
            return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with worker_slot(context["ti"].dag_id):
            return super().execute_complete(context, event)

    # The steps whose cost is worth knowing; each override only times the shipped method.

    def plan(self, context: Context, **kwargs: Any) -> Plan:
        with step(context["ti"].dag_id, "plan (validate, price; again on the resume)"):
            return super().plan(context, **kwargs)

    def _collect(self, context: Context, *args: Any, **kwargs: Any) -> Collected:
        with step(context["ti"].dag_id, "collect (one /items per batch, download, verify, store)"):
            return super()._collect(context, *args, **kwargs)

    def _write_report(self, context: Context, *args: Any, **kwargs: Any) -> None:
        with step(context["ti"].dag_id, "report (manifest, gallery)"):
            super()._write_report(context, *args, **kwargs)

    def _trigger(self, context: Context, plan: Plan) -> FluxGenerationTrigger:
        trigger = super()._trigger(context, plan)
        for job in trigger.jobs:  # [index, model, key, ref, input, cost, expected seconds]
            job[6] = job[6] * self.clock_scale
        return trigger


class WaveOperator(BenchOperator):
    """Baseline: submits a whole window as one chunk and waits for every run of it before the next."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["batch_size"] = min(kwargs.get("max_in_flight", 8), 100)
        super().__init__(**kwargs)


def _fixed_interval(statuses: Any, *, base: float, elapsed: float, expected: float) -> float:
    return base


@contextmanager
def fixed_poll_interval() -> Iterator[None]:
    """Baseline: poll every ``poll_interval`` whatever the runs' status (the trigger's rule swapped out)."""
    shipped = window_module.adaptive_poll_interval
    window_module.adaptive_poll_interval = _fixed_interval
    try:
        yield
    finally:
        window_module.adaptive_poll_interval = shipped
