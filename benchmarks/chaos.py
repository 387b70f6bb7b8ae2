"""Kill -9 and outage scenarios on the loopback deployment, each checked against the emulator's ledger.

Every scenario starts a fresh :class:`deployment.Deployment`, triggers ``flux2_deploy_chaos`` (20
deferrable tasks of 3–5 images, one ``big`` task and one ``@task.flux2`` task, ``retries=2``;
``flux2_deploy_chaos_sync`` for the non-deferrable kills; ``flux2_deploy_sentinel``, one task of images
judged by Sentinel on the triggerer, for ``sentinel_triggerer_kill``), strikes mid-flight, and then checks
what a user is owed:

- the DAG run succeeded;
- one billed run per image in the emulator's ledger, no ``Idempotency-Key`` or ``client_ref`` billed twice;
- one stored file per image (by index), none missing;
- each task's manifest equals the ledger to the cent;
- the tries spent beyond the first are counted (and must be none where a wait can ride the fault out);
- with a Sentinel task: one billed evaluation per image judged, no evaluation key billed twice, and the
  task's summary equal to the ledger's evaluations to the cent.

The strikes: ``kill -9`` of a triggerer, the triggerer holding the big task, a task runner, a task's
host, the scheduler, a Celery worker, the triggerer while Sentinel evaluations are in flight
(``sentinel_triggerer_kill``); ``kill -9`` of PostgreSQL, back after ``--outage-s`` (20 s), with the
Airflow processes that die of it restarted as a service manager would (``database_crash``); the API
hanging (the emulator stopped, then continued) for ``--outage-s`` (180 s; ``api_hang``).

    python benchmarks/chaos.py                          # every scenario (make soak)
    python benchmarks/chaos.py triggerer_kill celery_worker_kill --small-tasks 6 --big-images 40
    python benchmarks/chaos.py database_crash --executor local --outage-s 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import report
from deployment import HEARTBEAT_TIMEOUT, REPO, TRIGGERER_HEALTH_THRESHOLD, Deployment, DeploymentError, wait_until

IMAGE_FILE = re.compile(r"^(\d{5})-[0-9a-f]{12}\.(jpg|jpeg|png|webp)$")


@dataclass(frozen=True)
class Shape:
    """The chaos DAG's size, given to every process through the environment."""

    small_tasks: int = 20
    big_images: int = 200
    max_in_flight: int = 16
    time_scale: float = 0.3
    decorated_images: int = 4
    sentinel_images: int = 8

    def env(self) -> dict[str, str]:
        return {
            "FLUX2_DEPLOY_SMALL_TASKS": str(self.small_tasks),
            "FLUX2_DEPLOY_BIG_IMAGES": str(self.big_images),
            "FLUX2_DEPLOY_DECORATED_IMAGES": str(self.decorated_images),
            "FLUX2_DEPLOY_SENTINEL_IMAGES": str(self.sentinel_images),
            "FLUX2_DEPLOY_MAX_IN_FLIGHT": str(self.max_in_flight),
            "FLUX2_DEPLOY_TIME_SCALE": str(self.time_scale),
        }

    def images(self) -> dict[str, int]:
        """Images per task, as the DAG file builds them."""
        tasks = {f"small_{i:02d}": 3 + i % 3 for i in range(self.small_tasks)}
        tasks["big"] = self.big_images
        tasks["decorated"] = self.decorated_images  # the @task.flux2 task
        return tasks

    def sentinel_dag_images(self) -> dict[str, int]:
        """Images per task of ``flux2_deploy_sentinel`` (its ``check`` task judges them all)."""
        return {"generate": self.sentinel_images}


@dataclass
class Verdict:
    """What one scenario did and whether the user got every image exactly once."""

    scenario: str
    executor: str
    dag_state: str = ""
    tasks: int = 0
    images: int = 0
    stored: int = 0
    ledger_entries: int = 0
    duplicate_keys: int = 0
    duplicate_refs: int = 0
    ledger_usd: str = "0"
    manifest_usd: str = "0"
    #: Sentinel: evaluations billed in the ledger, images the quality task judged, evaluation keys billed
    #: twice, and what the ledger and the task's summary say the evaluations cost.
    evaluations: int = 0
    judged: int = 0
    duplicate_evaluation_keys: int = 0
    evaluation_usd: str = "0"
    summary_evaluation_usd: str = "0"
    tries_beyond_first: int = 0
    killed: list[str] = field(default_factory=list)
    #: How long the database or the API was away (the outage scenarios), in seconds.
    outage_s: float | None = None
    #: Processes the service manager started again after they exited (``name (exit code)``).
    restarted: list[str] = field(default_factory=list)
    #: Tasks that paid a try beyond the first, with their try number.
    retried: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kill_to_done_s: float | None = None
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        recovery = "-" if self.kill_to_done_s is None else f"{self.kill_to_done_s:.0f} s"
        return (
            f"{self.scenario} [{self.executor}]: {self.dag_state}, {self.tasks} tasks, {self.images} images, "
            f"{self.stored} stored, {self.ledger_entries} billed (${self.ledger_usd}; manifests ${self.manifest_usd}), "
            f"{self.duplicate_keys + self.duplicate_refs} duplicates, {self.tries_beyond_first} extra tries, "
            + (
                f"{self.evaluations} evaluations billed for {self.judged} judged (${self.evaluation_usd}; "
                f"summary ${self.summary_evaluation_usd}), {self.duplicate_evaluation_keys} evaluation keys twice, "
                if self.evaluations or self.judged
                else ""
            )
            + f"kill → all succeeded {recovery}, wall {self.wall_s:.0f} s; struck {', '.join(self.killed) or '-'}"
            + (f"; restarted {', '.join(self.restarted)}" if self.restarted else "")
            + (f"; retried {self.retried}" if self.retried else "")
            + ("; " + "; ".join(self.notes) if self.notes else "")
            + ("" if self.ok else " — PROBLEMS: " + "; ".join(self.problems))
        )


def verify(
    dep: Deployment,
    dag_id: str,
    run_id: str,
    expected: dict[str, int],
    verdict: Verdict,
    judge: str | None = None,
) -> Verdict:
    """Check the ledger, the stored files and the manifests of one finished DAG run.

    :param expected: images per generating task.
    :param judge: the Sentinel quality task whose evaluations are checked against the ledger.
    """
    verdict.tasks, verdict.images = len(expected), sum(expected.values())
    verdict.dag_state = dep.dag_run_state(dag_id, run_id)
    if verdict.dag_state != "success":
        states = {t.task_id: t.state for t in dep.task_states(dag_id, run_id) if t.state != "success"}
        verdict.problems.append(f"DAG run ended {verdict.dag_state} ({states})")
    finished = dep.task_states(dag_id, run_id)
    verdict.tries_beyond_first = sum(max(0, t.try_number - 1) for t in finished)
    verdict.retried = {t.task_id: t.try_number for t in finished if t.try_number > 1}

    ours = [e for e in dep.emu.ledger()["entries"] if str(e.get("client_ref") or "").startswith(f"{dag_id}/{run_id}/")]
    # Images are counted in runs; Sentinel's evaluations are billed in the same ledger and checked apart.
    entries = [e for e in ours if e.get("kind", "run") == "run"]
    if judge is not None:
        _verify_evaluations(dep, dag_id, run_id, judge, [e for e in ours if e.get("kind") == "evaluation"], verdict)
    verdict.ledger_entries = len(entries)
    verdict.duplicate_keys = keys_billed_twice(entries)
    verdict.duplicate_refs = sum(n - 1 for n in Counter(e["client_ref"] for e in entries).values() if n > 1)
    ledger_total = sum((Decimal(e["cost"]) for e in entries), Decimal("0"))
    verdict.ledger_usd = str(ledger_total)
    if verdict.ledger_entries != verdict.images:
        verdict.problems.append(f"{verdict.ledger_entries} billed runs for {verdict.images} images")
    if verdict.duplicate_keys or verdict.duplicate_refs:
        verdict.problems.append(f"billed twice: {verdict.duplicate_keys} keys, {verdict.duplicate_refs} client_refs")

    manifest_total = Decimal("0")
    folder = _run_folder(dep.output / dag_id, run_id)
    for task_id, count in expected.items():
        task_dir = folder / task_id
        indexes = Counter(int(m.group(1)) for p in _files(task_dir) if (m := IMAGE_FILE.match(p.name)))
        verdict.stored += sum(indexes.values())
        if sorted(indexes) != list(range(count)) or any(n > 1 for n in indexes.values()):
            verdict.problems.append(f"{task_id}: stored indexes {sorted(indexes.elements())[:10]}… for {count} images")
        manifest = task_dir / "manifest.json"
        if not manifest.exists():
            verdict.problems.append(f"{task_id}: no manifest.json")
            continue
        rows = json.loads(manifest.read_text())["images"]
        task_cost = sum((Decimal(r["cost_usd"]) for r in rows), Decimal("0"))
        billed = sum((Decimal(e["cost"]) for e in entries if e["client_ref"].split("/")[2] == task_id), Decimal("0"))
        manifest_total += task_cost
        if len(rows) != count or task_cost != billed:
            verdict.problems.append(f"{task_id}: manifest {len(rows)} rows ${task_cost}, ledger ${billed}")
    verdict.manifest_usd = str(manifest_total)
    if manifest_total != ledger_total:
        verdict.problems.append(f"manifests ${manifest_total} ≠ ledger ${ledger_total}")
    return verdict


def _verify_evaluations(
    dep: Deployment, dag_id: str, run_id: str, judge: str, evaluations: list[dict[str, Any]], verdict: Verdict
) -> None:
    """One billed evaluation per image judged, none twice, and the task's summary equal to the ledger."""
    body = dep.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{judge}/xcomEntries/flux_quality_summary")
    value = body["value"]
    judged = (json.loads(value) if isinstance(value, str) else value).get("sentinel") or {}
    verdict.judged = int(judged.get("evaluated", 0))
    verdict.summary_evaluation_usd = str(Decimal(judged.get("cost_usd", "0")))
    verdict.evaluations = len(evaluations)
    verdict.duplicate_evaluation_keys = sum(
        n - 1 for n in Counter(e["idempotency_key"] for e in evaluations).values() if n > 1
    )
    verdict.evaluation_usd = str(sum((Decimal(e["cost"]) for e in evaluations), Decimal("0")))
    stats = dep.emu.stats()
    sent = stats["requests"].get("create_evaluation", 0)
    verdict.notes.append(f"{sent} evaluation submits for {stats['evaluations_created']} created")  # replays
    if not verdict.judged or verdict.evaluations != verdict.judged:
        verdict.problems.append(f"{verdict.evaluations} billed evaluations for {verdict.judged} images judged")
    if verdict.duplicate_evaluation_keys:
        verdict.problems.append(f"{verdict.duplicate_evaluation_keys} evaluation keys billed twice")
    if Decimal(verdict.summary_evaluation_usd) != Decimal(verdict.evaluation_usd):
        verdict.problems.append(
            f"{judge}: summary evaluations ${verdict.summary_evaluation_usd}, ledger ${verdict.evaluation_usd}"
        )


def keys_billed_twice(entries: list[dict[str, Any]]) -> int:
    """Idempotency keys that bought more than one thing.

    A single run's key must appear once in the ledger. A batch's key is carried by each of its items'
    runs, so it may appear once per item — but always with the same ``batch_id``: a second batch
    under the same key would be a second charge.
    """
    singles = Counter(e["idempotency_key"] for e in entries if e["idempotency_key"] and not e.get("batch_id"))
    batches: dict[str, set[str]] = {}
    for e in entries:
        if e["idempotency_key"] and e.get("batch_id"):
            batches.setdefault(e["idempotency_key"], set()).add(e["batch_id"])
    return sum(n - 1 for n in singles.values()) + sum(len(ids) - 1 for ids in batches.values())


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def _run_folder(dag_folder: Path, run_id: str) -> Path:
    """The folder of one DAG run's output, found by its manifests (however run ids are made safe for paths)."""
    for manifest in sorted(dag_folder.glob("*/*/manifest.json")):
        if json.loads(manifest.read_text()).get("run_id") == run_id:
            return manifest.parent.parent
    return dag_folder / run_id


# -- scenarios -----------------------------------------------------------------------------------------

Kill = Callable[[Deployment, str, str, Verdict], float]


def _running_big(dep: Deployment, dag_id: str, run_id: str, state: str, min_billed: int) -> bool:
    big = [t for t in dep.task_states(dag_id, run_id) if t.task_id == "big"]
    created = int(dep.emu.stats().get("runs_created", 0))
    return bool(big) and big[0].state == state and created >= min_billed


def kill_triggerer(dep: Deployment, dag_id: str, run_id: str, verdict: Verdict) -> float:
    """``kill -9`` the only triggerer while tasks are deferred, then start a new one."""
    dep.wait_for(lambda: _running_big(dep, dag_id, run_id, "deferred", 24), what="the big task deferred with runs out")
    dep.wait_for(lambda: dep.count_states(dag_id, run_id).get("deferred", 0) >= 3, what="three deferred tasks")
    killed_at = dep.kill("triggerer-1")
    verdict.killed.append("triggerer-1")
    time.sleep(2)
    dep.restart("triggerer-1")
    return killed_at


#: Evaluations in flight when the triggerer is struck (``Shape.sentinel_images`` must be at least this):
#: several, so the new triggerer must recover submissions already made, not only ones still to send.
JUDGING_IN_FLIGHT = 4


def kill_triggerer_judging(dep: Deployment, dag_id: str, run_id: str, verdict: Verdict) -> float:
    """``kill -9`` the only triggerer while the quality task's Sentinel evaluations are in flight; start a new one."""

    def judging() -> bool:
        check = [t for t in dep.task_states(dag_id, run_id) if t.task_id == "check"]
        in_flight = dep.emu.stats().get("evaluations_by_status", {})
        return (
            bool(check)
            and check[0].state == "deferred"
            and in_flight.get("pending", 0) + in_flight.get("running", 0) >= JUDGING_IN_FLIGHT
        )

    dep.wait_for(judging, what="the check task deferred with evaluations in flight")
    killed_at = dep.kill("triggerer-1")
    statuses = dep.emu.stats().get("evaluations_by_status", {})
    verdict.killed.append(f"triggerer-1 (evaluations {dict(statuses)})")
    time.sleep(2)
    dep.restart("triggerer-1")
    return killed_at


def kill_trigger_holder(dep: Deployment, dag_id: str, run_id: str, verdict: Verdict) -> float:
    """Two triggerers: ``kill -9`` the one running the big task's trigger; the other takes over."""
    dep.wait_for(lambda: _running_big(dep, dag_id, run_id, "deferred", 24), what="the big task deferred with runs out")
    holder = dep.wait_for(lambda: dep.trigger_holder(dag_id, run_id, "big"), what="the big task's triggerer")
    killed_at = dep.kill(holder)
    verdict.killed.append(holder)
    return killed_at


def _big_pid(dep: Deployment, dag_id: str, run_id: str) -> int:
    big = [t for t in dep.task_states(dag_id, run_id) if t.task_id == "big"]
    if not big or big[0].state != "running" or not big[0].pid:
        return 0
    return int(big[0].pid)


def kill_task_runner(dep: Deployment, dag_id: str, run_id: str, verdict: Verdict) -> float:
    """Non-deferrable path: ``kill -9`` the task runner mid-wait (its supervisor lives and reports)."""
    import os

    dep.wait_for(lambda: _running_big(dep, dag_id, run_id, "running", 24), what="the big task waiting in its worker")
    pid = dep.wait_for(lambda: _big_pid(dep, dag_id, run_id), what="the big task's pid")
    os.kill(pid, signal.SIGKILL)
    verdict.killed.append(f"task runner pid {pid}")
    return time.time()


def kill_task_host(dep: Deployment, dag_id: str, run_id: str, verdict: Verdict) -> float:
    """Non-deferrable path: ``kill -9`` the task runner and its supervisor together, as when a host dies."""
    import os

    import psutil

    dep.wait_for(lambda: _running_big(dep, dag_id, run_id, "running", 24), what="the big task waiting in its worker")
    pid = dep.wait_for(lambda: _big_pid(dep, dag_id, run_id), what="the big task's pid")
    supervisor = psutil.Process(pid).ppid()
    for target in (supervisor, pid):
        os.kill(target, signal.SIGKILL)
    verdict.killed.append(f"task runner pid {pid} and supervisor pid {supervisor}")
    return time.time()


def kill_scheduler(dep: Deployment, dag_id: str, run_id: str, verdict: Verdict) -> float:
    """``kill -9`` the scheduler (and, on LocalExecutor, the task processes it forked) mid-flight; restart it."""
    dep.wait_for(lambda: _running_big(dep, dag_id, run_id, "deferred", 24), what="the big task deferred with runs out")
    killed_at = dep.kill("scheduler")
    verdict.killed.append("scheduler")
    time.sleep(2)
    dep.restart("scheduler")
    return killed_at


def kill_celery_worker(dep: Deployment, dag_id: str, run_id: str, verdict: Verdict) -> float:
    """CeleryExecutor: ``kill -9`` the worker that runs the big task while it runs it."""

    def running_on_worker() -> str | None:
        for t in dep.task_states(dag_id, run_id):
            if t.task_id == "big" and t.state == "running" and (t.hostname or "").startswith("worker-"):
                return t.hostname
        return None

    dep.wait_for(lambda: int(dep.emu.stats().get("runs_created", 0)) >= 24, timeout=300, what="runs out")
    worker = dep.wait_for(running_on_worker, timeout=300, what="the big task running on a Celery worker")
    killed_at = dep.kill(str(worker))
    verdict.killed.append(str(worker))
    return killed_at


def _collecting(dep: Deployment, run_id: str) -> list[str]:
    """Tasks a worker is collecting: in the provider's ``execute_complete`` (entered, not yet left)."""
    ended = {
        (e["task_id"], e["try_number"])
        for e in dep.worker_entries()
        if e["run_id"] == run_id and e["method"] == "execute_complete"
    }
    started = {(c["task_id"], c["try_number"]) for c in dep.collections_started() if c["run_id"] == run_id}
    return sorted(task for task, _ in started - ended)


def crash_database(dep: Deployment, dag_id: str, run_id: str, verdict: Verdict) -> float:
    """``kill -9`` PostgreSQL while tasks are deferred and a worker collects; start it again ``outage_s`` later.

    The Airflow processes that exit meanwhile are restarted by the service manager (``Scenario.supervised``).
    """
    assert dep.postgres is not None and verdict.outage_s is not None

    def mid_batch() -> list[str]:
        collecting = _collecting(dep, run_id)  # a collection lasts seconds: look often, the cheap check first
        return collecting if collecting and _running_big(dep, dag_id, run_id, "deferred", 16) else []

    try:
        collecting = wait_until(mid_batch, 180, "the big task deferred while a worker collects", interval=0.1)
    except DeploymentError:
        dep.wait_for(lambda: _running_big(dep, dag_id, run_id, "deferred", 16), what="the big task deferred")
        collecting = []
        verdict.notes.append("no worker was collecting at the crash")
    deferred = dep.count_states(dag_id, run_id).get("deferred", 0)
    killed_at = dep.postgres.crash()
    verdict.killed.append(f"postgres ({deferred} tasks deferred, {', '.join(collecting) or 'none'} collecting)")
    time.sleep(verdict.outage_s)
    dep.postgres.restart()
    return killed_at


def hang_api(dep: Deployment, dag_id: str, run_id: str, verdict: Verdict) -> float:
    """Stop the API (``SIGSTOP`` of the emulator) while tasks are deferred, continue it ``outage_s`` later.

    Connections are still accepted and nothing answers: every poll and download in flight meets its read
    timeout, as with an API whose load balancer is up and whose servers hang.
    """
    assert verdict.outage_s is not None
    dep.wait_for(lambda: _running_big(dep, dag_id, run_id, "deferred", 16), what="the big task deferred with runs out")
    dep.wait_for(lambda: dep.count_states(dag_id, run_id).get("deferred", 0) >= 3, what="three deferred tasks")
    stopped_at = dep.pause_api()
    verdict.killed.append("the API (emulator SIGSTOP, then SIGCONT)")
    time.sleep(verdict.outage_s)
    dep.resume_api()
    return stopped_at


@dataclass(frozen=True)
class Scenario:
    """One strike. ``outage_s``: how long the database or the API stays away (``make soak``'s length);
    ``supervised``: Airflow's processes run under a service manager that restarts them when they exit;
    ``tries_allowed``: the tries beyond the first that may be spent (``None``: whatever Airflow needs)."""

    name: str
    kill: Kill
    dag_id: str = "flux2_deploy_chaos"
    triggerers: int = 1
    executors: tuple[str, ...] = ("local", "celery")
    outage_s: float | None = None
    supervised: bool = False
    tries_allowed: int | None = None
    #: Images per generating task of ``dag_id``, from the shape.
    images: Callable[[Shape], dict[str, int]] = Shape.images
    #: The Sentinel quality task whose evaluations the verdict checks (``None``: no such task).
    judge: str | None = None
    #: Emulator settings on top of the shape's (``evaluation_seconds``: evaluations long enough to strike).
    emulator: tuple[tuple[str, Any], ...] = ()


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("triggerer_kill", kill_triggerer),
        Scenario("trigger_holder_kill", kill_trigger_holder, triggerers=2),
        Scenario("task_runner_kill", kill_task_runner, dag_id="flux2_deploy_chaos_sync"),
        Scenario("task_host_kill", kill_task_host, dag_id="flux2_deploy_chaos_sync"),
        Scenario("scheduler_kill", kill_scheduler),
        Scenario("celery_worker_kill", kill_celery_worker, dag_id="flux2_deploy_chaos_sync", executors=("celery",)),
        Scenario("database_crash", crash_database, outage_s=20, supervised=True),
        # A wait rides out a silent API until the task's deadline: not one try may be spent on it.
        Scenario("api_hang", hang_api, outage_s=180, tries_allowed=0),
        Scenario(
            "sentinel_triggerer_kill",
            kill_triggerer_judging,
            dag_id="flux2_deploy_sentinel",
            images=Shape.sentinel_dag_images,
            judge="check",
            emulator=(("evaluation_seconds", 20.0),),
        ),
    )
}


def run(
    name: str,
    shape: Shape,
    executor: str | None = None,
    timeout: float = 1200,
    log: Callable[[str], None] | None = None,
    outage_s: float | None = None,
    deployment: Deployment | None = None,
) -> Verdict:
    """One scenario on a fresh deployment (or on ``deployment``, one :func:`deployment_for` started, that
    earlier scenarios ran on); returns its verdict (``verdict.ok`` when nothing was lost or paid twice).

    :param outage_s: how long the database or the API stays away (default: the scenario's own).
    """
    scenario = SCENARIOS[name]
    executor = executor or scenario.executors[0]
    if executor not in scenario.executors:
        raise ValueError(f"{name} runs on {', '.join(scenario.executors)}, not {executor}")
    verdict = Verdict(scenario.name, executor, outage_s=outage_s if outage_s is not None else scenario.outage_s)
    started = time.time()
    say = log or (lambda message: None)
    fresh = deployment is None
    with deployment_for(executor, shape, scenario) if fresh else contextlib.nullcontext(deployment) as dep:
        if fresh:
            say(f"{name} [{executor}]: deployment up in {dep.startup_seconds:.0f} s ({dep.root})")
        else:
            _reuse(dep, scenario, executor)
        run_id = dep.trigger(scenario.dag_id)
        try:
            with dep.service_manager() if scenario.supervised else contextlib.nullcontext():
                killed_at = scenario.kill(dep, scenario.dag_id, run_id, verdict)
                say(f"{name} [{executor}]: struck {', '.join(verdict.killed)}")
                state = dep.wait_dag_run(scenario.dag_id, run_id, timeout=timeout)
        except BaseException:
            dep.keep = True
            print(f"{name} [{executor}]: logs kept in {dep.root}", file=sys.stderr, flush=True)
            raise
        verdict.restarted = [r.line() for r in dep.restarts]
        end = dep.api("GET", f"/dags/{scenario.dag_id}/dagRuns/{run_id}").get("end_date")
        finished = _epoch(end) if end else time.time()
        verdict.kill_to_done_s = max(0.0, finished - killed_at)
        verdict.wall_s = time.time() - started
        verify(dep, scenario.dag_id, run_id, scenario.images(shape), verdict, scenario.judge)
        if state != "success" and not verdict.problems:
            verdict.problems.append(f"DAG run ended {state}")
        if scenario.tries_allowed is not None and verdict.tries_beyond_first > scenario.tries_allowed:
            verdict.problems.append(f"{verdict.tries_beyond_first} tries spent on a fault a wait rides out")
        if not verdict.ok:
            say(f"{name} [{executor}]: logs kept in {dep.root}")
            dep.keep = True
    return verdict


def deployment_for(executor: str, shape: Shape, scenario: Scenario | None = None) -> Deployment:
    """The deployment a scenario runs on (not started: use it as a context manager)."""
    triggerers = scenario.triggerers if scenario is not None else 1
    settings = dict(scenario.emulator) if scenario is not None else {}
    return Deployment(
        executor=executor,
        triggerers=triggerers,
        emulator={"profile": "realistic", "time_scale": shape.time_scale, **settings},
        env=shape.env(),
        parallelism=32,
    )


def _reuse(dep: Deployment, scenario: Scenario, executor: str) -> None:
    """Make a deployment an earlier scenario ran on ready for this one: every process running, the API
    forgetting the earlier runs (its ledger, keys and stats; a fresh emulator's) with this scenario's settings.
    Each scenario triggers its own DAG run, and the verdict reads only that run's ledger, files and manifests."""
    triggerers = sum(1 for name in dep.services if name.startswith("triggerer-"))
    if dep.executor != executor or triggerers != scenario.triggerers:
        raise ValueError(
            f"{scenario.name} needs {executor} with {scenario.triggerers} triggerer(s), "
            f"not {dep.executor} with {triggerers}"
        )
    dep.revive()
    dep.restarts.clear()
    dep.emu.reset()
    if scenario.emulator:
        dep.emu.configure(**dict(scenario.emulator))


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def table(verdicts: list[Verdict]) -> tuple[list[str], list[list[str]]]:
    header = ["scenario", "executor", "killed", "tasks", "images", "billed", "duplicates", "stored"]
    header += ["manifests = ledger", "extra tries", "kill → all succeeded (s)", "result"]
    rows = [
        [
            v.scenario,
            v.executor,
            (", ".join(v.killed) or "-")
            + (f", away {v.outage_s:.0f} s" if v.outage_s is not None else "")
            + (f"; restarted {', '.join(v.restarted)}" if v.restarted else ""),
            str(v.tasks),
            str(v.images),
            str(v.ledger_entries),
            str(v.duplicate_keys + v.duplicate_refs),
            str(v.stored),
            f"${v.manifest_usd} = ${v.ledger_usd}"
            if v.manifest_usd == v.ledger_usd
            else f"${v.manifest_usd} ≠ ${v.ledger_usd}",
            str(v.tries_beyond_first),
            "-" if v.kill_to_done_s is None else f"{v.kill_to_done_s:.0f}",
            "pass" if v.ok else "FAIL: " + "; ".join(v.problems),
        ]
        for v in verdicts
    ]
    return header, rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    parser.add_argument("--executor", choices=["local", "celery", "both"], default="both")
    parser.add_argument("--small-tasks", type=int, default=20)
    parser.add_argument("--big-images", type=int, default=200)
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--time-scale", type=float, default=0.3)
    parser.add_argument(
        "--outage-s",
        type=float,
        help="how long the database (database_crash, default 20) or the API (api_hang, default 180) stays away",
    )
    parser.add_argument("--json", help="write the verdicts to this file")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/deployment.md")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    shape = Shape(args.small_tasks, args.big_images, args.max_in_flight, args.time_scale)
    executors = ("local", "celery") if args.executor == "both" else (args.executor,)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    verdicts = []
    for name in args.scenarios or list(SCENARIOS):
        for executor in executors:
            if executor not in SCENARIOS[name].executors:
                continue
            try:
                verdict = run(
                    name,
                    shape,
                    executor,
                    log=lambda m: print(f"[chaos] {m}", file=sys.stderr, flush=True),
                    outage_s=args.outage_s if SCENARIOS[name].outage_s is not None else None,
                )
            except DeploymentError as exc:
                verdict = Verdict(name, executor, problems=[str(exc)])
            print(verdict.line(), flush=True)
            verdicts.append(verdict)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(v) for v in verdicts], indent=2))
    header, rows = table(verdicts)
    print("\n" + report.text_table(header, rows))
    if args.docs:
        import airflow

        machine = report.machine(airflow.__version__, REPO)
        block = "\n".join(
            [
                f"_Measured by `make soak` (`benchmarks/chaos.py`) on {started} UTC: the DAG of {shape.small_tasks} "
                f"tasks of 3–5 images and one of {shape.big_images}, max_in_flight {shape.max_in_flight}, "
                f"`retries=2`, emulator `realistic` at time scale {shape.time_scale:g}; task heartbeat timeout "
                f"{HEARTBEAT_TIMEOUT} s, triggerer health threshold {TRIGGERER_HEALTH_THRESHOLD} s._",
                "",
                *report.markdown_table(header, rows),
                "",
                f"Commit {dict(machine).get('commit', '?')}, Airflow {airflow.__version__}, 2 cores.",
            ]
        )
        report.replace_block(REPO / "docs" / "deployment.md", block, ("<!-- chaos:start -->", "<!-- chaos:end -->"))
    failed = [f"{v.scenario} [{v.executor}]" for v in verdicts if not v.ok]
    print(f"{len(verdicts) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
