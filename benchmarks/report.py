"""Rendering results: a plain table for the console, Markdown for ``docs/performance.md``.

The page keeps its prose; only the block between the markers is rewritten, so a rerun replaces the
previous results and nothing else.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
SOAK_START = "<!-- soak:start -->"
SOAK_END = "<!-- soak:end -->"


def number(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def times(value: float) -> str:
    """A ratio as ``3.4×``."""
    return "n/a" if math.isnan(value) else f"{value:.2f}×"


def percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.0f}%"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, for a terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)) for line in [header]]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_version(repo: Path) -> str:
    """The commit measured, and whether the package had uncommitted changes on top of it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "airflow_provider_flux2"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} + uncommitted changes in the package" if changed else head


def machine(airflow_version: str, repo: Path) -> list[tuple[str, str]]:
    """What the figures were measured on, and which code."""
    return [
        ("date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("commit", code_version(repo)),
        ("cores", str(os.cpu_count())),
        ("CPU", _cpu_model()),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("Airflow", airflow_version),
    ]


def machine_table(machine: Sequence[tuple[str, str]]) -> list[str]:
    """:func:`machine` as the Markdown table that ends every benchmark's block of results."""
    return markdown_table(["", ""], [[key, value] for key, value in machine])


def replace_block(page: Path, block: str, markers: tuple[str, str] = (START, END)) -> None:
    """Put ``block`` between the markers of ``page``, leaving the rest of the page as it is."""
    first, last = markers
    head, start, rest = page.read_text().partition(first)
    _, end, tail = rest.partition(last)
    if not start or not end:
        raise SystemExit(f"{page} has no {first} … {last} block to replace")
    page.write_text(f"{head}{first}\n{block.strip()}\n{last}{tail}")
