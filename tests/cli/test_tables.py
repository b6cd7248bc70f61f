"""The text tables of ``lca summarize``: numbers whole, 80 columns."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from lca_cli.analysis.reduce import _COLUMNS, _GROUP_COLUMNS, Summary
from lca_cli.cli.tables import render_summary, shorten_middle

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


def bert_like_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """A BERT's parameter names (12 layers) on tiny tensors: the names, not the sizes, make a table wide."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("bert.embeddings.word_embeddings.weight", (5, 3))]
    for i in range(12):
        for part in ("attention.self.query", "attention.self.key", "attention.output.dense", "output.dense"):
            shapes += [(f"bert.encoder.layer.{i}.{part}.weight", (3, 3)), (f"bert.encoder.layer.{i}.{part}.bias", (3,))]
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes += [(f"bert.encoder.layer.{i}.{norm}.weight", (3,)), (f"bert.encoder.layer.{i}.{norm}.bias", (3,))]
    return [*shapes, ("cls.predictions.transform.LayerNorm.weight", (3,))]


@pytest.mark.parametrize("by", ["layer", "tensor"])
def test_transformer_names_fit_80_columns_and_stay_whole_in_csv_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], by: str
) -> None:
    from stores import make_store

    from lca_cli.cli.app import main

    make_store(tmp_path / "lca.zarr", n_pairs=10, shapes=bert_like_shapes())
    monkeypatch.setenv("COLUMNS", "80")  # what a person's 80-column terminal (or a pipe) gives

    def run(*args: str) -> str:
        with pytest.raises(SystemExit) as info:
            main(["summarize", str(tmp_path / "lca.zarr"), "--by", by, *args])
        assert info.value.code == 0
        return capsys.readouterr().out

    text = run()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "names shortened in the middle to fit" in text
    full = [r["name"] for r in json.loads(run("--format", "json"))["rows"]]
    assert "bert.encoder.layer.11.attention.output.LayerNorm" in [n.rsplit(".", 1)[0] for n in full] + full
    assert all("…" not in n for n in full)
    assert [r["name"] for r in csv.DictReader(io.StringIO(run("--format", "csv")))] == full
    # every table row is one of them, shortened in the middle, and no two read the same
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("----"))
    names = [line.split()[0] for line in lines[rule + 1 : rule + 1 + len(full)]]
    assert len(names) == len(full) == len(set(names))
    for short, name in zip(names, full, strict=True):  # parts cut to a letter, then characters (…) if need be
        assert short == name or (len(short) < len(name) and short[0] == name[0] and short[-1] in (name[-1], "…"))


def test_shorten_middle_keeps_names_distinct() -> None:
    names = [f"bert.encoder.layer.{i}.attention.output.dense" for i in (1, 10, 11)]
    assert shorten_middle(names, 24) == [f"bert.e.l.{i}.a.o.dense" for i in (1, 10, 11)]
    # too long even with parts cut to a letter: characters go in the middle, at a cut that keeps them apart
    short = shorten_middle(names, 12)
    assert all(len(s) <= 12 and "…" in s for s in short) and len(set(short)) == 3, short
    assert shorten_middle(["fc1", "fc2"], 16) == ["fc1", "fc2"]


def test_table_percentages_never_print_a_nonzero_share_as_zero() -> None:
    """A layer with 0.02% of the entries helped reads 0.02%, not 0.0% (the report's rule, issue 24 item 8)."""
    header = {**HEADER, "helped_share_mean": 2e-4, "zero_share_mean": 0.9996, "hurt_share_mean": 2e-4}
    text = render_summary(Summary({**header, "by": "layer"}, ["name"], []))
    assert "helped 0.02% · zero 99.96% · hurt 0.02%" in text
    assert "0.0%" not in text  # neither 0.0% nor 100.0%
