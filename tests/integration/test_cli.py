"""The ``flux2`` command: estimate (sizes, counts, prompt files, budgets) and generate (emulator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
