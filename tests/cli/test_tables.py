"""The text tables of ``lca summarize``: numbers whole, 80 columns."""

from __future__ import annotations

from lca_cli.analysis.reduce import _COLUMNS, _GROUP_COLUMNS, Summary
from lca_cli.cli.tables import render_summary

HEADER = {
    "store": "/data/runs/a/lca.zarr", "set": "train", "first_step": 999_000, "last_step": 999_999,
    "iterations": 999, "iterations_total": 999, "parameters": 273_066, "delta_loss": -0.01234567,
    "sum_lca": -0.01234, "buffer_lca": 0.0, "max_abs_residual": 1.2345e-7, "flagged": 3,
    "helped_fraction_mean": 0.5123, "helped_fraction_sd": 0.0456, "helped_share_mean": 0.41,
    "zero_share_mean": 0.2, "hurt_share_mean": 0.39, "integration_error": 3.2e-5,
}  # fmt: skip


def test_iteration_table_fits_80_columns_with_six_digit_steps() -> None:
    row = {
        "name": "999998", "step": 999_998, "next_step": 999_999, "delta_loss": -1.234567e-05, "lca": -1.234111e-05,
        "residual": -4.56789e-09, "splits": 32, "flagged": True, "l1_change": 1.23456e-05, "helped_fraction": 0.50123,
        "helped_share": 0.4, "zero_share": 0.2, "hurt_share": 0.4,
    }  # fmt: skip
    text = render_summary(Summary({**HEADER, "by": "iteration"}, ["name", *_COLUMNS["iteration"]], [row] * 3))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert "-1.235e-05" in text and "-4.6e-09" in text and "40/20/40" in text and "yes" in text


def test_layer_table_shows_verdicts_and_merged_columns() -> None:
    rows = [
        {"name": "layer3.2.conv2", "parameters": 36_928, "lca": -0.2149, "share": 0.068, "helped_fraction": 0.51,
         "helped_share": 0.5, "zero_share": 0.0, "hurt_share": 0.5, "significance": "helps", "step_50": 12,
         "step_90": 250},
        {"name": "bn1", "parameters": 32, "lca": 1.9e-3, "share": -0.001, "helped_fraction": 0.49,
         "helped_share": 0.49, "zero_share": 0.0, "hurt_share": 0.51, "significance": "within error",
         "step_50": None, "step_90": None},
    ]  # fmt: skip
    text = render_summary(Summary({**HEADER, "by": "layer"}, [*_GROUP_COLUMNS, "step_50", "step_90"], rows))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    table = [line for line in lines if line.startswith(("layer3", "bn1"))]
    assert "helps" in table[0] and "12/250" in table[0] and "50/ 0/50" in table[0]
    assert "≈0" in table[1] and table[1].rstrip().endswith("-")
    assert "integration error Σ|residual| 3.2e-05" in text
