"""`make demo`: the nightly product-image refresh DAG, end to end, against the local emulator.

Fresh Airflow home in ./.airflow (SQLite), the emulator on loopback with its realistic latency
profile (ten times faster), `airflow dags test flux2_product_image_refresh` on the deferrable path,
then where the images, the manifest and the gallery are.

``make demo SENTINEL=1`` turns the DAG's Sentinel gate on (``FLUX2_SENTINEL=1``): the emulator judges
every stored image, and fails the one of the "Ceramic Pour-Over Set" (its fail marker set to a word of
that product's prompt), which is regenerated once, judged again, and dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_HOME = REPO / ".airflow"
OUTPUT = REPO / "demo-output"
DAG_ID = "flux2_product_image_refresh"
#: ``make demo SENTINEL=1``: the DAG's Sentinel gate on, one product failing its verdict.
SENTINEL = os.environ.get("SENTINEL", "") not in ("", "0")
SENTINEL_FAILS = "Pour-Over"
#: Lines of the Airflow log worth showing while the DAG runs (the full log goes to .airflow/demo.log).
SHOWN = (
    "[DAG TEST] starting task_id",
    "Catalogue:",
    "Estimate:",
    "Plan: ",
    " done · ",
    "Finished ",
    "Quality:",
    "Quality plan:",
    "Sentinel",
    "Round ",
    "Published ",
    "ERROR",
    "Error",
    "Traceback",
)


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def airflow_env(emulator_conn: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(AIRFLOW_HOME),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE="True",
        AIRFLOW_CONN_FLUX2_DEFAULT=emulator_conn,
        AIRFLOW_VAR_FLUX2_OUTPUT_URI=OUTPUT.as_uri(),
    )
    if SENTINEL:
        env["FLUX2_SENTINEL"] = "1"
    return env


def run_dag(env: dict[str, str]) -> int:
    log_path = AIRFLOW_HOME / "demo.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", DAG_ID],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if any(marker in line for marker in SHOWN):
                print("   " + _short(line), flush=True)
        return process.wait()


def _short(line: str) -> str:
    line = line.rstrip()
    # Drop structlog's timestamp and logger suffix: keep the message.
    if "Z [" in line[:40]:
        line = line.split("] ", 1)[-1]
    return line.split(" [airflow.", 1)[0][:240]


def report() -> int:
    manifests = sorted(OUTPUT.glob(f"{DAG_ID}/*/publish/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        print("No manifest was published: see .airflow/demo.log", file=sys.stderr)
        return 1
    manifest_path = manifests[-1]
    summary = json.loads(manifest_path.read_text())["summary"]
    gallery = manifest_path.with_name("index.html")
    images = sorted(p for p in manifest_path.parent.glob("[0-9]*") if p.suffix in (".jpg", ".png"))
    print(f"   images:        {summary['passed']} published of {summary['count']} ({len(images)} files)")
    print(
        f"   total cost:    ${summary['total_cost_usd']} for {summary['total_billed_mp']} MP (emulator: no money spent)"
    )
    print(f"   images folder: {manifest_path.parent}")
    print(f"   manifest:      {manifest_path}")
    print(f"   gallery:       {gallery}")
    print(f"   contact sheet: {manifest_path.with_name('contact_sheet.png')}")
    print(f"   image names:   {', '.join(p.name for p in images[:2])}, … (index, product id, content hash)")
    print(f"   latest:        {OUTPUT / 'latest'} (the current image of each product: <product id>.jpg)")
    if SENTINEL:
        rows = json.loads(manifest_path.read_text())["images"]
        judged = [r for r in rows if r.get("sentinel")]
        failed = [r for r in judged if not (r["sentinel"] or {}).get("overall_passed")]
        print(f"   sentinel:      {len(judged)} verdicts in the manifest, {len(failed)} failing (see the gallery)")
    return 0


def main() -> int:
    started = time.monotonic()
    step("Fresh Airflow home in .airflow (SQLite) and an empty demo-output/")
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)
    shutil.rmtree(OUTPUT, ignore_errors=True)
    shutil.rmtree(REPO / "demo-output-staging", ignore_errors=True)
    AIRFLOW_HOME.mkdir()
    OUTPUT.mkdir()

    from airflow_provider_flux2.emulator import Emulator

    step("Starting the FLUX 2 emulator (realistic latency, 10x faster, a $25.00 credit balance)")
    # The balance is served at /v1/billing/balance, as Runflow's: the plan line shows it next to the cost.
    extra = {"sentinel_fail_marker": SENTINEL_FAILS} if SENTINEL else {}
    with Emulator(profile="realistic", time_scale=0.1, subprocess=True, credit_usd="25", **extra) as emulator:
        print(f"   emulator at {emulator.base_url}")
        env = airflow_env(emulator.connection_json())
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        step(f"airflow dags test {DAG_ID} (deferrable; full log in .airflow/demo.log)")
        code = run_dag(env)
        ledger = emulator.ledger()
    if code != 0:
        print(f"\nThe DAG failed (exit {code}); see .airflow/demo.log", file=sys.stderr)
        return code
    elapsed = time.monotonic() - started
    runs, cost = len(ledger["entries"]), ledger["total_cost"]
    step(f"Done in {elapsed:.0f}s — the emulator's ledger: {runs} billed runs, ${cost}")
    return report()


if __name__ == "__main__":
    sys.exit(main())
