"""hooks/connection.py: a flux2 connection read into one checked configuration, before anything is sent."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest

from airflow_provider_flux2 import protocol
from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.hooks.connection import FluxConnectionConfig, base_url_of, connection_extras


def build(extra=None, base_url="https://api.runflow.io", api_key="rf_live_key"):
    return FluxConnectionConfig.build(api_key=api_key, base_url=base_url, extra=extra or {}, conn_id="flux2_default")


def test_an_empty_extra_means_every_default():
    config = build()
    assert config.base_url == "https://api.runflow.io" and config.secrets == ("rf_live_key",)
    assert config.timeout == 30.0 and config.request_deadline == 120.0 and config.download_deadline == 300.0
    assert config.max_task_spend is None and config.max_requests_per_second is None and config.adaptive_rate_limit
    assert not config.allow_plain_http and config.plain_http_hosts == ()


def test_extras_given_as_text_are_read_as_numbers_and_money_exactly():
    config = build({"timeout": "12.5", "max_task_spend_usd": "25.10", "max_requests_per_second": 4})
    assert config.timeout == 12.5 and config.max_task_spend == Decimal("25.10")
    assert config.max_requests_per_second == 4.0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"timeout": "abc"}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"max_redirects": 11}, "max_redirects"),
        ({"max_requests_per_second": -1}, "max_requests_per_second"),
        ({"allow_plain_http": "yes"}, "allow_plain_http"),
        ({"adaptive_rate_limit": "sometimes"}, "adaptive_rate_limit"),
    ],
)
def test_a_wrong_extra_is_named_with_what_is_allowed(extra, field):
    with pytest.raises(FluxValidationError, match=field) as caught:
        build(extra)
    assert "rf_live_key" not in str(caught.value)


def test_plain_http_reaches_loopback_always_and_another_host_only_when_allowed():
    assert build(base_url="http://127.0.0.1:8787").base_url == "http://127.0.0.1:8787"
    with pytest.raises(FluxValidationError, match="allow_plain_http"):
        build(base_url="http://flux2-emulator:8787")
    allowed = build({"allow_plain_http": True}, base_url="http://flux2-emulator:8787")
    assert allowed.plain_http_hosts == ("flux2-emulator",)


def test_the_host_may_be_a_url_or_a_bare_name_with_a_port():
    assert base_url_of(None, None) == protocol.DEFAULT_BASE_URL
    assert base_url_of("api.runflow.io", None) == "https://api.runflow.io"
    assert base_url_of("http://127.0.0.1", 8787) == "http://127.0.0.1:8787"
    with pytest.raises(FluxValidationError, match="port"):
        base_url_of("api.runflow.io", 70000, "flux2_default")


def test_an_extra_that_is_not_a_json_object_names_the_connection():
    assert connection_extras(SimpleNamespace(extra='{"timeout": 5}'), "c") == {"timeout": 5}
    with pytest.raises(FluxValidationError, match="connection 'c' extra"):
        connection_extras(SimpleNamespace(extra="[1, 2]"), "c")
    with pytest.raises(FluxValidationError, match="connection 'c' extra"):
        connection_extras(SimpleNamespace(extra="not json"), "c")
