"""The ``flux2`` command: run the emulator, estimate a plan's cost, generate an image."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from airflow_provider_flux2.exceptions import FluxError


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


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    """Prompt rows from a CSV (header row) or JSON Lines file; ``size``/``image_size``, ``model``, ``count``."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise FluxError(f"{path}:{number}: each line must be a JSON object")
                    yield row
    else:
        raise FluxError(f"{path}: use a .csv or .jsonl file")


def _plan(args: argparse.Namespace) -> list[tuple[Any, Any]]:
    from airflow_provider_flux2.models import build_input

    plan = []
    if args.prompts:
        for row in _rows(Path(args.prompts)):
            size = row.get("image_size") or row.get("size") or args.size
            model = row.get("model") or args.model
            request = build_input(model, prompt=row.get("prompt") or "(estimate)", image_size=size)
            plan.extend([(model, request)] * int(row.get("count") or 1))
    else:
        request = build_input(args.model, prompt="(estimate)", image_size=args.size)
        plan.extend([(args.model, request)] * args.count)
    return plan


def _estimate(args: argparse.Namespace) -> int:
    from airflow_provider_flux2.pricing import Budget, PriceTable, estimate, usd

    table = PriceTable().with_overrides(json.loads(args.prices) if args.prices else None)
    result = estimate(_plan(args), table)
    header = f"{'model':<30} {'size':>11} {'MP':>4} {'count':>6} {'unit':>9} {'subtotal':>10}"
    print(header)
    print("-" * len(header))
    for row in result.by_size():
        flag = " *" if table.price(row["model"]).estimate else ""
        size = f"{row['width']}x{row['height']}"
        print(
            f"{row['model']:<30} {size:>11} {row['billed_mp'] + row['reference_mp']:>4} {row['count']:>6} "
            f"{'$' + usd(row['unit_cost']):>9} {'$' + usd(row['subtotal']):>10}{flag}"
        )
    print("-" * len(header))
    print(f"total: {result.count} image(s), {result.total_mp} MP, ${usd(result.total)}")
    if any(table.price(r["model"]).estimate for r in result.by_size()):
        print("* no published Runflow price for this model: the figure is an estimate (override with --prices)")
    budget = Budget.of(args.budget)
    if budget is not None:
        budget.check(result)
        print(f"within the budget of ${usd(budget.limit)}")
    return 0


def _hook(args: argparse.Namespace) -> Any:
    """A hook from FLUX2_API_KEY (and FLUX2_BASE_URL), else from the Airflow connection."""
    from airflow_provider_flux2.hooks.flux import FluxHook

    key = os.environ.get("FLUX2_API_KEY")
    if key:
        return FluxHook(api_key=key, base_url=os.environ.get("FLUX2_BASE_URL"))
    return FluxHook(args.conn_id)


def _generate(args: argparse.Namespace) -> int:
    from airflow_provider_flux2.pricing import usd

    hook = _hook(args)
    prompt: Any = args.prompt
    if prompt.lstrip().startswith("{"):
        prompt = json.loads(prompt)  # a JSON-structured prompt
    params = {"image_size": args.size, "seed": args.seed, "output_format": args.format}
    run, image = hook.generate(prompt, model=args.model, timeout=args.timeout, **params)
    out = Path(args.out or f"flux2-{run.id}.{'png' if image.format == 'png' else 'jpg'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(image.data)
    cost = run.api_cost
    seed = run.output.seed if run.output else None
    print(f"run {run.id}: {image.width}x{image.height} {image.format}, seed {seed}, ", end="")
    print(f"cost ${usd(cost) if cost is not None else '?'} -> {out}")
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

    est = sub.add_parser("estimate", help="price a plan before spending anything")
    est.add_argument("--size", default="landscape_4_3", help="preset, WxH (e.g. 1920x1080)")
    est.add_argument("--model", default="pro", help="pro, flex, max, turbo or a full model id")
    est.add_argument("--count", type=int, default=1, help="number of images of that size")
    est.add_argument("--prompts", help="CSV or JSONL with a row per prompt (columns size/image_size, model, count)")
    est.add_argument("--prices", help='price overrides as JSON, e.g. \'{"pro": {"first_mp": "0.03"}}\'')
    est.add_argument("--budget", help="fail (exit 1) if the total is over this many dollars")
    est.set_defaults(func=_estimate)

    gen = sub.add_parser("generate", help="generate one image (emulator or real API)")
    gen.add_argument("prompt", help="the prompt (text, or a JSON object)")
    gen.add_argument("--size", default=None, help="preset or WxH")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--model", default=None, help="default: the connection's model (pro)")
    gen.add_argument("--format", choices=["jpeg", "png"], default=None)
    gen.add_argument("--out", help="file to write (default flux2-<run id>.jpg)")
    gen.add_argument("--conn-id", default="flux2_default", help="Airflow connection (when FLUX2_API_KEY is unset)")
    gen.add_argument("--timeout", type=float, default=600.0)
    gen.set_defaults(func=_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FluxError, OSError, ValueError) as error:
        print(f"flux2 {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
