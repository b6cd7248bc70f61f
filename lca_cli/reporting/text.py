"""Wording shared by the captions, tables and titles of ``lca report`` and the run comparison.

Small pure functions that turn numbers into the page's phrases (a percentage, a set's title, the "Paper: ...
This run: ..." pair), so that every caption says the same thing the same way. No matplotlib, no store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

__all__ = ["ROLES", "Named", "by_set", "paper", "pct", "set_title"]

#: Roles of the usual evaluation-set names, shown beside them in titles.
ROLES = {"train": "training set", "val": "held-out set", "valid": "held-out set", "test": "held-out set"}


class Named(Protocol):
    """Anything with an evaluation set's ``name`` (the per-set data of a page)."""

    @property
    def name(self) -> str:
        """The evaluation set."""
        ...


_D = TypeVar("_D", bound=Named)


def pct(x: float | None, digits: int = 1) -> str:
    """``x`` as a percentage with ``digits`` decimals (``0.123`` -> ``12.3%``); ``n/a`` for None or non-finite.

    A nonzero share too small for ``digits`` decimals gets one significant digit (``0.00002`` -> ``0.002%``),
    never ``0.0%``; a share short of 1 by less than that shows the gap (``0.9996`` -> ``99.96%``), never ``100.0%``.

    Args:
        x: A share in ``[0, 1]`` (or None).
        digits: Decimals shown.

    Returns:
        The percentage text.

    """
    if x is None or not math.isfinite(x):
        return "n/a"
    v = 100 * x
    if v != 0 and abs(v) < 0.5 * 10.0**-digits:  # would print as 0.0%: show one significant digit instead
        return f"{v:.{max(digits, -math.floor(math.log10(abs(v))))}f}%"
    gap = 100 - abs(v)
    if 0 < gap < 0.5 * 10.0**-digits:  # would print as 100.0%: as many decimals as show the gap
        return f"{v:.{max(digits, -math.floor(math.log10(gap)))}f}%"
    return f"{v:.{digits}f}%"


def set_title(name: str) -> str:
    """A panel's title for evaluation set ``name``: ``set 'val' (held-out set)``, the role when it is a usual one.

    Args:
        name: The evaluation set.

    Returns:
        The title.

    """
    role = ROLES.get(name, "")
    return f"set '{name}'" + (f" ({role})" if role else "")


def by_set(data: Sequence[_D], text: Callable[[_D], str]) -> str:
    """``train: X; val: Y`` over the sets shown (just ``X`` when there is one).

    Args:
        data: The per-set data, in page order.
        text: What to say about one set.

    Returns:
        The joined text.

    """
    if len(data) == 1:
        return text(data[0])
    return "; ".join(f"{d.name}: {text(d)}" for d in data)


def paper(finding: str, run: str) -> str:
    """The caption's closing pair: what the paper found, then what this run shows.

    Args:
        finding: The paper's finding (a sentence).
        run: This run's numbers (a sentence).

    Returns:
        ``Paper: <finding> This run: <run>``.

    """
    return f"Paper: {finding} This run: {run}"
