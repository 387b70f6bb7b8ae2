"""The emulator enforces Runflow's documented limits when asked (off by default): a request rate per API key
(429 RATE_LIMITED, no headers) and a per-model concurrency cap (the rest wait in ``queued``)."""

from __future__ import annotations

import httpx

from airflow_provider_flux2.emulator import Emulator

KEY = "rf_test_limits"
BODY = {"input": {"prompt": "a cup", "image_size": "square"}}


def test_the_request_rate_per_key_answers_429_without_headers_past_its_burst():
    with Emulator(api_key=KEY, rate_limit_rps=2, rate_limit_burst=3, credit_usd="5") as emu:
        with httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            answers = [client.get("/v1/billing/balance") for _ in range(6)]
        codes = [a.status_code for a in answers]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        limited = next(a for a in answers if a.status_code == 429)
        assert limited.json()["code"] == "RATE_LIMITED"
        assert "retry-after" not in limited.headers and not any(h.startswith("x-ratelimit") for h in limited.headers)
        assert emu.stats()["rate_limited"] >= 1


def test_the_rate_limit_scales_with_the_time_scale():
    import time

    def limited(time_scale: float) -> int:
        # 2 a second of the emulator's time; 20 requests 10 ms apart (100 a real second).
        with Emulator(api_key=KEY, rate_limit_rps=2, rate_limit_burst=3, time_scale=time_scale, credit_usd="5") as emu:
            with httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
                codes = []
                for _ in range(20):
                    codes.append(client.get("/v1/billing/balance").status_code)
                    time.sleep(0.01)
            return codes.count(429)

    assert limited(1.0) >= 15  # 2 a real second
    assert limited(0.01) == 0  # a compressed night: 200 a real second


def test_runs_past_a_models_concurrency_cap_wait_queued():
    latency = {"queued": 0.0, "dispatching": 0.0, "running": 0.6}
    with Emulator(api_key=KEY, model_concurrency=2, latency=latency) as emu:
        with httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            runs = [
                client.post("/v1/models/black-forest-labs/flux-2-pro/runs", json=BODY).json()["id"] for _ in range(4)
            ]
            statuses = [client.get(f"/v1/runs/{run}").json()["status_code"] for run in runs]
            assert statuses.count("queued") >= 2 and statuses.count("running") <= 2
        stats = emu.stats()
        assert stats["max_running_by_model"] == {"black-forest-labs/flux-2-pro": 2}
