"""The ``[flux2]`` section is declared to Airflow: listed, documented, defaulted, and overridable."""

from __future__ import annotations

import os
import subprocess
import sys

import jsonschema

from airflow_provider_flux2.config import OPTIONS, get_bool, get_int, get_option
from airflow_provider_flux2.get_provider_info import get_provider_info


def _airflow(*args: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
        timeout=240,
    )
    return result.stdout


def test_the_provider_info_with_its_config_matches_airflows_schema():
    import json
    from importlib.resources import files

    schema = json.loads(files("airflow").joinpath("provider_info.schema.json").read_text())

    jsonschema.validate(get_provider_info(), schema)
    assert set(get_provider_info()["config"]["flux2"]["options"]) == set(OPTIONS)


def test_airflow_config_list_shows_every_flux2_option_with_its_description_and_default(airflow_db):
    described = _airflow("config", "list", "--section", "flux2", "--include-descriptions", "--include-examples")
    try:
        values = _airflow("config", "list", "--section", "flux2", "--show-values")
    except subprocess.CalledProcessError as error:  # Airflow 3.1 has no --show-values: it always shows them
        assert "--show-values" in (error.stdout or "") + (error.stderr or "")
        values = _airflow("config", "list", "--section", "flux2")

    assert described.startswith("[flux2]")
    for name, option in OPTIONS.items():
        assert option["description"].split(".")[0][:40] in described
        assert f"# Example: {name} = {option['example']}" in described
        assert f"{name} = {option['default']}".rstrip() in [line.rstrip() for line in values.splitlines()]


def test_an_environment_variable_sets_an_option_as_airflow_users_expect(airflow_db):
    out = _airflow("config", "get-value", "flux2", "output_name_template", AIRFLOW__FLUX2__OUTPUT_NAME_TEMPLATE="{id}")

    assert out.strip() == "{id}"


def test_options_read_their_declared_default_and_their_override(monkeypatch):
    assert get_option("output_name_template") == "{index}-{id}-{hash}"
    assert get_int("link_expiry_seconds") == 604800
    assert get_bool("metrics") is True

    monkeypatch.setenv("AIRFLOW__FLUX2__LINK_EXPIRY_SECONDS", "3600")
    monkeypatch.setenv("AIRFLOW__FLUX2__METRICS", "False")

    assert get_int("link_expiry_seconds") == 3600
    assert get_bool("metrics") is False


def test_options_whose_defaults_hold_placeholders_are_not_expanded_by_airflow():
    # Airflow expands "{…}" in a default with its own variables unless the option is a template:
    # on 3.1 an unmarked "{index}-{id}-{hash}" stopped every airflow command (KeyError: 'index').
    from airflow_provider_flux2.config import OPTIONS

    braced = {name for name, option in OPTIONS.items() if "{" in str(option["default"])}
    assert braced == {"output_name_template", "local_link_template"}
    assert all(OPTIONS[name].get("is_template") is True for name in braced)
