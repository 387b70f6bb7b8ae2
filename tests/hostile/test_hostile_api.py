"""A hostile API (``hostile_server.py``, not the emulator): bombs, drips, malformed bodies, echoed keys.

Each case runs one hook call (sync or async), a trigger or the CLI in a measured child and asserts
the typed error (or the recovery), a bounded wait, bounded memory and that the key appears
nowhere: not in the message, the traceback, a log record, stdout or stderr.
"""

from __future__ import annotations

import json

import pytest
from cases import FAST
from conftest import SECRET_KEY

BOMBS = "hostile: bombs and caps"
DRIPS = "hostile: drips and stalls"
MALFORMED = "hostile: malformed bodies"
ECHO = "redaction: echoing server"

# -- bombs and caps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "code", "request_id"),
    [
        ("gzip-bomb", "RESPONSE_TOO_LARGE", "req-bomb"),
        ("gzip-bomb-error", "RESPONSE_TOO_LARGE", "req-bomb-500"),
        ("deflate-bomb", "RESPONSE_TOO_LARGE", "req-deflate"),
        ("double-gzip-bomb", "RESPONSE_TOO_LARGE", "req-2gz"),
        ("huge-json", "RESPONSE_TOO_LARGE", "req-huge"),
        ("huge-declared", "RESPONSE_TOO_LARGE", "req-declared"),
        ("brotli", "BAD_ENCODING", "req-br"),
        ("corrupt-gzip", "BAD_ENCODING", "req-cgz"),
    ],
)
@pytest.mark.parametrize("method", ["get_run", "aget_run"])
def test_api_bodies_are_capped_after_decompression(probe, hostile, scenario, code, request_id, method):
    case = "hook_acall" if method.startswith("a") else "hook_call"
    outcome = probe.run(case, group=BOMBS, base_url=hostile.url(scenario), key=SECRET_KEY, method=method, args=["r1"])
    outcome.raised("FluxAPIError", code, request_id).bounded(5.0).no_secret()


def test_a_bomb_answering_a_submission_is_capped_and_not_retried(probe, hostile):
    outcome = probe.run(
        "hook_call",
        group=BOMBS,
        base_url=hostile.url("gzip-bomb"),
        key=SECRET_KEY,
        method="submit",
        args=["a cup"],
        extra={"max_attempts": 3},
    )
    outcome.raised("FluxAPIError", "RESPONSE_TOO_LARGE").bounded(5.0).no_secret()
    assert "retrying" not in outcome.data["output"]


def test_the_response_cap_is_configurable(probe, hostile):
    outcome = probe.run(
        "hook_call",
        group=BOMBS,
        base_url=hostile.url("huge-json"),
        key=SECRET_KEY,
        method="get_run",
        args=["r1"],
        extra={"max_response_mb": 0.25},
    )
    outcome.raised("FluxAPIError", "262144-byte cap").bounded(5.0, mib=16).no_secret()


# -- drips, stalls and broken connections ----------------------------------------------------------


@pytest.mark.parametrize("scenario", ["drip-body", "drip-headers", "drip-chunked"])
@pytest.mark.parametrize("method", ["get_run", "aget_run"])
def test_a_dripping_server_is_cut_off_at_the_request_deadline(probe, hostile, scenario, method):
    case = "hook_acall" if method.startswith("a") else "hook_call"
    # A per-read timeout far above the deadline: on a loaded machine a 50 ms drip can pause for
    # longer than FAST's 0.5 s read timeout, which would cut the call early for another reason.
    outcome = probe.run(
        case,
        group=DRIPS,
        base_url=hostile.url(scenario),
        key=SECRET_KEY,
        method=method,
        args=["r1"],
        extra={"timeout": 30},
    )
    outcome.raised("FluxRequestTimeoutError", "did not answer in time").bounded(2.5).no_secret()
    assert outcome.elapsed >= 0.9  # the deadline (1 s), not an earlier accident


def test_each_attempt_has_its_own_deadline_and_the_total_is_bounded(probe, hostile):
    outcome = probe.run(
        "hook_call",
        group=DRIPS,
        base_url=hostile.url("drip-body"),
        key=SECRET_KEY,
        method="get_run",
        args=["r1"],
        extra={"max_attempts": 2, "request_deadline": 0.5},
    )
    outcome.raised("FluxRequestTimeoutError", "2 attempts").bounded(3.0).no_secret()


@pytest.mark.parametrize("method", ["get_run", "aget_run"])
def test_a_server_that_never_answers_times_out(probe, hostile, method):
    case = "hook_acall" if method.startswith("a") else "hook_call"
    outcome = probe.run(case, group=DRIPS, base_url=hostile.url("stall"), key=SECRET_KEY, method=method, args=["r1"])
    outcome.raised("FluxRequestTimeoutError").bounded(2.0).no_secret()


def test_an_async_poll_never_outlives_the_callers_deadline(probe, hostile):
    outcome = probe.run(
        "hook_acall",
        group=DRIPS,
        base_url=hostile.url("drip-body"),
        key=SECRET_KEY,
        method="aget_run",
        args=["r1"],
        deadline_in=0.5,
        extra={"request_deadline": 30, "timeout": 30, "max_attempts": 5},
    )
    outcome.raised("FluxRequestTimeoutError").bounded(1.5).no_secret()


def test_retry_after_is_not_waited_past_the_callers_deadline(probe, hostile):
    outcome = probe.run(
        "hook_acall",
        group=DRIPS,
        base_url=hostile.url("retry-after-forever"),
        key=SECRET_KEY,
        method="aget_run",
        args=["r1"],
        deadline_in=1.0,
        extra={"max_attempts": 5},
    )
    outcome.raised("FluxRequestTimeoutError", "deadline").bounded(1.5).no_secret()


@pytest.mark.parametrize("scenario", ["drip-body", "stall", "retry-after-forever"])
def test_a_trigger_against_a_stalling_api_ends_at_its_own_deadline(probe, hostile, scenario):
    outcome = probe.run(
        "trigger",
        group=DRIPS,
        base_url=hostile.url(scenario),
        key=SECRET_KEY,
        runs=["r1"],
        timeout=1.5,
        extra={"request_deadline": 60, "timeout": 60, "max_attempts": 5},
    )
    outcome.succeeded().bounded(3.0).no_secret()
    (event,) = outcome.value["events"]
    assert event["status"] in ("timeout", "error")
    # The attached run is still where it was: in the event's job rows, not finished.
    assert "r1" in json.dumps(event["jobs"]) and "succeeded" not in json.dumps(event["jobs"])


@pytest.mark.parametrize("scenario", ["close", "garbage-status", "half-body"])
def test_a_broken_connection_is_a_connection_error(probe, hostile, scenario):
    outcome = probe.run(
        "hook_call", group=DRIPS, base_url=hostile.url(scenario), key=SECRET_KEY, method="get_run", args=["r1"]
    )
    outcome.raised("FluxConnectionError", "Could not reach the FLUX API").bounded(2.0).no_secret()


def test_server_errors_are_retried_a_bounded_number_of_times(probe, hostile):
    outcome = probe.run(
        "hook_call",
        group=DRIPS,
        base_url=hostile.url("always-503"),
        key=SECRET_KEY,
        method="get_run",
        args=["r1"],
        extra={"max_attempts": 3},
    )
    outcome.raised("FluxServerError", "req-503").bounded(2.0).no_secret()
    assert outcome.data["output"].count("retrying in") == 2


def test_the_api_redirecting_elsewhere_is_not_followed(probe, hostile):
    outcome = probe.run(
        "hook_call", group=DRIPS, base_url=hostile.url("redirect-api"), key=SECRET_KEY, method="get_run", args=["r1"]
    )
    outcome.raised("FluxAPIError", "HTTP 302", "req-302").bounded(2.0).no_secret()
    assert "evil.invalid" not in outcome.message


# -- malformed bodies --------------------------------------------------------------------------------

MALFORMED_RUNS = [
    "not-json",
    "json-array",
    "json-null",
    "json-string",
    "json-number",
    "truncated-json",
    "deep-json",
    "bad-utf8",
    "empty-200",
    "run-no-id",
    "cost-negative",
    "cost-nan",
    "cost-inf",
    "cost-text",
    "cost-list",
    "cost-snan",
    "outputs-not-list",
    "outputs-bad-entry",
]


@pytest.mark.parametrize("scenario", MALFORMED_RUNS)
def test_an_unreadable_run_is_a_typed_error_naming_the_request_id(probe, hostile, scenario):
    outcome = probe.run(
        "hook_call", group=MALFORMED, base_url=hostile.url(scenario), key=SECRET_KEY, method="get_run", args=["r1"]
    )
    code = "BAD_COST" if scenario.startswith("cost-") else "BAD_RESPONSE"  # a cost is checked once, by name
    outcome.raised("FluxAPIError", code, f"req-{scenario}").bounded(3.0).no_secret()
    if scenario.startswith("cost-"):
        assert "cost" in outcome.message


@pytest.mark.parametrize("scenario", ["run-bad-status", "run-id-number"])
def test_an_undocumented_status_or_a_numeric_id_is_read_tolerantly(probe, hostile, scenario):
    """Read tolerantly: a status outside the documented set is "not finished" (the run is polled again,
    never a parse error after it was paid for), an id is opaque text."""
    outcome = probe.run(
        "hook_call", group=MALFORMED, base_url=hostile.url(scenario), key=SECRET_KEY, method="get_run", args=["r1"]
    )
    outcome.succeeded().bounded(3.0).no_secret()
    if scenario == "run-bad-status":
        assert outcome.value["status"] == "unknown"
    else:
        assert outcome.value["run"] == "12345"


@pytest.mark.parametrize(
    ("scenario", "method"), [("batch-items-not-list", "get_batch_items"), ("batch-bad", "get_batch")]
)
def test_an_unreadable_batch_is_a_typed_error(probe, hostile, scenario, method):
    outcome = probe.run(
        "hook_call", group=MALFORMED, base_url=hostile.url(scenario), key=SECRET_KEY, method=method, args=["b1"]
    )
    outcome.raised("FluxAPIError", "BAD_RESPONSE", f"req-{scenario}").bounded(3.0).no_secret()


@pytest.mark.parametrize(
    ("scenario", "kind", "text"),
    [
        ("error-no-envelope", "FluxServerError", "Internal Server Error"),
        ("error-400-bad-json", "FluxAPIError", "HTTP 400"),
        ("error-422-garbage-errors", "FluxValidationError", "HTTP 422"),
    ],
)
def test_error_bodies_without_a_proper_envelope_are_still_typed(probe, hostile, scenario, kind, text):
    outcome = probe.run(
        "hook_call", group=MALFORMED, base_url=hostile.url(scenario), key=SECRET_KEY, method="get_run", args=["r1"]
    )
    outcome.raised(kind, text, f"req-{scenario}").bounded(3.0).no_secret()


def test_a_cost_that_is_not_a_number_stops_generate_before_anything_is_downloaded(probe, hostile):
    outcome = probe.run(
        "hook_call", group=MALFORMED, base_url=hostile.url("cost-nan"), key=SECRET_KEY, method="generate", args=["x"]
    )
    outcome.raised("FluxAPIError", "cost", "NaN").bounded(3.0).no_secret()
    assert "/img" not in outcome.data["logs"]


def test_an_odd_nsfw_flag_shape_is_read_as_not_flagged(probe, hostile):
    outcome = probe.run(
        "hook_call", group=MALFORMED, base_url=hostile.url("nsfw-dict"), key=SECRET_KEY, method="get_run", args=["r1"]
    )
    outcome.succeeded().bounded(3.0).no_secret()


# -- an echoing server: the key must be redacted everywhere ---------------------------------------

ECHOES = [
    ("echo-500", "FluxServerError"),
    ("echo-401", "FluxAuthError"),
    ("echo-402", "FluxInsufficientCreditError"),
    ("echo-422", "FluxValidationError"),
    ("echo-text", "FluxServerError"),
    ("echo-header", "FluxNotFoundError"),
    ("echo-escaped", "FluxServerError"),
    ("echo-gzip", "FluxServerError"),
    ("echo-in-badrun", None),  # the echo stands where the status goes: read as an unknown status, redacted
]


@pytest.mark.parametrize(("scenario", "kind"), ECHOES)
@pytest.mark.parametrize("method", ["get_run", "aget_run"])
def test_an_echoed_key_is_redacted_from_errors_and_logs(probe, hostile, scenario, kind, method):
    case = "hook_acall" if method.startswith("a") else "hook_call"
    outcome = probe.run(
        case,
        group=ECHO,
        base_url=hostile.url(scenario),
        key=SECRET_KEY,
        method=method,
        args=["r1"],
        extra={"max_attempts": 2},  # a retry puts the server's text in a warning too
    )
    (outcome.raised(kind) if kind else outcome.succeeded()).bounded(3.0).no_secret()
    assert "***" in outcome.everything()


def test_an_echo_inside_a_failed_run_is_redacted_from_the_run_and_its_error(probe, hostile):
    read = probe.run(
        "hook_call", group=ECHO, base_url=hostile.url("echo-in-run"), key=SECRET_KEY, method="get_run", args=["r1"]
    )
    read.succeeded().bounded(3.0).no_secret()
    generated = probe.run(
        "hook_call",
        group=ECHO,
        base_url=hostile.url("echo-in-run"),
        key=SECRET_KEY,
        method="generate",
        args=["a cup"],
        poll_interval=0.01,
    )
    generated.raised("FluxRunFailedError", "worker saw Bearer ***").bounded(3.0).no_secret()


@pytest.mark.parametrize("method", ["submit", "test_connection", "submit_batch"])
def test_every_hook_entry_point_redacts(probe, hostile, method):
    args = {"submit": ["a cup"], "test_connection": [], "submit_batch": [["a", "b"]]}[method]
    outcome = probe.run(
        "hook_call", group=ECHO, base_url=hostile.url("echo-500"), key=SECRET_KEY, method=method, args=args
    )
    if method == "test_connection":
        outcome.succeeded().bounded(3.0).no_secret()
        assert outcome.value[0] is False and "***" in outcome.value[1]
    else:
        outcome.raised("FluxServerError", "***").bounded(3.0).no_secret()


@pytest.mark.parametrize("scenario", ["echo-500", "echo-401", "echo-422", "echo-in-run"])
def test_a_trigger_event_carries_no_echoed_key(probe, hostile, scenario):
    # "run-hostile" is the id the hostile server answers with, as a real server answers with the id asked for.
    outcome = probe.run(
        "trigger", group=ECHO, base_url=hostile.url(scenario), key=SECRET_KEY, runs=["run-hostile"], timeout=3
    )
    outcome.succeeded().bounded(4.0).no_secret()
    (event,) = outcome.value["events"]
    # An API that only ever answers 500 is waited for until the deadline (a time-out), never past it.
    assert event["status"] in ("error", "success", "timeout")


@pytest.mark.parametrize("scenario", ["echo-401", "echo-in-run"])
def test_the_cli_prints_no_echoed_key_with_the_key_from_the_environment(probe, hostile, scenario, tmp_path):
    outcome = probe.run(
        "run_cli",
        group=ECHO,
        argv=["generate", "a cup", "--out", str(tmp_path / "x.png"), "--timeout", "5"],
        env={"FLUX2_API_KEY": SECRET_KEY, "FLUX2_BASE_URL": hostile.url(scenario)},
    )
    outcome.succeeded().bounded(5.0).no_secret()
    assert outcome.value == {"exit": 1}
    assert "flux2 generate:" in outcome.data["output"] and "Traceback" not in outcome.data["output"]


@pytest.mark.parametrize("scenario", ["echo-500", "echo-text", "echo-422"])
def test_the_cli_prints_no_echoed_key_with_an_airflow_connection(probe, hostile, scenario, tmp_path):
    connection = {"conn_type": "flux2", "host": hostile.url(scenario), "password": SECRET_KEY, "extra": FAST}
    outcome = probe.run(
        "run_cli",
        group=ECHO,
        argv=["generate", "a cup", "--conn-id", "hostile_cli", "--out", str(tmp_path / "x.png")],
        env={"AIRFLOW_CONN_HOSTILE_CLI": json.dumps(connection)},
    )
    outcome.succeeded().bounded(5.0).no_secret()
    assert outcome.value == {"exit": 1}
    assert "***" in outcome.data["output"] and "Traceback" not in outcome.data["output"]


def test_a_connection_missing_on_the_triggerer_fails_at_once(probe):
    outcome = probe.run("trigger_missing_connection", group=ECHO, runs=["r1"])
    outcome.succeeded().bounded(2.0)
    (event,) = outcome.value["events"]
    assert event["status"] == "error" and "flux2_nowhere_to_be_found" in event["message"]
    assert "times in a row" not in event["message"] and "will poll again" not in outcome.data["logs"]


@pytest.mark.parametrize("scenario", ["retry-after-forever", "drip-body", "always-503"])
def test_a_sync_read_never_outlives_the_callers_deadline(probe, hostile, scenario):
    outcome = probe.run(
        "hook_call",
        group=DRIPS,
        base_url=hostile.url(scenario),
        key=SECRET_KEY,
        method="get_run",
        args=["r1"],
        deadline_in=1.0,
        extra={"request_deadline": 30, "timeout": 30, "max_attempts": 10, "retry_base_delay": 0.3},
    )
    outcome.raised("FluxRequestTimeoutError").bounded(1.6).no_secret()


def test_hook_wait_on_a_hung_api_ends_near_its_timeout(probe, hostile):
    outcome = probe.run(
        "hook_call",
        group=DRIPS,
        base_url=hostile.url("drip-body"),
        key=SECRET_KEY,
        method="wait",
        args=["r1"],
        timeout=0.5,
        extra={"request_deadline": 0.5, "timeout": 30, "max_attempts": 10, "retry_base_delay": 0.3},
    )
    outcome.raised("FluxTimeoutError").bounded(2.5).no_secret()
