"""A real Airflow deployment on loopback survives ``kill -9`` and outages: the short scenarios of ``make cluster-test``.

A deployment is PostgreSQL, the api-server, scheduler, dag-processor, triggerer(s) and the executor as
separate processes (``benchmarks/deployment.py``). Each test runs a DAG of deferrable tasks (one of
them a ``@task.flux2`` task) against the emulator, kills a process, the database or the API mid-flight,
and checks the user's invariants against the emulator's ledger: one billed run per image, nothing billed
twice, one stored file per image, manifests equal to the ledger to the cent, and the tries spent.

The kill and hang scenarios of one executor share one deployment (:func:`shared`), as a real one lives
through many nights: each triggers its own DAG run, the verdict reads only that run, and the deployment
is made whole between them (every process running again, the API's ledger and keys forgotten). Starting
one costs about 30 CPU-seconds; sharing saves two of them in ``make test``. The database crash gets a
deployment of its own. ``make soak`` runs every scenario at
full size, each on a fresh deployment (``benchmarks/chaos.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import chaos  # noqa: E402
from deployment import Deployment  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]

#: Small enough for `make test` (about a minute each), big enough that the kill lands mid-flight.
SHORT = chaos.Shape(small_tasks=6, big_images=40, max_in_flight=8, time_scale=0.3)
#: The database's outage in the short version (20 s in `make soak`): long enough that every Airflow
#: process loses its connections and the task processes' calls to the api-server fail.
DATABASE_DOWN_S = 6
#: The API's hang in the short version (180 s in `make soak`): longer than the connection's read timeout
#: (30 s), so polls in flight time out and the wait must ride the hang out.
API_HANG_S = 35


_live: dict[str, Deployment] = {}


def shared(executor: str) -> Deployment:
    """The deployment of ``executor`` the scenarios of this module share, started on first use; one lives
    at a time in a test process (asking for the other executor's stops it: two would share two cores)."""
    for name in [n for n in _live if n != executor]:
        release(name)
    if executor not in _live:
        dep = chaos.deployment_for(executor, SHORT)
        dep.start()
        _live[executor] = dep
    return _live[executor]


def release(executor: str) -> None:
    dep = _live.pop(executor, None)
    if dep is not None:
        dep.stop()


@pytest.fixture(scope="module", autouse=True)
def _stop_shared_deployments():
    yield
    for executor in list(_live):
        release(executor)


def _assert_whole(verdict: chaos.Verdict) -> None:
    print(verdict.line())  # the figures, shown by `pytest -rP` (docs/deployment.md quotes them)
    assert verdict.ok, verdict.line()
    assert verdict.dag_state == "success"
    assert verdict.ledger_entries == verdict.images == verdict.stored == sum(SHORT.images().values())
    assert verdict.duplicate_keys == verdict.duplicate_refs == 0
    assert verdict.manifest_usd == verdict.ledger_usd


def test_triggerer_killed_while_tasks_are_deferred_loses_nothing_and_pays_once():
    verdict = chaos.run("triggerer_kill", SHORT, "local", deployment=shared("local"))
    _assert_whole(verdict)
    assert verdict.killed == ["triggerer-1"]


def test_triggerer_killed_while_sentinel_judges_bills_each_evaluation_once():
    """``kill -9`` of the only triggerer while a deferred quality task's evaluations are in flight: the new
    triggerer asks again under the same keys and the API replays what it already made."""
    verdict = chaos.run("sentinel_triggerer_kill", SHORT, "local", deployment=shared("local"))
    print(verdict.line())
    assert verdict.ok, verdict.line()
    assert verdict.dag_state == "success"
    assert verdict.killed[0].startswith("triggerer-1")
    images = SHORT.sentinel_images
    assert verdict.ledger_entries == verdict.images == verdict.stored == images  # runs only
    assert verdict.evaluations == verdict.judged == images
    assert verdict.duplicate_evaluation_keys == verdict.duplicate_keys == verdict.duplicate_refs == 0
    assert verdict.summary_evaluation_usd == verdict.evaluation_usd
    assert verdict.manifest_usd == verdict.ledger_usd


def test_a_process_that_hangs_is_killed_and_started_again_by_the_service_manager():
    """The service manager's liveness probe (what a Kubernetes deployment's ``airflow jobs check`` probe
    does): a process alive but silent — as the scheduler that hung in its LocalExecutor's shutdown after
    the database crash was — is killed and started again; the others, heartbeating, are left alone.

    The dag-processor is stopped (SIGSTOP: alive, and no heartbeat from then on), and its last heartbeat
    set an hour back, so the probe need not wait out its threshold."""
    import signal
    import time

    from deployment import LIVENESS_THRESHOLD

    dep = shared("local")
    dep.revive()
    processor = dep.services["dag-processor"]
    time.sleep(max(0.0, processor.started_at + LIVENESS_THRESHOLD - time.time()))  # only when run alone
    before = processor.pid
    with dep.service_manager(restart_sec=1) as restarts:
        processor.kill(signal.SIGSTOP)
        dep.postgres.query(
            "UPDATE job SET latest_heartbeat = now() - interval '1 hour' WHERE hostname = 'dag-processor'"
        )
        restarted = dep.wait_for(lambda: list(restarts), timeout=60, what="the silent dag-processor restarted")
    assert [(r.name, r.reason) for r in restarted] == [("dag-processor", "no heartbeat")]
    assert restarted[0].line() == "dag-processor (no heartbeat)"
    assert dep.services["dag-processor"].pid != before and dep.services["dag-processor"].alive()
    dep.restarts.clear()


def test_deployment_listens_on_loopback_only_and_stops_every_process():
    """After the scenarios above (restarted processes included), everything listens on loopback only,
    and stopping the deployment stops every process."""
    import psutil

    dep = shared("local")
    pids = {name: service.pid for name, service in dep.services.items()}
    assert {"api-server", "scheduler", "dag-processor", "triggerer-1"} <= set(pids)
    family = {p.pid for name in pids for p in _tree(psutil, pids[name])}
    family |= {dep.postgres.service.pid, dep.emu._process.pid}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in family]
    assert listening, "the deployment listens somewhere"
    off_loopback = [c.laddr for c in listening if not c.laddr.ip.startswith("127.")]
    assert off_loopback == [], f"listening off loopback: {off_loopback}"
    token = dep.token()
    assert token.count(".") == 2  # a JWT
    dep.wait_for_dag("flux2_deploy_chaos")
    assert dep.api("GET", "/dags/flux2_deploy_chaos")["dag_id"] == "flux2_deploy_chaos"
    release("local")
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids.values())


def _tree(psutil, pid):
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    return [parent, *parent.children(recursive=True)]


def test_database_killed_mid_batch_and_restarted_loses_nothing_and_pays_once():
    """PostgreSQL ``kill -9`` while tasks are deferred and a worker collects, back after a few seconds;
    the Airflow processes that die of it are restarted by a service manager, and one left alive but
    stuck (the scheduler, in its LocalExecutor's shutdown) is killed by its liveness probe and restarted.

    On a deployment of its own, as in ``make soak``."""
    verdict = chaos.run("database_crash", SHORT, "local", outage_s=DATABASE_DOWN_S)
    _assert_whole(verdict)
    assert verdict.killed[0].startswith("postgres")
    # What a lost database costs is Airflow's own, a try for each process that died of it: the task's
    # own (it lost the api-server's database), and each scheduler that died, whose queued and running
    # tasks the next scheduler resets as orphans — LocalExecutor cannot adopt them, and Airflow's
    # adopt_or_reset_orphaned_tasks says a reset "can cause the scheduler to increase the try_number".
    schedulers = sum(1 for restart in verdict.restarted if restart.startswith("scheduler "))
    assert all(try_number <= 2 + schedulers for try_number in verdict.retried.values()), verdict.line()


def test_celery_worker_killed_while_running_a_task_loses_nothing_and_pays_once():
    verdict = chaos.run("celery_worker_kill", SHORT, deployment=shared("celery"))
    _assert_whole(verdict)
    assert verdict.killed and verdict.killed[0].startswith("worker-")
    # The killed worker's task was failed by the heartbeat timeout and retried elsewhere.
    assert verdict.tries_beyond_first >= 1


def test_api_hanging_mid_batch_loses_nothing_pays_once_and_spends_no_try():
    """The API stops answering (its process stopped) while tasks are deferred, then continues: the waits
    ride it out."""
    verdict = chaos.run("api_hang", SHORT, "celery", outage_s=API_HANG_S, deployment=shared("celery"))
    _assert_whole(verdict)
    assert verdict.tries_beyond_first == 0, verdict.retried


def test_every_chaos_dag_has_a_decorated_task_the_verdict_counts(monkeypatch):
    """``@task.flux2`` runs on the deployment in every scenario above (its images, manifest and ledger
    entries are checked with the others'), deferrable and in the worker."""
    from tests.dagbags import dag_bag

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for key, value in SHORT.env().items():
        monkeypatch.setenv(key, value)
    bag = dag_bag(BENCHMARKS / "deployment_dags" / "flux2_deploy.py")
    assert bag.import_errors == {}
    for dag_id, deferrable in (("flux2_deploy_chaos", True), ("flux2_deploy_chaos_sync", False)):
        decorated = bag.dags[dag_id].get_task("decorated")
        assert decorated.custom_operator_name == "@task.flux2"
        assert decorated.deferrable is deferrable
    assert SHORT.images()["decorated"] == SHORT.decorated_images > 0


def test_ctrl_c_stops_every_process_of_the_deployment(tmp_path):
    """A harness interrupted mid-run (Ctrl-C) leaves no process and no temp dir behind."""
    import json
    import os
    import signal
    import subprocess
    import time

    import psutil

    script = tmp_path / "hold.py"
    script.write_text(
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(BENCHMARKS)!r})\n"
        "from deployment import Deployment\n"
        "with Deployment(executor='local') as dep:\n"
        "    pids = [s.pid for s in dep.services.values()] + [dep.postgres.service.pid, dep.emu._process.pid]\n"
        "    print(json.dumps({'pids': pids, 'root': str(dep.root)}), flush=True)\n"
        "    time.sleep(600)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        started = json.loads(holder.stdout.readline())
        assert all(psutil.pid_exists(pid) for pid in started["pids"])
        holder.send_signal(signal.SIGINT)
        holder.wait(timeout=90)
    finally:
        if holder.poll() is None:
            holder.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_running(psutil, pid) for pid in started["pids"]):
        time.sleep(0.2)
    assert [pid for pid in started["pids"] if _running(psutil, pid)] == []
    assert not Path(started["root"]).exists()


def _running(psutil, pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
