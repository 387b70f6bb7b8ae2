"""The ``flux2`` command: run the emulator, estimate a plan's cost, generate an image."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_flux2.exceptions import FluxError, FluxValidationError

if TYPE_CHECKING:
    from airflow_provider_flux2.models import CustomSize, FluxInput, Variant
    from airflow_provider_flux2.pricing import PriceTable

#: Columns of a prompt file that the estimate reads; any other column is reported as unused.
PROMPT_COLUMNS = ("prompt", "size", "image_size", "width", "height", "model", "count")
#: The image formats the API writes, by the file suffix that names them.
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
_DIGITS = re.compile(r"^\d+$")


def _emulator(args: argparse.Namespace) -> int:
    from airflow_provider_flux2.emulator import serve

    port, time_scale, url_ttl = _emulator_flags(args)
    serve(
        host=args.host,
        port=port,
        profile=args.profile,
        api_key=args.api_key,
        time_scale=time_scale,
        url_ttl=url_ttl,
        port_file=args.port_file,
        config={"credit_usd": args.credit_usd} if args.credit_usd is not None else None,
    )
    return 0


# -- estimate: prompt files --------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(number, where, row)`` per prompt of a CSV (header row) or JSON Lines file.

    ``where`` names the row for messages (``prompts.csv row 2 (line 3)``); column names are
    matched without case or surrounding spaces, and empty cells are left out of the row.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # utf-8-sig: a spreadsheet's byte-order mark must not rename the first column.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            for number, row in enumerate(reader, 1):
                where = f"{path.name} row {number} (line {reader.line_num})"
                if None in row:
                    raise FluxError(f"{where}: more cells than the header has columns")
                yield number, where, _cells(row, where)
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8-sig") as handle:
            number = 0
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                number += 1
                where = f"{path.name} row {number} (line {line_number})"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise FluxError(f"{where}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise FluxError(f"{where}: each line must be a JSON object")
                yield number, where, _cells(row, where)
    else:
        raise FluxError(f"{path}: use a .csv or .jsonl file")


def _cells(row: Mapping[str | None, Any], where: str) -> dict[str, Any]:
    """Column names lower-cased and stripped; empty cells (``""``, ``null``) dropped."""
    cells: dict[str, Any] = {}
    for name, value in row.items():
        key = str(name).strip().lower()
        if key in cells:
            raise FluxError(f"{where}: column {key!r} is given twice")
        if isinstance(value, str):
            value = value.strip()
        if value is not None and value != "":
            cells[key] = value
    return cells


def _row_size(row: Mapping[str, Any]) -> str | CustomSize | None:
    """The size a row asks for (``size``/``image_size``, or ``width`` and ``height``); ``None`` if none.

    Columns that give the same row two different sizes are refused rather than one of them chosen.
    """
    from airflow_provider_flux2.models import MAX_SIDE, MIN_SIDE, size_of

    given: dict[str, str | CustomSize] = {}
    for column in ("image_size", "size"):
        if column in row:
            given[column] = _size(row[column], column)
    if "width" in row or "height" in row:
        sides = []
        for side in ("width", "height"):
            if side not in row:
                allowed = f"width and height together, each an integer {MIN_SIDE}..{MAX_SIDE}"
                raise FluxValidationError(field=side, value="(empty)", allowed=allowed)
            sides.append(_integer(row[side]))
        given["width+height"] = _size(tuple(sides), "")
    if len({size_of(size) for size in given.values()}) > 1:
        raise FluxValidationError(
            field=" / ".join(given),
            value={column: row[column] for column in ("size", "image_size", "width", "height") if column in row},
            allowed="one size per row (these columns must agree)",
        )
    return next(iter(given.values()), None)


def _size(value: Any, column: str) -> str | CustomSize:
    """``normalize_image_size``, its errors naming the file's column (``size.height``, ``width``)."""
    from airflow_provider_flux2.models import normalize_image_size

    try:
        return normalize_image_size(value)
    except FluxValidationError as error:
        field = error.field.replace("image_size", column, 1).lstrip(".")
        raise FluxValidationError(field=field, value=error.value, allowed=error.allowed) from None


def _integer(value: Any) -> Any:
    """A cell of digits as an integer (CSV cells are text); any other value is left to be refused."""
    return int(value) if isinstance(value, str) and _DIGITS.match(value) else value


def _row_count(value: Any) -> int:
    if value is None:
        return 1
    value = _integer(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FluxValidationError(field="count", value=value, allowed="a whole number of images, at least 1")
    return value


@contextlib.contextmanager
def _in_row(where: str) -> Iterator[None]:
    """Name the row in any validation error raised while reading it."""
    try:
        yield
    except FluxValidationError as error:
        raise FluxValidationError(field=f"{error.field} in {where}", value=error.value, allowed=error.allowed) from None


def _file_plan(path: Path, size: str, model: str) -> tuple[list[tuple[Variant, FluxInput]], list[str]]:
    """The plan of a prompt file, and notes on what was not read from it (for stderr)."""
    from airflow_provider_flux2.models import build_input, resolve_variant

    # The defaults are checked first, so a bad --size or --model is not blamed on a row.
    default_size = _size(size, "--size") if size else None  # None: the model's own default size
    default_variant = resolve_variant(model)
    plan: list[tuple[Variant, FluxInput]] = []
    unsized: list[str] = []
    unused: set[str] = set()
    for number, where, row in _rows(path):
        unused |= set(row) - set(PROMPT_COLUMNS)
        with _in_row(where):
            row_size = _row_size(row)
            variant = resolve_variant(row["model"]) if "model" in row else default_variant
            request = build_input(
                variant, prompt=row.get("prompt") or "(estimate)", image_size=row_size or default_size
            )
            count = _row_count(row.get("count"))
        if row_size is None:
            unsized.append(str(number))
        plan.extend([(variant, request)] * count)
    if not plan:
        raise FluxError(f"{path}: no prompt rows to price")
    notes = []
    if unused:
        notes.append(f"columns not used for pricing: {', '.join(sorted(unused))} (read: {', '.join(PROMPT_COLUMNS)})")
    if unsized:
        shown = ", ".join(unsized[:5]) + (f" and {len(unsized) - 5} more" if len(unsized) > 5 else "")
        at = f"--size {size}" if size else "the default size (landscape_4_3)"
        notes.append(f"{len(unsized)} row(s) give no size and are priced at {at}: row {shown}")
    return plan, notes


# -- estimate ----------------------------------------------------------------------------------


def _connection_hook(conn_id: str) -> Any:
    """The hook of an Airflow connection, its config read at once so a missing connection says so."""
    from airflow.exceptions import AirflowNotFoundException  # on 3.3 the same class as the SDK's; 3.1 has only this

    from airflow_provider_flux2.exceptions import FluxConnectionNotFoundError
    from airflow_provider_flux2.hooks.flux import FluxHook

    # Outside a task, the SDK looks only at AIRFLOW_CONN_* and the secrets backends unless the process
    # declares itself server-side; ``airflow connections get`` does the same so the metadata DB is read too.
    os.environ.setdefault("_AIRFLOW_PROCESS_CONTEXT", "server")
    hook = FluxHook(conn_id)
    try:
        hook.config  # noqa: B018 - read now
    except (AirflowNotFoundException, FluxConnectionNotFoundError):
        raise FluxError(
            f"connection {conn_id!r} is not defined (looked in AIRFLOW_CONN_{conn_id.upper()}, "
            "the secrets backends and the Airflow metadata DB)"
        ) from None
    return hook


def _prices(args: argparse.Namespace) -> tuple[PriceTable, str, str | None]:
    """The price table (defaults, the connection's ``prices`` extra, then ``--prices``), the model, a note."""
    from airflow_provider_flux2.pricing import DEFAULT_PRICES, PriceTable

    table, model, note = PriceTable(), args.model or "pro", None
    if args.conn_id:
        hook = _connection_hook(args.conn_id)
        table = hook.prices  # the hook's own reading of the connection's ``prices`` extra
        model = args.model or hook.default_model.value
        overridden = [variant.model_id for variant, price in table.prices.items() if price != DEFAULT_PRICES[variant]]
        note = f"prices: connection {args.conn_id!r} " + (
            f"overrides {', '.join(overridden)}" if overridden else "carries no price overrides (defaults used)"
        )
    allowed = 'a JSON object of prices by model, e.g. {"pro": {"first_mp": "0.03"}}'
    overrides = _json_flag("--prices", args.prices, allowed) if args.prices else None
    if overrides is not None and not isinstance(overrides, dict):
        raise FluxValidationError(field="--prices", value=args.prices, allowed=allowed)
    try:
        return table.with_overrides(overrides), model, note
    except FluxValidationError as error:
        raise FluxValidationError(field=f"--prices {error.field}", value=error.value, allowed=error.allowed) from None


def _estimate(args: argparse.Namespace) -> int:
    from airflow_provider_flux2.models import build_input, resolve_variant
    from airflow_provider_flux2.pricing import Budget, estimate, usd

    table, model, note = _prices(args)
    notes = [note] if note else []
    if args.prompts:
        plan, file_notes = _file_plan(Path(args.prompts), args.size, model)
        notes += file_notes
    else:
        request = build_input(model, prompt="(estimate)", image_size=args.size)
        plan = [(resolve_variant(model), request)] * _count_flag(str(args.count))
    if args.reference:  # every image gets these references, priced at their real size
        from airflow_provider_flux2.references import ReferenceResolver

        resolver = ReferenceResolver(aws_conn_id=args.aws_conn_id)
        plan = [(variant, resolver.measured(request, args.reference)) for variant, request in plan]
        for source in args.reference:
            ref = resolver.measure(source)
            sized = f"{ref.width}x{ref.height}" if ref.width else "size unknown before the run"
            notes.append(f"reference {source}: {sized}, billed as {ref.billed_mp} MP per image")
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    result = estimate(plan, table)
    header = f"{'model':<40} {'size':>11} {'MP':>4} {'count':>6} {'unit':>9} {'subtotal':>10}"
    print(header)
    print("-" * len(header))
    for row in result.by_size():
        flag = " *" if table.price(row["model"]).estimate else ""
        size = f"{row['width']}x{row['height']}"
        print(
            f"{row['model']:<40} {size:>11} {row['billed_mp'] + row['reference_mp']:>4} {row['count']:>6} "
            f"{'$' + usd(row['unit_cost']):>9} {'$' + usd(row['subtotal']):>10}{flag}"
        )
    print("-" * len(header))
    print(f"total: {result.count} image(s), {result.total_mp} MP, ${usd(result.total)}")
    if result.estimated_models:
        print(
            "* an estimate: no Runflow page or measurement confirms this price "
            "(measure it with flux2 doctor --write-prices, or override with --prices)"
        )
    if result.worst_total != result.total:
        print(f"budgets and the balance check count ${usd(result.worst_total)}: the highest price any source names")
    if result.unverified_routes:
        print(
            f"references on {', '.join(result.unverified_routes)} go to the text-to-image model, unverified "
            "(flux2 doctor's edit step checks it)"
        )
    budget = Budget.of(args.budget)
    if budget is not None:
        budget.check(result)
        print(f"within the budget of ${usd(budget.limit)}")
    return 0


# -- generate ----------------------------------------------------------------------------------


def _hook(args: argparse.Namespace) -> Any:
    """A hook from FLUX2_API_KEY (and FLUX2_BASE_URL), else from the Airflow connection."""
    from airflow_provider_flux2.hooks.flux import FluxHook

    key = os.environ.get("FLUX2_API_KEY")
    if key:
        return FluxHook(api_key=key, base_url=os.environ.get("FLUX2_BASE_URL"))
    return _connection_hook(args.conn_id)


def _output_format(out: str | None, requested: str | None) -> str | None:
    """The format to ask for: ``--format``, else the one ``--out``'s suffix names; a contradiction is refused."""
    if out is None:
        return requested
    suffix = Path(out).suffix.lower()
    named = SUFFIX_FORMATS.get(suffix)
    if named is None:
        from PIL import Image

        if suffix in Image.registered_extensions():  # .webp, .gif, ...: a format the API does not write
            allowed = "a file name ending .png, .jpg or .jpeg (the API writes png or jpeg)"
            raise FluxValidationError(field="--out", value=out, allowed=allowed)
        if requested is None:
            allowed = "a file name ending .png, .jpg or .jpeg, or --format png|jpeg for a name without one"
            raise FluxValidationError(field="--out", value=out, allowed=allowed)
        return requested
    if requested is not None and requested != named:
        raise FluxValidationError(
            field="--format",
            value=requested,
            allowed=f"{named!r} for --out {out} (or an --out name ending .{'png' if requested == 'png' else 'jpg'})",
        )
    return named


def _generate(args: argparse.Namespace) -> int:
    from airflow_provider_flux2.pricing import Budget, usd

    # Every flag is checked before anything is sent.
    output_format = _output_format(args.out, args.format)
    seed = _int_flag("--seed", args.seed, 0, 2**32 - 1)
    timeout = _seconds_flag("--timeout", args.timeout)
    Budget.of(args.budget)
    prompt: Any = args.prompt
    if prompt.lstrip().startswith("{"):  # a JSON-structured prompt
        prompt = _json_flag("prompt", prompt, "a prompt text, or a JSON object for a structured prompt")
    hook = _hook(args)
    params = {"image_size": args.size, "seed": seed, "output_format": output_format}
    run, image = hook.generate(prompt, model=args.model, timeout=timeout, budget_usd=args.budget, **params)
    out = Path(args.out or f"flux2-{run.id}.{'png' if image.format == 'png' else 'jpg'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(image.data)
    cost = run.cost
    seed = run.output.seed if run.output else None
    print(f"run {run.id}: {image.width}x{image.height} {image.format}, seed {seed}, ", end="")
    print(f"cost ${usd(cost) if cost is not None else '?'} -> {out}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from airflow_provider_flux2.doctor import run_cli

    args.run_timeout = _seconds_flag("--run-timeout", args.run_timeout)
    args.replay_after = _seconds_flag("--replay-after", args.replay_after, allow_zero=True)
    return run_cli(args, _hook(args))


# -- flags: typed errors naming the flag, the value and what is allowed --------------------------


def _json_flag(flag: str, text: str, allowed: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise FluxValidationError(field=flag, value=text, allowed=f"{allowed} ({error})") from None


def _count_flag(text: str) -> int:
    if not _DIGITS.match(text.strip()) or int(text) < 1:
        raise FluxValidationError(field="--count", value=text, allowed="a whole number of images, at least 1")
    return int(text)


def _int_flag(flag: str, text: str | None, low: int, high: int) -> int | None:
    if text is None:
        return None
    if not _DIGITS.match(text.strip()) or not low <= int(text) <= high:
        raise FluxValidationError(field=flag, value=text, allowed=f"a whole number {low}..{high}")
    return int(text)


def _seconds_flag(flag: str, text: str | float, high: float = 7 * 86400.0, *, allow_zero: bool = False) -> float:
    from airflow_provider_flux2.arguments import check_seconds

    try:
        value = float(text)
    except ValueError:
        value = text  # type: ignore[assignment]  # refused below, naming the flag
    try:
        return check_seconds(flag, value, high=high, allow_zero=allow_zero)
    except FluxValidationError as error:
        raise FluxValidationError(field=flag, value=text, allowed=error.allowed) from None


def _emulator_flags(args: argparse.Namespace) -> tuple[int, float, float]:
    port = _int_flag("--port", str(args.port), 0, 65535)
    assert port is not None
    return port, _seconds_flag("--time-scale", args.time_scale, high=1000.0), _seconds_flag("--url-ttl", args.url_ttl)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flux2", description="FLUX 2 (Runflow) tools for Airflow users.")
    sub = parser.add_subparsers(dest="command", required=True)

    emu = sub.add_parser("emulator", help="serve a local emulator of the Runflow FLUX 2 API")
    emu.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    emu.add_argument("--port", type=str, default="8787", help="port (0 picks a free one)")
    emu.add_argument("--profile", choices=["fast", "realistic"], default="fast", help="latency model")
    emu.add_argument(
        "--api-key",
        default=None,
        help="the only key accepted (default: any non-empty Bearer token); also FLUX2_EMULATOR_API_KEY",
    )
    emu.add_argument("--time-scale", type=str, default="1.0", help="multiply every latency (0.1 = ten times faster)")
    emu.add_argument("--url-ttl", type=str, default="600", help="seconds before an output URL expires")
    emu.add_argument("--port-file", default=None, help="write the bound port to this file once listening")
    emu.add_argument(
        "--credit-usd", default=None, help="the organisation's credit: served at /v1/billing/balance, 402 past it"
    )
    emu.set_defaults(func=_emulator)

    est = sub.add_parser("estimate", help="price a plan before spending anything")
    est.add_argument(
        "--size",
        default=None,
        help="preset or WxH (e.g. 1920x1080; default: the model's, landscape_4_3); with --prompts, for rows "
        "without one",
    )
    est.add_argument(
        "--model", default=None, help="pro, flex, max, turbo, klein-4b, klein-9b or a full model id (default: pro)"
    )
    est.add_argument("--count", default="1", help="number of images of that size (a whole number, at least 1)")
    est.add_argument(
        "--prompts",
        help="CSV or JSONL with a row per prompt; columns prompt, size or image_size (preset or WxH) "
        "or width and height, model, count",
    )
    est.add_argument(
        "--conn-id",
        default=None,
        help="an Airflow flux2 connection: use its price overrides (extra 'prices') and default model",
    )
    est.add_argument("--prices", help='price overrides as JSON, e.g. \'{"pro": {"first_mp": "0.03"}}\'')
    est.add_argument("--budget", help="fail (exit 1) if the total is over this many dollars")
    est.add_argument(
        "--reference",
        action="append",
        default=[],
        help="a reference image for every image (repeatable): s3://bucket/key, a local file or a URL; "
        "measured from its header and priced at its real size",
    )
    est.add_argument("--aws-conn-id", default=None, help="Airflow AWS connection for s3:// references")
    est.set_defaults(func=_estimate)

    gen = sub.add_parser("generate", help="generate one image (emulator or real API)")
    gen.add_argument("prompt", help="the prompt (text, or a JSON object)")
    gen.add_argument("--size", default=None, help="preset or WxH")
    gen.add_argument("--seed", default=None, help="a whole number 0..4294967295")
    gen.add_argument("--model", default=None, help="default: the connection's model (pro)")
    gen.add_argument("--format", choices=["jpeg", "png"], default=None, help="default: from --out's suffix, else jpeg")
    gen.add_argument("--out", help="file to write, .png/.jpg/.jpeg (default flux2-<run id>.jpg)")
    gen.add_argument("--conn-id", default="flux2_default", help="Airflow connection (when FLUX2_API_KEY is unset)")
    gen.add_argument("--timeout", default="600", help="seconds to wait for the run (default 600)")
    gen.add_argument("--budget", default=None, help="fail if the estimate, or the cost the API reports, is over this")
    gen.set_defaults(func=_generate)

    doc = sub.add_parser(
        "doctor", help="prove every path the provider uses against the connection's API, under a spend cap"
    )
    doc.add_argument("--conn-id", default="flux2_default", help="Airflow connection (when FLUX2_API_KEY is unset)")
    doc.add_argument(
        "--model",
        action="append",
        default=None,
        help="a variant to check (repeatable); the first is the main run's (default: the connection's model)",
    )
    doc.add_argument("--all-models", action="store_true", help="price and edit-check every variant (1 MP each)")
    doc.add_argument(
        "--max-spend", default=None, help="dollars the doctor may spend at worst (default 0.50; 1.00 with --all-models)"
    )
    doc.add_argument("--json", default=None, help="write the report as JSON to this file")
    doc.add_argument(
        "--write-prices", default=None, help="write the measured prices to this file (the prices extra's format)"
    )
    doc.add_argument("--run-timeout", default="180", help="seconds a paid run may take")
    doc.add_argument("--replay-after", default="60", help="seconds before the first run's create is re-sent")
    doc.add_argument(
        "--sentinel",
        action="store_true",
        help="also check Runflow Sentinel: its job classes and price, then one paid evaluation",
    )
    doc.set_defaults(func=_doctor)
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
