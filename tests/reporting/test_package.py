"""``lca_cli.reporting``'s public names: a curated ``__all__``, loaded on first use so the import stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lca_cli.reporting


def test_importing_the_package_loads_no_numpy_matplotlib_or_torch() -> None:
    code = (
        "import sys, lca_cli.reporting as r; assert r.__all__; "
        "print(sorted(m for m in ('numpy', 'matplotlib', 'torch', 'zarr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_resolve_to_their_modules() -> None:
    from lca_cli.reporting import compare, html, report

    assert sorted(lca_cli.reporting.__all__) == ["ReportResult", "VIEWS", "write_comparison", "write_report"]
    assert lca_cli.reporting.write_report is report.write_report
    assert lca_cli.reporting.write_comparison is compare.write_comparison
    assert lca_cli.reporting.ReportResult is html.ReportResult and lca_cli.reporting.VIEWS == report.VIEWS
    assert set(lca_cli.reporting.__all__) <= set(dir(lca_cli.reporting))
    with pytest.raises(AttributeError, match="no attribute 'gather_set'"):
        lca_cli.reporting.gather_set  # noqa: B018  (private to the modules)
