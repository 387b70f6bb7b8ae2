"""Starting the emulator: :func:`serve` (blocking, for the ``flux2 emulator`` command) and
:class:`Emulator` (a context manager for tests and scripts, in a thread or a subprocess).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from subprocess import STDOUT, Popen, TimeoutExpired
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import uvicorn

from airflow_provider_flux2.emulator.config import EmulatorConfig, parse_config
from airflow_provider_flux2.emulator.server import EmulatorApp
from airflow_provider_flux2.emulator.state import EmulatorState

API_KEY_ENV = "FLUX2_EMULATOR_API_KEY"
#: The key a client sends when the emulator accepts any key (``api_key=None``).
ANY_KEY_PLACEHOLDER = "rf_emulator_any_key"
#: Connection extras for tests: retries a few milliseconds apart and a short timeout, so a test
#: that injects faults finishes quickly. The only place these figures live.
TEST_CONNECTION_EXTRA: dict[str, Any] = {"retry_base_delay": 0.05, "timeout": 5}


class _Server(uvicorn.Server):
    """uvicorn's server, telling us once it listens (and never installing signal handlers off the main thread)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket bound before the server starts, so the port is known (0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose protocol says
    # TCP, and without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app: EmulatorApp) -> uvicorn.Config:
    return uvicorn.Config(
        app.app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        loop="asyncio",
        # A stalled request must not hold a shutdown for its full stall.
        timeout_graceful_shutdown=2,
    )


def _resolve_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get(API_KEY_ENV) or None


def _write_atomically(path: str | os.PathLike[str], text: str) -> None:
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(text)
    temporary.replace(target)


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    profile: str = "fast",
    api_key: str | None = None,
    time_scale: float = 1.0,
    url_ttl: float = 600.0,
    port_file: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Serve the emulator until interrupted (Ctrl-C or SIGTERM).

    :param host: address to bind; loopback unless told otherwise.
    :param port: port to bind; 0 picks a free one.
    :param profile: latency model, ``fast`` or ``realistic``.
    :param api_key: the only Bearer token accepted; ``None`` reads ``FLUX2_EMULATOR_API_KEY``, and
        without it any non-empty token is accepted.
    :param time_scale: multiplies every sampled latency.
    :param url_ttl: seconds an output URL stays valid.
    :param port_file: receives the bound port once the server is listening.
    :param config: further configuration keys (see ``docs/emulator.md``).
    """
    settings = parse_config({**(config or {}), "profile": profile, "time_scale": time_scale, "url_ttl": url_ttl})
    key = _resolve_key(api_key)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    app = EmulatorApp(EmulatorState(settings, api_key=key))

    def announce() -> None:
        if port_file:
            _write_atomically(port_file, str(bound))
        auth = "one API key" if key else "any non-empty Bearer token"
        print(
            f"FLUX 2 emulator listening on http://{host}:{bound} (profile {settings.profile}, accepts {auth})",
            flush=True,
        )

    _Server(_uvicorn_config(app), on_started=announce).run(sockets=[sock])


class Emulator:
    """The emulator as a context manager, on a free loopback port, in a thread or a subprocess.

    ``with Emulator(profile="fast", api_key=KEY) as emu:`` starts it; ``emu.base_url``,
    ``emu.connection_json()`` and the control helpers (:meth:`faults`, :meth:`configure`,
    :meth:`ledger`, :meth:`stats`, :meth:`reset`) work the same in both modes, because they go over HTTP.

    :param host: address to bind.
    :param port: port to bind; 0 picks a free one.
    :param profile: latency model, ``fast`` or ``realistic``.
    :param api_key: the only Bearer token accepted; ``None`` reads ``FLUX2_EMULATOR_API_KEY``, and
        without it any non-empty token is accepted.
    :param time_scale: multiplies every sampled latency.
    :param url_ttl: seconds an output URL stays valid.
    :param subprocess: run ``python -m airflow_provider_flux2.emulator`` instead of a thread.
    :param startup_timeout: seconds to wait for the server to listen.
    :param config: further configuration keys (``fleet_size``, ``latency``, ``credit_usd``, ...).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        profile: str = "fast",
        api_key: str | None = None,
        time_scale: float = 1.0,
        url_ttl: float = 600.0,
        subprocess: bool = False,
        startup_timeout: float = 30.0,
        **config: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.settings: EmulatorConfig = parse_config(
            {**config, "profile": profile, "time_scale": time_scale, "url_ttl": url_ttl}
        )
        self._server_key = _resolve_key(api_key)
        self.api_key = self._server_key or ANY_KEY_PLACEHOLDER
        self.use_subprocess = subprocess
        self.startup_timeout = startup_timeout
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._app: EmulatorApp | None = None
        self._process: Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._thread is not None or self._process is not None:
            return self
        if self.use_subprocess:
            self._start_process()
        else:
            self._start_thread()
        self._client = httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)
        return self

    def _start_thread(self) -> None:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._app = EmulatorApp(EmulatorState(self.settings, api_key=self._server_key))
        started = threading.Event()
        self._server = _Server(_uvicorn_config(self._app), on_started=started.set)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"flux2-emulator-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not started.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"the emulator did not start on {self.host}:{self.port}")

    def _start_process(self) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="flux2-emulator-")
        port_file = Path(self._workdir.name) / "port"
        log_path = Path(self._workdir.name) / "emulator.log"
        command = [
            sys.executable,
            "-m",
            "airflow_provider_flux2.emulator",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--port-file",
            str(port_file),
            "--config",
            json.dumps(self.settings.as_json()),
        ]
        env = dict(os.environ)
        env.pop(API_KEY_ENV, None)
        if self._server_key:
            # Passed through the environment rather than argv, where `ps` would show it.
            env[API_KEY_ENV] = self._server_key
        with log_path.open("wb") as log_file:
            self._process = Popen(command, stdout=log_file, stderr=STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator subprocess did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().strip())

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None and self._thread is not None:
            app, server = self._app, self._server
            if app is not None and app.loop is not None and not app.loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop may close in between
                    app.loop.call_soon_threadsafe(app.abort_background)
            server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = self._app = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
            self._process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # -- where it is -----------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def connection_json(self) -> str:
        """The Airflow connection (``AIRFLOW_CONN_FLUX2_DEFAULT``) pointing at this emulator."""
        return json.dumps(
            {"conn_type": "flux2", "host": self.base_url, "password": self.api_key, "extra": TEST_CONNECTION_EXTRA}
        )

    def connection_uri(self) -> str:
        """The same connection as an Airflow URI (the host is URL-encoded since it carries a scheme)."""
        extra = "&".join(f"{quote(k)}={quote(str(v))}" for k, v in TEST_CONNECTION_EXTRA.items())
        return f"flux2://:{quote(self.api_key, safe='')}@{quote(self.base_url, safe='')}/?{extra}"

    # -- control surface (over HTTP, so it works against a subprocess too) ---------------------------

    def _control(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> dict[str, Any]:
        if self._client is None:
            raise RuntimeError("the emulator is not running; use it as a context manager or call start()")
        response = self._client.request(method, f"/_emulator/{path}", json=body, timeout=timeout)
        if response.status_code >= 400:
            raise ValueError(f"emulator refused {method} /_emulator/{path}: {response.status_code} {response.text}")
        return dict(response.json())

    def faults(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the fault plan (see ``docs/emulator.md``)."""
        return self._control("POST", "faults", dict(plan))

    def clear_faults(self) -> None:
        self._control("DELETE", "faults")

    def configure(self, **config: Any) -> dict[str, Any]:
        """Change configuration keys; returns the whole configuration."""
        return self._control("POST", "config", config)

    def get_config(self) -> dict[str, Any]:
        return self._control("GET", "config")

    def ledger(self) -> dict[str, Any]:
        return self._control("GET", "ledger")

    def prerender(self, images: list[dict[str, Any]], *, cache_mb: int | None = None) -> dict[str, Any]:
        """Render ``images`` (``prompt``, ``seed``, ``width``, ``height``, ``output_format``) into the
        emulator's cache, so a benchmark's downloads are transfers (the real API renders while a run runs)."""
        body: dict[str, Any] = {"images": images}
        if cache_mb is not None:
            body["cache_mb"] = cache_mb
        return self._control("POST", "prerender", body, timeout=600.0)

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "stats")

    def forget_keys(self) -> int:
        """Forget every Idempotency-Key, as an API past its key retention would; returns how many."""
        return int(self._control("POST", "forget-keys")["forgotten"])

    def reset(self) -> None:
        """Forget runs, batches, idempotency keys, the ledger, faults and stats; restore the start-up config."""
        self._control("POST", "reset")
