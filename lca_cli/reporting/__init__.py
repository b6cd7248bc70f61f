"""The HTML report of a store and the comparison of two: gathering, figures, captions, page.

Public: :func:`write_report` (``lca report STORE``), :func:`write_comparison` (``lca report A B``), what they
return (:class:`ReportResult`) and the report's view keys (:data:`VIEWS`). The modules, one concern each:

- :mod:`~lca_cli.reporting.gather`: what a page shows, read from a store into complete, immutable data.
- :mod:`~lca_cli.reporting.numbers`: the headline numbers (``ReportResult.numbers``).
- :mod:`~lca_cli.reporting.captions`: each figure's caption, computed from the data (no drawing).
- ``figures_loss``, ``figures_parameters``, ``figures_layers``, ``figures_maps``, ``figures_sync``: the
  figures, one module per family.
- :mod:`~lca_cli.reporting.html`: page assembly; :mod:`~lca_cli.reporting.text`: shared wording;
  :mod:`~lca_cli.reporting.plots`: drawing helpers and colours (also used by ``scripts/reproduce_paper.py``).
- :mod:`~lca_cli.reporting.report`: ``lca report``'s views in order; :mod:`~lca_cli.reporting.compare`: two runs.

Importing this package stays cheap (no numpy, store or matplotlib): the names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lca_cli.reporting.compare import write_comparison
    from lca_cli.reporting.html import ReportResult
    from lca_cli.reporting.report import VIEWS, write_report

__all__ = ["VIEWS", "ReportResult", "write_comparison", "write_report"]

#: Where each public name lives (imported on first access, PEP 562).
_HOMES = {
    "VIEWS": "lca_cli.reporting.report",
    "ReportResult": "lca_cli.reporting.html",
    "write_comparison": "lca_cli.reporting.compare",
    "write_report": "lca_cli.reporting.report",
}


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (keeps ``import lca_cli.reporting`` cheap)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, public ones included before they are loaded."""
    return sorted({*globals(), *__all__})
