"""``make soak``: ~2,000 images through the deferrable operator against a hostile API, then the invariants.

The emulator (``realistic`` profile on a compressed clock) answers ~30% of requests with 5xx (some
after the work was done, so the run exists and is billed while the client sees an error), 429s with
and without ``Retry-After``, dropped connections, stalls, expired result URLs and a few failed runs.
One task is also killed mid-flight on its first try and retried by Airflow. Then every promise of
the design is checked:

* every image is stored exactly once (one object per image, where its record says);
* the ledger has one billed run per image: no image paid twice, none lost;
* the records' cost total, the manifest's total and the ledger's total agree to the cent;
* the API key appears nowhere in the logs or the outputs.

Any violation exits non-zero. ``python benchmarks/soak.py --images 200`` is a quick version.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import sandbox

API_KEY = "rf_soak_secret_key_9b3d71e5a2"
TIME_SCALE = 0.05
MAX_IN_FLIGHT = 8
SIZES = ("landscape_4_3", "square_hd", "1920x1080", "portrait_16_9")
#: Attempts per request. The default (5) gives up on ~0.5% of requests at these error rates; a
#: deployment facing such an API raises it, and a give-up would only be one more task retry.
CONNECTION_EXTRA = {"retry_base_delay": 0.05, "timeout": 5, "max_attempts": 8}
#: A stall longer than the client's read timeout (5 s) is a ReadTimeout, then a retry; shorter is a slow answer.
LONG_STALL, SHORT_STALL = 6.0, 1.0


def fault_plan(seed: int) -> dict[str, Any]:
    """The hostile API. Rules are tried in order and the first that fires wins, so the figures are
    per-rule probabilities of the requests that reach them (together about a third of requests fail)."""
    writes = [
        # The run is created (and billed on success) but the answer is lost: only idempotency saves us.
        {"fault": "server_error", "status": 503, "phase": "after", "probability": 0.10},
        {"fault": "server_error", "status": 500, "probability": 0.12},
        {"fault": "server_error", "status": 502, "probability": 0.06},
        {"fault": "rate_limit", "retry_after": 0.2, "probability": 0.04},
        {"fault": "rate_limit", "probability": 0.03},  # no Retry-After: the client's own backoff
        {"fault": "drop", "phase": "after", "probability": 0.03},
        {"fault": "drop", "probability": 0.02},
        {"fault": "stall", "seconds": LONG_STALL, "phase": "after", "probability": 0.005},
        {"fault": "stall", "seconds": SHORT_STALL, "probability": 0.01},
        {"fault": "run_failure", "code": "INTERNAL_ERROR", "probability": 0.01},
    ]
    reads = [
        {"fault": "server_error", "status": 503, "probability": 0.15},
        {"fault": "server_error", "status": 500, "phase": "after", "probability": 0.10},
        {"fault": "rate_limit", "retry_after": 0.1, "probability": 0.03},
        {"fault": "rate_limit", "probability": 0.03},
        {"fault": "drop", "probability": 0.03},
        {"fault": "stall", "seconds": SHORT_STALL, "probability": 0.005},
    ]
    downloads = [
        {"fault": "url_expired", "probability": 0.10},
        {"fault": "server_error", "status": 503, "probability": 0.12},
        {"fault": "drop", "phase": "after", "probability": 0.03},  # the body is cut off partway
        {"fault": "stall", "seconds": LONG_STALL, "probability": 0.002},
    ]
    rules = [{"endpoint": e, **r} for e in ("create_batch", "create_run") for r in writes]
    rules += [{"endpoint": e, **r} for e in ("get_batch", "get_run") for r in reads]
    rules += [{"endpoint": "download", **r} for r in downloads]
    return {"seed": seed, "rules": rules}


@dataclass
class CrashLog:
    """When the mid-flight crash happened (kept outside the operator: ``dag.test()`` runs a copy)."""

    crashed_on_try: int | None = None
    stored_before_crash: int = 0
    inflight_at_crash: list[str] = field(default_factory=list)


CRASH = CrashLog()


def crash_operator() -> type:
    """The operator that dies once, mid-flight: after a third of its images are stored, runs in flight."""
    from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

    class CrashMidFlight(FluxGenerateImageOperator):
        def _top_up(self, context: Any, plan: Any, state: dict[str, Any]) -> None:
            super()._top_up(context, plan, state)
            if CRASH.crashed_on_try is None and state["inflight"] and state["stats"]["done"] >= len(plan.images) // 3:
                CRASH.crashed_on_try = context["ti"].try_number
                CRASH.stored_before_crash = state["stats"]["done"]
                CRASH.inflight_at_crash = [f["run_id"] for f in state["inflight"].values()]
                raise RuntimeError("simulated worker crash mid-flight (soak)")

    return CrashMidFlight


def build_dag(images: int, crash_images: int, output: Path) -> Any:
    from airflow.sdk import DAG

    from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

    common = {
        "output_uri": output.as_uri(),
        "deferrable": True,
        "max_in_flight": MAX_IN_FLIGHT,
        "poll_interval": 5.0 * TIME_SCALE,  # the shipped default on the compressed clock
        "progress_interval": 5.0 * TIME_SCALE,
        "timeout": 3600,
        "retries": 4,
        "retry_delay": timedelta(seconds=0),
    }
    with DAG(f"soak_{int(time.time())}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        plain = FluxGenerateImageOperator(task_id="generate", prompts=prompts("soak", images), **common)
        crashing = crash_operator()(task_id="generate_crash", prompts=prompts("crash", crash_images), **common)
        # One after the other: the window is per task, so the API's peak proves it only if tasks do not overlap.
        plain >> crashing
    return dag


def prompts(tag: str, count: int) -> list[dict[str, Any]]:
    return [{"prompt": f"{tag} item {i}", "image_size": SIZES[i % len(SIZES)], "seed": i} for i in range(count)]


# -- the invariants ------------------------------------------------------------------------------------


def stored_images(folder: Path) -> list[Path]:
    """Stored images (``00007-<hash>.jpg``), not thumbnails, contact sheets or metadata."""
    found = folder.rglob("[0-9][0-9][0-9][0-9][0-9]-*")
    return sorted(
        p for p in found if p.suffix in (".jpg", ".png") and "thumbs" not in p.parts and ".meta" not in p.parts
    )


def local_path(uri: str) -> Path:
    """The file a ``file://`` URI names (the publisher writes them unquoted; ``Path.as_uri`` would quote)."""
    return Path(unquote(uri.removeprefix("file://")))


def check_storage(task: str, records: list[dict[str, Any]], expected: int, files: list[Path]) -> list[str]:
    """One stored object per image, exactly where its record says."""
    problems = []
    per_index = Counter(int(p.name[:5]) for p in files)
    doubles = sorted(i for i, n in per_index.items() if n > 1)
    if len(records) != expected:
        problems.append(f"{task}: {len(records)} records for {expected} images")
    if len(files) != expected or doubles:
        problems.append(
            f"{task}: {len(files)} stored files for {expected} images; stored more than once: {doubles[:10]}"
        )
    named = {local_path(r.get("uri") or "") for r in records}
    on_disk = set(files)
    if named != on_disk:
        missing, unnamed = sorted(named - on_disk), sorted(on_disk - named)
        problems.append(
            f"{task}: {len(missing)} record URIs not on disk (e.g. {missing[:1]}), "
            f"{len(unnamed)} files no record names (e.g. {unnamed[:1]})"
        )
    return problems


def check_ledger(records: list[dict[str, Any]], ledger: dict[str, Any]) -> list[str]:
    """One billed run per image, and money that adds up to the cent."""
    problems = []
    entries = ledger["entries"]
    billed_refs = Counter(e["client_ref"] for e in entries)
    twice = [ref for ref, n in billed_refs.items() if n > 1]
    unbilled = [r["index"] for r in records if billed_refs.get(r["client_ref"], 0) == 0]
    if len(entries) != len(records):
        problems.append(f"ledger has {len(entries)} billed runs for {len(records)} images")
    if twice:
        problems.append(f"{len(twice)} image(s) billed more than once, e.g. {twice[:3]}")
    if unbilled:
        problems.append(f"{len(unbilled)} image(s) with no billed run, e.g. indexes {unbilled[:10]}")
    billed_runs = {e["run_id"] for e in entries}
    strays = [r["run_id"] for r in records if r["run_id"] not in billed_runs]
    if strays:
        problems.append(f"{len(strays)} record(s) name a run that was not billed, e.g. {strays[:3]}")
    records_total = sum((Decimal(r["cost_usd"]) for r in records), Decimal("0"))
    if records_total != Decimal(ledger["total_cost"]):
        problems.append(f"records total ${records_total} != ledger total ${ledger['total_cost']}")
    return problems


def check_manifests(manifests: dict[str, str | None], ledger_total: Decimal) -> list[str]:
    totals = {}
    for task, uri in manifests.items():
        if not uri:
            return [f"{task}: no manifest URI in XCom"]
        summary = json.loads(local_path(uri).read_text())["summary"]
        totals[task] = Decimal(summary["total_cost_usd"])
    total = sum(totals.values(), Decimal("0"))
    if total != ledger_total:
        return [f"manifest totals {totals} sum to ${total}, ledger ${ledger_total}"]
    return []


def check_secret(log: Path, paths: list[Path]) -> list[str]:
    """The API key must not appear in any log line or output file."""
    # The search means something only if the task logs (INFO, the hook's lines included) were captured.
    if b"Submitted batch" not in log.read_bytes():
        return [f"{log} holds no task log lines: the key search would prove nothing"]
    leaks = []
    for path in [log, *paths]:
        for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
            if API_KEY.encode() in file.read_bytes():
                leaks.append(str(file))
    return [f"API key found in {leak}" for leak in leaks]


# -- running it ------------------------------------------------------------------------------------------


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors, so every logger) into ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def task_failures(log: Path) -> list[str]:
    """The exception that ended each failed try, read from the captured log (tracebacks end with it)."""
    failures, waiting = [], False
    for line in log.read_text(errors="replace").splitlines():
        if "Task failed with exception" in line:
            waiting = True
        elif waiting and re.match(r"[A-Za-z_][\w.]*(Error|Exception)\b", line):
            failures.append(line.strip()[:300])
            waiting = False
    return failures


def say(message: str) -> None:
    print(f"[soak] {message}", flush=True)


def summarize(stats: dict[str, Any], tries: dict[str, int], seconds: float, images: int) -> None:
    fired = Counter(
        f"{f['endpoint']}:{f['fault']}{'/after' if f.get('phase') == 'after' else ''}" for f in stats["faults_fired"]
    )
    requests = sum(stats["requests"].values())
    say(f"{images} images in {seconds:.0f} s; {requests} requests, {len(stats['faults_fired'])} faults fired")
    say(f"requests per endpoint: {dict(sorted(stats['requests'].items()))}")
    say("faults fired: " + ", ".join(f"{k} {n}" for k, n in sorted(fired.items())))
    say(
        f"runs created {stats['runs_created']} (by status {stats['runs_by_status']}); "
        f"peak in flight {stats['max_concurrent_runs']}"
    )
    say(
        f"task tries: {tries}; crash on try {CRASH.crashed_on_try} after {CRASH.stored_before_crash} stored, "
        f"{len(CRASH.inflight_at_crash)} in flight"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--images", type=int, default=2000, help="images in all (default 2000; a quarter in the crash task)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault plan and the emulator")
    args = parser.parse_args(argv)
    crash_images = args.images // 4
    images = args.images - crash_images

    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"  # every log line is searched for the key
    home = sandbox.prepare("flux2-soak-airflow-")
    workdir = Path(tempfile.mkdtemp(prefix="flux2-soak-"))
    log_path = workdir / "soak.log"
    try:
        problems = run_soak(images, crash_images, args.seed, workdir, log_path)
        problems += check_secret(log_path, [workdir / "images", home / "logs"])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if problems:
        for problem in problems:
            say(f"VIOLATION: {problem}")
        say(f"logs kept in {log_path}")
        return 1
    say(f"all invariants hold ({log_path.stat().st_size // 1024} KiB of logs searched for the key; kept in {log_path})")
    shutil.rmtree(workdir / "images", ignore_errors=True)
    return 0


def run_soak(images: int, crash_images: int, seed: int, workdir: Path, log_path: Path) -> list[str]:
    from airflow_provider_flux2.emulator import Emulator

    output = workdir / "images"
    with Emulator(profile="realistic", time_scale=TIME_SCALE, api_key=API_KEY, random_seed=seed) as emulator:
        os.environ["AIRFLOW_CONN_FLUX2_DEFAULT"] = json.dumps(
            {"conn_type": "flux2", "host": emulator.base_url, "password": API_KEY, "extra": CONNECTION_EXTRA}
        )
        emulator.faults(fault_plan(seed))
        say(f"{images + crash_images} images ({crash_images} in the task that crashes), logs in {log_path}")
        started = time.perf_counter()
        with output_to(log_path):
            dag_run = sandbox.run_dag(build_dag(images, crash_images, output))
        seconds = time.perf_counter() - started
        emulator.clear_faults()  # the checks below read the control surface, which faults do not touch anyway
        stats, ledger = emulator.stats(), emulator.ledger()
    tries = sandbox.try_numbers(dag_run)
    summarize(stats, tries, seconds, images + crash_images)
    for failure in task_failures(log_path):
        say(f"a try ended with: {failure}")
    if str(dag_run.state) != "success":
        return [f"DAG run ended {dag_run.state} (task tries {tries})"]
    return verify(dag_run, images, crash_images, output, stats, ledger)


def verify(
    dag_run: Any, images: int, crash_images: int, output: Path, stats: dict[str, Any], ledger: dict[str, Any]
) -> list[str]:
    problems: list[str] = []
    all_records = []
    for task, expected in (("generate", images), ("generate_crash", crash_images)):
        records = sandbox.xcom_value(dag_run, task) or []
        folders = [p for p in output.rglob(task) if p.is_dir()]
        if len(folders) != 1:
            problems.append(f"{task}: expected one output folder, found {folders}")
            continue
        problems += check_storage(task, records, expected, stored_images(folders[0]))
        all_records += records
    problems += check_ledger(all_records, ledger)
    manifests = {t: sandbox.xcom_value(dag_run, t, key="flux_manifest_uri") for t in ("generate", "generate_crash")}
    problems += check_manifests(manifests, Decimal(ledger["total_cost"]))
    if CRASH.crashed_on_try is None:
        problems.append("the mid-flight crash never happened: the retry path was not exercised")
    if stats["max_concurrent_runs"] > MAX_IN_FLIGHT:
        problems.append(f"{stats['max_concurrent_runs']} runs in flight at once (max_in_flight {MAX_IN_FLIGHT})")
    say(f"ledger: {len(ledger['entries'])} billed runs, ${ledger['total_cost']}; records: {len(all_records)}")
    return problems


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
