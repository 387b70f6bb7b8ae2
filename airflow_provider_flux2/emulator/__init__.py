"""A local emulator of the Runflow FLUX 2 API: same protocol, same prices, real images, injected faults.

Start it with ``flux2 emulator`` or ``python -m airflow_provider_flux2.emulator``, or from Python::

    with Emulator(profile="fast", api_key="rf_test") as emu:
        os.environ["AIRFLOW_CONN_FLUX2_DEFAULT"] = emu.connection_json()
        emu.faults({"rules": [{"endpoint": "create_run", "fault": "server_error", "probability": 0.3}]})

See ``docs/emulator.md`` for the control surface, fault plans and configuration keys.
"""

from __future__ import annotations

from airflow_provider_flux2.emulator.config import CONFIG_KEYS, EmulatorConfig
from airflow_provider_flux2.emulator.launcher import TEST_CONNECTION_EXTRA, Emulator, serve

__all__ = ["CONFIG_KEYS", "TEST_CONNECTION_EXTRA", "Emulator", "EmulatorConfig", "serve"]
