"""The ``flux2`` command: estimate (sizes, counts, prompt files, budgets) and generate (emulator)."""

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


def test_estimate_prices_a_prompt_file_per_row(tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,size,count\na,1920x1080,10\nb,square_hd,\nc,4096x4096,2\n")
    result = flux2("estimate", "--prompts", str(prompts))
    assert result.returncode == 0, result.stderr
    # 10 × $0.045 + 1 × $0.030 + 2 × $0.255
    assert "total: 13 image(s), 53 MP, $0.990" in result.stdout
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "a", "size": "2048x2048", "model": "flex"}\n')
    assert "$0.200" in flux2("estimate", "--prompts", str(jsonl)).stdout


def test_estimate_over_budget_exits_1_with_both_figures():
    result = flux2("estimate", "--size", "4096x4096", "--count", "10", "--budget", "2")
    assert result.returncode == 1
    assert "$2.550" in result.stderr and "$2.000" in result.stderr


def test_estimate_refuses_a_bad_size_naming_the_field():
    result = flux2("estimate", "--size", "5000x10")
    assert result.returncode == 1
    assert "image_size.width" in result.stderr and "64..4096" in result.stderr


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


# -- estimate: per-row sizes and models in prompt files ------------------------------------------


def test_estimate_prices_width_and_height_columns_per_row(tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,width,height,count\na,1920,1080,10\nb,1024,1024,\nc,4096,4096,2\n")
    result = flux2("estimate", "--prompts", str(prompts))
    assert result.returncode == 0, result.stderr
    assert "1920x1080" in result.stdout and "4096x4096" in result.stdout
    assert "total: 13 image(s), 53 MP, $0.990" in result.stdout  # as with a size column
    assert result.stderr == ""


def test_estimate_reads_sizes_and_models_from_jsonl_in_every_form(tmp_path):
    jsonl = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "a", "width": 2048, "height": 2048, "model": "flex"},  # 4 MP × $0.05
        {"prompt": "b", "width": "1920", "height": "1080"},  # $0.045
        {"prompt": "c", "image_size": {"width": 1024, "height": 1024}, "model": "black-forest-labs/flux-2-pro"},
        {"prompt": "d", "size": "square_hd", "count": 2},  # 2 × $0.030
    ]
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    result = flux2("estimate", "--prompts", str(jsonl))
    assert result.returncode == 0, result.stderr
    assert "black-forest-labs/flux-2-flex" in result.stdout
    assert "total: 5 image(s), 9 MP, $0.335" in result.stdout


def test_estimate_matches_column_names_without_case_spaces_or_a_byte_order_mark(tmp_path):
    prompts = tmp_path / "export.csv"
    prompts.write_text("\ufeffWidth, Height ,Model\n1920,1080,flex\n", encoding="utf-8")
    result = flux2("estimate", "--prompts", str(prompts))
    assert result.returncode == 0, result.stderr
    assert "black-forest-labs/flux-2-flex" in result.stdout and "1920x1080" in result.stdout


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("wide.csv", "prompt,width,height\na,1920,1080\nb,5000,1080\n", ["width in wide.csv row 2 (line 3)", "5000"]),
        ("half.csv", "prompt,width,height\na,1920,\n", ["height in half.csv row 1 (line 2)", "width and height"]),
        ("text.csv", "prompt,width,height\na,wide,1080\n", ["width in text.csv row 1 (line 2)", "'wide'"]),
        ("frac.jsonl", '{"width": 1920.5, "height": 1080}\n', ["width in frac.jsonl row 1 (line 1)", "1920.5"]),
        ("bool.jsonl", '{"width": true, "height": 1080}\n', ["width in bool.jsonl row 1 (line 1)", "True"]),
        ("preset.csv", "prompt,size\na,huge\n", ["size in preset.csv row 1 (line 2)", "square_hd", "WIDTHxHEIGHT"]),
        ("tall.csv", "prompt,image_size\na,1920x9000\n", ["image_size.height in tall.csv row 1 (line 2)", "9000"]),
        (
            "clash.csv",
            "prompt,size,width,height\na,1024x768,1920,1080\n",
            ["size / width+height in clash.csv row 1 (line 2)", "must agree"],
        ),
        ("model.jsonl", '\n{"size": "square", "model": "ultra"}\n', ["model in model.jsonl row 1 (line 2)", "flex"]),
        ("count.csv", "prompt,count\na,0\n", ["count in count.csv row 1 (line 2)", "at least 1"]),
        ("cells.csv", "prompt,size\na,square,extra\n", ["cells.csv row 1 (line 2): more cells than the header"]),
        ("json.jsonl", '{"size": "square"}\n{"size": \n', ["json.jsonl row 2 (line 2): not valid JSON"]),
        ("empty.csv", "prompt,size\n", ["no prompt rows to price"]),
    ],
)
def test_estimate_refuses_a_row_it_cannot_price_naming_row_field_and_allowed(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    result = flux2("estimate", "--prompts", str(path))
    assert result.returncode == 1
    assert result.stdout == ""  # no table: never a partial or default-sized price
    for fragment in expected:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_estimate_says_which_rows_took_the_default_size_and_which_columns_it_ignored(tmp_path):
    prompts = tmp_path / "catalogue.csv"
    prompts.write_text("sku,prompt,w,h,size\nA1,a,1920,1080,\nB2,b,1920,1080,square_hd\n")
    result = flux2("estimate", "--prompts", str(prompts), "--size", "1920x1080")
    assert result.returncode == 0, result.stderr
    assert "columns not used for pricing: h, sku, w" in result.stderr
    assert "1 row(s) give no size and are priced at --size 1920x1080: row 1" in result.stderr
    assert "total: 2 image(s), 3 MP, $0.075" in result.stdout


def test_estimate_refuses_a_count_below_one():
    result = flux2("estimate", "--count", "0")
    assert result.returncode == 1 and "--count" in result.stderr and "at least 1" in result.stderr


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


def test_estimate_refuses_prices_that_are_not_an_object():
    result = flux2("estimate", "--prices", '"0.04"')
    assert result.returncode == 1 and "Invalid --prices" in result.stderr and "JSON object" in result.stderr
