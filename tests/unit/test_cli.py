"""``cli.py``: ``flux2 estimate`` run in-process — sizes, counts, prompt files, budgets and the errors
that name the row, the field and what is allowed.

The installed ``flux2`` command in a process of its own (the console script, ``generate`` through the
emulator, connections read from Airflow, a machine without Airflow's home) is tested in
``tests/integration/test_cli_command.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

import pytest

from airflow_provider_flux2 import cli


def flux2(*args: str) -> subprocess.CompletedProcess[str]:
    """``flux2 ARGS`` as the console script runs it: its exit code, and what it printed where."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:  # argparse's own refusals
            code = int(exit_.code or 0)
    return subprocess.CompletedProcess(["flux2", *args], code, out.getvalue(), err.getvalue())


def test_estimate_prints_one_line_per_size_and_the_total():
    result = flux2("estimate", "--size", "1920x1080", "--count", "3")
    assert result.returncode == 0, result.stderr
    assert "1920x1080" in result.stdout
    assert "total: 3 image(s), 6 MP, $0.135" in result.stdout


def test_an_unknown_option_is_refused_by_the_parser():
    result = flux2("estimate", "--colour", "red")
    assert result.returncode == 2
    assert "unrecognized arguments: --colour" in result.stderr


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


def test_estimate_refuses_prices_that_are_not_an_object():
    result = flux2("estimate", "--prices", '"0.04"')
    assert result.returncode == 1 and "Invalid --prices" in result.stderr and "JSON object" in result.stderr
