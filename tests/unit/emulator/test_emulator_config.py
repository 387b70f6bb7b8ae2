"""The emulator's configuration: defaults, validation, partial updates."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_flux2.emulator.config import CONFIG_KEYS, ConfigError, parse_config


def test_defaults():
    config = parse_config({})
    assert (config.profile, config.time_scale, config.url_ttl) == ("fast", 1.0, 600.0)
    assert config.moderation_marker == "NSFW_TEST" and config.moderation_mode == "flag"
    assert config.credit_usd is None and config.fleet_size is None
    assert config.callback_secret == "emulator-callback-secret"
    assert (config.callback_max_attempts, config.callback_retry_base) == (5, 0.2)
    assert config.cold_start_fraction == 0.2


def test_model_names_are_normalised():
    config = parse_config({"disabled_models": ["max"], "batch_unsupported_models": ["black-forest-labs/flux-2-flex"]})
    assert config.disabled_models == ["black-forest-labs/flux-2-max"]
    assert config.batch_unsupported_models == ["black-forest-labs/flux-2-flex"]


def test_credit_is_exact_money():
    config = parse_config({"credit_usd": 0.1})
    assert config.credit_usd == Decimal("0.1")
    assert config.as_json()["credit_usd"] == "0.1"


def test_partial_update_keeps_other_keys():
    config = parse_config({"url_ttl": 5, "fleet_size": 2})
    updated = config.updated({"fleet_size": 3})
    assert (updated.url_ttl, updated.fleet_size) == (5, 3)
    assert config.fleet_size == 2  # frozen: the old one is unchanged


@pytest.mark.parametrize(
    ("values", "loc"),
    [
        ({"nope": 1}, ["config", "nope"]),
        ({"profile": "slow"}, ["config", "profile"]),
        ({"url_ttl": 0}, ["config", "url_ttl"]),
        ({"fleet_size": 0}, ["config", "fleet_size"]),
        ({"latency": {"running": -1}}, ["config", "latency"]),
        ({"latency": {"thinking": 1}}, ["config", "latency", "thinking", "[key]"]),
        ({"disabled_models": ["flux-9"]}, ["config", "disabled_models"]),
        ({"prices": {"pro": "free"}}, ["config", "prices"]),
        ({"credit_usd": "-1"}, ["config", "credit_usd"]),
        ({"moderation_mode": "ignore"}, ["config", "moderation_mode"]),
    ],
)
def test_bad_values_are_refused_naming_the_key(values, loc):
    with pytest.raises(ConfigError) as caught:
        parse_config(values)
    assert caught.value.errors[0]["loc"][: len(loc)] == loc


def test_every_key_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "emulator.md").read_text()
    missing = [key for key in CONFIG_KEYS if f"`{key}`" not in doc]
    assert not missing
