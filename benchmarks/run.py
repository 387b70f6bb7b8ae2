"""``make bench``: the operator's performance claims, measured side by side in one run.

One process, one isolated Airflow (SQLite, ``dag.test()``), one emulator (``realistic`` profile on a
compressed clock, a fixed random seed reset before every task, so image *i* gets the same latency
draw in every task). Each comparison runs the operator as shipped next to a baseline, with the same
images and settings, and reports ratios; the figures go into ``docs/performance.md``.

    python benchmarks/run.py                  # the full run (~10 min on 2 cores)
    python benchmarks/run.py --images 80 --slot-images 160 --no-docs   # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import figures
import report
import sandbox
from figures import TaskFigures, ratio
from report import number, percent, times

DOCS_PAGE = sandbox.REPO / "docs" / "performance.md"
API_KEY = "rf_bench_emulator_key_7c1e04"
RANDOM_SEED = 20260101
MAX_IN_FLIGHT = 8
#: Shipped defaults of the operator, in real seconds; multiplied by the time scale like the API's clock.
SHIPPED_POLL_INTERVAL = 2.0
SHIPPED_PROGRESS_INTERVAL = 5.0
#: The "fixed short interval" baseline of the detection-lag comparison, in real seconds.
FIXED_SHORT_INTERVAL = 1.0
#: A catalogue-like mix: generation time grows with megapixels (1, 1, 2, 1, 4 MP billed).
SIZES = ("landscape_4_3", "square_hd", "1920x1080", "portrait_16_9", "2048x2048")


@dataclass(frozen=True)
class Settings:
    time_scale: float
    images: int
    slot_images: int


@dataclass(frozen=True)
class Scenario:
    """One measured task: which operator, which options, how many images."""

    key: str
    label: str
    images: int
    operator: str = "BenchOperator"
    options: dict[str, Any] = field(default_factory=dict)
    fixed_interval: bool = False


def scenarios(settings: Settings) -> list[Scenario]:
    # Imported here: airflow (which the provider imports) must not load before sandbox.prepare().
    from airflow_provider_flux2.jobs import default_chunk_size

    n, s, slot = settings.images, settings.time_scale, settings.slot_images
    shipped_batch = default_chunk_size(MAX_IN_FLIGHT, None, True)  # what the operator picks by default
    shipped = {"deferrable": True, "poll_interval": SHIPPED_POLL_INTERVAL * s}
    return [
        Scenario("shipped", f"as shipped: batches of {shipped_batch}, adaptive interval", n, options=shipped),
        Scenario("waves", "baseline: whole waves", n, "WaveOperator", shipped),
        Scenario(
            "per_run",
            "baseline: single runs, per-run polls",
            n,
            options={**shipped, "use_batches": False, "batch_size": 1},
        ),
        Scenario(
            "fixed",
            f"baseline: fixed {FIXED_SHORT_INTERVAL:g} s interval",
            n,
            options={**shipped, "poll_interval": FIXED_SHORT_INTERVAL * s},
            fixed_interval=True,
        ),
        # At the same N the shipped task above is the deferrable side: the same task, already measured.
        *([Scenario("slot_deferrable", "deferrable", slot, options=shipped)] if n != slot else []),
        Scenario("slot_sync", "not deferrable", slot, options={**shipped, "deferrable": False}),
    ]


def prompts(count: int) -> list[dict[str, Any]]:
    """The same items for every task (each task's first ``count``), each with its size and seed."""
    return [{"prompt": f"catalogue item {i}", "image_size": SIZES[i % len(SIZES)], "seed": i} for i in range(count)]


def prerender(count: int) -> None:
    """Render every image into the emulator's cache before anything is timed.

    The real API renders while a run is ``running``; the emulator renders when the URL is fetched,
    which would put ~30 ms of image synthesis per image into the client's download time (and,
    in a thread of this process, take the GIL from the task). Warm, a download is a transfer.
    """
    from airflow_provider_flux2.emulator.images import ImageSpec, render
    from airflow_provider_flux2.models import build_input

    def one(item: dict[str, Any]) -> None:
        request = build_input("pro", **item)
        render(ImageSpec(request.prompt, item["seed"], request.width, request.height, request.output_format))

    # Pillow lets go of the GIL while it draws and encodes: one thread per core nearly divides the time.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, prompts(count)))


def measure(emulator: Any, scenario: Scenario, settings: Settings, output: Path) -> TaskFigures:
    """Run one scenario's task with ``dag.test()`` on a freshly reset emulator; check it; return its figures."""
    import instruments
    from airflow.sdk import DAG

    emulator.reset()  # same start-up config and random seed: the same latency draws for image i
    operator = getattr(instruments, scenario.operator)
    dag_id = f"bench_{scenario.key}_{int(time.time())}"
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        operator(
            task_id="generate",
            prompts=prompts(scenario.images),
            output_uri=(output / scenario.key).as_uri(),
            max_in_flight=MAX_IN_FLIGHT,
            progress_interval=SHIPPED_PROGRESS_INTERVAL * settings.time_scale,
            clock_scale=settings.time_scale,
            **scenario.options,
        )
    with instruments.fixed_poll_interval() if scenario.fixed_interval else nullcontext():
        dag_run = sandbox.run_dag(dag)
    records = sandbox.xcom_value(dag_run, "generate") or []
    use = instruments.SLOT_USE[dag_id]
    result = figures.task_figures(
        records,
        emulator.stats(),
        billed=len(emulator.ledger()["entries"]),
        worker_seconds=use.seconds,
        worker_entries=use.entries,
        worker_parts=use.parts,
        task_seconds=use.span,
    )
    check(scenario, str(dag_run.state), result)
    return result


def check(scenario: Scenario, state: str, result: TaskFigures) -> None:
    """A figure from a task that did not do its job would be meaningless: stop loudly."""
    problems = []
    if state != "success":
        problems.append(f"DAG run ended {state}")
    if result.images != scenario.images or result.billed != scenario.images:
        problems.append(f"{result.images} records and {result.billed} billed runs for {scenario.images} images")
    if result.peak_in_flight > MAX_IN_FLIGHT:
        problems.append(f"{result.peak_in_flight} runs in flight at once (max_in_flight {MAX_IN_FLIGHT})")
    if problems:
        raise SystemExit(f"benchmark task {scenario.key!r} is invalid: " + "; ".join(problems))


# -- the tables ----------------------------------------------------------------------------------------

Table = tuple[list[str], list[list[str]]]
#: The tasks of the side-by-side comparisons (the same N), in the order the tables show them.
COMPARED = ("shipped", "waves", "per_run", "fixed")


def tasks_table(results: dict[str, TaskFigures], labels: dict[str, str]) -> Table:
    """Every figure of the same-N tasks, one row each."""
    header = ["task", "window (s)", "images/s", "of ideal", "polls/image", "get_batch", "get_batch_items", "get_run"]
    header += ["lag p50 (s)", "lag p95 (s)", "worker entries", "peak in flight"]
    rows = []
    for key in COMPARED:
        f = results[key]
        of_ideal = f.images_per_second / f.ideal_images_per_second(MAX_IN_FLIGHT)
        rows.append(
            [
                labels[key],
                number(f.window_seconds),
                number(f.images_per_second),
                percent(of_ideal),
                number(f.polls_per_image),
                *(str(f.requests.get(endpoint, 0)) for endpoint in figures.POLL_ENDPOINTS),
                number(f.lag_p50, 3),
                number(f.lag_p95, 3),
                str(f.worker_entries),
                str(f.peak_in_flight),
            ]
        )
    return header, rows


def slot_cycle_table(results: dict[str, TaskFigures], labels: dict[str, str]) -> Table:
    """Where a window slot's time goes per image: the run, its detection, then the wait until the slot is
    used again. A slot is free once a poll sees its run finished (images are stored after the window)."""
    header = ["task (mean s per image)", "slot cycle", "run at the API", "finished → seen", "empty"]
    rows = []
    for key in COMPARED:
        f = results[key]
        cycle, lag = f.slot_cycle(MAX_IN_FLIGHT), figures.mean(f.lags)
        empty = cycle - f.mean_latency - lag
        rows.append([labels[key], *(number(v, 3) for v in (cycle, f.mean_latency, lag, empty))])
    return header, rows


def slot_table(deferrable: TaskFigures, sync: TaskFigures) -> Table:
    header = ["mode", "images", "task wall (s)", "worker slot held (s)", "share of wall", "worker entries"]
    header.append("held ms/image")
    rows = [
        [
            label,
            str(f.images),
            number(f.task_seconds),
            number(f.worker_seconds),
            percent(f.worker_share),
            str(f.worker_entries),
            number(1000 * f.worker_seconds / f.images, 1),
        ]
        for label, f in (("deferrable", deferrable), ("not deferrable", sync))
    ]
    return header, rows


def worker_parts_table(deferrable: TaskFigures) -> Table:
    """Where the deferrable task's worker time went, step by step."""
    parts = dict(deferrable.worker_parts)
    parts["other (defer, progress in task_state_store, records)"] = deferrable.worker_seconds - sum(parts.values())
    rows = [
        [
            name,
            number(seconds),
            percent(seconds / deferrable.worker_seconds),
            number(1000 * seconds / deferrable.images, 1),
        ]
        for name, seconds in sorted(parts.items(), key=lambda item: -item[1])
    ]
    return ["step of the deferrable task", "seconds", "share", "ms/image"], rows


def adaptive_rule_table() -> Table:
    """The interval the shipped rule picks at the start of a wait, in real seconds (computed, not timed)."""
    from airflow_provider_flux2.hooks.flux import adaptive_poll_interval, expected_duration
    from airflow_provider_flux2.pricing import billed_megapixels

    rows = []
    for width, height in ((1024, 1024), (1920, 1080), (2048, 2048), (2896, 2896), (4096, 4096)):
        expected = expected_duration(width, height)
        picked = [
            adaptive_poll_interval([status], base=SHIPPED_POLL_INTERVAL, elapsed=0.0, expected=expected)
            for status in ("queued", "running")
        ]
        size = f"{width}×{height} ({billed_megapixels(width, height)} MP)"
        rows.append([size, number(expected, 1), number(picked[0], 1), number(picked[1], 1)])
    return ["image", "expected duration (s)", "all queued (s)", "running (s)"], rows


def ratio_rows(results: dict[str, TaskFigures], settings: Settings) -> list[list[str]]:
    """The claims, as shipped next to its baseline, with the ratio last."""
    shipped, waves, per_run, fixed = (results[k] for k in COMPARED)
    deferrable, sync = results["slot_deferrable"], results["slot_sync"]
    ideal = shipped.ideal_images_per_second(MAX_IN_FLIGHT)
    n = f"{settings.images} images, max_in_flight {MAX_IN_FLIGHT}"
    return [
        [
            f"throughput, window top-up vs whole waves ({n})",
            f"{number(shipped.images_per_second)} vs {number(waves.images_per_second)} images/s",
            f"{times(ratio(shipped.images_per_second, waves.images_per_second))} faster",
        ],
        [
            "throughput vs the ideal `max_in_flight / mean latency`",
            f"{number(shipped.images_per_second)} vs {number(ideal)} images/s",
            percent(shipped.images_per_second / ideal),
        ],
        [
            "poll requests per image, batch endpoint vs single runs (`batch_size=1`)",
            f"{number(shipped.polls_per_image)} vs {number(per_run.polls_per_image)}",
            f"{times(ratio(per_run.polls_per_image, shipped.polls_per_image))} fewer",
        ],
        [
            "throughput, batch endpoint vs single runs",
            f"{number(shipped.images_per_second)} vs {number(per_run.images_per_second)} images/s",
            times(ratio(shipped.images_per_second, per_run.images_per_second)),
        ],
        [
            f"worker slot held, deferrable vs not ({settings.slot_images} images)",
            f"{number(deferrable.worker_seconds)} s vs {number(sync.worker_seconds)} s",
            f"{times(ratio(sync.worker_seconds, deferrable.worker_seconds))} less",
        ],
        [
            f"detection lag p50, adaptive ({SHIPPED_POLL_INTERVAL:g} s) vs fixed {FIXED_SHORT_INTERVAL:g} s",
            f"{number(shipped.lag_p50, 3)} s vs {number(fixed.lag_p50, 3)} s",
            f"{times(ratio(shipped.lag_p50, fixed.lag_p50))} longer",
        ],
        [
            f"poll requests per image, adaptive ({SHIPPED_POLL_INTERVAL:g} s) vs fixed {FIXED_SHORT_INTERVAL:g} s",
            f"{number(shipped.polls_per_image)} vs {number(fixed.polls_per_image)}",
            f"{times(ratio(fixed.polls_per_image, shipped.polls_per_image))} fewer",
        ],
    ]


def labels_of(settings: Settings) -> dict[str, str]:
    return {s.key: s.label for s in scenarios(settings)}


def sections(results: dict[str, TaskFigures], settings: Settings) -> list[tuple[str, Table]]:
    """The raw figures, in the order both the console and the page show them."""
    labels = labels_of(settings)
    return [
        (f"The same {settings.images} images through each task", tasks_table(results, labels)),
        ("Where a window slot's time goes", slot_cycle_table(results, labels)),
        ("Worker slot time", slot_table(results["slot_deferrable"], results["slot_sync"])),
        ("Worker time of the deferrable task, by step", worker_parts_table(results["slot_deferrable"])),
        (
            f"Interval the shipped rule picks at the start of a wait (poll_interval {SHIPPED_POLL_INTERVAL:g} s, "
            "real seconds; computed from adaptive_poll_interval, not timed)",
            adaptive_rule_table(),
        ),
    ]


def results_block(results: dict[str, TaskFigures], settings: Settings, machine: list[tuple[str, str]]) -> str:
    """The Markdown between the markers: ratios first, then the raw figures, then the machine."""
    lines = [
        f"_Measured by `make bench` on {machine[0][1]} UTC: time scale {settings.time_scale:g} (one second of the "
        f"API's time lasts {settings.time_scale:g} s), emulator seed {RANDOM_SEED}, "
        f"max_in_flight {MAX_IN_FLIGHT}; seconds below are measured seconds unless marked real._",
        "",
        "### Ratios",
        "",
        *report.markdown_table(["claim", "as shipped vs baseline", "ratio"], ratio_rows(results, settings)),
        "",
        "### Raw figures",
    ]
    for title, (header, rows) in sections(results, settings):
        lines += ["", f"{title}:", "", *report.markdown_table(header, rows)]
    lines += ["", "### Machine", "", *report.machine_table(machine)]
    return "\n".join(lines)


def print_console(results: dict[str, TaskFigures], settings: Settings) -> None:
    print("\n" + report.text_table(["claim", "as shipped vs baseline", "ratio"], ratio_rows(results, settings)))
    for title, (header, rows) in sections(results, settings):
        print(f"\n{title}\n{report.text_table(header, rows)}")


# -- main ------------------------------------------------------------------------------------------------


def emulator_for(settings: Settings) -> Any:
    """The emulator in this process, ``realistic`` on a compressed clock, wired as ``flux2_default``."""
    return sandbox.emulator(
        API_KEY,
        profile="realistic",
        time_scale=settings.time_scale,
        random_seed=RANDOM_SEED,
        items_page_size=100,  # one page per batch, as the real API (limit up to 500) answers
    )


def parse_args(argv: list[str]) -> tuple[Settings, bool]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-scale", type=float, default=0.1, help="the emulator's time_scale (default 0.1)")
    parser.add_argument("--images", type=int, default=400, help="images per comparison task (default 400)")
    parser.add_argument(
        "--slot-images",
        type=int,
        default=400,
        help="images in the worker-slot tasks (default 400, the same task as above; 1000 adds ~8 min)",
    )
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/performance.md alone")
    args = parser.parse_args(argv)
    return Settings(args.time_scale, args.images, args.slot_images), not args.no_docs


def measure_all(settings: Settings) -> dict[str, TaskFigures]:
    """Every scenario, one after the other, against one emulator."""
    results: dict[str, TaskFigures] = {}
    started = time.perf_counter()
    prerender(max(settings.images, settings.slot_images))
    progress(f"images pre-rendered in {time.perf_counter() - started:.0f} s")
    with tempfile.TemporaryDirectory(prefix="flux2-bench-output-") as output, emulator_for(settings) as emulator:
        for scenario in scenarios(settings):
            started = time.perf_counter()
            results[scenario.key] = measure(emulator, scenario, settings, Path(output))
            progress(
                f"{scenario.key}: {scenario.label}, {scenario.images} images in {time.perf_counter() - started:.0f} s"
            )
    results.setdefault("slot_deferrable", results["shipped"])
    return results


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    settings, write_docs = parse_args(argv)
    started = time.perf_counter()
    home = sandbox.prepare("flux2-bench-airflow-")
    try:
        import airflow

        # Taken before measuring: the commit is the code this process imports, whatever lands meanwhile.
        machine = report.machine(airflow.__version__, sandbox.REPO)
        results = measure_all(settings)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print_console(results, settings)
    block = results_block(results, settings, machine)
    if write_docs:
        report.replace_block(DOCS_PAGE, block)
        print(f"\nResults written to {DOCS_PAGE.relative_to(sandbox.REPO)}")
    print(f"make bench took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
