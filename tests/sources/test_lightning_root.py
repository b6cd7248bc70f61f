"""Lightning's README layout: the folder that holds ``lightning_logs/`` is a run directory.

README's *Lightning* section, followed as written: ``classifier.py`` verbatim, a short ``train.py`` with the
``LcaCallback`` and ``ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)`` trained by the real ``lightning``
Trainer (its default logger writes ``lightning_logs/version_0/``), then each ``lca compute`` command the section
shows, from the training folder. The folder holding both ``runs/pl/`` (the callback's run) and
``lightning_logs/`` used to exit 4 ("several folders hold checkpoints").
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from faults import run_lca

from lca_cli.store.lcastore import LcaStore

pytestmark = [
    pytest.mark.slow,  # lightning's import and training in a subprocess: about 10-20 s
    pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="needs the lightning extra"),
]

README = Path(__file__).resolve().parents[2] / "README.md"

TRAIN = """
import lightning as L
import torch
from classifier import Classifier
from lightning.pytorch.callbacks import ModelCheckpoint

from lca_cli.training.integrations.lightning import LcaCallback

torch.manual_seed(0)
x = torch.randn(320, 20)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :3].argmax(1)), batch_size=64)
trainer = L.Trainer(
    max_steps=5, enable_progress_bar=False, enable_model_summary=False,
    callbacks=[LcaCallback("runs/pl", data="classifier:eval_set"),
               ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)],
)
trainer.fit(Classifier(), loader)
"""


def readme_block(name: str) -> str:
    """The README's python block that starts with ``# NAME``."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if b.startswith(f"# {name}\n"))


def lca(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_lca(*args, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plroot")
    (root / "classifier.py").write_text(readme_block("classifier.py"))
    (root / "train.py").write_text(TRAIN)
    proc = subprocess.run([sys.executable, "train.py"], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((root / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))) == 5
    return root


def test_the_folder_holding_lightning_logs_is_a_run(trained: Path) -> None:
    proc = lca(trained, "compute", "runs/pl")
    assert proc.returncode == 0, proc.stderr
    flat = np.asarray(LcaStore.open(trained / "runs/pl/lca.zarr").array("train", "lca")[:])
    proc = lca(trained, "compute", "lightning_logs/version_0/checkpoints", "--config", "runs/pl/lca.toml")
    assert proc.returncode == 0, proc.stderr
    proc = lca(trained, "compute", ".", "--config", "runs/pl/lca.toml")  # "or the folder that holds lightning_logs/"
    assert proc.returncode == 0, proc.stderr
    assert "using Lightning's checkpoints, not those in runs/pl" in proc.stderr
    store = LcaStore.open(trained / "lca.zarr")
    assert store.steps.tolist() == [1, 2, 3, 4, 5]  # ModelCheckpoint saves after each step: no step 0
    for out in (trained / "lca.zarr", trained / "lightning_logs/version_0/checkpoints/lca.zarr"):
        rows = np.asarray(LcaStore.open(out).array("train", "lca")[:])
        # The same weights as the callback's files: the same rows (up to the last bits: --threads auto may pick
        # another thread count, and so another summation order, in each call).
        np.testing.assert_allclose(rows, flat[1:], rtol=1e-4, atol=1e-6 * float(np.abs(flat).max()))


def test_the_readme_example_verbatim(tmp_path: Path) -> None:
    """README's classifier.py and train.py as written (only ``max_steps`` cut), then ``lca compute runs/pl``."""
    train = readme_block("train.py")
    assert "max_steps=500" in train
    (tmp_path / "classifier.py").write_text(readme_block("classifier.py"))
    (tmp_path / "train.py").write_text(train.replace("max_steps=500", "max_steps=4"))
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = lca(tmp_path, "compute", "runs/pl")
    assert proc.returncode == 0, proc.stderr
    store = LcaStore.open(tmp_path / "runs/pl/lca.zarr")
    assert store.steps.tolist() == [0, 1, 2, 3, 4] and bool(np.asarray(store.array("train", "done")[:]).all())
