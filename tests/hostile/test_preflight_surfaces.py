"""Pre-flight on every surface: operator arguments, hook calls and CLI flags are refused with a
``FluxValidationError`` (or a budget error) naming the field and the value, and the emulator
receives no create request — nothing is submitted, nothing billed.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from airflow.sdk import DAG
from conftest import record_figure

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

EMULATOR_KEY = "rf_test_emulator_key_5f2c9a"  # tests/conftest.py's session emulator
OPERATOR = "pre-flight: operator arguments"
HOOK = "pre-flight: hook calls"
CLI = "pre-flight: CLI flags"

# -- operators -------------------------------------------------------------------------------------

GENERATE_ARGUMENTS = [
    ("max_in_flight", "8"),
    ("max_in_flight", 0),
    ("max_in_flight", -1),
    ("max_in_flight", 2.5),
    ("max_in_flight", True),
    ("max_in_flight", 10**6),
    ("batch_size", 0),
    ("batch_size", 101),
    ("batch_size", "5"),
    ("timeout", -1),
    ("timeout", 0),
    ("timeout", "60"),
    ("timeout", float("nan")),
    ("timeout", float("inf")),
    ("poll_interval", 0),
    ("poll_interval", -1),
    ("poll_interval", "2"),
    ("progress_interval", -1),
    ("resubmit_failed", -1),
    ("resubmit_failed", "2"),
    ("output_uri", "ftp://host/images"),
    ("output_uri", "relative/images"),
    ("output_uri", "./images"),
    ("output_uri", "s3://"),
    ("output_uri", "s3:///prefix"),
    ("output_uri", "s3://Bad_Bucket!/x"),
    ("output_uri", "file://relative/dir"),
    ("output_uri", ""),
    ("output_uri", "gs://bucket/x"),
    ("output_uri", "C:images"),
    ("image_urls", ["http://"]),
    ("image_urls", ["https://"]),
    ("image_urls", "http://example.com/a.png"),
    ("image_urls", ["ftp://example.com/a.png"]),
    ("image_urls", ["http:///path.png"]),
    ("image_urls", [5]),
    ("image_urls", ["https://exa mple.com/a.png"]),
    ("budget_usd", "abc"),
    ("budget_usd", "-1"),
    ("budget_usd", "NaN"),
    ("on_moderation", "explode"),
    ("on_run_failure", "retry"),
    ("on_failure", "retry"),
]


@pytest.mark.parametrize(("name", "value"), GENERATE_ARGUMENTS, ids=[f"{n}={v!r}"[:50] for n, v in GENERATE_ARGUMENTS])
def test_generate_operator_refuses_a_bad_argument_when_constructed(probe, nothing_created, name, value):
    outcome = probe.run("operator", group=OPERATOR, kind="generate", prompt="a cup", **{name: value})
    field = "budget_usd" if name == "budget_usd" else name
    outcome.raised("FluxValidationError", field).bounded(2.0)


@pytest.mark.parametrize(
    ("kind", "arguments", "field"),
    [
        ("quality", {"records": [], "output_uri": "ftp://x/y"}, "output_uri"),
        ("quality", {"records": [], "output_uri": "relative"}, "output_uri"),
        ("quality", {"records": [], "poll_interval": -1}, "poll_interval"),
        ("quality", {"records": [], "max_regenerations": -1}, "max_regenerations"),
        ("quality", {"records": [], "timeout": 0}, "timeout"),
        ("quality", {"records": [], "budget_usd": "free"}, "budget_usd"),
        ("publish", {"records": [], "destination_uri": "relative/out"}, "destination_uri"),
        ("publish", {"records": [], "destination_uri": "s3://"}, "destination_uri"),
        ("publish", {"records": [], "output_uri": "sftp://host/x"}, "destination_uri"),
    ],
)
def test_quality_and_publish_operators_refuse_bad_arguments(probe, nothing_created, kind, arguments, field):
    outcome = probe.run("operator", group=OPERATOR, kind=kind, **arguments)
    outcome.raised("FluxValidationError", field).bounded(2.0)


@pytest.mark.parametrize(
    "arguments",
    [
        {"output_uri": "{{ params.out }}"},
        {"image_urls": ["{{ params.ref }}"]},
        {"budget_usd": "{{ params.budget }}"},
        {"output_uri": "s3://bucket/prefix"},
        {"output_uri": "/abs/path"},
        {"output_uri": "file:///abs/path"},
        {"max_in_flight": 32, "timeout": 60.5, "poll_interval": 0.5},
    ],
)
def test_templated_and_valid_arguments_are_accepted_at_construction(probe, arguments):
    probe.run("operator", group=OPERATOR, kind="generate", prompt="a cup", **arguments).succeeded().bounded(2.0)


def _dag(name: str, output: str, **kwargs) -> DAG:
    with DAG(f"hostile_{name}_{time.monotonic_ns()}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        FluxGenerateImageOperator(
            task_id="generate", prompt="a cup", output_uri=output, poll_interval=0.02, progress_interval=0, **kwargs
        )
    return dag


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("relative", {"out": "relative/images", "ref": "https://example.com/a.png", "budget": "5"}),
        ("ftp", {"out": "ftp://host/images", "ref": "https://example.com/a.png", "budget": "5"}),
        ("no_host", {"out": "/tmp/flux2-hostile-unused", "ref": "http://", "budget": "5"}),
        ("budget", {"out": "/tmp/flux2-hostile-unused", "ref": "https://example.com/a.png", "budget": "-3"}),
    ],
)
def test_templated_arguments_are_checked_once_rendered_in_dag_test(nothing_created, run_dag, task_states, name, params):
    dag = _dag(
        name,
        "{{ params.out }}",
        image_urls=["{{ params.ref }}"],
        budget_usd="{{ params.budget }}",
        params=params,
        retries=0,
    )
    started = time.monotonic()
    dag_run = run_dag(dag)
    elapsed = time.monotonic() - started
    record_figure(OPERATOR, f"dag.test {name}", elapsed, 0.0)
    assert task_states(dag_run) == {"generate": "failed"}
    assert elapsed < 30


# -- hook ------------------------------------------------------------------------------------------

HOOK_CALLS = [
    ("submit", ["a cup"], {"image_size": "huge"}, "image_size"),
    ("submit", ["a cup"], {"image_size": {"width": 10, "height": 10}}, "image_size"),
    ("submit", [""], {}, "prompt"),
    ("submit", ["a cup"], {"seed": -1}, "seed"),
    ("submit", ["a cup"], {"seed": "abc"}, "seed"),
    ("submit", ["a cup"], {"output_format": "gif"}, "output_format"),
    ("submit", ["a cup"], {"safety_tolerance": 9}, "safety_tolerance"),
    ("submit", ["a cup"], {"image_urls": ["http://"]}, "image_urls"),
    ("submit", ["a cup"], {"image_urls": ["https://"]}, "image_urls"),
    ("submit", ["a cup"], {"image_urls": ["ftp://example.com/a.png"]}, "image_urls"),
    ("submit", ["a cup"], {"model": "flux-9"}, "model"),
    ("submit", ["a cup"], {"guidance_scale": 3.0}, "guidance_scale"),
    ("submit", ["a cup"], {"colors": ["#GGGGGG"]}, "colors"),
    ("generate", ["a cup"], {"budget_usd": "abc"}, "budget_usd"),
    ("submit_batch", [[]], {}, "entries"),
    ("submit_batch", [["a cup"] * 101], {}, "batch"),
]


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "field"), HOOK_CALLS, ids=[f"{m}-{f}-{i}" for i, (m, _, _, f) in enumerate(HOOK_CALLS)]
)
def test_hook_refuses_bad_input_before_sending(probe, nothing_created, method, args, kwargs, field):
    outcome = probe.run(
        "hook_call",
        group=HOOK,
        base_url=nothing_created.base_url,
        key=EMULATOR_KEY,
        method=method,
        args=args,
        **kwargs,
    )
    outcome.raised("FluxValidationError", field).bounded(3.0).no_secret(EMULATOR_KEY)


def test_hook_generate_over_budget_submits_nothing(probe, nothing_created):
    outcome = probe.run(
        "hook_call",
        group=HOOK,
        base_url=nothing_created.base_url,
        key=EMULATOR_KEY,
        method="generate",
        args=["a cup"],
        budget_usd="0.001",
    )
    outcome.raised("BudgetExceededError", "0.030", "0.001", "nothing was submitted").bounded(3.0)


# -- CLI -------------------------------------------------------------------------------------------

CLI_CASES = [
    (["generate", "{not json", "--out", "x.png"], "prompt"),
    (["generate", "a cup", "--seed", "abc"], "--seed"),
    (["generate", "a cup", "--seed", "-1"], "--seed"),
    (["generate", "a cup", "--seed", "99999999999"], "--seed"),
    (["generate", "a cup", "--timeout", "-5"], "--timeout"),
    (["generate", "a cup", "--timeout", "nan"], "--timeout"),
    (["generate", "a cup", "--timeout", "soon"], "--timeout"),
    (["generate", "a cup", "--size", "99999x1"], "image_size"),
    (["generate", "a cup", "--size", "huge"], "image_size"),
    (["generate", "a cup", "--out", "x.gif"], "--out"),
    (["generate", "a cup", "--format", "png", "--out", "x.jpg"], "--format"),
    (["generate", "a cup", "--budget", "abc"], "budget"),
    (["generate", "a cup", "--budget", "-1"], "budget"),
    (["generate", "a cup", "--budget", "0.001"], "budget"),
    (["generate", "a cup", "--model", "flux-9"], "model"),
    (["estimate", "--prices", "{bad"], "--prices"),
    (["estimate", "--prices", "[1]"], "--prices"),
    (["estimate", "--prices", '{"pro": "-1"}'], "--prices"),
    (["estimate", "--prices", '{"flux-9": 1}'], "--prices"),
    (["estimate", "--budget", "abc"], "budget"),
    (["estimate", "--size", "1x1"], "size"),
    (["estimate", "--count", "0"], "--count"),
    (["estimate", "--count", "many"], "--count"),
    (["emulator", "--port", "99999"], "--port"),
    (["emulator", "--port", "abc"], "--port"),
    (["emulator", "--time-scale", "0"], "--time-scale"),
    (["emulator", "--url-ttl", "-1"], "--url-ttl"),
]


@pytest.mark.parametrize(("argv", "field"), CLI_CASES, ids=[" ".join(a)[:50] for a, _ in CLI_CASES])
def test_cli_refuses_a_bad_flag_before_sending(probe, nothing_created, tmp_path, argv, field):
    argv = [str(tmp_path / a) if a.endswith((".png", ".jpg", ".gif")) else a for a in argv]
    env = {"FLUX2_API_KEY": EMULATOR_KEY, "FLUX2_BASE_URL": nothing_created.base_url}
    outcome = probe.run("run_cli", group=CLI, argv=argv, env=env)
    outcome.succeeded().bounded(3.0).no_secret(EMULATOR_KEY)
    assert outcome.value == {"exit": 1}, outcome.data["output"]
    assert field in outcome.data["output"] and "Traceback" not in outcome.data["output"]
    assert not list(Path(tmp_path).iterdir())


@pytest.mark.parametrize(
    ("base_url", "text"),
    [("http://example.com", "plain http"), ("ftp://127.0.0.1:1", "scheme"), ("https://bad host", "host")],
)
def test_cli_refuses_an_api_url_outside_the_policy(probe, nothing_created, base_url, text):
    env = {"FLUX2_API_KEY": EMULATOR_KEY, "FLUX2_BASE_URL": base_url}
    outcome = probe.run("run_cli", group=CLI, argv=["generate", "a cup"], env=env)
    outcome.succeeded().bounded(3.0).no_secret(EMULATOR_KEY)
    assert outcome.value == {"exit": 1} and text in outcome.data["output"]


def test_cli_connection_with_bad_extras_is_refused(probe, nothing_created):
    connection = {
        "conn_type": "flux2",
        "host": nothing_created.base_url,
        "password": EMULATOR_KEY,
        "extra": {"timeout": "abc"},
    }
    outcome = probe.run(
        "run_cli",
        group=CLI,
        argv=["generate", "a cup", "--conn-id", "bad_extras"],
        env={"AIRFLOW_CONN_BAD_EXTRAS": json.dumps(connection)},
    )
    outcome.succeeded().bounded(3.0).no_secret(EMULATOR_KEY)
    assert outcome.value == {"exit": 1} and "timeout" in outcome.data["output"]
