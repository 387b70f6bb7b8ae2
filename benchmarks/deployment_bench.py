"""``make bench``, real-deployment mode: the same DAG measured under ``dag.test()`` and on a real deployment.

One emulator (``realistic``, compressed clock, fixed seed reset before every run), one DAG file
(``deployment_dags/flux2_deploy.py``: one task of N images), run three ways in one process:

- ``dag.test()``: ``airflow dags test`` on SQLite, the trigger run in line (what ``make bench`` and the
  test suite see);
- real deployment, deferrable: PostgreSQL, api-server, scheduler (LocalExecutor), dag-processor,
  triggerer, each its own process; the run triggered through the REST API;
- real deployment, not deferrable: the same, waiting in the worker.

Figures: wall time against the ideal ``images × mean latency / max_in_flight``, worker entries
(first start + one per deferral + retries), worker-slot seconds (each entry from its process's start to
the operator's return), requests per image (every API request: submits, polls, reads, downloads) and
detection lag. Results go between the ``deploy-bench`` markers of ``docs/performance.md``.

    python benchmarks/deployment_bench.py                       # 200 images, max_in_flight 16, scale 0.3
    python benchmarks/deployment_bench.py --images 1000 --max-in-flight 32 --time-scale 1
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import figures
import report
from deployment import REPO, Deployment, DeploymentError
from report import number, percent

DOCS_PAGE = REPO / "docs" / "performance.md"
MARKERS = ("<!-- deploy-bench:start -->", "<!-- deploy-bench:end -->")
API_ENDPOINTS_EXCLUDED = ("health",)


@dataclass
class Measured:
    """One run of the bench DAG, however it was run."""

    label: str
    images: int
    state: str
    wall_s: float
    window_s: float
    mean_latency_s: float
    entries: int
    slot_s: float
    requests: int
    billed: int
    lag_p50: float
    lag_p95: float
    tries: int

    def ideal_s(self, max_in_flight: int) -> float:
        return self.images * self.mean_latency_s / max_in_flight

    def of_ideal(self, max_in_flight: int) -> float:
        return self.ideal_s(max_in_flight) / self.wall_s if self.wall_s else math.nan


def _rows(output: Path, dag_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for manifest in output.glob(f"{dag_id}/*/generate/manifest.json"):
        rows += json.loads(manifest.read_text())["images"]
    return rows


def _api_requests(stats: dict[str, Any]) -> int:
    return sum(n for endpoint, n in stats.get("requests", {}).items() if endpoint not in API_ENDPOINTS_EXCLUDED)


def _entries(path: Path, dag_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if e["dag_id"] == dag_id]


def _measured(
    label: str, rows: list[dict[str, Any]], entries: list[dict[str, Any]], emu: Any, wall: float, state: str, tries: int
) -> Measured:
    stats = emu.stats()
    task = figures.task_figures(
        rows,
        stats,
        billed=len(emu.ledger()["entries"]),
        worker_seconds=0.0,
        worker_entries=len(entries),
        worker_parts={},
        task_seconds=wall,
    )
    return Measured(
        label=label,
        images=len(rows),
        state=state,
        wall_s=wall,
        window_s=task.window_seconds,
        mean_latency_s=task.mean_latency,
        entries=len(entries),
        slot_s=slot_seconds(entries),
        requests=_api_requests(stats),
        billed=task.billed,
        lag_p50=task.lag_p50,
        lag_p95=task.lag_p95,
        tries=tries,
    )


def run_dag_test(dep: Deployment, images: int) -> Measured:
    """``airflow dags test`` of the bench DAG on a throwaway SQLite home, against the deployment's emulator."""
    dag_id = "flux2_deploy_bench"
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
        "FLUX2_DEPLOY_OUTPUT": str(output),
        "FLUX2_DEPLOY_ENTRIES": str(entries),
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id], env=env, capture_output=True, text=True
    )
    wall = time.time() - started
    state = "success" if result.returncode == 0 else "failed"
    if state != "success":
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
    found = _entries(entries, dag_id)
    tries = max((e["try_number"] for e in found), default=1)
    measured = _measured("dag.test()", _rows(output, dag_id), found, dep.emu, wall, state, tries)
    measured.wall_s = _task_span(found) or wall
    return measured


def slot_seconds(entries: list[dict[str, Any]]) -> float:
    """Seconds a worker slot was held: per entry, from its process's start (the first entry of a process)
    or from entering the method (a later entry in the same process, as under ``dag.test()``) to its exit."""
    held, seen = 0.0, set()
    for entry in sorted(entries, key=lambda e: e["enter"]):
        start = entry["enter"] if entry["pid"] in seen else min(entry["process_start"], entry["enter"])
        seen.add(entry["pid"])
        held += entry["exit"] - start
    return held


def _task_span(entries: list[dict[str, Any]]) -> float:
    """First entry to last exit of the task's worker entries (``dag.test()`` runs them in one process)."""
    if not entries:
        return 0.0
    return max(e["exit"] for e in entries) - min(e["enter"] for e in entries)


def run_deployed(dep: Deployment, dag_id: str, label: str) -> Measured:
    """The bench DAG triggered through the REST API; the wall time is the task's, from Airflow's own dates."""
    dep.emu.reset()
    run_id = dep.trigger(dag_id)
    state = dep.wait_dag_run(dag_id, run_id, timeout=7200)
    ti = dep.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/generate")
    # The DAG run's own dates: the task instance's are reset on every resume after a deferral.
    dag_run = dep.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    wall = _epoch(dag_run["end_date"]) - _epoch(dag_run["start_date"]) if dag_run.get("end_date") else math.nan
    found = [e for e in _entries(dep.root / "entries.jsonl", dag_id) if e["run_id"] == run_id]
    rows = [r for r in _rows(dep.output, dag_id) if r["client_ref"].startswith(f"{dag_id}/{run_id}/")]
    return _measured(label, rows, found, dep.emu, wall, state, int(ti.get("try_number") or 1))


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def table(results: list[Measured], max_in_flight: int) -> tuple[list[str], list[list[str]]]:
    header = ["run", "state", "images", "wall (s)", "ideal (s)", "of ideal", "worker entries", "tries"]
    header += ["worker-slot s", "requests/image", "lag p50 (s)", "lag p95 (s)", "billed"]
    rows = [
        [
            m.label,
            m.state,
            str(m.images),
            number(m.wall_s, 1),
            number(m.ideal_s(max_in_flight), 1),
            percent(m.of_ideal(max_in_flight)),
            str(m.entries),
            str(m.tries),
            number(m.slot_s, 1),
            number(m.requests / m.images if m.images else math.nan),
            number(m.lag_p50, 2),
            number(m.lag_p95, 2),
            str(m.billed),
        ]
        for m in results
    ]
    return header, rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--time-scale", type=float, default=0.3)
    parser.add_argument("--no-sync", action="store_true", help="skip the non-deferrable run")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/performance.md alone")
    args = parser.parse_args(argv)
    started = time.time()
    env = {
        "FLUX2_DEPLOY_BENCH_IMAGES": str(args.images),
        "FLUX2_DEPLOY_MAX_IN_FLIGHT": str(args.max_in_flight),
        "FLUX2_DEPLOY_TIME_SCALE": str(args.time_scale),
        "FLUX2_DEPLOY_SMALL_TASKS": "0",
        "FLUX2_DEPLOY_BIG_IMAGES": "1",
    }
    import airflow

    machine = report.machine(airflow.__version__, REPO)
    results: list[Measured] = []
    try:
        with Deployment(
            executor="local",
            emulator={"profile": "realistic", "time_scale": args.time_scale},
            env=env,
            parallelism=32,
        ) as dep:
            progress(f"deployment up in {dep.startup_seconds:.0f} s")
            results.append(run_deployed(dep, "flux2_deploy_bench", "real deployment, deferrable"))
            progress(f"{results[-1].label}: {results[-1].wall_s:.0f} s")
            if not args.no_sync:
                results.append(run_deployed(dep, "flux2_deploy_bench_sync", "real deployment, not deferrable"))
                progress(f"{results[-1].label}: {results[-1].wall_s:.0f} s")
            results.append(run_dag_test(dep, args.images))
            progress(f"{results[-1].label}: {results[-1].wall_s:.0f} s")
    except DeploymentError as exc:
        print(f"deployment bench failed: {exc}", file=sys.stderr)
        return 1
    header, rows = table(results, args.max_in_flight)
    print("\n" + report.text_table(header, rows))
    bad = [m.label for m in results if m.state != "success" or m.images != args.images or m.billed != args.images]
    block = "\n".join(
        [
            f"_Measured by `make bench` (`benchmarks/deployment_bench.py`) on {machine[0][1]} UTC: one task of "
            f"{args.images} images, max_in_flight {args.max_in_flight}, emulator `realistic` at time scale "
            f"{args.time_scale:g} (the API's time compressed, Airflow's not), the same DAG file and emulator for "
            "every row. Wall time is the DAG run's (one task), from start to end as Airflow records them; "
            "`dag.test()` from its first entry to its last return. Ideal = images × mean latency / max_in_flight._",
            "",
            *report.markdown_table(header, rows),
            "",
            *report.markdown_table(["", ""], [[k, v] for k, v in machine]),
        ]
    )
    if not args.no_docs and not bad:
        report.replace_block(DOCS_PAGE, block, MARKERS)
        print(f"\nResults written to {DOCS_PAGE.relative_to(REPO)}")
    print(f"deployment bench took {time.time() - started:.0f} s")
    if bad:
        print(f"invalid runs (failed, or images ≠ billed): {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def progress(message: str) -> None:
    print(f"[deploy-bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
