"""``python -m airflow_provider_flux2.emulator``: the ``flux2 emulator`` command, plus ``--config``.

``Emulator(subprocess=True)`` starts the emulator this way, passing every configuration key as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from airflow_provider_flux2.emulator.launcher import API_KEY_ENV, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_flux2.emulator",
        description="Serve a local emulator of the Runflow FLUX 2 API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8787, help="port (0 picks a free one)")
    parser.add_argument("--profile", choices=["fast", "realistic"], default=None, help="latency model")
    parser.add_argument("--api-key", default=None, help=f"the only key accepted (default: any; also {API_KEY_ENV})")
    parser.add_argument("--time-scale", type=float, default=None, help="multiply every latency")
    parser.add_argument("--url-ttl", type=float, default=None, help="seconds before an output URL expires")
    parser.add_argument("--port-file", default=None, help="write the bound port to this file once listening")
    parser.add_argument("--config", default="{}", help="further configuration keys as a JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = json.loads(args.config)
    except ValueError as exc:
        print(f"--config is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(config, dict):
        print("--config must be a JSON object", file=sys.stderr)
        return 2
    # Flags win over the same keys in --config; keys given in neither keep their defaults.
    for flag, key in (("profile", "profile"), ("time_scale", "time_scale"), ("url_ttl", "url_ttl")):
        if getattr(args, flag) is not None:
            config[key] = getattr(args, flag)
    serve(
        host=args.host,
        port=args.port,
        profile=config.pop("profile", "fast"),
        api_key=args.api_key,
        time_scale=config.pop("time_scale", 1.0),
        url_ttl=config.pop("url_ttl", 600.0),
        port_file=args.port_file,
        config=config,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
