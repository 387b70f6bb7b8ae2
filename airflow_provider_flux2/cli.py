"""The ``flux2`` command: run the emulator, estimate a plan's cost, generate an image."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _emulator(args: argparse.Namespace) -> int:
    from airflow_provider_flux2.emulator import serve

    serve(
        host=args.host,
        port=args.port,
        profile=args.profile,
        api_key=args.api_key,
        time_scale=args.time_scale,
        url_ttl=args.url_ttl,
        port_file=args.port_file,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flux2", description="FLUX 2 (Runflow) tools for Airflow users.")
    sub = parser.add_subparsers(dest="command", required=True)

    emu = sub.add_parser("emulator", help="serve a local emulator of the Runflow FLUX 2 API")
    emu.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    emu.add_argument("--port", type=int, default=8787, help="port (0 picks a free one)")
    emu.add_argument("--profile", choices=["fast", "realistic"], default="fast", help="latency model")
    emu.add_argument(
        "--api-key",
        default=None,
        help="the only key accepted (default: any non-empty Bearer token); also FLUX2_EMULATOR_API_KEY",
    )
    emu.add_argument("--time-scale", type=float, default=1.0, help="multiply every latency (0.1 = ten times faster)")
    emu.add_argument("--url-ttl", type=float, default=600.0, help="seconds before an output URL expires")
    emu.add_argument("--port-file", default=None, help="write the bound port to this file once listening")
    emu.set_defaults(func=_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
