"""Pre-flight, connection: every extra, the host and the key are checked when the connection is read.

Each case builds the hook's configuration in a measured child and expects a ``FluxValidationError``
that names the extra and the value (never the key), in well under a second.
"""

from __future__ import annotations

import pytest
from conftest import SECRET_KEY

GROUP = "pre-flight: connection extras"

BAD_EXTRAS = [
    ("timeout", "abc"),
    ("timeout", -1),
    ("timeout", 0),
    ("timeout", "NaN"),
    ("timeout", "inf"),
    ("timeout", True),
    ("timeout", [30]),
    ("timeout", 10**9),
    ("request_deadline", -5),
    ("request_deadline", "soon"),
    ("download_deadline", 0),
    ("download_deadline", {"s": 1}),
    ("max_download_mb", 0),
    ("max_download_mb", "-1"),
    ("max_download_mb", "lots"),
    ("max_download_mb", 10**7),
    ("max_response_mb", 0),
    ("max_response_mb", "x"),
    ("max_attempts", 0),
    ("max_attempts", "x"),
    ("max_attempts", 2.5),
    ("max_attempts", 1000),
    ("max_retries", -1),
    ("retries", "many"),
    ("retry_base_delay", -1),
    ("retry_base_delay", "NaN"),
    ("retry_max_delay", -3),
    ("max_redirects", 11),
    ("max_redirects", "x"),
    ("model", "flux-3-ultra"),
    ("model", 5),
    ("model", ["pro"]),
    ("organization_id", "org\r\nX-Injected: 1"),
    ("organization_id", {"id": 1}),
    ("prices", [0.03]),
    ("prices", "{not json"),
    ("prices", '["pro"]'),
    ("prices", {"flux-9": "0.01"}),
    ("prices", {"pro": "-1"}),
    ("prices", {"pro": "abc"}),
    ("prices", {"pro": {"first": "0.03"}}),
    ("prices", {"pro": "NaN"}),
    ("price_overrides", 7),
]


@pytest.mark.parametrize(("name", "value"), BAD_EXTRAS, ids=[f"{n}={v!r}"[:60] for n, v in BAD_EXTRAS])
def test_bad_extra_is_a_validation_error_naming_it(probe, name, value):
    outcome = probe.run("config", group=GROUP, key=SECRET_KEY, extra={name: value})
    field = {"retries": "max_retries", "price_overrides": "prices"}.get(name, name)
    expected = field
    outcome.raised("FluxValidationError", expected).bounded(2.0).no_secret()


BAD_HOSTS = [
    ("http://api.runflow.io", "plain http"),
    ("http://169.254.169.254", "plain http"),
    ("http://10.0.0.8:8787", "plain http"),
    ("ftp://api.runflow.io", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("https://exa mple.com", "host"),
    ("https://bad_host!.com", "host"),
    ("https://-leading.example.com", "host"),
    ("https://", "host"),
    ("https://api.runflow.io?key=1", "query"),
    ("https://user:pw@api.runflow.io", "credentials"),
    ("https://api.runflow.io:99999", "not a URL"),
    ("https://" + "a" * 64 + ".com", "host"),
]


@pytest.mark.parametrize(("host", "why"), BAD_HOSTS, ids=[h for h, _ in BAD_HOSTS])
def test_base_url_must_be_https_with_a_valid_host_unless_loopback(probe, host, why):
    outcome = probe.run("connection", group=GROUP, host=host, password=SECRET_KEY)
    outcome.raised("FluxValidationError", "host", why).bounded(2.0).no_secret()


@pytest.mark.parametrize("host", ["http://127.0.0.1:8787", "http://localhost:1", "http://[::1]:8787", "api.runflow.io"])
def test_loopback_http_and_bare_https_hosts_are_accepted(probe, host):
    probe.run("connection", group=GROUP, host=host, password=SECRET_KEY).succeeded().bounded(2.0).no_secret()


@pytest.mark.parametrize("port", [0, 70000, "http"])
def test_a_port_out_of_range_is_refused(probe, port):
    outcome = probe.run("connection", group=GROUP, host="api.runflow.io", port=port, password=SECRET_KEY)
    if port == 0:  # Airflow keeps 0 as "no port"? Either way it must not reach the wire as :0
        assert outcome.ok or "port" in outcome.message
    else:
        outcome.raised("FluxValidationError", "port").bounded(2.0)


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("", "(empty)"),
        ("   ", "(empty)"),
        (SECRET_KEY[:8] + "\n" + SECRET_KEY[8:], "(hidden)"),
        ("rf live key", "(hidden)"),
        ("rf_é", "(hidden)"),
    ],
    ids=["empty", "blank", "newline", "space", "non-ascii"],
)
def test_an_unusable_key_is_refused_without_being_shown(probe, key, shown):
    outcome = probe.run("config", group=GROUP, key=key)
    outcome.raised("FluxValidationError", "password", shown).bounded(2.0).no_secret()
    if key.strip():
        outcome.no_secret(key.strip())


def test_extras_that_are_not_a_json_object_are_refused(probe):
    outcome = probe.run("connection", group=GROUP, host="api.runflow.io", password=SECRET_KEY, extra="[1, 2]")
    outcome.raised("FluxValidationError", "extra").bounded(2.0).no_secret()


def test_plain_http_off_loopback_only_with_allow_plain_http_and_only_to_the_apis_own_host(probe, hostile):
    allowed = probe.run(
        "config", group=GROUP, key=SECRET_KEY, base_url="http://flux2-emulator:8787", extra={"allow_plain_http": True}
    )
    allowed.succeeded().bounded(2.0).no_secret()
    refused = probe.run(
        "config", group=GROUP, key=SECRET_KEY, base_url="http://flux2-emulator:8787", extra={"allow_plain_http": "no"}
    )
    refused.raised("FluxValidationError", "allow_plain_http").bounded(2.0)
    # Downloads: plain http to another host stays refused even with the allowance.
    other = probe.run(
        "download",
        group=GROUP,
        base_url=hostile.url("ok"),
        key=SECRET_KEY,
        url="http://203.0.113.9/a.png",
        extra={"allow_plain_http": True},
    )
    other.raised("FluxImageError", "plain http").bounded(2.0)
