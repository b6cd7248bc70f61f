"""Fixtures: tiny training runs written with the real writer, and their float64 reference LCA.

``make_run(dir, kind)`` trains one of the models of :data:`reference.RUN_KINDS` for a few SGD-with-momentum
steps, saving a checkpoint per step with :class:`lca_cli.training.record.CheckpointWriter` and the run's ``lca.toml``
with ``write_config``. Factories are referenced as ``"reference:NAME"``: ``tests/`` is on ``sys.path``.
Session fixtures train each kind once; tests that modify a run copy it first (:func:`copy_run`).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import reference  # noqa: E402

from lca_cli.cli.app import main  # noqa: E402
from lca_cli.computation.config import Config, load_config  # noqa: E402
from lca_cli.training.record import CheckpointWriter  # noqa: E402

DEFAULT_STEPS = 16

# The models are tiny: intra-op threads only add overhead (and, on a busy 2-core machine, 10x slowdowns from
# oversubscription). One thread also keeps every float reduction in a fixed order.
torch.set_num_threads(1)


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``lca ARGS`` in this process: its exit status (as Python's ``SystemExit`` gives it), stdout and stderr."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else code if isinstance(code, int) else 1), out, err


def train_run(run_dir: Path, kind: str, steps: int | None = None, seed: int = 0, background: bool = True) -> Path:
    """Train ``kind`` for ``steps`` steps (SGD with momentum, or Adam), writing ``steps + 1`` checkpoints, lca.toml."""
    spec = reference.RUN_KINDS[kind]
    steps = spec.get("steps", DEFAULT_STEPS) if steps is None else steps
    model = getattr(reference, spec["model"])(seed=seed)
    x, y = getattr(reference, spec["data"])(**spec.get("data_kwargs", {}))
    loss_fn = reference.ref_loss(spec["loss"])
    if spec.get("optimizer", "sgd") == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=0.9)
    batch = spec["batch"]
    g = torch.Generator().manual_seed(seed + 1)
    with CheckpointWriter(run_dir, background=background) as ckpt:
        ckpt.write_config(
            model=f"reference:{spec['model']}",
            data=f"reference:{spec['data']}",
            loss=spec["loss"],
            model_kwargs={"seed": seed},
            data_kwargs=spec.get("data_kwargs", {}),
        )
        ckpt.save(model, step=0)
        for step in range(1, steps + 1):
            idx = torch.randint(0, x.shape[0], (batch,), generator=g)
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            ckpt.save(model, step)
    return run_dir


def make_run(tmp_path: Path, kind: str, steps: int | None = None, **kwargs: object) -> tuple[Path, Config]:
    """Train a run into ``tmp_path / kind`` and return ``(run_dir, config)``."""
    run_dir = train_run(tmp_path / kind, kind, steps, **kwargs)  # type: ignore[arg-type]
    return run_dir, load_config(run_dir / "lca.toml")


def copy_run(src: Path, dst: Path, files: list[str] | None = None) -> Path:
    """Copy a run's lca.toml and its checkpoints (all, or the named ones) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "lca.toml", dst / "lca.toml")
    for path in sorted(src.glob("*.safetensors")):
        if files is None or path.name in files:
            shutil.copy2(path, dst / path.name)
    return dst


def load_states(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    """The run's checkpoints in step order, read with safetensors directly (file names sort by step)."""
    return [load_file(str(p)) for p in sorted(run_dir.glob("step_*.safetensors"))]


@dataclass
class Reference:
    """Float64 reference of a whole run: ``lca`` (T, P) and ``loss`` (T + 1,)."""

    lca: np.ndarray
    loss: np.ndarray


def reference_for(run_dir: Path, kind: str, n: int = 32, seed: int = 0) -> Reference:
    """Compute the reference LCA of a run written by :func:`train_run`."""
    spec = reference.RUN_KINDS[kind]
    model = getattr(reference, spec["model"])(seed=seed)
    x, y = getattr(reference, spec["data"])(**spec.get("data_kwargs", {}))
    lca, loss = reference.reference_run(model, load_states(run_dir), x, y, reference.ref_loss(spec["loss"]), n)
    return Reference(lca, loss)


class RunCache:
    """Session-wide cache of trained runs and references (training and the reference are the slow parts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runs: dict[str, tuple[Path, Config]] = {}
        self._refs: dict[tuple[str, int], Reference] = {}

    def run(self, kind: str) -> tuple[Path, Config]:
        if kind not in self._runs:
            self._runs[kind] = make_run(self.root, kind)
        return self._runs[kind]

    def reference(self, kind: str, n: int = 32) -> Reference:
        if (kind, n) not in self._refs:
            run_dir, _ = self.run(kind)
            self._refs[(kind, n)] = reference_for(run_dir, kind, n)
        return self._refs[(kind, n)]


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> RunCache:
    """Trained runs (read-only: copy before modifying) and their references, shared by the session."""
    return RunCache(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def run_factory(tmp_path: Path) -> Callable[..., tuple[Path, Config]]:
    """``make_run`` into this test's own ``tmp_path``."""

    def factory(kind: str, steps: int | None = None, **kwargs: object) -> tuple[Path, Config]:
        return make_run(tmp_path, kind, steps, **kwargs)

    return factory


@pytest.fixture
def lca_read_spy(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A function that, once called, fails any read of ``lca`` outside ``LcaStore.iter_lca`` (call it after
    building the store) and returns ``{"calls": iter_lca passes started}``, updated as the test runs."""
    from lca_cli.store.lcastore import LcaStore

    def arm() -> dict[str, int]:
        monkeypatch.setattr(LcaStore, "iter_lca", iter_lca)
        monkeypatch.setattr(LcaStore, "array", array)
        return state

    state = {"depth": 0, "calls": 0}
    orig_iter, orig_array = LcaStore.iter_lca, LcaStore.array

    def iter_lca(self, *a, **k):  # type: ignore[no-untyped-def]
        state["depth"] += 1
        state["calls"] += 1
        try:
            yield from orig_iter(self, *a, **k)
        finally:
            state["depth"] -= 1

    def array(self, set_name, name):  # type: ignore[no-untyped-def]
        assert name != "lca" or state["depth"] > 0, "lca read outside iter_lca"
        return orig_array(self, set_name, name)

    return arm
