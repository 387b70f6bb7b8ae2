"""A real Airflow deployment on loopback, for tests and benchmarks.

``dag.test()`` runs a trigger in line and resumes a deferred task in milliseconds. Users run a
scheduler, triggerers and workers as separate processes, where every resume of a deferred task is a
round trip triggerer → database → scheduler → executor → a new task process. This module starts that,
on 127.0.0.1 only, from Debian's and PyPI's packages and the project's own files:

- PostgreSQL (Debian's ``postgresql``): a throwaway cluster in a temp dir, ``fsync`` off;
- ``airflow api-server``, ``airflow scheduler``, ``airflow dag-processor`` and one or more
  ``airflow triggerer``, each its own process (its own session, so a ``kill -9`` takes its children
  with it, as when a container dies) with its own fresh ``AIRFLOW_HOME``; configuration and
  connections reach every process through the environment;
- the executor: ``LocalExecutor``, or ``CeleryExecutor`` with Debian's ``redis-server`` and
  ``airflow celery worker`` processes;
- the emulator (``python -m airflow_provider_flux2.emulator``) and, on request, moto's S3 server.

Nothing listens off loopback: the scheduler, triggerers and workers run with ``--skip-serve-logs``
(the log server binds every interface) and write logs to one shared folder the api-server reads.

    with Deployment(executor="local", triggerers=2) as dep:
        run_id = dep.trigger("flux2_deploy_chaos")
        dep.wait_for(lambda: dep.count_states("flux2_deploy_chaos", run_id).get("deferred", 0) > 3)
        dep.kill("triggerer-1")
        dep.wait_dag_run("flux2_deploy_chaos", run_id)

Every process is stopped by PID on exit, also on an exception or Ctrl-C.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
DAGS_FOLDER = Path(__file__).resolve().parent / "deployment_dags"
API_KEY = "rf_deploy_emulator_key_83d1c2"
ADMIN_USER = "admin"
#: Task heartbeat timeout of the deployment, in seconds (Airflow's default is 300): how long a task
#: whose process vanished without a word stays "running" before the scheduler fails it (and retries).
HEARTBEAT_TIMEOUT = 30
#: A triggerer silent for this long is taken for dead and its triggers move to a live one (default 30 s).
TRIGGERER_HEALTH_THRESHOLD = 10
#: A scheduler whose job heartbeat is older than this is taken for dead and its running tasks are reset
#: (Airflow's default, 30 s). Not lower: a scheduler checks its own heartbeat too, and on two busy cores
#: (twenty tasks resuming at once after the database came back) a 10 s threshold made the restarted
#: scheduler fail its own job and reset every task it was running, again and again.
SCHEDULER_HEALTH_THRESHOLD = 30
#: The service manager's liveness probe (``Deployment.service_manager``): a process whose job has not
#: heartbeaten in the metadata DB for this long, while the DB answers, is killed and started again — what
#: the official Helm chart's ``airflow jobs check`` liveness probes do. A lost database can leave a
#: scheduler alive and stuck (its LocalExecutor waiting forever in its shutdown for an idle worker),
#: which a manager that only restarts exited processes never mends.
LIVENESS_THRESHOLD = 45
#: How often the probe asks the database (seconds).
LIVENESS_PERIOD = 5.0
#: The job each probed process of the deployment heartbeats, by the name of its process.
_JOB_TYPES = {"scheduler": "SchedulerJob", "dag-processor": "DagProcessorJob", "triggerer": "TriggererJob"}


def _job_type(name: str) -> str | None:
    """``triggerer-2`` → ``TriggererJob``; ``None`` for a process without a job (api-server, Celery workers)."""
    return _JOB_TYPES.get(name.rsplit("-", 1)[0] if name.startswith("triggerer-") else name)


class DeploymentError(RuntimeError):
    """The deployment could not be started, or a process it needs died."""


# -- finding the system's programs ----------------------------------------------------------------------


def postgres_bindir() -> Path:
    """Debian's PostgreSQL binaries (``initdb``, ``postgres``), newest version first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise DeploymentError(
            "Debian's postgresql is not installed: run `make deploy-deps` (apt-get install postgresql)"
        )
    return found[-1].parent


def redis_server() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise DeploymentError("Debian's redis-server is not installed: run `make deploy-deps`")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; raise naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = condition()
            if value:
                return value
        if time.monotonic() > deadline:
            raise DeploymentError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- processes ------------------------------------------------------------------------------------------


@dataclass
class Service:
    """One process of the deployment: its command, log and Popen."""

    name: str
    command: list[str]
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    user: str | None = None
    started_at: float = 0.0

    def start(self) -> Service:
        preexec = _demote(self.user) if self.user else None
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # its own process group: kill() takes its children along
                preexec_fn=preexec,
            )
        self.started_at = time.time()
        return self

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else -1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (``kill -9`` by default), as when a host or container dies."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None:
            return
        if self.alive():
            self.kill(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        # Whatever is left of the group (children that ignored SIGTERM, orphans of a kill -9).
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _demote(user: str) -> Callable[[], None]:
    entry = pwd.getpwnam(user)

    def demote() -> None:
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return demote


# -- PostgreSQL and Redis -------------------------------------------------------------------------------


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (run as ``postgres`` when we are root: initdb refuses root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.data = Path(tempfile.mkdtemp(prefix="flux2-pg-"))
        self.service: Service | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=airflow dbname=airflow"

    @property
    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}

    def start(self) -> Postgres:
        bindir = postgres_bindir()
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(self.data / "db"), "-U", "airflow", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            env=self._env,
            preexec_fn=_demote(self.user) if self.user else None,
        )
        return self._launch()

    def crash(self) -> float:
        """``kill -9`` the postmaster and every backend at once, as when its host or container dies; returns when."""
        assert self.service is not None and self.service.process is not None
        self.service.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.service.process.wait(timeout=10)
        return time.time()

    def restart(self) -> Postgres:
        """Start the crashed cluster again on its data and port: PostgreSQL replays its WAL (crash recovery)."""
        return self._launch()

    def _launch(self) -> Postgres:
        bindir = postgres_bindir()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data),
            "max_connections": "300",
            # A throwaway cluster: no fsync, as nothing here survives the host. A commit still writes
            # its WAL before it answers (synchronous_commit on), so a kill -9 of PostgreSQL alone — the
            # OS keeps what was written — loses no committed transaction, as in production.
            "fsync": "off",
            "synchronous_commit": "on",
            "full_page_writes": "off",
        }
        command = [str(bindir / "postgres"), "-D", str(self.data / "db")]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        self.service = Service("postgres", command, self.root / "postgres.log", self._env, user=self.user).start()
        if self.user:
            os.chown(self.root / "postgres.log", 0, 0)
        wait_until(self._accepts, 60, "PostgreSQL to accept connections")
        return self

    def _accepts(self) -> bool:
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.dsn.replace("dbname=airflow", "dbname=postgres"))) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow'")
                if cur.fetchone() is None:
                    cur.execute("CREATE DATABASE airflow")
        return True

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.dsn, connect_timeout=5)) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            rows = list(cur.fetchall()) if cur.description else []
            conn.commit()  # a statement that writes is kept
            return rows

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        shutil.rmtree(self.data, ignore_errors=True)


class Redis:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        command = [redis_server(), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        command += ["--dir", str(root)]
        self.service = Service("redis", command, root / "redis.log", {"PATH": os.environ.get("PATH", "")})

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.service.start()
        wait_until(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1).close() or True, 30, "redis")
        return self

    def stop(self) -> None:
        self.service.stop()


# -- the deployment -------------------------------------------------------------------------------------


@dataclass
class TaskState:
    task_id: str
    state: str | None
    try_number: int
    hostname: str | None
    pid: int | None


@dataclass
class Restart:
    """One restart by the service manager: which process exited, how, and when it was started again."""

    name: str
    exit_code: int | None
    exited_at: float
    restarted_at: float
    #: ``exited``, or ``no heartbeat`` when the liveness probe killed a process that hung.
    reason: str = "exited"

    def line(self) -> str:
        return f"{self.name} (exit {self.exit_code})" if self.reason == "exited" else f"{self.name} ({self.reason})"


@dataclass
class Deployment:
    """PostgreSQL + Airflow's processes + the emulator on loopback; a context manager.

    :param executor: ``local`` (LocalExecutor) or ``celery`` (CeleryExecutor, Redis, workers).
    :param triggerers: how many ``airflow triggerer`` processes to start.
    :param celery_workers: how many ``airflow celery worker`` processes (CeleryExecutor only).
    :param emulator: keyword arguments for the emulator (``profile``, ``time_scale``, ...).
    :param env: extra environment for every Airflow process (read by the DAG files too).
    :param s3: also start moto's S3 server and give every process an ``aws_default`` connection to it.
    :param parallelism: Airflow's ``[core] parallelism`` (and LocalExecutor's worker count).
    :param prerender: images (``prompt``, ``seed``, ``width``, ``height``, ``output_format``) the emulator
        renders into its cache before any Airflow process starts (a benchmark's downloads are then
        transfers; rendering after would starve the scheduler's heartbeat on a small machine).
    """

    executor: str = "local"
    triggerers: int = 1
    celery_workers: int = 2
    emulator: dict[str, Any] = field(default_factory=lambda: {"profile": "realistic", "time_scale": 0.3})
    env: dict[str, str] = field(default_factory=dict)
    s3: bool = False
    parallelism: int = 16
    keep: bool = False
    prerender: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.executor not in ("local", "celery"):
            raise ValueError(f"executor must be 'local' or 'celery', not {self.executor!r}")
        self.root = Path(tempfile.mkdtemp(prefix="flux2-deploy-"))
        os.chmod(self.root, 0o755)
        self.logs = self.root / "logs"
        self.output = self.root / "output"
        self.logs.mkdir()
        self.output.mkdir()
        self.services: dict[str, Service] = {}
        self.postgres: Postgres | None = None
        self.redis: Redis | None = None
        self.emu: Any = None
        self.moto: Any = None
        self.api_port = free_port()
        self.password = secrets.token_urlsafe(12)
        self._token: str | None = None
        self._client: httpx.Client | None = None
        self._airflow_env: dict[str, str] = {}
        self.restarts: list[Restart] = []
        self._api_paused = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> Deployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Deployment:
        started = time.perf_counter()
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None) and _is_main_thread():
            # SIGTERM (CI's timeout, `kill`) goes the way of Ctrl-C: through __exit__, which stops everything.
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        self.postgres = Postgres(self.root).start()
        if self.executor == "celery":
            self.redis = Redis(self.root).start()
        self._start_emulator()
        if self.prerender:
            self.emu.prerender(self.prerender, cache_mb=2048)
        if self.s3:
            self._start_moto()
        self._airflow_env = self._environment()
        self._migrate()
        # Every process starts at once: none needs another to start (the database is migrated), and the
        # api-server's FastAPI app (about 6 CPU-s) builds while the others start and parse the DAG files.
        self._spawn("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.api_port)])
        self._spawn("dag-processor", ["dag-processor"])
        self._spawn("scheduler", ["scheduler", "--skip-serve-logs"])
        for index in range(1, self.triggerers + 1):
            self.start_triggerer(index)
        if self.executor == "celery":
            for index in range(1, self.celery_workers + 1):
                self.start_celery_worker(index)
        wait_until(self._api_ready, 120, "the api-server", interval=0.5)
        self.startup_seconds = time.perf_counter() - started
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        # Workers and schedulers first (they hold database connections), the database last.
        for name in sorted(self.services, key=lambda n: n == "api-server"):
            self.services[name].stop()
        if self.emu is not None:
            if self._api_paused:
                self.resume_api()
            with contextlib.suppress(Exception):
                self.emu.stop()
            self.emu = None
        if self.moto is not None:
            with contextlib.suppress(Exception):
                self.moto.stop()
            self.moto = None
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- what runs -------------------------------------------------------------------------------------

    def _start_emulator(self) -> None:
        from airflow_provider_flux2.emulator import Emulator

        # Pages of /items as large as the real API serves them (limit up to 500; a batch has at most 100):
        # the emulator's small default page is for tests that must cross a page.
        settings = {
            "profile": "realistic",
            "time_scale": 0.3,
            "random_seed": 20260101,
            "items_page_size": 100,
            **self.emulator,
        }
        self.emu = Emulator(api_key=API_KEY, subprocess=True, **settings).start()

    def _start_moto(self) -> None:
        from moto.server import ThreadedMotoServer

        port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.moto.start()
        self.moto_url = f"http://127.0.0.1:{port}"

    def _environment(self) -> dict[str, str]:
        assert self.postgres is not None and self.emu is not None
        api = f"http://127.0.0.1:{self.api_port}"
        passwords = self.root / "passwords.json"
        passwords.write_text(json.dumps({ADMIN_USER: self.password}))
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW", "FLUX2_")) and key not in ("PYTEST_CURRENT_TEST",)
        }
        env.update(
            {
                # The repository first, so the processes import this checkout's provider and DAG helpers.
                "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).resolve().parent)]),
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if self.executor == "celery" else "LocalExecutor",
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(self.parallelism),
                "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "deployment_hostname.hostname",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__API__BASE_URL": api,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url,
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # The DAG files never change while a deployment lives: each is parsed when first seen and
                # not every 30 s again (Airflow's default), which cost 2.4 CPU-s a minute on two cores.
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "15",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": str(SCHEDULER_HEALTH_THRESHOLD),
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_HEALTH_THRESHOLD),
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW_CONN_FLUX2_DEFAULT": json.dumps(
                    {
                        "conn_type": "flux2",
                        "host": self.emu.base_url,
                        "password": self.emu.api_key,
                        "extra": {"retry_base_delay": 0.2, "timeout": 30},
                    }
                ),
                "FLUX2_DEPLOY_OUTPUT": str(self.output),
                "FLUX2_DEPLOY_ENTRIES": str(self.root / "entries.jsonl"),
                "FLUX2_DEPLOY_COLLECTING": str(self.root / "collecting.jsonl"),
            }
        )
        if self.executor == "celery":
            assert self.redis is not None
            env["AIRFLOW__CELERY__BROKER_URL"] = self.redis.url
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + self.postgres.url
            env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(max(2, self.parallelism // max(1, self.celery_workers)))
        if self.s3 and self.moto is not None:
            env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"region_name": "us-east-1", "endpoint_url": self.moto_url},
                }
            )
        env.update(self.env)
        return env

    def _migrate(self) -> None:
        env = {**self._airflow_env, "AIRFLOW_HOME": str(self._home("migrate"))}
        result = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise DeploymentError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    def _home(self, name: str) -> Path:
        home = self.root / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        return home

    def _spawn(self, name: str, args: list[str]) -> Service:
        env = {**self._airflow_env, "AIRFLOW_HOME": str(self._home(name)), "FLUX2_DEPLOY_HOSTNAME": name}
        command = [sys.executable, "-m", "airflow", *args]
        service = Service(name, command, self.root / f"{name}.log", env).start()
        self.services[name] = service
        return service

    def start_triggerer(self, index: int) -> Service:
        name = f"triggerer-{index}"
        if name in self.services and self.services[name].alive():
            raise DeploymentError(f"{name} is already running")
        return self._spawn(name, ["triggerer", "--skip-serve-logs"])

    def start_celery_worker(self, index: int) -> Service:
        name = f"worker-{index}"
        concurrency = self._airflow_env.get("AIRFLOW__CELERY__WORKER_CONCURRENCY", "8")
        return self._spawn(
            name,
            ["celery", "worker", "--skip-serve-logs", "--celery-hostname", name, "--concurrency", concurrency],
        )

    def restart(self, name: str) -> Service:
        """Start a fresh process in the role of ``name`` (after it was killed)."""
        old = self.services[name]
        old.stop(grace=1)
        args = old.command[3:]
        return self._spawn(name, args)

    def revive(self) -> list[str]:
        """Start again every process of the deployment that is not running (a scenario killed it), so the
        next scenario finds the deployment whole; returns their names."""
        dead = [name for name, service in self.services.items() if not service.alive()]
        for name in dead:
            self.restart(name)
        return dead

    def kill(self, name: str, sig: int = signal.SIGKILL) -> float:
        """``kill -9`` a process of the deployment and its children; returns when it happened (epoch)."""
        self.services[name].kill(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.services[name].process.wait(timeout=10)  # type: ignore[union-attr]
        return time.time()

    def check_alive(self, *names: str) -> None:
        for name in names or tuple(self.services):
            service = self.services[name]
            if not service.alive():
                raise DeploymentError(f"{name} exited ({service.process.returncode}):\n{service.tail()}")  # type: ignore[union-attr]

    # -- faults of the surroundings ------------------------------------------------------------------------

    @contextlib.contextmanager
    def service_manager(
        self, restart_sec: float = 5.0, interval: float = 0.5, liveness_threshold: float = LIVENESS_THRESHOLD
    ) -> Iterator[list[Restart]]:
        """Restart every Airflow process of the deployment that exits, while the block runs.

        What systemd's ``Restart=always`` with ``RestartSec=5`` (or a container's ``restart: always``) does:
        a process found dead is started again ``restart_sec`` later, as often as it dies — while the
        database is down a scheduler may exit, be restarted, and exit again. As systemd's default
        ``KillMode=control-group`` would, what is left of the dead process's group (LocalExecutor's task
        processes forked by a dead scheduler) is killed before the new process starts. PostgreSQL itself is
        not managed here: the scenario decides when it is back. Yields the list of restarts, filled as they
        happen (also kept in :attr:`restarts`).

        A liveness probe, as a Kubernetes deployment of Airflow has: every :data:`LIVENESS_PERIOD` seconds,
        a process whose job has not heartbeaten for ``liveness_threshold`` seconds while the database
        answers is killed (its whole group), and restarted like one that exited.
        """
        import threading

        done = threading.Event()
        dead_since: dict[str, tuple[float, int | None]] = {}
        hung: set[str] = set()
        probed_at = time.time()

        def watch() -> None:
            nonlocal probed_at
            while not done.wait(interval):
                if time.time() - probed_at >= LIVENESS_PERIOD:
                    probed_at = time.time()
                    for name in self._hung(liveness_threshold):
                        hung.add(name)
                        self.services[name].kill()
                for name, service in list(self.services.items()):
                    if service.alive():
                        dead_since.pop(name, None)
                        continue
                    code = service.process.poll() if service.process else None
                    exited = dead_since.setdefault(name, (time.time(), code))
                    if time.time() - exited[0] >= restart_sec and not done.is_set():
                        reason = "no heartbeat" if name in hung else "exited"
                        with contextlib.suppress(Exception):
                            self.restart(name)
                            self.restarts.append(Restart(name, exited[1], exited[0], time.time(), reason))
                        dead_since.pop(name, None)
                        hung.discard(name)

        thread = threading.Thread(target=watch, name="service-manager", daemon=True)
        thread.start()
        try:
            yield self.restarts
        finally:
            done.set()
            thread.join(timeout=30)

    def _hung(self, threshold: float) -> list[str]:
        """The running processes whose job has not heartbeaten for ``threshold`` seconds (none while the
        database does not answer: then nothing can be judged)."""
        assert self.postgres is not None
        now = time.time()
        probed = {
            name: service
            for name, service in self.services.items()
            if _job_type(name) and service.alive() and now - service.started_at >= threshold
        }
        if not probed:
            return []
        try:
            rows = self.postgres.query(
                "SELECT hostname, job_type, EXTRACT(EPOCH FROM now() - max(latest_heartbeat)) FROM job "
                "WHERE hostname = ANY(%s) GROUP BY hostname, job_type",
                (list(probed),),
            )
        except Exception:  # the database is away or still recovering
            return []
        beats = {(host, job_type): age for host, job_type, age in rows}
        hung = []
        for name, service in probed.items():
            age = beats.get((name, _job_type(name)))
            since_start = now - service.started_at
            # A job row older than this process belongs to its predecessor: count from its own start.
            if age is None or float(age) > since_start:
                age = since_start
            if float(age) >= threshold:
                hung.append(name)
        return hung

    def pause_api(self) -> float:
        """``SIGSTOP`` the emulator: its socket still accepts connections and nothing answers (a hung API,
        not a refused connection); returns when (epoch). The emulator's control endpoints hang too."""
        os.kill(self.emu._process.pid, signal.SIGSTOP)
        self._api_paused = True
        return time.time()

    def resume_api(self) -> float:
        """``SIGCONT`` the emulator stopped by :meth:`pause_api`; returns when (epoch)."""
        os.kill(self.emu._process.pid, signal.SIGCONT)
        self._api_paused = False
        return time.time()

    # -- the REST API ------------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _api_ready(self) -> bool:
        self.check_alive("api-server")
        response = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5, trust_env=False)
        return response.status_code == 200

    def token(self) -> str:
        """A JWT from ``/auth/token`` for the admin user of the simple auth manager."""
        if self._token is None:
            response = httpx.post(
                f"{self.api_url}/auth/token",
                json={"username": ADMIN_USER, "password": self.password},
                timeout=30,
                trust_env=False,
            )
            if response.status_code >= 400:
                raise DeploymentError(f"/auth/token answered {response.status_code}: {response.text[:300]}")
            self._token = response.json()["access_token"]
        return self._token

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=f"{self.api_url}/api/v2",
                headers={"Authorization": f"Bearer {self.token()}"},
                timeout=30,
                trust_env=False,
            )
        return self._client

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise DeploymentError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Until the dag-processor has parsed ``dag_id`` and the api-server knows it."""

        def known() -> bool:
            self.check_alive("dag-processor")
            return bool(self.api("GET", f"/dags/{dag_id}"))

        wait_until(known, timeout, f"DAG {dag_id} to be parsed", interval=1)

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Start a DAG run through the REST API; returns its run id."""
        self.wait_for_dag(dag_id)
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})})
        return str(run["dag_run_id"])

    def dag_run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_states(self, dag_id: str, run_id: str) -> list[TaskState]:
        body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return [
            TaskState(ti["task_id"], ti["state"], int(ti["try_number"] or 0), ti.get("hostname"), ti.get("pid"))
            for ti in body["task_instances"]
        ]

    def count_states(self, dag_id: str, run_id: str) -> Counter[str]:
        return Counter(str(t.state) for t in self.task_states(dag_id, run_id))

    def wait_dag_run(self, dag_id: str, run_id: str, timeout: float = 900, keep_alive: bool = True) -> str:
        """Until the run is finished; raises if a process of the deployment died meanwhile (unless it was killed)."""

        def finished() -> str | None:
            state = self.dag_run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return str(wait_until(finished, timeout, f"DAG run {run_id} to finish", interval=1))

    def wait_for(self, condition: Callable[[], Any], timeout: float = 300, what: str = "a condition") -> Any:
        return wait_until(condition, timeout, what, interval=0.5)

    # -- what the deployment knows ------------------------------------------------------------------------

    def trigger_holder(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        """The name of the triggerer running the trigger of a deferred task (from the metadata DB)."""
        assert self.postgres is not None
        rows = self.postgres.query(
            "SELECT j.hostname FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id "
            "JOIN job j ON t.triggerer_id = j.id WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = %s",
            (dag_id, run_id, task_id),
        )
        return str(rows[0][0]) if rows and rows[0][0] else None

    def worker_entries(self) -> list[dict[str, Any]]:
        """What the DAG files' instrumented operators wrote: one line per worker entry (see deployment_dags)."""
        path = self.root / "entries.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def collections_started(self) -> list[dict[str, Any]]:
        """Resumed tasks that entered ``execute_complete`` (``run_id``, ``task_id``, ``try_number``, ``entered``)."""
        path = self.root / "collecting.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log_files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file() and p.suffix in (".log", ".json", ".jsonl", "")]


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def deployment(**kwargs: Any) -> Iterator[Deployment]:
    """``with deployment(executor="celery") as dep:`` — the same as ``with Deployment(...)``."""
    with Deployment(**kwargs) as dep:
        yield dep
