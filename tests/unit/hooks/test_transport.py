"""hooks/transport.py: every exchange bounded in total time, every body in bytes after decompression."""

from __future__ import annotations

import gzip
import logging
import time

import httpx
import pytest

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.hooks import transport


def response(body: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))


def test_a_deadline_inside_another_never_outlives_it():
    assert transport.remaining() is None
    with transport.deadline(5.0):
        with transport.deadline(60.0):
            left = transport.remaining()
            assert left is not None and 4.0 < left <= 5.0
        with transport.deadline(0.5):
            assert transport.remaining() <= 0.5
    assert transport.remaining() is None


def test_a_body_is_capped_after_decompression():
    bomb = gzip.compress(b"\0" * 5_000_000)
    assert len(bomb) < 10_000
    with pytest.raises(protocol.BodyTooLargeError):
        transport.read_body(response(bomb, **{"content-encoding": "gzip"}), 1_000_000)
    small = gzip.compress(b'{"ok": true}')
    assert transport.read_body(response(small, **{"content-encoding": "gzip"}), 1000) == b'{"ok": true}'


def test_a_declared_length_over_the_cap_is_refused_before_reading():
    with pytest.raises(protocol.BodyTooLargeError, match="2000000 bytes declared"):
        transport.read_body(response(b"x", **{"content-length": "2000000"}), 1000)


def test_reading_past_the_deadline_times_out_between_chunks():
    class Slow(httpx.SyncByteStream):
        def __iter__(self):
            for _ in range(5):
                time.sleep(0.1)
                yield b"x"

    with transport.deadline(0.15), pytest.raises(httpx.ReadTimeout):
        transport.read_body(httpx.Response(200, stream=Slow()), 1000)


def test_a_registered_key_is_redacted_from_httpx_debug_lines(caplog):
    transport.register_secret("rf_secret_key_for_transport_test")
    with caplog.at_level(logging.DEBUG, logger="httpx"):
        logging.getLogger("httpx").debug("headers: Authorization: Bearer rf_secret_key_for_transport_test")
    assert caplog.records and "rf_secret_key_for_transport_test" not in caplog.text
