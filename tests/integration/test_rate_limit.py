"""The API's request-rate limit (429 RATE_LIMITED, no Retry-After): the hook's shared limiter learns it and
paces every request of the connection in this process; a known limit paces from the first request."""

from __future__ import annotations

import json
import time

from airflow_provider_flux2.hooks.flux import FluxHook
from airflow_provider_flux2.models import Variant, build_input


def test_429s_without_retry_after_cut_the_connections_rate_for_every_hook(emulator, monkeypatch):
    connection = json.loads(emulator.connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_RL", json.dumps(connection))
    first, second = FluxHook("flux2_rl"), FluxHook("flux2_rl")
    assert first.limiter is second.limiter  # one per connection and process
    run = first.submit(build_input(Variant.PRO, prompt="a cup", image_size="square"), model=Variant.PRO)
    emulator.faults({"rules": [{"endpoint": "get_run", "fault": "rate_limit", "count": 3}]})
    for _ in range(2):  # the first read meets the three 429s; the second is paced by the cut rate
        assert second.get_run(run.id).id == run.id  # the hook's retries ride the 429s out
    assert first.limiter.throttles == 3 and first.limiter.rate is not None
    fired = [f for f in emulator.stats()["faults_fired"] if f["fault"] == "rate_limit"]
    assert len(fired) == 3


def test_a_known_limit_paces_requests_from_the_first_one(emulator, monkeypatch):
    connection = json.loads(emulator.connection_json())
    connection["extra"] = {**connection.get("extra", {}), "max_requests_per_second": 20}
    monkeypatch.setenv("AIRFLOW_CONN_FLUX2_PACED", json.dumps(connection))
    hook = FluxHook("flux2_paced")
    started = time.monotonic()
    for _ in range(21):
        hook.get_balance()
    assert time.monotonic() - started >= 0.95  # 21 requests at 20 a second: at least a second
