"""``--strict``'s advice works: the flags a warning suggests make the same call pass.

Each case runs ``lca compute`` with settings that flag pairs, takes the warning's "accept it with `...`" flags
literally, appends them to the same command line and runs it again: exit 0 (the issue's defect: the advice
tightened ``--l1-tol`` below the default, and named no ``--overwrite``, so following it still failed).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from runs import make_tiny_run

from lca_cli.cli.app import main
from lca_cli.core.accuracy import SetAccuracy
from lca_cli.errors import EXIT_CODES


def lca(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("strict"), steps=6)


@pytest.mark.parametrize(
    "flags",
    [
        ["--tolerance", "1e-9", "--max-splits", "2"],  # a residual tolerance (the case: l1 at its default)
        ["--l1-tol", "1e-6", "--max-splits", "2"],  # the per-parameter target
        ["--l1-tol", "0", "--max-splits", "2"],  # no tolerance of any kind: every nonzero residual is flagged
        ["--refine", "doubling", "--l1-tol", "1e-6", "--max-splits", "4"],
        ["--method", "euler"],
    ],
)
def test_following_the_advice_literally_passes(capsys: pytest.CaptureFixture[str], run: Path, flags: list[str]) -> None:
    command = ["compute", run, *flags, "--strict", "--quiet", "--overwrite"]
    code, err = lca(capsys, *command)
    assert code == EXIT_CODES["tolerance"], err
    advice = re.search(r"accept it with `([^`]+)`", err)
    assert advice is not None, err
    code, err = lca(capsys, *command, *shlex.split(advice.group(1)))
    assert code == 0, err
    assert "Warning" not in err


def test_the_advice_never_tightens_a_tolerance_that_did_not_flag() -> None:
    # Flagged by --tolerance 1e-6 alone: every flagged pair is within the default l1_tol of 1e-3 (it needs 4e-4).
    acc = SetAccuracy(
        flagged=[3, 7], flagged_new=[3, 7], pairs=10, conservation=1e-5, mean_abs_delta=0.1, mean_splits=32,
        worst_step=7, worst_residual=2.5e-6, worst_delta=0.01, worst_splits=32, worst_l1=0.01, accept_l1=4e-4,
    )  # fmt: skip
    settings = {"tolerance": 1e-6, "rtol": None, "l1_tol": 1e-3, "max_splits": 32, "refine": "local"}
    assert acc.suggestion(settings) == (
        "refine further with `--max-splits 64 --overwrite`, or accept it with `--tolerance 4e-06 --overwrite`"
    )
    # Flagged by the per-parameter target: only --l1-tol is loosened, above what the flagged rows need.
    loose = {**settings, "tolerance": None, "l1_tol": 1e-4}
    assert acc.suggestion(loose).endswith("accept it with `--l1-tol 5e-04 --overwrite`")
