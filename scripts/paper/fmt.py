"""Number formatting of the page: a nonzero value never prints as 0, NaN prints as ``n/a``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def f(x: float | None, digits: int = 3) -> str:
    """A number in ``digits`` decimals, or in scientific notation when that would hide it or it is huge.

    Args:
        x: The number (None or NaN: ``n/a``).
        digits: Decimals in fixed notation (``digits - 1`` in scientific notation).

    Returns:
        ``0.002``, ``1.23e-05``, ``-4.50e+06``; exactly ``0.000`` only for 0.

    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    x = float(x)
    # Below half a unit of the last decimal the fixed form would round a nonzero value to 0.
    if x != 0 and (abs(x) < 10**-digits or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}f}"


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal (two significant digits below 0.1%); ``n/a`` for NaN."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x != 0 and abs(x) < 1e-3:
        return f"{100 * x:.2g}%"
    return f"{100 * x:.1f}%"


def mean_sd(x: Any, digits: int = 4) -> str:
    """``mean ± sd`` (sample sd, ddof 1) of the values, or the one value alone."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return f(float(x.mean()), digits)
    return f"{f(float(x.mean()), digits)} ± {f(float(x.std(ddof=1)), digits)}"


def verdict_word(verdict: str) -> str:
    """The verdict as the page prints it, bold: **agrees**, **partly**, **disagrees**, **no data**."""
    return f"**{verdict}**"


def peak_counts(counts: list[int]) -> str:
    """Peaks per layer: each count for up to 6 layers, else the range and the sum."""
    if len(counts) <= 6:
        return ", ".join(map(str, counts))
    return f"{len(counts)} layers: {min(counts)}-{max(counts)} each, {sum(counts)} in all"
