"""Store metadata read as untrusted: edited ``zarr.json`` files and attributes give one line (exit 6), fast.

Before lca_cli.store.validate, a huge ``steps`` shape made ``verify`` and ``summarize`` hang, a huge chunk grid
exhausted memory (exit 70), and an edited ``params`` printed 1,000,000,000,032 parameters with exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runs import make_tiny_run

from lca_cli.cli import main
from lca_cli.errors import EXIT_CODES

#: An answer slower than this is a hang (the checks themselves take milliseconds).
LIMIT_S = 5
#: Examples of the property test: lean in the suite; LCA_FUZZ_EXAMPLES=1000 for a long campaign.
FUZZ_EXAMPLES = int(os.environ.get("LCA_FUZZ_EXAMPLES", "60"))
#: Worst answer time seen by the property test (reported by the last test of the module).
WORST: list[float] = [0.0]
EXAMPLES: list[int] = [0]


class Hang(Exception):
    """Raised by the alarm when one answer takes more than LIMIT_S seconds."""


def answer(*args: object) -> tuple[int, str, str, float]:
    """Run the CLI in this process with an alarm; return code, stdout, stderr and seconds."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()

    def ring(*_: Any) -> None:
        raise Hang(f"{args} took over {LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(LIMIT_S)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - start
    code = info.value.code
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue(), seconds


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_tiny_run(tmp_path_factory.mktemp("validate"), steps=10)
    code, _, err, _ = answer("compute", run, "--quiet")
    assert code == 0, err
    return run / "lca.zarr"


@pytest.fixture(scope="module")
def baseline(computed: Path) -> dict[str, Any]:
    code, out, err, _ = answer("summarize", computed, "--by", "layer", "--format", "json")
    assert code == 0, err
    return json.loads(out)


def edit(path: Path, change: Any) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def assert_damage(store: Path) -> None:
    for args in (("verify", store), ("summarize", store, "--by", "layer")):
        code, out, err, seconds = answer(*args)
        assert code == EXIT_CODES["store"], (args, code, err[-2000:])
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("Error: "), err
        assert seconds < 1.0, seconds


@pytest.fixture
def store(computed: Path, tmp_path: Path) -> Path:
    out = tmp_path / "s.zarr"
    shutil.copytree(computed, out)
    return out


def test_huge_steps_shape_is_damage_not_a_hang(store: Path) -> None:
    """steps and n_checkpoints claim 10^12 checkpoints: verify and summarize hung past 120 s."""
    edit(store / "steps" / "zarr.json", lambda m: m.update(shape=[10**12]))
    edit(store / "zarr.json", lambda m: m["attributes"].update(n_checkpoints=10**12))
    assert_damage(store)


def test_huge_chunk_grid_is_damage_not_memory(store: Path) -> None:
    """One lca chunk of 10^9 rows: reading it allocated gigabytes and crashed with exit 70."""
    edit(
        store / "train" / "lca" / "zarr.json", lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[10**9, 1])
    )
    assert_damage(store)


def test_params_that_disagree_with_lca_are_damage(store: Path) -> None:
    """An edited params shape printed "1,000,000,000,032 params" with exit 0, and verify said OK."""

    def grow(m: dict[str, Any]) -> None:
        m["attributes"]["params"][-1]["shape"] = [10**12]

    edit(store / "zarr.json", grow)
    assert_damage(store)


def test_a_lowered_n_checkpoints_is_damage(store: Path) -> None:
    """Rows marked done past the committed steps: a lowered n_checkpoints would hide them with exit 0."""
    edit(store / "zarr.json", lambda m: m["attributes"].update(n_checkpoints=4))
    assert_damage(store)


def test_params_names_that_disagree_with_the_tensor_coordinate_are_damage(store: Path) -> None:
    def rename(m: dict[str, Any]) -> None:
        m["attributes"]["params"][0]["name"] = "other.weight"

    edit(store / "zarr.json", rename)
    assert_damage(store)


def test_steps_not_ascending_are_damage(store: Path) -> None:
    import numpy as np
    import zarr

    arr = zarr.open_array(str(store / "steps"), mode="r+")
    values = np.asarray(arr[:])
    values[3] = values[2]
    arr[:] = values
    assert_damage(store)


# -- the property: any edit of a zarr.json answers in one line or gives the unedited store's numbers --------

_INTS = st.sampled_from([-1, 0, 1, 2, 3, 7, 100, 2**31, 2**40, 10**12, 2**63 - 1])
_VALUES = st.one_of(
    _INTS,
    st.sampled_from([None, True, "x", "float32", "int64", "../../etc", 1.5, float("nan"), [], {}, [0], [10**12, 1]]),
)


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every position in a JSON document (dict keys and list indices), containers included."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


_NUMBERS = ("iterations", "first_step", "last_step", "parameters", "columns", "delta_loss", "sum_lca")


@pytest.mark.slow
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize="LCA_FUZZ_EXAMPLES" not in os.environ,
)
@given(data=st.data())
def test_any_metadata_edit_is_one_line_or_harmless(
    computed: Path, baseline: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    store = tmp_path_factory.mktemp("fuzz") / "s.zarr"
    shutil.copytree(computed, store)
    files = sorted(str(p.relative_to(store)) for p in store.rglob("zarr.json"))
    files += ["zarr.json"] * (len(files) // 2)  # the root's attributes (params, sets, ...) as often as the rest
    for _ in range(data.draw(st.integers(1, 2), label="edits")):
        target = store / data.draw(st.sampled_from(files), label="file")
        doc = json.loads(target.read_text())
        paths = [p for p in _leaves(doc) if p]
        where = data.draw(st.sampled_from(paths), label="where")
        value = data.draw(_VALUES, label="value")
        _set(doc, where, value)
        target.write_text(json.dumps(doc))
    EXAMPLES[0] += 1
    for args in (("verify", store), ("summarize", store, "--by", "layer", "--format", "json")):
        code, out, err, seconds = answer(*args)
        WORST[0] = max(WORST[0], seconds)
        assert "Traceback" not in err, err[-3000:]
        assert seconds < 1.0, (args, seconds)
        if code == 0:
            if args[0] == "summarize":
                got = json.loads(out)
                for key in _NUMBERS:
                    assert got["header"][key] == baseline["header"][key], (key, got["header"][key])
                assert [(r["name"], r["lca"]) for r in got["rows"]] == [(r["name"], r["lca"]) for r in baseline["rows"]]
            continue
        assert code == EXIT_CODES["store"], (args, code, err[-3000:])
        assert out == "" and len(err.strip().splitlines()) == 1, err
    shutil.rmtree(store.parent)


@pytest.mark.slow
def test_report_fuzz_figures() -> None:
    """Prints what the property test saw (run with -s): examples and the worst answer time."""
    print(f"metadata fuzz: {EXAMPLES[0]} examples, worst answer {WORST[0] * 1000:.0f} ms")
