"""Airflow sees the provider: entry point, connection type and its form, triggers, extra link, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import import_module

from airflow_provider_flux2.get_provider_info import get_provider_info
from airflow_provider_flux2.hooks.flux import FluxHook


def test_every_module_and_class_named_in_provider_info_imports():
    info = get_provider_info()
    for section in ("hooks", "operators", "triggers"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                import_module(module)
    for path in [*info["extra-links"], *(c["hook-class-name"] for c in info["connection-types"])]:
        module, _, name = path.rpartition(".")
        assert getattr(import_module(module), name)


def test_airflow_providers_list_shows_the_provider(airflow_db):
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=True,
    )
    assert '"package_name": "airflow-provider-flux2"' in result.stdout


def test_providers_manager_registers_connection_type_form_fields_and_link():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    hook = manager.hooks["flux2"]
    assert hook.hook_class_name == "airflow_provider_flux2.hooks.flux.FluxHook"
    assert hook.connection_type == "flux2"
    from airflow import __version__ as airflow_version
    from packaging.version import Version

    if Version(airflow_version) < Version("3.2"):
        # 3.1 builds the form from the hook's methods, and only when the FAB UI (wtforms) is installed.
        assert FluxHook.get_ui_field_behaviour()["relabeling"]["password"] == "API Key"
        return
    behaviour = manager.field_behaviours["flux2"]
    assert behaviour["relabeling"] == {"password": "API Key", "host": "Base URL"}
    assert "login" in behaviour["hidden_fields"]
    widgets = {name for name in manager.connection_form_widgets if name.startswith("extra__flux2__")}
    assert {"extra__flux2__model", "extra__flux2__timeout", "extra__flux2__max_attempts"} <= widgets
    assert {
        "extra__flux2__max_task_spend_usd",
        "extra__flux2__allow_plain_http",
        "extra__flux2__retry_base_delay",
        "extra__flux2__retry_max_delay",
    } <= widgets
    assert "airflow_provider_flux2.operators.flux.FluxImagesLink" in manager.extra_links_class_names
    triggers = {t.trigger_class_name for t in manager.trigger if t.package_name == "airflow-provider-flux2"}
    assert triggers == {"airflow_provider_flux2.triggers.flux"}


def test_flux2_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "flux2")
    result = subprocess.run([script, "estimate", "--size", "1920x1080"], capture_output=True, text=True, check=True)
    assert "$0.045" in result.stdout


def test_every_form_field_is_an_extra_the_connection_reads():
    from decimal import Decimal

    from airflow_provider_flux2.hooks.connection import CONNECTION_EXTRAS, FluxConnectionConfig

    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    assert set(fields) <= set(CONNECTION_EXTRAS)
    # What the form stores for the money, plain-HTTP and retry fields, read back as the hook reads them.
    extra = {"max_task_spend_usd": "25.00", "allow_plain_http": True, "retry_base_delay": 0.5, "retry_max_delay": 8}
    config = FluxConnectionConfig.build(
        api_key="rf_test_key", base_url="http://flux-proxy.internal:8080", extra=extra, conn_id="flux2_form"
    )
    assert config.max_task_spend == Decimal("25.00") and config.allow_plain_http
    assert (config.retry.base, config.retry.cap) == (0.5, 8.0)
    # An empty form (every field null or "") means every default.
    empty = FluxConnectionConfig.build(
        api_key="rf_test_key", base_url=None, extra=dict.fromkeys(fields, ""), conn_id="flux2_form"
    )
    assert empty.max_task_spend is None and not empty.allow_plain_http and empty.retry.base == 1.0
