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
import inspect
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

import report
import sandbox

DOCS_PAGE = sandbox.REPO / "docs" / "performance.md"
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
    rules += [{"endpoint": e, **r} for e in ("get_batch", "get_batch_items", "get_run") for r in reads]
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
    """The operator that dies once, mid-collect: after a third of its images are stored, the rest not yet."""
    from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

    class CrashMidFlight(FluxGenerateImageOperator):
        def _collect(self, context: Any, plan: Any, states: dict[int, Any], *args: Any, **kwargs: Any) -> Any:
            if CRASH.crashed_on_try is not None:
                return super()._collect(context, plan, states, *args, **kwargs)
            order = sorted(states)
            first = {i: states[i] for i in order[: len(order) // 3]}
            collected = super()._collect(context, plan, first, *args, **kwargs)
            bound = inspect.signature(super()._collect).bind(context, plan, states, *args, **kwargs)
            checkpoint = bound.arguments.get("checkpoint")
            if checkpoint is not None:
                checkpoint(collected)  # what a crash mid-collect leaves recorded (task_state_store)
            CRASH.crashed_on_try = context["ti"].try_number
            CRASH.stored_before_crash = len(collected.records)
            CRASH.inflight_at_crash = [s.run_id for i, s in states.items() if i not in first and s.run_id]
            raise RuntimeError("simulated worker crash mid-collect (soak)")

    return CrashMidFlight


def build_dag(images: int, crash_images: int, output: Path) -> Any:
    from airflow.sdk import DAG

    from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

    common: dict[str, Any] = {
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


def prompts(tag: str, count: int) -> list[str | dict[str, Any]]:
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


@dataclass
class Outcome:
    """What one soak did and what it found."""

    images: int
    crash_images: int
    seed: int
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    tries: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def summarize(outcome: Outcome) -> None:
    stats = outcome.stats
    requests = sum(stats["requests"].values())
    fired = Counter(_fault_name(f) for f in stats["faults_fired"])
    say(f"{outcome.images + outcome.crash_images} images in {outcome.seconds:.0f} s; {requests} requests")
    say(f"requests per endpoint: {dict(sorted(stats['requests'].items()))}")
    say(f"{len(stats['faults_fired'])} faults fired: " + ", ".join(f"{k} {n}" for k, n in sorted(fired.items())))
    say(
        f"runs created {stats['runs_created']} (by status {stats['runs_by_status']}); "
        f"peak in flight {stats['max_concurrent_runs']}"
    )
    say(f"task tries: {outcome.tries}; the crash: {crash_text()}")
    for failure in outcome.failures:
        say(f"a try ended with: {failure}")


def crash_text() -> str:
    if CRASH.crashed_on_try is None:
        return "did not happen"
    return (
        f"try {CRASH.crashed_on_try}, {CRASH.stored_before_crash} images stored, "
        f"{len(CRASH.inflight_at_crash)} finished runs not yet collected"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--images",
        type=int,
        default=2000,
        help="images in all (default 2000, a quarter of them in the task that crashes; at least ~40)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault plan and the emulator")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/performance.md alone")
    args = parser.parse_args(argv)
    crash_images = args.images // 4
    outcome = Outcome(images=args.images - crash_images, crash_images=crash_images, seed=args.seed)

    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"  # every log line is searched for the key
    home = sandbox.prepare("flux2-soak-airflow-")
    workdir = Path(tempfile.mkdtemp(prefix="flux2-soak-"))
    log_path = workdir / "soak.log"
    try:
        import airflow

        # Taken before the run: the commit is the code this process imports, whatever lands meanwhile.
        machine = report.machine(airflow.__version__, sandbox.REPO)
        run_soak(outcome, workdir, log_path)
        outcome.problems += check_secret(log_path, [workdir / "images", home / "logs"])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    for problem in outcome.problems:
        say(f"VIOLATION: {problem}")
    if not outcome.problems:
        say(f"all invariants hold ({log_path.stat().st_size // 1024} KiB of logs searched for the key)")
    say(f"logs kept in {log_path}")
    shutil.rmtree(workdir / "images", ignore_errors=True)
    if not args.no_docs:
        block = soak_block(outcome, machine)
        report.replace_block(DOCS_PAGE, block, (report.SOAK_START, report.SOAK_END))
        say(f"summary written to {DOCS_PAGE.relative_to(sandbox.REPO)}")
    return 1 if outcome.problems else 0


def run_soak(outcome: Outcome, workdir: Path, log_path: Path) -> None:
    output = workdir / "images"
    total = outcome.images + outcome.crash_images
    settings = {"profile": "realistic", "time_scale": TIME_SCALE, "random_seed": outcome.seed}
    with sandbox.emulator(API_KEY, CONNECTION_EXTRA, **settings) as emulator:
        emulator.faults(fault_plan(outcome.seed))
        say(f"{total} images ({outcome.crash_images} in the task that crashes), logs in {log_path}")
        started = time.perf_counter()
        with output_to(log_path):
            dag_run = sandbox.run_dag(build_dag(outcome.images, outcome.crash_images, output))
        outcome.seconds = time.perf_counter() - started
        outcome.stats, outcome.ledger = emulator.stats(), emulator.ledger()
    outcome.tries = sandbox.try_numbers(dag_run)
    outcome.failures = task_failures(log_path)
    summarize(outcome)
    if str(dag_run.state) != "success":
        outcome.problems.append(f"DAG run ended {dag_run.state} (task tries {outcome.tries})")
        return
    outcome.problems += verify(dag_run, outcome, output)


def verify(dag_run: Any, outcome: Outcome, output: Path) -> list[str]:
    problems: list[str] = []
    all_records: list[dict[str, Any]] = []
    for task, expected in (("generate", outcome.images), ("generate_crash", outcome.crash_images)):
        records = sandbox.xcom_value(dag_run, task) or []
        folders = [p for p in output.rglob(task) if p.is_dir()]
        if len(folders) != 1:
            problems.append(f"{task}: expected one output folder, found {folders}")
            continue
        problems += check_storage(task, records, expected, stored_images(folders[0]))
        all_records += records
    problems += check_ledger(all_records, outcome.ledger)
    manifests = {t: sandbox.xcom_value(dag_run, t, key="flux_manifest_uri") for t in ("generate", "generate_crash")}
    problems += check_manifests(manifests, Decimal(outcome.ledger["total_cost"]))
    if CRASH.crashed_on_try is None:
        problems.append("the mid-flight crash never happened: the retry path was not exercised")
    peak = outcome.stats["max_concurrent_runs"]
    if peak > MAX_IN_FLIGHT:
        problems.append(f"{peak} runs in flight at once (max_in_flight {MAX_IN_FLIGHT})")
    billed = len(outcome.ledger["entries"])
    say(f"ledger: {billed} billed runs, ${outcome.ledger['total_cost']}; records: {len(all_records)}")
    return problems


# -- the page ----------------------------------------------------------------------------------------------


def soak_block(outcome: Outcome, machine: list[tuple[str, str]]) -> str:
    """The soak's summary for the page: the verdict first, then what the API threw at the tasks."""
    stats, ledger = outcome.stats, outcome.ledger
    requests = sum(stats.get("requests", {}).values())
    fired = len(stats.get("faults_fired", []))
    verdict = "all invariants hold" if not outcome.problems else "VIOLATIONS: " + "; ".join(outcome.problems)
    rows = [
        ["verdict", verdict],
        ["images", f"{outcome.images + outcome.crash_images} ({outcome.crash_images} in the task that crashes)"],
        ["wall time", f"{outcome.seconds:.0f} s (time scale {TIME_SCALE:g}, fault and emulator seed {outcome.seed})"],
        ["requests", f"{requests}: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.get("requests", {}).items()))],
        ["faults fired", f"{fired} ({fired / requests:.0%} of requests)" if requests else "0"],
        ["runs created", f"{stats.get('runs_created')} (by status: {stats.get('runs_by_status')})"],
        ["billed", f"{len(ledger.get('entries', []))} runs, ${ledger.get('total_cost')}"],
        ["peak runs in flight", str(stats.get("max_concurrent_runs"))],
        ["task tries", ", ".join(f"{task} {n}" for task, n in sorted(outcome.tries.items()))],
        ["the crash", crash_text()],
        *[["a try ended with", f"`{failure}`"] for failure in outcome.failures],
    ]
    kinds = Counter(_fault_name(f) for f in stats.get("faults_fired", []))
    info = dict(machine)
    lines = [
        f"_Last `make soak`: {info['date (UTC)']} UTC, commit {info['commit']}, {info['cores']} cores, "
        f"Python {info['Python']}, Airflow {info['Airflow']}._",
        "",
        *report.markdown_table(["", ""], rows),
        "",
        "Faults fired, by endpoint and kind:",
        "",
        *report.markdown_table(["endpoint: kind", "fired"], [[k, str(n)] for k, n in sorted(kinds.items())]),
    ]
    return "\n".join(lines)


def _fault_name(fault: dict[str, Any]) -> str:
    """``get_run: rate_limit (no Retry-After)``: the kind with the parameters that tell faults apart."""
    details = []
    if fault.get("status"):
        details.append(str(fault["status"]))
    if fault["fault"] == "rate_limit":
        retry_after = fault.get("retry_after")
        details.append(f"Retry-After {retry_after:g} s" if retry_after is not None else "no Retry-After")
    if fault["fault"] == "stall":
        details.append(f"{fault.get('seconds', 30):g} s")
    if fault.get("phase") == "after":
        details.append("after the work")
    return f"{fault['endpoint']}: {fault['fault']}" + (f" ({', '.join(details)})" if details else "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
