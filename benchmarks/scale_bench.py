"""``make bench-scale``: the 10,000-image night on CeleryExecutor with two triggerers, inside the API's limits.

One loopback deployment (``benchmarks/deployment.py``): PostgreSQL, Redis, api-server, scheduler,
dag-processor, two ``airflow triggerer`` and two ``airflow celery worker`` processes, and the emulator
(``realistic``) enforcing Runflow's documented limits (concepts/rate-limits): a concurrency cap of
``--cap`` runs per model (runs past it wait ``queued``) and a request-rate limit per key that binds —
1.5 requests per image of the ideal throughput (``cap ÷ mean latency``), 429 ``RATE_LIMITED`` with no
headers past it. The DAG is ``flux2_deploy_scale`` (the large-night template: a plan step, then the
shipped operator mapped over ``--shards`` shards, deferrable, in a pool counting deferred tasks with
``pool_slots = max_in_flight``, the pool 1.25 × the cap). The same night runs, one after another on the same
deployment, as:

- ``shipped``: as shipped — the adaptive limiter, two triggerers;
- ``no_limiter``: the connection's ``adaptive_rate_limit: false`` (a 429 is only retried with backoff);
- ``one_triggerer``: the limiter, one triggerer;
- ``triggerer_kill``: the limiter, two triggerers, the one holding most triggers killed (``kill -9``)
  once half the night's runs are created; the survivor must adopt its triggers and finish the night.

Per night: wall time (the DAG run's, from Airflow's dates) against the ideal ``images × mean latency ÷
cap`` (mean latency: each billed run's own time at the API, ``latency_s`` of the ledger: created to
finished, without its wait for a slot under the cap); 429 answers as a share
of the keyed API requests, and those requests per image (downloads apart: they carry no key and are
not limited); billed = planned, keys or client refs billed twice, images lost (planned and not stored
exactly once), manifests = ledger to the cent; tries beyond the first; each triggerer's peak RSS
(process tree) and CPU seconds, and how many triggers it ran at most; the metadata database's growth
per image (``pg_database_size`` after − before); the largest trigger row's kwargs (as stored,
encrypted). The run ends with one line per night and, for ``shipped``::

    SCALE frac=… share_429=… req_per_image=… billed=… planned=… duplicates=… lost=… tries=…
    triggerer_rss_mb=… db_bytes_per_image=…

(on one line)

and exits 1 when any night's correctness check fails (billed ≠ planned, a duplicate, a lost image,
manifests ≠ ledger, a DAG run not ``success``).

    python benchmarks/scale_bench.py                       # 10,000 images, every night, docs updated
    python benchmarks/scale_bench.py --images 800 --nights shipped --no-docs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import report
from chaos import IMAGE_FILE, keys_billed_twice
from deployment import REPO, Deployment, DeploymentError

DAG_ID = "flux2_deploy_scale"
POOL = "flux2_api"
DOCS_PAGE = REPO / "docs" / "performance.md"
MARKERS = ("<!-- scale-bench:start -->", "<!-- scale-bench:end -->")
#: The short version in docs/deployment.md ("Sizing a night").
SUMMARY_PAGE = REPO / "docs" / "deployment.md"
SUMMARY_MARKERS = ("<!-- scale-summary:start -->", "<!-- scale-summary:end -->")
#: Endpoints of the emulator that are not the keyed API: its health check and the image downloads
#: (signed URLs on the real API, no key, no rate limit).
UNKEYED = ("health", "download")
#: The binding request limit, in requests per image of the ideal throughput (the issue's figure).
REQUESTS_PER_IMAGE_LIMIT = 1.5
#: The pool's size over the API's concurrency cap: the API's slots stay busy while finished runs wait
#: to be seen (the excess waits ``queued`` at the API, at no cost). See docs/performance.md.
POOL_OVER_CAP = 1.25
#: The token bucket's depth: a second of requests at the limit (Runflow documents no figure).
BURST_SECONDS = 1.0
NIGHTS = ("shipped", "no_limiter", "one_triggerer", "triggerer_kill")
LABELS = {
    "shipped": "as shipped: adaptive limiter, 2 triggerers",
    "no_limiter": "no limiter (adaptive_rate_limit false), 2 triggerers",
    "one_triggerer": "adaptive limiter, 1 triggerer",
    "triggerer_kill": "adaptive limiter, 2 triggerers, one killed at half-time",
}


def mean_latency_model(megapixels: int = 1) -> float:
    """The emulator's mean latency of one run at ``megapixels`` billed, in its own seconds (time scale 1):
    queued + dispatching + cold start (on a fifth of the runs) + generating."""
    from airflow_provider_flux2.emulator.config import EmulatorConfig
    from airflow_provider_flux2.emulator.schedule import PROFILES

    times = PROFILES["realistic"]
    cold = EmulatorConfig().cold_start_fraction * sum(times.cold_start) / 2
    return sum(times.queued) / 2 + sum(times.dispatching) / 2 + cold + times.run_base + times.run_per_mp * megapixels


@dataclass
class Sampler:
    """Samples, every ``interval`` s in a thread: each triggerer's process tree (RSS, CPU), the trigger table
    (triggers per triggerer, the largest kwargs), and says which triggerer holds the triggers now."""

    dep: Deployment
    interval: float = 2.0
    peak_rss: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_triggers: dict[str, int] = field(default_factory=dict)
    max_kwargs_bytes: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, tuple[str, float]] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for pid, (name, last) in self._cpu_last.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + last - self._cpu_first[pid]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as exc:  # a sample lost while a process dies is not a failure of the night
                print(f"  (sample skipped: {type(exc).__name__}: {exc})", file=sys.stderr)

    def sample(self) -> None:
        import psutil

        for name, service in list(self.dep.services.items()):
            if not name.startswith("triggerer") or not service.alive():
                continue
            rss = 0
            try:
                root = psutil.Process(service.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                used = times.user + times.system
                self._cpu_first.setdefault(proc.pid, used)
                self._cpu_last[proc.pid] = (name, used)
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
        assert self.dep.postgres is not None
        rows = self.dep.postgres.query(
            "SELECT j.hostname, count(t.id), coalesce(max(length(t.kwargs)), 0) FROM trigger t "
            "LEFT JOIN job j ON j.id = t.triggerer_id GROUP BY j.hostname"
        )
        for host, count, largest in rows:
            name = host or "(unassigned)"
            self.peak_triggers[name] = max(self.peak_triggers.get(name, 0), int(count))
            self.max_kwargs_bytes = max(self.max_kwargs_bytes, int(largest))

    def holders(self) -> Counter[str]:
        """Triggers per triggerer now."""
        assert self.dep.postgres is not None
        rows = self.dep.postgres.query(
            "SELECT j.hostname, count(t.id) FROM trigger t JOIN job j ON j.id = t.triggerer_id GROUP BY j.hostname"
        )
        return Counter({host: int(n) for host, n in rows})


@dataclass
class Night:
    """One night's figures and checks."""

    key: str
    images: int
    cap: int
    shards: int
    state: str = ""
    wall_s: float = math.nan
    mean_latency_s: float = math.nan
    requests: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    billed: int = 0
    duplicates: int = 0
    lost: int = 0
    stored: int = 0
    ledger_usd: Decimal = Decimal("0")
    manifest_usd: Decimal = Decimal("0")
    tries: int = 0
    peak_running: int = 0
    peak_rss: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_triggers: dict[str, int] = field(default_factory=dict)
    max_kwargs_bytes: int = 0
    db_growth: int = 0
    killed: str = ""
    killed_at_created: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ideal_s(self) -> float:
        return self.images * self.mean_latency_s / self.cap

    @property
    def frac(self) -> float:
        return self.ideal_s / self.wall_s if self.wall_s else math.nan

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else math.nan

    @property
    def req_per_image(self) -> float:
        return self.requests / self.images if self.images else math.nan

    @property
    def triggerer_rss_mb(self) -> float:
        return max(self.peak_rss.values(), default=0) / 2**20

    @property
    def db_bytes_per_image(self) -> float:
        return self.db_growth / self.images if self.images else math.nan

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return (
            f"SCALE frac={self.frac:.3f} share_429={self.share_429:.4f} req_per_image={self.req_per_image:.3f} "
            f"billed={self.billed} planned={self.images} duplicates={self.duplicates} lost={self.lost} "
            f"tries={self.tries} triggerer_rss_mb={self.triggerer_rss_mb:.0f} "
            f"db_bytes_per_image={self.db_bytes_per_image:.0f}"
        )


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _db_size(dep: Deployment) -> int:
    assert dep.postgres is not None
    return int(dep.postgres.query("SELECT pg_database_size(current_database())")[0][0])


def prerender(images: int) -> list[dict[str, Any]]:
    """The night's images, for the emulator to render before Airflow starts (the real API renders on its
    own machines while a run runs; the emulator would render on these two cores at download time)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "deployment_dags"))
    from flux2_deploy_scale import IMAGE_SIZE, catalogue_prompts

    from airflow_provider_flux2.models import build_input

    out = []
    for item in catalogue_prompts(images):
        request = build_input("pro", prompt=item["prompt"], image_size=IMAGE_SIZE, seed=item["seed"])
        out.append(
            {
                "prompt": request.prompt,
                "seed": item["seed"],
                "width": request.width,
                "height": request.height,
                "output_format": request.output_format,
            }
        )
    return out


def verify(dep: Deployment, run_id: str, night: Night) -> None:
    """Ledger, stored files and manifests of one night, shard by shard."""
    entries = [
        e
        for e in dep.emu.ledger()["entries"]
        if e.get("kind", "run") == "run" and str(e.get("client_ref") or "").startswith(f"{DAG_ID}/{run_id}/")
    ]
    night.billed = len(entries)
    night.duplicates = keys_billed_twice(entries) + sum(
        n - 1 for n in Counter(e["client_ref"] for e in entries).values() if n > 1
    )
    night.ledger_usd = sum((Decimal(e["cost"]) for e in entries), Decimal("0"))
    # The run's own latency, without its wait for a slot under the cap (the pool is larger than the cap).
    latencies = [float(e["latency_s"]) for e in entries]
    night.mean_latency_s = sum(latencies) / len(latencies) if latencies else math.nan
    if night.billed != night.images:
        night.problems.append(f"{night.billed} billed runs for {night.images} planned images")
    if night.duplicates:
        night.problems.append(f"{night.duplicates} billed twice")

    shard_size = math.ceil(night.images / night.shards)
    sizes = [min(shard_size, night.images - i) for i in range(0, night.images, shard_size)]
    task_dirs = [p.parent for p in (dep.output / DAG_ID).glob("*/generate/*/manifest.json")]
    task_dirs = [d for d in task_dirs if json.loads((d / "manifest.json").read_text()).get("run_id") == run_id]
    by_index = {int(d.name): d for d in task_dirs}
    for shard, count in enumerate(sizes):
        folder = by_index.get(shard)
        if folder is None:
            night.lost += count
            night.problems.append(f"shard {shard}: no manifest")
            continue
        indexes = Counter(int(m.group(1)) for p in folder.iterdir() if (m := IMAGE_FILE.match(p.name)))
        night.stored += sum(indexes.values())
        night.lost += sum(1 for i in range(count) if indexes.get(i) != 1)
        rows = json.loads((folder / "manifest.json").read_text())["images"]
        cost = sum((Decimal(r["cost_usd"]) for r in rows), Decimal("0"))
        night.manifest_usd += cost
        prefix = f"{DAG_ID}/{run_id}/generate/{shard}/"
        billed = sum((Decimal(e["cost"]) for e in entries if e["client_ref"].startswith(prefix)), Decimal("0"))
        if len(rows) != count or cost != billed:
            night.problems.append(f"shard {shard}: manifest {len(rows)} rows ${cost}, ledger ${billed}")
    if night.lost:
        night.problems.append(f"{night.lost} images not stored exactly once")
    if night.manifest_usd != night.ledger_usd:
        night.problems.append(f"manifests ${night.manifest_usd} ≠ ledger ${night.ledger_usd}")


def set_up_night(dep: Deployment, key: str, args: argparse.Namespace) -> None:
    """Bring the deployment into the shape of night ``key``: the connection's limiter, the triggerers."""
    adaptive = key != "no_limiter"
    conn = json.loads(dep._airflow_env["AIRFLOW_CONN_FLUX2_DEFAULT"])
    restart = conn["extra"].get("adaptive_rate_limit", True) != adaptive
    conn["extra"]["adaptive_rate_limit"] = adaptive
    dep._airflow_env["AIRFLOW_CONN_FLUX2_DEFAULT"] = json.dumps(conn)
    wanted = 1 if key == "one_triggerer" else 2
    for index in (1, 2):
        name = f"triggerer-{index}"
        alive = name in dep.services and dep.services[name].alive()
        if index > wanted:
            if alive:
                dep.services[name].stop()
            continue
        if restart or not alive:
            if name in dep.services:
                dep.restart(name)
            else:
                dep.start_triggerer(index)
    if restart:
        for name in [n for n in dep.services if n.startswith("worker-")]:
            dep.restart(name)
    # A stopped triggerer is taken for dead after the health threshold; fresh ones need to register.
    time.sleep(15)
    expected = [f"triggerer-{i}" for i in range(1, wanted + 1)] + [n for n in dep.services if n.startswith("worker-")]
    dep.check_alive(*expected)


def run_night(dep: Deployment, key: str, args: argparse.Namespace) -> Night:
    set_up_night(dep, key, args)
    dep.emu.reset()
    night = Night(key=key, images=args.images, cap=args.cap, shards=args.shards)
    before = _db_size(dep)
    started = time.monotonic()
    run_id = dep.trigger(DAG_ID)
    print(f"[{key}] DAG run {run_id}: {args.images} images in {args.shards} shards", flush=True)
    with Sampler(dep) as sampler:
        last_report = 0.0
        while True:
            state = dep.dag_run_state(DAG_ID, run_id)
            if state in ("success", "failed"):
                break
            stats = dep.emu.stats()
            created = int(stats["runs_created"])
            if key == "triggerer_kill" and not night.killed and created >= args.images // 2:
                holders = sampler.holders()
                victim = holders.most_common(1)[0][0] if holders else "triggerer-1"
                dep.kill(victim)
                night.killed, night.killed_at_created = victim, created
                print(f"[{key}] killed {victim} (held {dict(holders)}) at {created} runs created", flush=True)
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                print(
                    f"[{key}] {time.monotonic() - started:.0f} s: {created} created, "
                    f"{stats['runs_by_status']}, 429s {stats['rate_limited']}",
                    flush=True,
                )
            if time.monotonic() - started > args.timeout:
                night.problems.append(f"the DAG run did not finish in {args.timeout} s")
                state = "timed out"
                break
            time.sleep(5)
    night.state = state
    if state != "success":
        states = Counter(t.state for t in dep.task_states(DAG_ID, run_id))
        night.problems.append(f"DAG run {state} ({dict(states)})")
    dag_run = dep.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    if dag_run.get("end_date"):
        night.wall_s = _epoch(dag_run["end_date"]) - _epoch(dag_run["start_date"])
    stats = dep.emu.stats()
    night.requests = sum(n for endpoint, n in stats["requests"].items() if endpoint not in UNKEYED)
    night.by_endpoint = dict(sorted(stats["requests"].items()))
    night.rate_limited = int(stats["rate_limited"])
    night.peak_running = max(stats.get("max_running_by_model", {}).values(), default=0)
    night.db_growth = _db_size(dep) - before
    night.tries = sum(max(0, t.try_number - 1) for t in dep.task_states(DAG_ID, run_id))
    night.peak_rss, night.cpu_s = dict(sampler.peak_rss), dict(sampler.cpu_s)
    night.peak_triggers, night.max_kwargs_bytes = dict(sampler.peak_triggers), sampler.max_kwargs_bytes
    verify(dep, run_id, night)
    if night.peak_running > args.cap:
        night.problems.append(f"{night.peak_running} runs generating at once, over the cap of {args.cap}")
    return night


def _mb(value: int) -> str:
    return f"{value / 2**20:.0f}"


def table(nights: list[Night]) -> tuple[list[str], list[list[str]]]:
    header = [
        "night", "images", "wall (s)", "ideal (s)", "of ideal", "429 share", "API req/image", "billed",
        "duplicates", "lost", "manifests = ledger", "tries", "triggerer peak RSS (MB)", "triggerer CPU (s)",
        "triggers held at most", "DB bytes/image", "largest trigger kwargs (KB)", "valid",
    ]  # fmt: skip
    rows = []
    for n in nights:
        names = sorted(set(n.peak_rss) | set(n.cpu_s))
        rows.append(
            [
                LABELS[n.key] + (f" ({n.killed} killed at {n.killed_at_created} created)" if n.killed else ""),
                str(n.images),
                report.number(n.wall_s, 1),
                report.number(n.ideal_s, 1),
                report.number(n.frac, 2),
                f"{100 * n.share_429:.2f}%" if not math.isnan(n.share_429) else "n/a",
                report.number(n.req_per_image, 2),
                str(n.billed),
                str(n.duplicates),
                str(n.lost),
                f"${n.manifest_usd} {'=' if n.manifest_usd == n.ledger_usd else '≠'} ${n.ledger_usd}",
                str(n.tries),
                ", ".join(f"{name[-1]}: {_mb(n.peak_rss.get(name, 0))}" for name in names),
                ", ".join(f"{name[-1]}: {n.cpu_s.get(name, 0):.0f}" for name in names),
                ", ".join(f"{host}: {count}" for host, count in sorted(n.peak_triggers.items())),
                report.number(n.db_bytes_per_image, 0),
                report.number(n.max_kwargs_bytes / 1024, 0),
                "yes" if n.ok else "**no**: " + "; ".join(n.problems),
            ]
        )
    return header, rows


def targets(main: Night) -> list[list[str]]:
    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    return [
        ["≥ 0.85 of ideal", report.number(main.frac, 2), met(main.frac >= 0.85)],
        ["429 answers ≤ 1 % of requests", f"{100 * main.share_429:.2f}%", met(main.share_429 <= 0.01)],
        ["billed = planned, 0 duplicates, 0 lost, manifests = ledger", f"{main.billed} / {main.images}, "
         f"{main.duplicates}, {main.lost}, ${main.manifest_usd} / ${main.ledger_usd}", met(main.ok)],
        ["each triggerer ≤ 1 GB peak RSS", f"{main.triggerer_rss_mb:.0f} MB", met(main.triggerer_rss_mb <= 1024)],
        ["metadata database ≤ 2 KB per image", f"{main.db_bytes_per_image:.0f} B",
         met(main.db_bytes_per_image <= 2048)],
    ]  # fmt: skip


def write_docs(nights: list[Night], args: argparse.Namespace, rps: float, latency: float, setup_s: float) -> None:
    from airflow import __version__ as airflow_version

    main = next((n for n in nights if n.key == "shipped"), nights[0])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"_Measured by `make bench-scale` (`benchmarks/scale_bench.py`) on {stamp}: a real deployment on loopback — "
        f"CeleryExecutor (Redis), 2 Celery workers, triggerers as named, PostgreSQL, api-server, scheduler, "
        f"dag-processor, each its own process — running `flux2_deploy_scale` (the large-night template): "
        f"{args.images:,} images of 1 MP in {args.shards} mapped shards of {math.ceil(args.images / args.shards):,}, "
        f"`max_in_flight` {args.max_in_flight} each, pool `{POOL}` of {args.pool} slots counting deferred tasks. "
        f"Emulator `realistic` at time scale {args.time_scale}, concurrency cap {args.cap} runs, request limit "
        f"{rps:.1f} requests per emulator second ({rps / args.time_scale:.1f} per real second; burst "
        f"{max(1, round(rps * BURST_SECONDS))}) = {REQUESTS_PER_IMAGE_LIMIT} × the ideal throughput "
        f"(cap ÷ {latency:.1f} s modelled mean latency), 429 with no headers. Images pre-rendered in the emulator "
        f"before Airflow started ({setup_s:.0f} s of set-up). The nights ran one after another on one deployment. "
        f"Ideal = images × measured mean latency ÷ cap; wall = the DAG run's (plan step included)._",
        "",
        "**Targets** (the shipped night)",
        "",
        *report.markdown_table(["target", "measured", "met?"], targets(main)),
        "",
        *report.markdown_table(*table(nights)),
        "",
        *report.machine_table(report.machine(airflow_version, REPO)),
    ]
    report.replace_block(DOCS_PAGE, "\n".join(lines), MARKERS)
    report.replace_block(SUMMARY_PAGE, summary(nights, args, stamp), SUMMARY_MARKERS)


def summary(nights: list[Night], args: argparse.Namespace, stamp: str) -> str:
    """The nights side by side, short, for docs/deployment.md."""
    header = ["night", "of ideal", "429s", "requests/image", "billed / planned", "twice", "lost", "tries",
              "triggerer RSS", "DB/image"]  # fmt: skip
    rows = [
        [
            LABELS[n.key],
            report.number(n.frac, 2),
            f"{100 * n.share_429:.2f}%" if not math.isnan(n.share_429) else "n/a",
            report.number(n.req_per_image, 2),
            f"{n.billed:,} / {n.images:,}",
            str(n.duplicates),
            str(n.lost),
            str(n.tries),
            f"{n.triggerer_rss_mb:.0f} MB",
            f"{n.db_bytes_per_image:.0f} B",
        ]
        for n in nights
    ]
    lines = [
        f"_`make bench-scale`, {stamp}: {args.images:,} images, {args.shards} shards × {args.max_in_flight} in flight, "
        f"pool {args.pool}, cap {args.cap}, emulator time scale {args.time_scale}. Targets: ≥ 0.85 of ideal, "
        "≤ 1 % 429s, billed = planned, 0 twice, 0 lost, ≤ 1 GB per triggerer, ≤ 2 KB of database per image._",
        "",
        *report.markdown_table(header, rows),
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=int(os.environ.get("IMAGES") or 10_000))
    parser.add_argument("--shards", type=int, default=4, help="mapped generate tasks, all running at once")
    parser.add_argument("--cap", type=int, default=64, help="the API's concurrency cap")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="runs in flight per shard (default cap ÷ shards); pool = shards × it",
    )
    parser.add_argument("--time-scale", type=float, default=0.4)
    parser.add_argument("--nights", default=",".join(NIGHTS), help=f"comma-separated, of {', '.join(NIGHTS)}")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one night may take")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument("--keep", action="store_true", help="keep the deployment's folder")
    args = parser.parse_args(argv)
    nights = [n.strip() for n in args.nights.split(",") if n.strip()]
    if unknown := [n for n in nights if n not in NIGHTS]:
        parser.error(f"unknown nights {unknown}: choose from {', '.join(NIGHTS)}")
    args.max_in_flight = args.max_in_flight or round(POOL_OVER_CAP * args.cap / args.shards)
    args.pool = args.shards * args.max_in_flight

    latency = mean_latency_model()
    rps = REQUESTS_PER_IMAGE_LIMIT * args.cap / latency  # requests per emulator second
    emulator = {
        "profile": "realistic",
        "time_scale": args.time_scale,
        "model_concurrency": args.cap,
        "rate_limit_rps": rps,
        "rate_limit_burst": max(1, round(rps * BURST_SECONDS)),
    }
    env = {
        "FLUX2_DEPLOY_SCALE_IMAGES": str(args.images),
        "FLUX2_DEPLOY_SCALE_SHARDS": str(args.shards),
        "FLUX2_DEPLOY_SCALE_MAX_IN_FLIGHT": str(args.max_in_flight),
        "FLUX2_DEPLOY_TIME_SCALE": str(args.time_scale),
        "FLUX2_POOL": POOL,
    }
    print(
        f"scale bench: {args.images} images, {args.shards} shards × {args.max_in_flight} in flight (pool {args.pool}), "
        f"cap {args.cap}, time scale {args.time_scale}, "
        f"limit {rps:.2f} req/s emulator ({rps / args.time_scale:.1f} real), nights {', '.join(nights)}",
        flush=True,
    )
    results: list[Night] = []
    started = time.monotonic()
    images = prerender(args.images)
    with Deployment(
        executor="celery",
        triggerers=2,
        celery_workers=2,
        emulator=emulator,
        env=env,
        parallelism=16,
        keep=args.keep,
        prerender=images,
    ) as dep:
        setup_s = time.monotonic() - started
        print(f"deployment up in {setup_s:.0f} s (images pre-rendered): {dep.root}", flush=True)
        dep.api("POST", "/pools", json={"name": POOL, "slots": args.pool, "include_deferred": True})
        dep.wait_for_dag(DAG_ID)
        for key in nights:
            try:
                night = run_night(dep, key, args)
            except DeploymentError as exc:
                night = Night(key=key, images=args.images, cap=args.cap, shards=args.shards, problems=[str(exc)])
            results.append(night)
            print(f"[{key}] " + night.line() + ("" if night.ok else " — PROBLEMS: " + "; ".join(night.problems)))
            print(f"[{key}] requests by endpoint: {night.by_endpoint}", flush=True)
    print()
    print(report.text_table(*table(results)))
    if not args.no_docs:
        write_docs(results, args, rps, latency, setup_s)
        print(f"\nwritten to {DOCS_PAGE.relative_to(REPO)}")
    main_night = next((n for n in results if n.key == "shipped"), results[0])
    print(main_night.line(), flush=True)
    return 0 if all(n.ok for n in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
