"""stdout is lca's: whatever the user's factories and forward passes print goes to stderr.

``lca compute --json`` prints one JSON document on stdout, ``--dry-run --json`` too, and a plain call prints
nothing there, however chatty the code that lca imports and runs (each case in a fresh process, as a user runs
it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faults import run_lca
from runs import make_tiny_run

CHATTY = """
from tinyfactories import data as quiet_data, model as quiet_model


def model():
    print("model factory says hello")
    net = quiet_model()
    net.register_forward_pre_hook(lambda module, args: print("forward pass says hello"))
    return net


def data():
    print("data factory says hello")
    return quiet_data()
"""


@pytest.fixture(scope="module")
def chatty_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run whose model and data factories, and the model's forward pass, print to stdout."""
    run = make_tiny_run(tmp_path_factory.mktemp("stdout"), steps=3)
    (run / "chatty.py").write_text(CHATTY)
    toml = (run / "lca.toml").read_text()
    for name in ("model", "data"):
        toml = toml.replace(f'"tinyfactories:{name}"', f'"chatty:{name}"')
    assert toml.count("chatty:") == 2
    (run / "lca.toml").write_text(toml)
    return run


lca = run_lca  # ``lca ARGS`` in a fresh process, as a user runs it


def test_compute_json_is_one_document_whatever_user_code_prints(chatty_run: Path) -> None:
    proc = lca("compute", chatty_run, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["computed"] == 3
    for said in ("model factory", "data factory", "forward pass"):
        assert f"{said} says hello" in proc.stderr and said not in proc.stdout


def test_dry_run_json_and_plain_calls_keep_stdout_for_data(chatty_run: Path) -> None:
    # Into a new store: the dry run computes its first pairs (a complete store's dry run builds nothing).
    proc = lca("compute", chatty_run, "--dry-run", "--json", "--out", chatty_run.parent / "dry.zarr")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pairs"] == 3
    assert "data factory says hello" in proc.stderr
    proc = lca("compute", chatty_run)  # the store is complete: nothing is computed, but factories still run
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "model factory says hello" in proc.stderr
