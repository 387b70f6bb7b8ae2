"""The benchmarks' subclasses of the shipped operator still fit it: an override that no longer takes what
the operator passes fails ``make bench`` only, minutes in (``_write_report(failing=…)`` once did)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_operators
import instruments

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator

SUBCLASSES = [
    instruments.BenchOperator,
    instruments.WaveOperator,
    bench_operators.ShippedBenchOperator,
    bench_operators.WavesOperator,
]


def _fits(override, base) -> list[str]:
    """The parameters of ``base`` that ``override`` cannot take."""
    mine = inspect.signature(override).parameters
    kinds = {p.kind for p in mine.values()}
    missing = []
    for name, parameter in inspect.signature(base).parameters.items():
        if name in mine:
            continue
        positional = parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        if positional and parameter.VAR_POSITIONAL in kinds:
            continue
        if parameter.kind != parameter.POSITIONAL_ONLY and parameter.VAR_KEYWORD in kinds:
            continue
        missing.append(name)
    return missing


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_every_override_takes_what_the_shipped_operator_passes(cls):
    overrides = [
        name
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("__") and hasattr(FluxGenerateImageOperator, name)
    ]
    problems = {
        name: _fits(getattr(cls, name), getattr(FluxGenerateImageOperator, name))
        for name in overrides
        if _fits(getattr(cls, name), getattr(FluxGenerateImageOperator, name))
    }
    assert problems == {}


def test_the_check_finds_an_override_that_drops_a_keyword():
    class Broken(FluxGenerateImageOperator):
        def _write_report(self, context, *args):  # the bug this guards against
            return None

    assert _fits(Broken._write_report, FluxGenerateImageOperator._write_report) == ["failing"]
