"""``make bench``, real-deployment mode: the shipped operator against its baselines and the peers' clients.

One emulator (``realistic``, fixed seed reset before every run), one DAG file
(``deployment_dags/flux2_deploy_bench.py``, its tasks in ``bench_operators.py``), each row run on a real
deployment (PostgreSQL, api-server, scheduler with LocalExecutor, dag-processor, triggerer, each its
own process; the run triggered through the REST API) and under ``dag.test()`` (``airflow dags test``
on SQLite, the trigger run in line):

- ``shipped``: the operator as shipped, deferrable (one deferral per batch, the window in the trigger);
- ``sync``: the shipped operator, not deferrable (the same window, driven in the worker);
- ``waves``: waves of ``max_in_flight``: the next wave only when every run of the last one is done;
- ``fal``, ``bfl``, ``runflow_js``: a plain client in a task: single runs, ``max_in_flight`` at once,
  each polled with ``GET /v1/runs/{id}`` every 0.1 s (fal-client), 1 s (Black Forest Labs' client),
  2 s (Runflow's JS SDK), then downloaded; the worker slot held throughout;
- ``http``: ``HttpOperator`` → ``HttpSensor`` (5 s poke) → download, one mapped task group per image.

And two measurements of the shipped operator alone:

- ``triggerer``: the triggerer's process tree (psutil) while one task's trigger holds 1,000 runs in
  flight: peak RSS, and CPU over the time the task is deferred;
- ``png``: peak RSS of one 4096×4096 PNG through download → checks → S3 (moto's server), in a fresh
  process (``png_rss.py``).

Figures per row: wall time against the ideal ``images × mean latency / max_in_flight``, worker entries,
worker-slot seconds, requests per image (every API request the emulator served: submits, polls, reads,
downloads, retries included), detection lag p50/p95, images and billed (a row where they differ is
invalid). The results, and the issue's targets as "target / measured / met?", go between the
``deploy-bench`` markers of ``docs/performance.md``.

    python benchmarks/deployment_bench.py                 # the issue's targets: 1,000 images, 32, scale 1
    python benchmarks/deployment_bench.py --images 20 --max-in-flight 4 --time-scale 0.1 --rows shipped,fal --no-docs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import figures
import report
from deployment import REPO, Deployment, DeploymentError
from report import number, percent

DOCS_PAGE = REPO / "docs" / "performance.md"
MARKERS = ("<!-- deploy-bench:start -->", "<!-- deploy-bench:end -->")
API_ENDPOINTS_EXCLUDED = ("health",)
HTTP_CONN_ID = "flux2_http"


@dataclass(frozen=True)
class Row:
    """One compared way of running the images: its DAG, its label, whether it runs at the peers' N."""

    key: str
    label: str
    dag_id: str
    peer: bool = True
    dag_test: bool = True


ROWS = (
    Row("shipped", "as shipped, deferrable", "flux2_deploy_bench", peer=False),
    Row("sync", "as shipped, not deferrable", "flux2_deploy_bench_sync", peer=False),
    Row("waves", "waves of max_in_flight, deferrable", "flux2_deploy_bench_waves"),
    Row("fal", "fal-client: per-run polls every 0.1 s", "flux2_deploy_bench_fal"),
    Row("bfl", "Black Forest Labs' client: per-run polls every 1 s", "flux2_deploy_bench_bfl"),
    Row("runflow_js", "Runflow's JS SDK: per-run polls every 2 s", "flux2_deploy_bench_runflow_js"),
    # Under dag.test() the mapped tasks run one after another: no throughput to compare.
    Row("http", "HttpOperator + HttpSensor (5 s poke)", "flux2_deploy_bench_http", dag_test=False),
)
EXTRA = ("triggerer", "png")
ALL_KEYS = tuple(r.key for r in ROWS) + EXTRA


@dataclass
class Measured:
    """One run of a bench DAG, however it was run."""

    key: str
    label: str
    mode: str
    images: int
    planned: int
    state: str
    wall_s: float
    mean_latency_s: float
    entries: int
    slot_s: float
    requests: int
    billed: int
    lag_p50: float
    lag_p95: float
    tries: int
    peak_in_flight: int
    lags: list[float] = field(default_factory=list, repr=False)

    def ideal_s(self, max_in_flight: int) -> float:
        return self.images * self.mean_latency_s / max_in_flight

    def of_ideal(self, max_in_flight: int) -> float:
        return self.ideal_s(max_in_flight) / self.wall_s if self.wall_s else math.nan

    @property
    def requests_per_image(self) -> float:
        return self.requests / self.images if self.images else math.nan

    @property
    def slot_per_image(self) -> float:
        return self.slot_s / self.images if self.images else math.nan

    @property
    def valid(self) -> bool:
        return self.state == "success" and self.images == self.planned and self.billed == self.images


@dataclass
class Triggerer:
    """The triggerer's process tree while one trigger holds every run of a task in flight.

    Airflow 3's ``airflow triggerer`` is two processes: the supervisor, and the trigger runner (its
    child, where the triggers' event loop runs). RSS is given for the runner and for the whole tree,
    each at its peak while the task was deferred, and for the tree before the DAG run started (idle).
    """

    images: int
    peak_in_flight: int
    deferred_s: float
    idle_rss: int
    peak_rss: int
    peak_runner_rss: int
    cpu_s: float
    state: str
    idle_cpu_share: float = math.nan

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.deferred_s if self.deferred_s > 0 else math.nan


@dataclass
class Png:
    peak_rss: int
    rss_after_imports: int
    size_bytes: int
    seconds: float
    source: str = "the emulator's"


# -- reading what a run left behind --------------------------------------------------------------------


def _rows(output: Path, dag_id: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """Image records of one DAG run: the shipped operators' manifests, the peers' ``records.jsonl``."""
    rows: list[dict[str, Any]] = []
    for manifest in output.glob(f"{dag_id}/*/generate/manifest.json"):
        found = json.loads(manifest.read_text())["images"]
        rows += [r for r in found if run_id is None or str(r.get("client_ref", "")).startswith(f"{dag_id}/{run_id}/")]
    folders = [output / dag_id / run_id] if run_id is not None else list(output.glob(f"{dag_id}/*"))
    for folder in folders:
        path = folder / "records.jsonl"
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _api_requests(stats: dict[str, Any]) -> int:
    return sum(n for endpoint, n in stats.get("requests", {}).items() if endpoint not in API_ENDPOINTS_EXCLUDED)


def _entries(path: Path, dag_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if e["dag_id"] == dag_id]


def _measured(
    row: Row,
    mode: str,
    planned: int,
    rows: list[dict[str, Any]],
    entries: list[dict[str, Any]],
    emu: Any,
    wall: float,
    state: str,
) -> Measured:
    stats = emu.stats()  # before reading the runs below, which the emulator counts too
    ledger = emu.ledger()["entries"]
    task = figures.task_figures(
        rows,
        stats,
        billed=len(ledger),
        worker_seconds=0.0,
        worker_entries=len(entries),
        worker_parts={},
        task_seconds=wall,
    )
    tries = max((int(e["try_number"]) for e in entries), default=1)
    return Measured(
        key=row.key,
        label=row.label,
        mode=mode,
        images=len(rows),
        planned=planned,
        state=state,
        wall_s=wall,
        mean_latency_s=figures.mean(api_latencies(emu, [e["run_id"] for e in ledger])),
        entries=len(entries),
        slot_s=slot_seconds(entries),
        requests=_api_requests(stats),
        billed=task.billed,
        lag_p50=task.lag_p50,
        lag_p95=task.lag_p95,
        tries=tries,
        peak_in_flight=task.peak_in_flight,
        lags=task.lags,
    )


def api_latencies(emu: Any, run_ids: list[str]) -> list[float]:
    """Each billed run's latency as the API saw it: ``created_at`` → ``completed_at``.

    Not the records' ``submitted_at``: after a retry, a record carries the replayed submission's instant,
    which can come after the run finished (the first try submitted it).
    """
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    headers = {"Authorization": f"Bearer {emu.api_key}"}
    with httpx.Client(base_url=emu.base_url, headers=headers, timeout=30, trust_env=False) as client:

        def one(run_id: str) -> float:
            run = client.get(f"/v1/runs/{run_id}").raise_for_status().json()
            return _epoch(run["completed_at"]) - _epoch(run["created_at"])

        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(one, run_ids))


def slot_seconds(entries: list[dict[str, Any]], *, from_process_start: bool = True) -> float:
    """Seconds a worker slot was held: per entry, from its process's start (the first entry of a task
    process on a deployment) or from entering the method (a later entry in the same process) to its exit.

    ``from_process_start=False`` under ``dag.test()``: its one process is the ``airflow dags test``
    command, whose start-up (imports, database) is no worker slot.
    """
    held, seen = 0.0, set()
    for entry in sorted(entries, key=lambda e: e["enter"]):
        fresh = from_process_start and entry["pid"] not in seen
        start = min(entry["process_start"], entry["enter"]) if fresh else entry["enter"]
        seen.add(entry["pid"])
        held += entry["exit"] - start
    return held


def _task_span(entries: list[dict[str, Any]]) -> float:
    """First entry to last exit of the run's worker entries (``dag.test()`` runs them in one process)."""
    if not entries:
        return 0.0
    return max(e["exit"] for e in entries) - min(e["enter"] for e in entries)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# -- running the rows ----------------------------------------------------------------------------------


def http_connection(dep: Deployment) -> dict[str, Any]:
    """The ``http`` connection of the HttpOperator DAG: the emulator, the key as a header in the extra."""
    return {
        "conn_type": "http",
        "host": dep.emu.base_url,
        "extra": json.dumps({"Authorization": f"Bearer {dep.emu.api_key}", "timeout": 30}),
    }


def add_http_connection(dep: Deployment) -> None:
    body = {"connection_id": HTTP_CONN_ID, **http_connection(dep)}
    dep.api("POST", "/connections", json=body)


def prerender_images(count: int) -> list[dict[str, Any]]:
    """Every row's images, for the emulator to render before anything starts or is timed.

    Every row asks for the same images (``deployment_shape.prompts("generate", n)``). The real API renders
    an image while its run is ``running``, on its own machines; the emulator renders it when its URL
    is fetched, on this one, which would put image synthesis (~30 ms an image, on the same two cores
    as the worker) into every download the rows time. Warm, a download is a transfer, as in
    ``benchmarks/run.py``. The deployment renders them before its Airflow processes start.
    """
    from deployment_shape import prompts

    from airflow_provider_flux2.models import build_input

    images = []
    for item in prompts("generate", count):
        request = build_input("pro", **item)
        images.append(
            {
                "prompt": request.prompt,
                "seed": item["seed"],
                "width": request.width,
                "height": request.height,
                "output_format": request.output_format,
            }
        )
    return images


def run_dag_test(dep: Deployment, row: Row, planned: int) -> Measured:
    """``airflow dags test`` of one bench DAG on a throwaway SQLite home, against the deployment's emulator."""
    dep.emu.reset()
    home = Path(tempfile.mkdtemp(prefix="flux2-bench-dagtest-"))
    output = home / "output"
    entries = home / "entries.jsonl"
    env = {
        **dep._airflow_env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_FLUX2_HTTP": json.dumps(http_connection(dep)),
        "FLUX2_DEPLOY_OUTPUT": str(output),
        "FLUX2_DEPLOY_ENTRIES": str(entries),
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", row.dag_id], env=env, capture_output=True, text=True
    )
    wall = time.time() - started
    state = "success" if result.returncode == 0 else "failed"
    if state != "success":
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
    found = _entries(entries, row.dag_id)
    measured = _measured(row, "dag.test()", planned, _rows(output, row.dag_id), found, dep.emu, wall, state)
    measured.wall_s = _task_span(found) or wall
    measured.slot_s = slot_seconds(found, from_process_start=False)
    return measured


def run_deployed(dep: Deployment, row: Row, planned: int) -> Measured:
    """The bench DAG triggered through the REST API; the wall time is the DAG run's, from Airflow's own dates."""
    dep.emu.reset()
    run_id = dep.trigger(row.dag_id)
    state = dep.wait_dag_run(row.dag_id, run_id, timeout=7200)
    # The DAG run's own dates: the task instance's are reset on every resume after a deferral.
    dag_run = dep.api("GET", f"/dags/{row.dag_id}/dagRuns/{run_id}")
    wall = _epoch(dag_run["end_date"]) - _epoch(dag_run["start_date"]) if dag_run.get("end_date") else math.nan
    found = [e for e in _entries(dep.root / "entries.jsonl", row.dag_id) if e["run_id"] == run_id]
    rows = _rows(dep.output, row.dag_id, run_id)
    return _measured(row, "real deployment", planned, rows, found, dep.emu, wall, state)


def _tree(pid: int) -> list[Any]:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _sample(pid: int, cpu: dict[int, tuple[float, float]] | None = None) -> tuple[int, int]:
    """RSS of the tree and of the root's children (the trigger runner); CPU seconds per pid into ``cpu``."""
    import psutil

    tree, runner = 0, 0
    for proc in _tree(pid):
        try:
            rss = proc.memory_info().rss
            times = proc.cpu_times()
        except psutil.Error:
            continue
        tree += rss
        runner += rss if proc.pid != pid else 0
        if cpu is not None:
            used = times.user + times.system
            cpu[proc.pid] = (cpu.get(proc.pid, (used, used))[0], used)
    return tree, runner


def measure_triggerer(dep: Deployment, images: int, interval: float = 0.5) -> Triggerer:
    """Trigger the all-in-flight DAG; while its task is deferred, sample the triggerer's process tree."""
    dag_id = "flux2_deploy_bench_triggerer"
    pid = dep.services["triggerer-1"].pid
    dep.emu.reset()
    # A triggerer just started is still importing and registering: let it settle before "idle".
    time.sleep(max(0.0, 30 - (time.time() - dep.services["triggerer-1"].started_at)))
    idle, idle_cpu = 0, {}  # the tree with nothing to run, for 5 s before the DAG run
    first_sample = time.monotonic()
    for second in range(6):
        if second:
            time.sleep(1)
        idle = max(idle, _sample(pid, idle_cpu)[0])
    idle_cpu_share = sum(b - a for a, b in idle_cpu.values()) / (time.monotonic() - first_sample)
    run_id = dep.trigger(dag_id)
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/generate"
    dep.wait_for(lambda: dep.api("GET", path)["state"] in ("deferred", "success", "failed"), 600, "the deferral")
    cpu: dict[int, tuple[float, float]] = {}  # pid → (first, last) user+system seconds
    peak_tree = peak_runner = 0
    started = time.monotonic()
    while dep.api("GET", path)["state"] == "deferred":
        tree, runner = _sample(pid, cpu)
        peak_tree, peak_runner = max(peak_tree, tree), max(peak_runner, runner)
        time.sleep(interval)
    deferred_s = time.monotonic() - started
    state = dep.wait_dag_run(dag_id, run_id, timeout=3600)
    return Triggerer(
        images=images,
        peak_in_flight=int(dep.emu.stats().get("max_concurrent_runs", 0)),
        deferred_s=deferred_s,
        idle_rss=idle,
        peak_rss=peak_tree,
        peak_runner_rss=peak_runner,
        cpu_s=sum(last - first for first, last in cpu.values()),
        state=state,
        idle_cpu_share=idle_cpu_share,
    )


def measure_png(dep: Deployment, image_url: str | None = None, source: str = "the emulator's") -> Png:
    """One 4096×4096 PNG through ``png_rss.py`` in a fresh process, with the deployment's connections."""
    dep.emu.reset()
    home = dep.root / "homes" / "png"
    home.mkdir(parents=True, exist_ok=True)
    env = {**dep._airflow_env, "AIRFLOW_HOME": str(home), "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}
    command = [sys.executable, str(Path(__file__).resolve().parent / "png_rss.py")]
    result = subprocess.run(
        command + (["--image-url", image_url] if image_url else []),
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise DeploymentError(f"png_rss.py failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return Png(
        int(found["peak_rss"]), int(found["rss_after_imports"]), int(found["size_bytes"]), found["seconds"], source
    )


def noise_png(folder: Path, side: int = 4096) -> Path:
    """A 4096×4096 RGB PNG of random pixels: incompressible, ~48 MB, the worst case of a download."""
    from PIL import Image

    path = folder / "noise.png"
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(path, compress_level=1)
    return path


def measure_incompressible_png(dep: Deployment) -> Png:
    """The same path with a PNG that does not compress, served over HTTP by a separate process."""
    from deployment import free_port, wait_until

    folder = dep.root / "noise"
    folder.mkdir(exist_ok=True)
    path = noise_png(folder)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        url = f"http://127.0.0.1:{port}/{path.name}"
        wait_until(lambda: httpx.head(url, timeout=2, trust_env=False).status_code == 200, 30, "the PNG server")
        return measure_png(dep, url, f"an incompressible ({path.stat().st_size / MB:.0f} MB)")
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- the report -----------------------------------------------------------------------------------------


def table(results: list[Measured], max_in_flight: int) -> tuple[list[str], list[list[str]]]:
    header = ["run", "where", "images", "wall (s)", "ideal (s)", "of ideal", "worker entries", "tries"]
    header += ["worker-slot s", "slot s/image", "requests/image", "lag p50 (s)", "lag p95 (s)"]
    header += ["peak in flight", "billed", "valid"]
    rows = [
        [
            m.label,
            m.mode,
            str(m.images),
            number(m.wall_s, 1),
            number(m.ideal_s(max_in_flight), 1),
            percent(m.of_ideal(max_in_flight)),
            str(m.entries),
            str(m.tries),
            number(m.slot_s, 1),
            number(m.slot_per_image, 3),
            number(m.requests_per_image),
            number(m.lag_p50, 2),
            number(m.lag_p95, 2),
            str(m.peak_in_flight),
            str(m.billed),
            "yes" if m.valid else "**no**",
        ]
        for m in results
    ]
    return header, rows


MB = 1024 * 1024


#: What Airflow's triggerer logs when a trigger blocks its event loop (``triggerer_job_runner.py``).
BLOCKED_WARNING = "async thread was blocked for"


def log_sizes(dep: Deployment) -> dict[str, int]:
    """Where each triggerer's log ends now (bytes), to count only what is logged from here on."""
    return {log.name: log.stat().st_size for log in dep.root.glob("triggerer-*.log")}


def blocked_warnings(dep: Deployment, since: dict[str, int] | None = None) -> int:
    """How many times the deployment's triggerers logged that a trigger blocked their event loop
    (after ``since``: the pre-rendering's CPU load is not a trigger's doing)."""
    count = 0
    for log in dep.root.glob("triggerer-*.log"):
        with log.open("rb") as handle:
            handle.seek((since or {}).get(log.name, 0))
            count += handle.read().decode("utf-8", "replace").count(BLOCKED_WARNING)
    return count


def targets(
    results: list[Measured],
    trig: Triggerer | None,
    pngs: list[Png],
    max_in_flight: int,
    blocked: int | None = None,
) -> list[tuple[str, str, str]]:
    """The issue's targets: (target, measured, met?) from the real-deployment rows."""
    deployed = {m.key: m for m in results if m.mode == "real deployment"}
    out: list[tuple[str, str, str]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        out.append((target, measured, "n/a" if met is None else ("yes" if met else "**no**")))

    shipped, sync = deployed.get("shipped"), deployed.get("sync")
    if shipped is not None:
        valid = "" if shipped.valid else " (run invalid)"
        of_ideal = shipped.of_ideal(max_in_flight)
        add("≥ 0.9 of ideal", f"{number(of_ideal)}{valid}", shipped.valid and of_ideal >= 0.9)
        add(
            "≤ 2 worker entries for the task",
            f"{shipped.entries} over {shipped.tries} tr{'y' if shipped.tries == 1 else 'ies'}",
            shipped.valid and shipped.entries <= 2,
        )
        per_image = shipped.requests_per_image
        add("≤ 1.5 requests per image", number(per_image), shipped.valid and per_image <= 1.5)
        add(
            "p95 detection lag ≤ 2 s (same run)", f"{number(shipped.lag_p95)} s", shipped.valid and shipped.lag_p95 <= 2
        )
        if sync is not None:
            # Per image, in case the non-deferrable row ran at a smaller N.
            fewer = sync.slot_per_image / shipped.slot_per_image if shipped.slot_per_image else math.nan
            add(
                "worker-slot seconds ≥ 20× fewer than not deferrable",
                f"{number(fewer, 1)}× ({number(shipped.slot_s, 1)} s vs {number(sync.slot_s, 1)} s"
                + (f" for {sync.images} images" if sync.images != shipped.images else "")
                + ")",
                shipped.valid and sync.valid and fewer >= 20,
            )
    if trig is not None:
        label = f"{trig.images} runs in flight (peak {trig.peak_in_flight})"
        ok = trig.state == "success" and trig.peak_in_flight >= trig.images
        add(
            f"triggerer ≤ 200 MB RSS, {label}: the trigger runner process",
            f"{number(trig.peak_runner_rss / MB, 0)} MB",
            ok and trig.peak_runner_rss <= 200 * MB,
        )
        add(
            f"triggerer ≤ 200 MB RSS, {label}: the whole process tree (supervisor + runner)",
            f"{number(trig.peak_rss / MB, 0)} MB ({number(trig.idle_rss / MB, 0)} MB idle, before the run)",
            ok and trig.peak_rss <= 200 * MB,
        )
        add(
            f"triggerer ≤ 5 % of one core while waiting, {label}",
            f"{number(100 * trig.cpu_share, 1)} % (the tree) over {number(trig.deferred_s, 0)} s deferred "
            f"({number(100 * trig.idle_cpu_share, 1)} % idle, before the run)",
            ok and trig.cpu_share <= 0.05,
        )
    if blocked is not None:
        add(
            'the triggerer logs no "async thread was blocked" warning (the whole bench)',
            f"{blocked} warning{'' if blocked == 1 else 's'}",
            blocked == 0,
        )
    for png in pngs:
        add(
            f"one 4096×4096 PNG end to end ≤ 250 MB peak RSS: {png.source} PNG",
            f"{number(png.peak_rss / MB, 0)} MB ({number(png.rss_after_imports / MB, 0)} MB after the imports; "
            f"{number(png.size_bytes / MB, 1)} MB PNG)",
            png.peak_rss <= 250 * MB,
        )
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images of the shipped and non-deferrable rows")
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--peer-images", type=int, default=None, help="images of the other rows (default: --images)")
    parser.add_argument(
        "--http-images",
        type=int,
        default=200,
        help="images of the HttpOperator + HttpSensor row: three mapped tasks and a reschedule per poke "
        "per image make it the slowest row to run (default 200)",
    )
    parser.add_argument("--triggerer-images", type=int, default=1000, help="runs in flight for the triggerer figures")
    parser.add_argument("--rows", default=",".join(ALL_KEYS), help=f"a subset of {','.join(ALL_KEYS)}")
    parser.add_argument("--no-dag-test", action="store_true", help="only the real deployment")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/performance.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the deployment's folder (logs) and print it")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(ALL_KEYS))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ALL_KEYS)}")
    peer_images = args.peer_images or args.images
    started = time.time()
    env = {
        "FLUX2_DEPLOY_BENCH_IMAGES": str(args.images),
        "FLUX2_DEPLOY_PEER_IMAGES": str(peer_images),
        "FLUX2_DEPLOY_HTTP_IMAGES": str(args.http_images),
        "FLUX2_DEPLOY_TRIGGERER_IMAGES": str(args.triggerer_images),
        "FLUX2_DEPLOY_MAX_IN_FLIGHT": str(args.max_in_flight),
        "FLUX2_DEPLOY_TIME_SCALE": str(args.time_scale),
        "FLUX2_DEPLOY_SMALL_TASKS": "0",
        "FLUX2_DEPLOY_BIG_IMAGES": "1",
    }
    import airflow

    machine = report.machine(airflow.__version__, REPO)
    results: list[Measured] = []
    trig: Triggerer | None = None
    pngs: list[Png] = []
    blocked: int | None = None
    selected = [r for r in ROWS if r.key in keys]
    try:
        with Deployment(
            executor="local",
            emulator={"profile": "realistic", "time_scale": args.time_scale},
            env=env,
            parallelism=max(32, args.max_in_flight),
            s3="png" in keys,
            keep=args.keep,
            prerender=prerender_images(max(args.images, peer_images, args.http_images, args.triggerer_images)),
        ) as dep:
            progress(
                f"deployment up in {dep.startup_seconds:.0f} s, its images pre-rendered in the emulator"
                + (f" in {dep.root}" if args.keep else "")
            )
            timed_from = log_sizes(dep)
            if any(r.key == "http" for r in selected):
                add_http_connection(dep)
            for row in selected:
                planned = args.http_images if row.key == "http" else peer_images if row.peer else args.images
                results.append(_timed(lambda row=row, planned=planned: run_deployed(dep, row, planned)))
                if row.dag_test and not args.no_dag_test:
                    results.append(_timed(lambda row=row, planned=planned: run_dag_test(dep, row, planned)))
            if "triggerer" in keys:
                trig = measure_triggerer(dep, args.triggerer_images)
                progress(
                    f"triggerer: runner {trig.peak_runner_rss / MB:.0f} MB, tree {trig.peak_rss / MB:.0f} MB "
                    f"(idle {trig.idle_rss / MB:.0f} MB), {100 * trig.cpu_share:.1f} % of a core"
                )
            if "png" in keys:
                pngs = [measure_png(dep), measure_incompressible_png(dep)]
                for png in pngs:
                    progress(f"one 4096×4096 PNG ({png.source}): peak RSS {png.peak_rss / MB:.0f} MB")
            blocked = blocked_warnings(dep, timed_from)
    except DeploymentError as exc:
        print(f"deployment bench failed: {exc}", file=sys.stderr)
        return 1
    header, rows = table(results, args.max_in_flight)
    goals = targets(results, trig, pngs, args.max_in_flight, blocked)
    print("\n" + report.text_table(header, rows))
    if goals:
        print("\n" + report.text_table(["target", "measured", "met?"], [list(g) for g in goals]))
    bad = [f"{m.label} ({m.mode})" for m in results if not m.valid]
    peers_note = (
        f" The baselines and the peers' clients ran {peer_images} images (the shipped rows {args.images})."
        if peer_images != args.images
        else ""
    )
    if "http" in keys and args.http_images != peer_images:
        peers_note += f" The HttpOperator + HttpSensor DAG ran {args.http_images} images."
    block = "\n".join(
        [
            f"_Measured by `make bench` (`benchmarks/deployment_bench.py`) on {machine[0][1]} UTC: "
            f"{args.images} images per task, max_in_flight {args.max_in_flight}, emulator `realistic` at time scale "
            f"{args.time_scale:g} (the API's time compressed, Airflow's not), the same DAG file and emulator for "
            f"every row, its images pre-rendered in the emulator before anything is timed (the real API renders "
            f"while a run runs, on its own machines).{peers_note} Wall time is the DAG run's, from start to end as "
            "Airflow records them; "
            "`dag.test()` from the first worker entry to the last return. "
            "Ideal = images × mean latency / max_in_flight._",
            "",
            "**Targets** (real deployment; the shipped operator's row)",
            "",
            *(
                []
                if (args.images, args.max_in_flight, args.time_scale, args.triggerer_images) == (1000, 32, 1.0, 1000)
                else [
                    "**Not the targets' conditions** (1,000 images, max_in_flight 32, time scale 1, 1,000 runs "
                    "in flight for the triggerer): these figures do not decide whether a target is met.",
                    "",
                ]
            ),
            *report.markdown_table(["target", "measured", "met?"], [list(g) for g in goals]),
            "",
            *report.markdown_table(header, rows),
            "",
            *report.machine_table(machine),
        ]
    )
    if not args.no_docs and not bad:
        report.replace_block(DOCS_PAGE, block, MARKERS)
        print(f"\nResults written to {DOCS_PAGE.relative_to(REPO)}")
    print(f"deployment bench took {time.time() - started:.0f} s")
    if bad:
        print(f"invalid runs (failed, images missing, or images ≠ billed): {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _timed(run: Callable[[], Measured]) -> Measured:
    measured = run()
    progress(
        f"{measured.label} ({measured.mode}): {measured.wall_s:.0f} s, {measured.images} images, "
        f"{measured.billed} billed, {measured.state}"
    )
    return measured


def progress(message: str) -> None:
    print(f"[deploy-bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
