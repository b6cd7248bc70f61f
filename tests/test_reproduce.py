"""Smoke test of scripts/reproduce_paper.py: the whole pipeline on tiny synthetic runs writes every section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from load_scripts import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reproduce_paper.py"


def _load_script():  # type: ignore[no-untyped-def]
    return load_script("reproduce_paper", "reproduce_paper")


@pytest.mark.slow
def test_smoke_run_writes_every_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rp = _load_script()
    out, work = tmp_path / "docs", tmp_path / "work"
    # Two runs computed first by an --only process, then reused by the run that writes the page.
    base = ["--smoke", "--work", str(work), "--device", "cpu", "--reuse"]
    assert rp.main([*base, "--only", "fc_mnist,fc_mnist_frozen"]) == 0
    assert not out.exists() and (work / "fc_mnist" / "run.json").is_file()
    assert rp.main([*base, "--only", "nope"]) == 2
    capsys.readouterr()
    code = rp.main([*base, "--out", str(out), "--no-figures"])
    assert code == 0
    err = capsys.readouterr().err
    assert "fc_mnist: reusing the run finished on" in err and "fc_mnist_frozen: reusing" in err
    assert "lenet_mnist: trained" in err
    text = (out / "paper.md").read_text(encoding="utf-8")
    for heading in (
        "## Setup",
        "## 1. Noise",
        "## 2. Some layers hurt overall",
        "### Freezing the last layer",
        "## 3. Learning is synchronised across layers",
        "## 4. Method accuracy",
    ):
        assert heading in text, heading
    assert "**Paper:**" in text and "Hardware:" in text and "smoke" in text
    # The frozen layer's LCA is exactly zero, and the reference row of finding 4 is there.
    assert "max |LCA| over its parameters, all seeds = 0." in text
    # both conventions of finding 1, the integration error of finding 2, both baselines of finding 3
    assert "(a) all entries" in text and "(a) nonzero entries" in text and "zeros excluded" in text
    assert "integration error" in text and "| helps |" in text
    assert "raw: observed vs baseline" in text and "step-size controlled: observed vs baseline" in text
    assert "reference (float64, n = 32 on every pair)" in text
    assert not (out / "figures").exists()  # --no-figures
    # Runs and stores stay in --work.
    assert (work / "fc_mnist" / "lca.zarr").is_dir()
    # The checks a reader makes: noise floor, transient, windowed sync, both freeze experiments, the verdict list.
    parts = ("(a) floor 1e-12", "entries below resolution", "(b) per parameter", "transient k =",
             "Σpos / abs(Σneg)", "| | active (", "of the ResNet-20 stand-in at initialisation",
             "## The paper's findings and this page's verdicts", "### Where this disagrees with the paper")  # fmt: skip
    for part in parts:
        assert part in text, part

    # With figures (the runs reused): every figure numbered in page order, "Figure N" beside figN_NAME.png, and
    # figures of an earlier page (numbered or from before numbering) gone.
    (out / "figures").mkdir()
    for stale in ("fig9_gone.png", "helped_fraction.png"):
        (out / "figures" / stale).write_bytes(b"")
    assert rp.main([*base, "--out", str(out)]) == 0
    assert not (out / "figures" / "fig9_gone.png").exists() and not (out / "figures" / "helped_fraction.png").exists()
    text = (out / "paper.md").read_text(encoding="utf-8")
    figs = re.findall(r"!\[[^\]]*\]\(figures/fig(\d+)_(\w+)\.png\)\n\n\*Figure (\d+)\. ", text)
    assert [int(n) for n, _, _ in figs] == list(range(1, len(figs) + 1)) and len(figs) >= 5
    assert all(n == m for n, _, m in figs)
    assert {p.name for p in (out / "figures").glob("fig*.png")} == {f"fig{n}_{name}.png" for n, name, _ in figs}


def test_committed_figures_exist_are_true_colour_and_small() -> None:
    from lca_cli.reporting.plots import png_info

    root = SCRIPT.parent.parent
    linked = {
        (root / "docs" / m)
        for m in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (root / "docs" / "paper.md").read_text())
    } | {(root / m) for m in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (root / "README.md").read_text())}
    assert any("report_" in p.name for p in linked)  # the README pictures the report's views
    for path in sorted(linked):
        assert path.is_file(), path
        assert path.stat().st_size < 500_000, path
        assert png_info(path)[2:] == (8, 2), path  # 8-bit true colour, no palette


def test_only_the_cpu_scale_page_goes_to_docs_by_default() -> None:
    rp = _load_script()
    assert rp.default_out("cpu-scale") == SCRIPT.parent.parent / "docs"  # the committed page
    assert rp.default_out("quick") == Path("paper-quick") and rp.default_out("smoke") == Path("paper-smoke")
