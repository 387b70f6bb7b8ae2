"""Dollars as text: the two ways money is shown (the bottom; exact amounts are ``Decimal`` everywhere).

``format_usd`` keeps every digit (records, manifests, errors); ``cents`` rounds to the cent for a
plan or progress line a person reads.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def format_usd(amount: Decimal) -> str:
    """Dollars as text with at least three decimals (``0.045``, ``0.030``, ``1.110``); never rounded."""
    if amount == amount.quantize(Decimal("0.001")):
        return f"{amount:.3f}"
    return format(amount.normalize(), "f")


def cents(amount: Decimal) -> str:
    """``1,234.50`` for a plan or progress line; exact amounts stay in records, manifests and summaries."""
    return f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,.2f}"


__all__ = ["cents", "format_usd"]
