"""The wording shared by captions and tables."""

from __future__ import annotations

from dataclasses import dataclass

from lca_cli.reporting.text import by_set, paper, pct, set_title


@dataclass
class _Set:
    name: str


def test_pct() -> None:
    assert pct(0.1234) == "12.3%" and pct(0.5, 0) == "50%" and pct(1e-4, 2) == "0.01%"
    assert pct(None) == "n/a" and pct(float("nan")) == "n/a"


def test_set_titles_name_the_usual_roles() -> None:
    assert set_title("train") == "set 'train' (training set)"
    assert set_title("val") == "set 'val' (held-out set)" and set_title("test") == "set 'test' (held-out set)"
    assert set_title("ood") == "set 'ood'"


def test_by_set_and_paper() -> None:
    assert by_set([_Set("train")], lambda d: d.name.upper()) == "TRAIN"
    assert by_set([_Set("train"), _Set("val")], lambda d: d.name.upper()) == "train: TRAIN; val: VAL"
    assert paper("it helps.", "it hurts.") == "Paper: it helps. This run: it hurts."
