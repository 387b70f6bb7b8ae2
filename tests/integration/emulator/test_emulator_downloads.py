"""Output images: exact size and format, deterministic, distinct per prompt, presigned and expiring."""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import imagehash
import pytest
from PIL import Image

from airflow_provider_flux2.models import PRESETS

FORMATS = {"jpeg": "JPEG", "png": "PNG"}


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("output_format", ["jpeg", "png"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_downloads_at_its_exact_size_and_format(api, preset, output_format):
    run = api.run(f"a {preset} picture", image_size=preset, output_format=output_format, seed=1)
    response = api.download(run)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"image/{output_format}"
    assert int(response.headers["content-length"]) == len(response.content)
    image = _image(response.content)
    assert image.size == PRESETS[preset]
    assert image.format == FORMATS[output_format]
    described = run["output"]["outputs"][0]
    assert (described["width"], described["height"]) == PRESETS[preset]


@pytest.mark.parametrize(
    ("width", "height", "output_format"),
    [(1920, 1080, "jpeg"), (333, 517, "png"), (64, 64, "jpeg"), (4096, 4096, "jpeg"), (4096, 64, "png")],
)
def test_custom_sizes_download_exactly(api, width, height, output_format):
    run = api.run("a custom size", image_size={"width": width, "height": height}, output_format=output_format)
    image = _image(api.download(run).content)
    assert image.size == (width, height)
    assert image.format == FORMATS[output_format]


def test_same_prompt_and_seed_give_identical_bytes(api):
    first = api.download(api.run("a teapot on a windowsill", seed=11)).content
    second = api.download(api.run("a teapot on a windowsill", seed=11)).content
    assert first == second


def test_different_prompts_are_far_apart_perceptually(api):
    prompts = ["a teapot on a windowsill", "a teapot on a windowsill at night", "a city street in the rain"]
    hashes = [imagehash.phash(_image(api.download(api.run(p, seed=11)).content)) for p in prompts]
    distances = [hashes[i] - hashes[j] for i in range(3) for j in range(i + 1, 3)]
    assert min(distances) > 16, distances


def test_every_poll_mints_a_fresh_url(api):
    run = api.run("fresh urls")
    again = api.get_run(run["id"])
    first, second = run["output"]["outputs"][0]["url"], again["output"]["outputs"][0]["url"]
    assert first != second
    assert api.download(run).content == api.download(again).content


def test_expired_url_is_403_and_a_fresh_one_works(api):
    api.emulator.configure(url_ttl=0.6)
    run = api.run("short-lived url")
    time.sleep(0.7)
    expired = api.download(run)
    assert expired.status_code == 403
    assert expired.json()["code"] == "URL_EXPIRED"
    assert expired.headers["x-request-id"].startswith("req_")
    fresh = api.download(api.get_run(run["id"]))
    assert fresh.status_code == 200
    assert _image(fresh.content).size == (1024, 768)


def test_expiry_is_in_the_url_and_signed(api):
    api.emulator.configure(url_ttl=60)
    run = api.run("tamper")
    url = run["output"]["outputs"][0]["url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert float(query["expires"]) == pytest.approx(time.time() + 60, abs=5)
    query["expires"] = str(float(query["expires"]) + 3600)
    tampered = httpx.get(parts._replace(query=urlencode(query)).geturl(), trust_env=False)
    assert tampered.status_code == 403
    assert tampered.json()["code"] == "PERMISSION_DENIED"
    unsigned = httpx.get(parts._replace(query="").geturl(), trust_env=False)
    assert unsigned.status_code == 403


def test_sync_mode_returns_a_data_uri(api):
    run = api.run("inline please", sync_mode=True, output_format="png", image_size="square")
    url = run["output"]["outputs"][0]["url"]
    assert url.startswith("data:image/png;base64,")
    image = _image(base64.b64decode(url.split(",", 1)[1]))
    assert image.size == (512, 512) and image.format == "PNG"
    assert api.emulator.stats()["requests"].get("download", 0) == 0


def _is_black(data: bytes) -> bool:
    return all(high <= 3 for _, high in _image(data).convert("RGB").getextrema())


def test_moderated_prompt_with_checker_on_succeeds_flagged_and_black(api):
    run = api.run("a beach scene NSFW_TEST", enable_safety_checker=True)
    assert run["status_code"] == "succeeded"
    assert run["output"]["has_nsfw_concepts"] == [True]
    assert _is_black(api.download(run).content)


def test_moderated_prompt_with_checker_off_fails_and_is_not_billed(api):
    run = api.run("a beach scene nsfw_test", enable_safety_checker=False)
    assert run["status_code"] == "failed"
    assert run["failure_code"] == "CONTENT_MODERATED"
    assert run["failure_stage_code"] == "OUTPUT_MODERATION"
    assert run["failure_message"]
    assert run["cost"] == "0"
    assert run["output"] is None
    assert api.emulator.ledger()["entries"] == []


def test_moderation_mode_fail_and_a_custom_marker(api):
    api.emulator.configure(moderation_mode="fail", moderation_marker="FORBIDDEN")
    assert api.run("NSFW_TEST is just text now")["status_code"] == "succeeded"
    run = api.run("something FORBIDDEN", enable_safety_checker=True)
    assert run["status_code"] == "failed"
    assert run["failure_code"] == "CONTENT_MODERATED"


def test_output_of_an_unfinished_run_is_not_served(api):
    api.emulator.configure(latency={"queued": 5, "dispatching": 0, "running": 0})
    run_id = api.create_run("slow").json()["id"]
    assert api.get_run(run_id)["output"] is None
    forged = httpx.get(f"{api.emulator.base_url}/_files/{run_id}/output-0.jpg?expires=1&sig=00", trust_env=False)
    assert forged.status_code == 403


def test_prerender_puts_the_images_runs_will_ask_for_in_the_cache(api):
    from airflow_provider_flux2.emulator import images

    spec = {"prompt": "a prerendered desk lamp", "seed": 7, "width": 640, "height": 480, "output_format": "png"}
    key = images.ImageSpec("a prerendered desk lamp", 7, 640, 480, "png")
    assert images._cache.get(key) is None
    before = images.cache_status()["cache_max_bytes"]
    try:
        answer = api.emulator.prerender([spec], cache_mb=300)
        assert answer["rendered"] == 1 and answer["cache_max_bytes"] == 300 * 1024 * 1024
        cached = images._cache.get(key)
        assert cached is not None and answer["cache_bytes"] >= len(cached)
        run = api.run("a prerendered desk lamp", image_size={"width": 640, "height": 480}, output_format="png", seed=7)
        assert api.download(run).content == cached  # the download is the pre-rendered image
    finally:
        images.resize_cache(before)


@pytest.mark.parametrize(
    "body",
    [
        {"images": [{"prompt": "p", "seed": 1, "width": 10, "height": 480}]},
        {"images": [{"prompt": "p", "seed": 1, "width": 640, "height": 480, "output_format": "gif"}]},
        {"images": ["p"]},
        {"images": [], "cache_mb": 0},
    ],
)
def test_prerender_refuses_what_it_cannot_render(api, body):
    response = api.client.post("/_emulator/prerender", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "VALIDATION_ERROR"
