"""``doctor.py``: the report's verdict and wording, and how long an output URL stays valid.

The checks themselves, against the emulator and against a proxy that deviates from it, are tested
over real sockets in ``tests/integration/test_doctor_over_sockets.py``.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate

import pytest

from airflow_provider_flux2.doctor import Check, DoctorReport, format_report, url_ttl


def _report(*checks: Check, **fields) -> DoctorReport:
    return DoctorReport(
        base_url="https://api.runflow.io",
        model="black-forest-labs/flux-2-pro",
        max_spend_usd="0.20",
        started_at="2026-12-07T06:00:00Z",
        checks=list(checks),
        **fields,
    )


def test_a_check_line_names_the_request_id_and_the_cost():
    check = Check("cost", "FAIL", "$0.030", "$0.045", request_id="req_81f", cost_usd="0.045")
    assert check.line() == "FAIL cost             expected $0.030; seen $0.045 [request id req_81f] (cost $0.045)"
    assert Check("auth", "PASS", "401", "401").line() == "PASS auth             expected 401; seen 401"


def test_the_report_fails_on_a_failed_check_and_not_on_a_warning():
    warned = _report(Check("retry-after", "WARN", "Retry-After", "none"), Check("auth", "PASS", "401", "401"))
    assert warned.passed and warned.deviations == []
    failed = _report(Check("auth", "PASS", "401", "401"), Check("cost", "FAIL", "$0.030", "$0.045"))
    assert not failed.passed
    assert [c.name for c in failed.deviations] == ["cost"]


def test_the_json_report_carries_the_verdict_and_round_trips():
    report = _report(Check("cost", "FAIL", "$0.030", "$0.045", cost_usd="0.045"), spent_usd="0.045")
    body = json.loads(json.dumps(report.to_dict()))
    assert body["passed"] is False and body["deviations"] == ["cost"]
    assert body["checks"][0]["cost_usd"] == "0.045" and body["spent_usd"] == "0.045"


def test_the_closing_lines_say_the_spend_what_was_skipped_and_where_references_go():
    report = _report(
        Check("cost", "FAIL", "$0.030", "$0.045"),
        spent_usd="0.075",
        committed_usd="0.090",
        skipped=["batch"],
        edit_models={"pro": "black-forest-labs/flux-2-pro/edit"},
        sentinel_price_usd="0.002",
    )
    lines = format_report(report).splitlines()
    assert lines[0] == "spent $0.075 as the API reports it (at most $0.090 committed, --max-spend $0.20)"
    assert lines[1] == "skipped under --max-spend: batch"
    assert '"pro": "black-forest-labs/flux-2-pro/edit"' in lines[2]
    assert lines[3] == "Sentinel: $0.002 per evaluation (job class standard)"
    assert lines[-1] == "1 deviation(s): cost"
    assert format_report(_report()).splitlines()[-1] == "all checks passed"


# -- how long an output URL stays valid ---------------------------------------------------------------------


def _stamp(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


@pytest.mark.parametrize(
    ("url", "headers", "low", "high"),
    [
        ("https://b.s3.amazonaws.com/k?X-Amz-Date=20990101T000000Z&X-Amz-Expires=600", {}, 1e9, None),
        ("https://cdn.example/k?Expires=1", {}, None, 0),
        ("https://x/k", {"Cache-Control": "private, max-age=300"}, 299, 301),
        ("https://x/k", {}, None, None),
    ],
)
def test_url_ttl_reads_presigning_parameters_and_headers(url, headers, low, high):
    ttl, _source = url_ttl(url, headers)
    if low is None and high is None:
        assert ttl is None
    if low is not None:
        assert ttl is not None and ttl >= low
    if high is not None:
        assert ttl is not None and ttl <= high


def test_url_ttl_counts_from_the_signing_time_of_s3_and_gcs_urls():
    signed = _stamp(time.time() - 600)
    s3, where = url_ttl(f"https://b.s3.amazonaws.com/k?X-Amz-Date={signed}&X-Amz-Expires=3600", {})
    assert where == "URL x-amz-expires" and 2990 <= s3 <= 3001
    gcs, where = url_ttl(f"https://storage.googleapis.com/b/k?X-Goog-Date={signed}&X-Goog-Expires=900", {})
    assert where == "URL x-goog-expires" and 290 <= gcs <= 301


def test_url_ttl_reads_an_azure_expiry_time_and_an_expires_header():
    later = time.time() + 7200
    azure, where = url_ttl(
        f"https://a.blob.core.windows.net/c/k?se={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(later))}", {}
    )
    assert where == "URL se=" and 7190 <= azure <= 7201
    header, where = url_ttl("https://x/k", {"Expires": formatdate(later, usegmt=True)})
    assert where == "Expires header" and 7190 <= header <= 7201


def test_url_ttl_ignores_a_signing_date_it_cannot_read():
    assert url_ttl("https://b/k?X-Amz-Date=yesterday&X-Amz-Expires=600", {"Expires": "not a date"}) == (None, "")
