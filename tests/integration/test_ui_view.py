"""The FLUX view: a real ``airflow api-server`` (fresh AIRFLOW_HOME, SQLite) with the plugin, in Chromium.

The API server reads the same metadata database the tests' ``dag.test()`` runs write to, so the
view shows real batches: manifests, asset events, galleries on disk.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from airflow.sdk import DAG
from browser import CHROMIUM_ARGS, chromium_path

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.operators.publish import FluxPublishOperator
from airflow_provider_flux2.operators.quality import FluxQualityCheckOperator
from airflow_provider_flux2.storage.local import path_of

REPO = Path(__file__).resolve().parents[2]
#: Set to ``docs/img`` to refresh the screenshots the docs show; by default they go to a temporary folder.
SCREENSHOTS_ENV = "FLUX2_SCREENSHOTS_DIR"
PASSWORDS = {"viewer": "viewer-pw", "admin": "admin-pw", "restricted": "restricted-pw", "nodags": "nodags-pw"}
SECRET_DAG = "t_flux2_view_secret"

# A real auth manager (Airflow's SimpleAuthManager) with two extra rules, to prove the view asks it:
# "restricted" may not read SECRET_DAG, "nodags" may read no DAG at all.
AUTH_MANAGER = f'''
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


class RestrictedAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method, user, access_entity=None, details=None):
        if user.get_name() == "nodags":
            return False
        if user.get_name() == "restricted" and details is not None and details.id == "{SECRET_DAG}":
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
'''
PLUGIN_SHIM = "from airflow_provider_flux2.ui.plugin import Flux2Plugin  # noqa: F401\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_problem() -> str | None:
    """The shared SQLite database's integrity, checked before and after the API server reads it."""
    import sqlite3

    url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    if not url.startswith("sqlite:///"):
        return None
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        result = db.execute("pragma quick_check").fetchone()[0]
    return None if result == "ok" else result


@pytest.fixture(scope="module")
def api_server(airflow_db, tmp_path_factory, moto_endpoint) -> Iterator[str]:
    problem = _database_problem()
    if problem is not None:  # an earlier test broke the session's database: say so, not a confusing 200
        pytest.fail(f"the session's SQLite metadata database is damaged before the API server starts: {problem}")
    home = tmp_path_factory.mktemp("api-server-home")
    (home / "auth_manager_for_tests.py").write_text(AUTH_MANAGER)
    (home / "passwords.json").write_text(json.dumps(PASSWORDS))
    plugins = home / "plugins"
    plugins.mkdir()
    if not any(ep.name == "flux2" for ep in entry_points(group="airflow.plugins")):
        # The provider is installed from another checkout: load the plugin the way an entry point would.
        (plugins / "flux2_view.py").write_text(PLUGIN_SHIM)
    port = _free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(home)]),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__AUTH_MANAGER": "auth_manager_for_tests.RestrictedAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
            ["viewer:viewer", "admin:admin", "restricted:viewer", "nodags:viewer"]
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "flux2-view-test-secret-0123456789abcdef",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        # S3 galleries are read with this connection (moto's server here).
        "AIRFLOW__FLUX2__UI_AWS_CONN_ID": "aws_flux2_view",
        "AIRFLOW_CONN_AWS_FLUX2_VIEW": json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIAVIEW",
                "password": "view-secret",
                "extra": {"endpoint_url": moto_endpoint, "region_name": "eu-west-1"},
            }
        ),
    }
    log = (home / "api-server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"airflow api-server exited: {(home / 'api-server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"airflow api-server did not start: {(home / 'api-server.log').read_text()[-3000:]}")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        problem = _database_problem()
        assert problem is None, f"the SQLite metadata database is damaged after the API server read it: {problem}"


def _token(base: str, user: str) -> str:
    response = httpx.post(
        f"{base}/auth/token", json={"username": user, "password": PASSWORDS[user]}, timeout=10, trust_env=False
    )
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def _get(base: str, path: str, user: str | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {_token(base, user)}"} if user else {}
    return httpx.get(f"{base}{path}", headers=headers, timeout=30, trust_env=False, **kwargs)


def _campaign(tmp_path: Path, dag_id: str = "t_flux2_view_campaign") -> DAG:
    """generate (one image blank, one moderated) → check with regeneration → publish with an asset event."""
    prompts = [
        "autumn campaign hero, warm light",
        "autumn campaign banner, flat colours",
        "autumn campaign tile NSFW_TEST",
        "autumn campaign story frame",
    ]
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        generate = FluxGenerateImageOperator(
            task_id="generate",
            prompts=prompts,
            image_size="square",
            seed=5,
            output_uri=(tmp_path / "staging").as_uri(),
            on_moderation="record",
            poll_interval=0.02,
        )
        check = FluxQualityCheckOperator(
            task_id="check",
            records=generate.output,
            checks=["decodes", "not_blank", "nsfw"],
            on_failure="regenerate",
            max_regenerations=1,
            min_pass_rate="75%",  # the moderated image is recorded, not regenerated: 3 of 4 pass
            output_uri=(tmp_path / "staging").as_uri(),
            poll_interval=0.02,
        )
        FluxPublishOperator(task_id="publish", records=check.output, destination_uri=(tmp_path / "final").as_uri())
    return dag


@pytest.mark.browser
@pytest.mark.slow
def test_view_lists_batches_spend_failures_and_serves_galleries(
    api_server, emulator, run_dag, xcom, tmp_path, monkeypatch
):
    # A second DAG for the screenshot: the photo-restyle template, four versions of the shipped photo.
    from dagbags import dag_bag

    monkeypatch.setenv("AIRFLOW_VAR_FLUX2_RESTYLE_OUTPUT_URI", (tmp_path / "restyled").as_uri())
    restyle = dag_bag(REPO / "dags" / "flux2_photo_restyle.py").get_dag("flux2_photo_restyle")
    assert run_dag(restyle).state == "success"
    emulator.reset()
    emulator.faults(
        {"rules": [{"endpoint": "create_batch", "fault": "blank_image", "match": {"prompt_contains": "flat colours"}}]}
    )
    dr = run_dag(_campaign(tmp_path))
    assert dr.state == "success"
    billed = Decimal(emulator.ledger()["total_cost"])
    assert billed == Decimal("0.150")  # 4 images + 1 regeneration at $0.030

    # Nobody: refused. A viewer: the batches of this run, their spend counted once.
    assert _get(api_server, "/flux2/").status_code == 401
    assert _get(api_server, "/flux2/api/batches", "nodags").status_code == 403
    response = _get(api_server, "/flux2/api/batches?days=366", "viewer")
    assert response.status_code == 200, response.text
    data = response.json()
    ours = [b for b in data["batches"] if b["run_id"] == dr.run_id]
    assert {b["task_id"] for b in ours} == {"generate", "publish"}
    publish = next(b for b in ours if b["task_id"] == "publish")
    assert publish["asset"] and publish["cost_usd"] == "0.150"
    assert (publish["regenerated"], publish["superseded"]) == (1, 1)
    day = [row for row in data["spend"] if row["dag_id"] == "t_flux2_view_campaign"]
    assert sum(Decimal(row["cost_usd"]) for row in day) == billed  # the generate and publish manifests overlap
    assert sum(row["images"] for row in day) == 5 and sum(row["regenerated"] for row in day) == 1
    assert [(row["regeneration_cost_usd"], row["undelivered_cost_usd"]) for row in day] == [("0.030", "0.060")]
    failures = [f for f in data["failures"] if f["run_id"] == dr.run_id]
    assert sorted((f["index"], f["attempt"], f["outcome"]) for f in failures) == [
        (1, 1, "superseded"),
        (1, 2, "passed"),
        (2, 1, "moderated"),
    ]

    # The gallery of the publish task, on local disk, through the view.
    gallery = xcom(dr, "publish")["gallery_uri"]
    redirect = _get(api_server, f"/flux2/gallery?uri={quote(gallery, safe='')}", "viewer", follow_redirects=False)
    assert redirect.status_code == 307
    page = _get(api_server, redirect.headers["location"], "viewer")
    assert page.status_code == 200 and "<img" in page.text
    folder = path_of(gallery).parent
    assert _get(api_server, f"/flux2/files{folder}/manifest.json", "viewer").json()["summary"]["count"] == 5
    # Nothing outside a recorded batch folder, however the path is written.
    for path in ("/flux2/files/etc/passwd", f"/flux2/files{folder}/../../../etc/passwd", f"/flux2/files{folder}x/a"):
        assert _get(api_server, path, "viewer").status_code == 404, path

    # The page, in Chromium: the view itself, and the view inside the Airflow UI (its Browse entry).
    from playwright.sync_api import sync_playwright

    viewer = _token(api_server, "viewer")
    shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900})
            context.add_cookies([{"name": "_token", "value": viewer, "url": api_server}])
            page = context.new_page()
            page.goto(f"{api_server}/flux2/?days=366", wait_until="load")
            text = page.inner_text("body")
            assert "Spend per DAG per day" in text and "t_flux2_view_campaign" in text
            assert "regeneration #1" in text and "moderated" in text
            run_link = page.locator(f"a[href='/dags/t_flux2_view_campaign/runs/{quote(dr.run_id, safe='')}']")
            assert run_link.count() == 2  # the generate batch and the publish batch of that run
            assert page.locator("a[href='?days=1']").inner_text() == "last day"
            page.screenshot(path=str(shots / "flux2-view.png"), full_page=True)
            with page.expect_popup() as popup:
                page.locator(f"a[href*='{quote(str(path_of(gallery)))}']").first.click()
            gallery_page = popup.value
            gallery_page.wait_for_load_state("load")
            images = gallery_page.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth)")
            assert images and all(images), images

            ui = context.new_page()
            ui.goto(f"{api_server}/plugin/flux2", wait_until="networkidle")
            frame = ui.frame_locator("iframe").first
            frame.locator("text=Spend per DAG per day").wait_for(timeout=60_000)
            ui.screenshot(path=str(shots / "flux2-view-in-airflow.png"))
        finally:
            browser.close()
    assert (shots / "flux2-view.png").stat().st_size > 10_000
    assert (shots / "flux2-view-in-airflow.png").stat().st_size > 10_000


def test_view_shows_only_the_dags_the_auth_manager_allows(api_server, emulator, run_dag, tmp_path):
    with DAG(SECRET_DAG, schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        FluxGenerateImageOperator(
            task_id="generate", prompt="a secret", image_size="square", output_uri=tmp_path.as_uri(), poll_interval=0.02
        )
    assert run_dag(dag).state == "success"
    seen = {b["dag_id"] for b in _get(api_server, "/flux2/api/batches?days=366", "viewer").json()["batches"]}
    hidden = {b["dag_id"] for b in _get(api_server, "/flux2/api/batches?days=366", "restricted").json()["batches"]}
    assert SECRET_DAG in seen
    assert SECRET_DAG not in hidden
    page = _get(api_server, f"/flux2/files{tmp_path}/{SECRET_DAG}", "restricted")
    assert page.status_code == 404
    gallery = next(p for p in tmp_path.rglob("index.html"))
    assert _get(api_server, f"/flux2/files{gallery}", "viewer").status_code == 200
    assert _get(api_server, f"/flux2/files{gallery}", "restricted").status_code == 404
    # Inside a batch folder, only what a gallery is made of: no other kind of file, no link out of it.
    (gallery.parent / "notes").write_text("not for the browser")
    (gallery.parent / "out.png").symlink_to(Path(__file__))
    for name in ("notes", "out.png"):
        assert _get(api_server, f"/flux2/files{gallery.parent}/{name}", "viewer").status_code == 404, name


def test_s3_gallery_is_served_through_the_view(api_server, emulator, run_dag, xcom, tmp_path, moto_aws_conn, bucket):
    with DAG("t_flux2_view_s3", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        generate = FluxGenerateImageOperator(
            task_id="generate", prompts=["one", "two"], image_size="square", output_uri=tmp_path.as_uri()
        )
        FluxPublishOperator(
            task_id="publish", records=generate.output, destination_uri=f"s3://{bucket}/out", aws_conn_id=moto_aws_conn
        )
    dr = run_dag(dag)
    assert dr.state == "success"
    gallery = xcom(dr, "publish")["gallery_uri"]
    assert gallery.startswith(f"s3://{bucket}/out/")
    redirect = _get(api_server, f"/flux2/gallery?uri={quote(gallery, safe='')}", "viewer", follow_redirects=False)
    location = redirect.headers["location"]
    assert location.startswith(f"/flux2/s3/{bucket}/out/")
    page = _get(api_server, location, "viewer")
    assert page.status_code == 200 and "<img" in page.text
    thumb = page.text.split('src="', 1)[1].split('"', 1)[0]
    image = _get(api_server, location.rsplit("/", 1)[0] + "/" + thumb, "viewer")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    # An object of the bucket outside any recorded batch folder is not served.
    assert _get(api_server, f"/flux2/s3/{bucket}/elsewhere/x.png", "viewer").status_code == 404


def test_plugin_is_registered_in_pyproject_and_loads():
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["airflow.plugins"]
    assert declared == {"flux2": "airflow_provider_flux2.ui.plugin:Flux2Plugin"}
    from airflow_provider_flux2.ui.plugin import Flux2Plugin

    assert Flux2Plugin.fastapi_apps[0]["url_prefix"] == "/flux2"
    assert Flux2Plugin.external_views[0]["href"] == "/flux2/"


def test_api_server_lists_the_external_view(api_server):
    plugins = _get(api_server, "/api/v2/plugins", "admin").json()["plugins"]
    flux2 = next(p for p in plugins if p["name"] == "flux2")
    assert flux2["external_views"][0]["url_route"] == "flux2"
    assert flux2["fastapi_apps"][0]["url_prefix"] == "/flux2"


def test_view_shows_a_night_that_failed_on_its_deadline_as_failed_with_its_spend(
    api_server, emulator, run_dag, xcom, tmp_path
):
    """The issue's night: a task that ends on its deadline shows as failed, with what it billed, its runs
    still at the API listed, and the spend in its DAG's day (not "in progress (no manifest yet) $0.000")."""
    from airflow_provider_flux2.operators.flux import XCOM_MANIFEST

    # Two runs at a time, two seconds each: of four, two finish and two are still running at 3 s.
    emulator.configure(fleet_size=2, latency={"queued": 0.05, "dispatching": 0.05, "running": 2.0})
    with DAG("t_flux2_view_failed_night", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        FluxGenerateImageOperator(
            task_id="generate",
            prompts=[f"a teapot {i}" for i in range(4)],
            image_size="square",
            output_uri=tmp_path.as_uri(),
            max_in_flight=4,
            use_batches=False,
            timeout=3,
            write_manifest=False,
            poll_interval=0.02,
            retries=0,
        )
    dr = run_dag(dag)
    assert dr.state == "failed"
    manifest = json.loads(Path(xcom(dr, "generate", key=XCOM_MANIFEST)[7:]).read_text())
    billed = Decimal(manifest["summary"]["total_cost_usd"])
    assert billed == Decimal("0.060")

    data = _get(api_server, "/flux2/api/batches?days=1", "viewer").json()
    (batch,) = [b for b in data["batches"] if b["run_id"] == dr.run_id]
    assert (batch["state"], batch["task_failed"], Decimal(batch["cost_usd"])) == ("failed", True, billed)
    assert batch["unfinished"] == {"STILL_RUNNING": 2}
    day = [row for row in data["spend"] if row["dag_id"] == "t_flux2_view_failed_night"]
    assert sum(Decimal(row["cost_usd"]) for row in day) == billed
    assert sum(row["failed_tasks"] for row in day) == 1 and sum(row["failed"] for row in day) == 2
    failures = [f for f in data["failures"] if f["run_id"] == dr.run_id]
    assert sorted(f["failure_code"] for f in failures) == ["STILL_RUNNING", "STILL_RUNNING"]
    page = _get(api_server, "/flux2/?days=1", "viewer").text
    assert "task failed" in page and "2 still running at the API" in page


def test_view_pages_through_a_range_and_bounds_its_parameters(api_server):
    data = _get(api_server, "/flux2/api/batches?days=366&limit=1", "viewer").json()
    assert data["total_batches"] >= 2 and data["pages"] == data["total_batches"]
    second = _get(api_server, "/flux2/api/batches?days=366&limit=1&page=2", "viewer").json()
    assert (second["page"], len(second["batches"])) == (2, 1)
    assert second["batches"][0]["manifest_uri"] != data["batches"][0]["manifest_uri"]
    assert second["total_cost_usd"] == data["total_cost_usd"]  # the spend covers the range, not the page
    page = _get(api_server, "/flux2/?days=366&limit=1&page=2", "viewer").text
    assert "rel='prev'" in page and "?days=366&amp;limit=1" in page
    for query in ("days=367", "limit=501", "page=0"):
        assert _get(api_server, f"/flux2/api/batches?{query}", "viewer").status_code == 422, query


def test_ui_enabled_false_registers_no_app_no_menu_entry_and_no_gallery_link(tmp_path):
    """Airflow's own plugin loading (``airflow plugins``) with the view switched on, and off."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(REPO),
    }
    (tmp_path / "plugins").mkdir()
    if not any(ep.name == "flux2" for ep in entry_points(group="airflow.plugins")):
        (tmp_path / "plugins" / "flux2_view.py").write_text(PLUGIN_SHIM)
    link = (
        "from airflow_provider_flux2 import links; import airflow_provider_flux2.ui.plugin; "
        "print(links.local_link('file:///data/night/index.html'))"
    )
    seen = {}
    for enabled in ("True", "False"):
        run_env = {**env, "AIRFLOW__FLUX2__UI_ENABLED": enabled}
        listed = subprocess.run(
            [sys.executable, "-m", "airflow", "plugins", "-o", "json"],
            env=run_env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        (flux2,) = [p for p in json.loads(listed.stdout) if p["name"] == "flux2"]
        linked = subprocess.run(
            [sys.executable, "-c", link], env=run_env, capture_output=True, text=True, check=True, timeout=120
        )
        seen[enabled] = (len(flux2["fastapi_apps"]), len(flux2["external_views"]), linked.stdout.strip())
    assert seen["True"] == (1, 1, "/flux2/gallery?uri=file%3A%2F%2F%2Fdata%2Fnight%2Findex.html")
    assert seen["False"] == (0, 0, "/data/night/index.html")
