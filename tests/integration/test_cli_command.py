"""The installed ``flux2`` command in a process of its own: the console script, ``generate`` through the
emulator, connections read from Airflow, and a machine without Airflow's home.

``estimate``'s pricing rules are tested in-process in ``tests/unit/test_cli.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

FLUX2 = os.path.join(os.path.dirname(sys.executable), "flux2")


def flux2(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FLUX2, *args], capture_output=True, text=True, env=env or os.environ.copy())


def test_estimate_prints_the_seed_price():
    result = flux2("estimate", "--size", "1920x1080")
    assert result.returncode == 0
    assert "1920x1080" in result.stdout and "$0.045" in result.stdout
    assert "total: 1 image(s), 2 MP, $0.045" in result.stdout


def test_generate_writes_a_verified_image_through_the_emulator(emulator, tmp_path):
    out = tmp_path / "lighthouse.png"
    env = {**os.environ, "AIRFLOW_CONN_FLUX2_DEFAULT": emulator.connection_json()}
    result = flux2(
        "generate",
        "a lighthouse at dawn",
        "--size",
        "640x480",
        "--seed",
        "5",
        "--format",
        "png",
        "--out",
        str(out),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "seed 5" in result.stdout and "$0.030" in result.stdout
    with Image.open(out) as image:
        assert image.size == (640, 480) and image.format == "PNG"
    assert len(emulator.ledger()["entries"]) == 1


def test_generate_with_flux2_api_key_and_a_json_prompt(emulator, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update(FLUX2_API_KEY=emulator.api_key, FLUX2_BASE_URL=emulator.base_url)
    prompt = json.dumps({"scene": "a teapot", "light": "soft"})
    result = flux2("generate", prompt, "--size", "square", "--out", str(tmp_path / "t.jpg"), env=env)
    assert result.returncode == 0, result.stderr
    assert Path(tmp_path / "t.jpg").stat().st_size > 0
    assert emulator.api_key not in result.stdout + result.stderr


def test_generate_with_a_wrong_key_fails_without_showing_it(emulator, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update(FLUX2_API_KEY="rf_live_wrong_1234", FLUX2_BASE_URL=emulator.base_url)
    result = flux2("generate", "x", "--out", str(tmp_path / "x.jpg"), env=env)
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr and "rf_live_wrong_1234" not in result.stderr


# -- estimate: a connection's price overrides ----------------------------------------------------


def _without_airflow(tmp_path: Path) -> dict[str, str]:
    """An environment with no Airflow metadata DB: an empty AIRFLOW_HOME, a database that cannot exist."""
    home = tmp_path / "airflow-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    env.update(
        AIRFLOW_HOME=str(home), AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/missing/dir/airflow.db"
    )
    return env


def test_estimate_without_conn_id_needs_no_airflow_at_all(tmp_path):
    env = _without_airflow(tmp_path)
    result = flux2("estimate", "--size", "1920x1080", env=env)
    assert result.returncode == 0, result.stderr
    assert "total: 1 image(s), 2 MP, $0.045" in result.stdout
    assert list(Path(env["AIRFLOW_HOME"]).iterdir()) == []  # Airflow was not even imported


def test_estimate_uses_the_price_overrides_and_model_of_a_connection(tmp_path):
    env = _without_airflow(tmp_path)
    extra = {"model": "flex", "prices": {"pro": {"first_mp": "0.04"}, "flex": "0.06"}}
    env["AIRFLOW_CONN_FLUX2_PRICED"] = json.dumps({"conn_type": "flux2", "password": "rf_test_k1", "extra": extra})
    result = flux2("estimate", "--size", "1920x1080", "--conn-id", "flux2_priced", env=env)
    assert result.returncode == 0, result.stderr
    # the connection's default model (flex) at its price: 2 MP × $0.06
    assert "black-forest-labs/flux-2-flex" in result.stdout and "total: 1 image(s), 2 MP, $0.120" in result.stdout
    assert "connection 'flux2_priced' overrides black-forest-labs/flux-2-pro, black-forest-labs/flux-2-flex" in (
        result.stderr
    )
    pro = flux2("estimate", "--size", "1920x1080", "--model", "pro", "--conn-id", "flux2_priced", env=env)
    assert "$0.055" in pro.stdout  # $0.04 + $0.015
    # --prices still applies, on top of the connection's
    both = flux2("estimate", "--model", "pro", "--conn-id", "flux2_priced", "--prices", '{"pro": "0.05"}', env=env)
    assert "total: 1 image(s), 1 MP, $0.050" in both.stdout
    assert "rf_test_k1" not in result.stdout + result.stderr


def test_estimate_reads_a_connection_stored_in_the_metadata_db(airflow_db):
    from airflow.models import Connection
    from airflow.utils.session import create_session

    conn_id = f"flux2_db_{uuid.uuid4().hex[:8]}"
    extra = json.dumps({"prices": {"pro": {"first_mp": "0.04", "extra_mp": "0.02"}}})
    with create_session() as session:
        session.add(Connection(conn_id=conn_id, conn_type="flux2", password="rf_test_db_key", extra=extra))
    try:
        result = flux2("estimate", "--size", "1920x1080", "--conn-id", conn_id)
        assert result.returncode == 0, result.stderr
        assert "total: 1 image(s), 2 MP, $0.060" in result.stdout  # $0.04 + $0.02
    finally:
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == conn_id).delete()


def test_estimate_with_an_unknown_connection_says_so(tmp_path):
    result = flux2("estimate", "--conn-id", "no_such_flux2", env=_without_airflow(tmp_path))
    assert result.returncode == 1
    assert "connection 'no_such_flux2' is not defined" in result.stderr and "Traceback" not in result.stderr


# -- generate: the output format follows --out -------------------------------------------------


@pytest.mark.parametrize(("name", "pil_format"), [("x.png", "PNG"), ("x.jpg", "JPEG"), ("X.JPEG", "JPEG")])
def test_generate_takes_the_format_from_the_out_suffix(emulator, tmp_path, name, pil_format):
    out = tmp_path / name
    result = flux2("generate", "a lighthouse", "--size", "square", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == pil_format


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--out", "x.png", "--format", "jpeg"], "Invalid --format: 'jpeg' is not allowed; expected 'png' for --out"),
        (["--out", "x.jpg", "--format", "png"], "expected 'jpeg' for --out"),
        (["--out", "x.webp"], "Invalid --out: "),
        (["--out", "x.webp", "--format", "png"], "a file name ending .png, .jpg or .jpeg"),
        (["--out", "x"], "or --format png|jpeg for a name without one"),
    ],
)
def test_generate_refuses_an_out_name_that_contradicts_the_format_before_sending(emulator, tmp_path, args, expected):
    args = [a if not a.startswith("x") else str(tmp_path / a) for a in args]
    result = flux2("generate", "a lighthouse", *args)
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert emulator.ledger()["entries"] == [] and emulator.stats()["runs_created"] == 0


def test_generate_writes_any_name_without_an_image_suffix_in_the_format_asked(emulator, tmp_path):
    out = tmp_path / "image.bin"
    result = flux2("generate", "a lighthouse", "--size", "square", "--format", "png", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG"


def test_estimate_reads_a_connection_uri_as_the_hook_does(tmp_path):
    env = _without_airflow(tmp_path)
    # A URI carries extras as text: the hook decodes ``price_overrides`` JSON text; so does the estimate.
    env["AIRFLOW_CONN_FLUX2_URI"] = "flux2://:rf_test_k2@/?price_overrides=" + quote('{"pro": "0.05"}')
    result = flux2("estimate", "--size", "square_hd", "--conn-id", "flux2_uri", env=env)
    assert result.returncode == 0, result.stderr
    assert "total: 1 image(s), 1 MP, $0.050" in result.stdout
