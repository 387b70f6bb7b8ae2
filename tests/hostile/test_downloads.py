"""Result downloads from a hostile host: URL policy, redirects, caps, deadlines, and images checked
from their header before a pixel is decoded.

The key is never sent to a result host (``img-auth-probe`` serves the image only to a request
without ``Authorization``), and no message names a URL's query (where presigned signatures live).
"""

from __future__ import annotations

import pytest
from conftest import SECRET_KEY

GROUP = "downloads: policy, caps, images"


def fetch(probe, hostile, url, **kwargs):
    return probe.run("download", group=GROUP, base_url=hostile.url("ok"), key=SECRET_KEY, url=url, **kwargs)


@pytest.mark.parametrize("scenario", ["img-ok", "img-auth-probe", "redir-to-ok", "redir-2", "redir-to-auth-probe"])
def test_a_good_image_is_downloaded_through_at_most_three_redirects_without_the_key(probe, hostile, scenario):
    outcome = fetch(probe, hostile, hostile.url(scenario, "/a.png?sig=s3cr3t"))
    outcome.succeeded().bounded(3.0).no_secret()
    assert outcome.value["image"][:3] == [512, 512, "png"]


@pytest.mark.parametrize(
    ("scenario", "text"),
    [
        ("redir-loop", "Too many redirects"),
        ("redir-self-relative", "Too many redirects"),
        ("redir-empty-location", "Too many redirects"),
        ("redir-3", "Too many redirects"),
        ("redir-off-host-http", "plain http is allowed only to loopback"),
        ("redir-metadata", "plain http is allowed only to loopback"),
        ("redir-ftp", "scheme 'ftp'"),
        ("redir-file", "scheme 'file'"),
        ("redir-data", "invalid URL"),
        ("redir-gopher", "scheme 'gopher'"),
        ("redir-userinfo", "credentials"),
        ("redir-no-host", "valid host"),
    ],
)
def test_redirects_are_checked_hop_by_hop(probe, hostile, scenario, text):
    outcome = fetch(probe, hostile, hostile.url(scenario, "/a.png?sig=s3cr3t-sig"))
    outcome.raised("FluxImageError", text).bounded(3.0).no_secret()
    assert "s3cr3t" not in outcome.message and "X-Amz-Signature" not in outcome.message


def test_redirects_can_be_turned_off(probe, hostile):
    outcome = fetch(probe, hostile, hostile.url("redir-to-ok", "/a.png"), extra={"max_redirects": 0})
    outcome.raised("FluxImageError", "Too many redirects (more than 0)").bounded(3.0)


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("http://203.0.113.7/a.png?X-Amz-Signature=abc", "plain http"),
        ("http://example.com/a.png", "plain http"),
        ("ftp://127.0.0.1/a.png", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("https:///a.png", "valid host"),
        ("https://exa mple.com/a.png", "valid host"),
        ("http://user:pw@127.0.0.1:1/a.png", "credentials"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("https://127.0.0.1:99999/a.png", "not a URL"),
        ("data:text/plain,hello", "not base64"),
        ("data:image/png;base64,!!!notbase64", "Undecodable"),
    ],
)
def test_output_urls_outside_the_policy_are_refused_before_connecting(probe, hostile, url, text):
    outcome = fetch(probe, hostile, url)
    outcome.raised("FluxImageError", text).bounded(2.0).no_secret()
    assert "X-Amz-Signature" not in outcome.message and "abc" not in outcome.message.split("?")[-1]


@pytest.mark.parametrize(
    ("scenario", "text", "mib"),
    [
        ("img-gzip-bomb", "download cap", 24),
        ("img-declared-huge", "download cap", 16),
        ("img-huge-stream", "download cap", 24),
        ("img-100mp", "Expected 512x512, got 10000x10000", 16),
        ("img-over-pillow-limit", "Pillow's limit", 16),
        ("img-way-over-limit", "not a readable image", 16),
        ("img-wrong-size", "Expected 512x512, got 640x480", 16),
        ("img-jpeg-for-png", "Expected a PNG image, got JPEG", 16),
        ("img-html", "not a readable image", 16),
        ("img-garbage", "not a readable image", 16),
        ("img-truncated-header", "not a readable image", 16),
        ("img-header-only", "not a readable image", 16),
        ("img-empty", "not a readable image", 16),
    ],
)
def test_bad_images_are_refused_within_the_cap_and_before_decoding(probe, hostile, scenario, text, mib):
    outcome = fetch(probe, hostile, hostile.url(scenario, "/a.png?sig=s3cr3t"))
    outcome.raised("FluxImageError", text).bounded(3.0, mib=mib).no_secret()


@pytest.mark.parametrize("scenario", ["img-drip", "img-stall", "redir-to-drip"])
def test_a_download_has_a_total_deadline(probe, hostile, scenario):
    outcome = fetch(probe, hostile, hostile.url(scenario, "/a.png"))
    outcome.raised("FluxRequestTimeoutError").bounded(2.5).no_secret()


def test_a_download_error_names_no_signature_and_no_key(probe, hostile):
    outcome = fetch(probe, hostile, hostile.url("img-echo-500", "/a.png?X-Amz-Signature=s3cr3t"))
    outcome.raised("FluxServerError", "auth was absent").bounded(2.0).no_secret()
    assert "s3cr3t" not in outcome.everything().replace('s3cr3t\\"', "")  # not even in the logs' URLs
