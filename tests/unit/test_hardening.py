"""The sans-I/O pieces of the hardening: redaction, URL policy, bounded decompression, reported costs."""

from __future__ import annotations

import gzip
import json
import zlib
from decimal import Decimal

import pytest

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import FluxAPIError, FluxServerError, FluxValidationError

KEY = "rf_live_unit_0123456789"


def test_redact_replaces_the_key_and_its_bearer_form_everywhere_in_nested_data():
    data = {"message": f"Bearer {KEY}", KEY: [f"x{KEY}y", ("a", KEY)], "n": 5}
    assert protocol.redact(data, [KEY]) == {
        "message": "Bearer ***",
        "***": ["x***y", ("a", "***")],
        "n": 5,
    }
    assert protocol.redact(f"k={KEY}".encode(), [KEY]) == b"k=***"
    assert protocol.redact("nothing here", [KEY]) == "nothing here"
    assert protocol.redact("any", []) == "any"


def test_an_error_body_that_spells_the_key_with_json_escapes_is_redacted_once_parsed():
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    body = ('{"code": "INTERNAL", "message": "saw ' + escaped + '"}').encode()
    error = protocol.error_from_response(500, {"X-Request-Id": KEY}, body, secrets=[KEY])
    assert isinstance(error, FluxServerError)
    assert KEY not in str(error) and "saw ***" in str(error) and error.request_id == "***"


def test_a_422_echo_is_redacted_in_every_detail():
    errors = [{"loc": ["input", "prompt"], "msg": KEY, "input": KEY}]
    body = json.dumps({"code": "VALIDATION_ERROR", "message": KEY, "errors": errors})
    error = protocol.error_from_response(422, {}, body.encode(), secrets=[KEY])
    assert isinstance(error, FluxValidationError)
    assert KEY not in repr(error.details) and KEY not in str(error) and KEY not in str(error.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://api.runflow.io/v1", None),
        ("http://127.0.0.1:8787", None),
        ("http://localhost:1/x", None),
        ("http://[::1]:2/x", None),
        ("http://api.runflow.io", "plain http"),
        ("http://127.0.0.1.example.com", "plain http"),
        ("ftp://127.0.0.1", "scheme"),
        ("https://", "valid host"),
        ("https://a_b.example", None),
        ("https://user@example.com", "credentials"),
        ("https://example.com:70000", "not a URL"),
    ],
)
def test_download_url_policy(url, problem):
    found = protocol.download_url_problem(url)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_url_for_humans_drops_query_fragment_and_credentials():
    assert (
        protocol.url_for_humans("https://u:p@h.example:8443/a/b.png?X-Amz-Signature=s#f")
        == "https://h.example:8443/a/b.png"
    )


def _feed_in_pieces(body: protocol.CappedBody, data: bytes, size: int) -> bytes:
    for start in range(0, len(data), size):
        body.feed(data[start : start + size])
    return body.finish()


@pytest.mark.parametrize("piece", [1, 7, 4096])
@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda d: zlib.compress(d)[2:-4]),  # raw deflate, as some servers send it
        ("gzip, gzip", lambda d: gzip.compress(gzip.compress(d))),
        ("identity", lambda d: d),
        (None, lambda d: d),
    ],
)
def test_capped_body_decodes_whatever_the_chunking(encoding, encode, piece):
    data = b'{"id": "r1", "pad": "' + b"x" * 20000 + b'"}'
    assert _feed_in_pieces(protocol.CappedBody(encoding, 1 << 20), encode(data), piece) == data


def test_capped_body_stops_a_bomb_at_the_cap():
    bomb = gzip.compress(b"\0" * (64 << 20))
    body = protocol.CappedBody("gzip", 1 << 20)
    with pytest.raises(protocol.BodyTooLargeError):
        _feed_in_pieces(body, bomb, 65536)
    assert body.size <= (1 << 20) + 65536


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress"])
def test_capped_body_refuses_encodings_it_did_not_ask_for(encoding):
    with pytest.raises(protocol.BodyDecodingError, match=encoding):
        protocol.CappedBody(encoding, 100)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.045", Decimal("0.045")), ("0", Decimal("0")), (None, None), ("", None), (0.03, Decimal("0.03"))],
)
def test_reported_cost_reads_decimals(value, expected):
    run = protocol.parse_run({"id": "r1", "status_code": "succeeded", "cost": value})
    assert run.cost == expected


@pytest.mark.parametrize("value", ["-1", "NaN", "sNaN", "Infinity", "-0.01", "lots", [1], {"usd": 1}, True])
def test_reported_cost_refuses_what_is_not_a_non_negative_number(value):
    with pytest.raises(FluxAPIError, match=r"BAD_COST.*r1") as caught:
        protocol.parse_run({"id": "r1", "status_code": "succeeded", "cost": value, "request_id": "req-1"})
    assert caught.value.request_id == "req-1" and caught.value.run_id == "r1"


def test_a_2xx_body_that_is_not_an_object_names_the_request_id():
    with pytest.raises(FluxAPIError, match="req-7"):
        protocol.check_response(200, {"X-Request-Id": "req-7"}, b"<html>", run_id="r1")
    with pytest.raises(FluxAPIError, match="req-8"):
        protocol.check_response(200, {"X-Request-Id": "req-8"}, b"[1]", list_ok=False)
    assert protocol.check_response(200, {}, b"[1]", list_ok=True) == [1]
