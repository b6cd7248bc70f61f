"""The reporting tests draw small synthetic stores made by ``make_store`` of the analysis tests
(``tests/analysis/test_views.py``): its folder goes on ``sys.path`` so that ``pytest tests/reporting`` runs alone."""

from __future__ import annotations

import sys
from pathlib import Path

ANALYSIS_TESTS = Path(__file__).resolve().parents[1] / "analysis"
if str(ANALYSIS_TESTS) not in sys.path:
    sys.path.append(str(ANALYSIS_TESTS))
