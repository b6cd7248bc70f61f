"""Lightning: a real ``lightning.pytorch.Trainer`` with ``ModelCheckpoint`` and the lca callback.

The ``.ckpt`` files (state_dict under ``"state_dict"``, keys prefixed by the LightningModule's attribute, steps
in their ``global_step`` record) and the callback's flat files (step 0 included) give the same rows, bit for
bit, whether the model factory builds the LightningModule or only the network inside it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lca_cli.computation.config import load_config
from lca_cli.computation.runner import compute
from lca_cli.store.lcastore import LcaStore

pytestmark = [
    pytest.mark.slow,  # importing lightning (in the fixture, not at collection) and training: about 10 s
    pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="needs the lightning extra"),
    # Lightning's own advice for real training (dataloader workers, logging intervals) is not this test's concern.
    pytest.mark.filterwarnings("ignore::UserWarning:lightning"),
    # lightning 2.6 against torch 2.13: a deprecation inside lightning itself, nothing this project calls.
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]

MODULE = """
import lightning as L
import torch

class Classifier(L.LightningModule):
    def __init__(self, hidden=8, lr=0.2):
        super().__init__()
        self.save_hyperparameters()
        self.model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3))
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=torch.ones(3))  # a buffer outside the network

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

class Forgetful(Classifier):
    def __init__(self, hidden=8):
        L.LightningModule.__init__(self)  # no save_hyperparameters(): cannot be rebuilt from them
        self.model = torch.nn.Linear(4, 3)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

def network(hidden=8):
    return Classifier(hidden).model

def eval_set(n=40):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 4, generator=g)
    return x, x[:, :3].argmax(1)
"""


def rows(run: Path, config: Path, **overrides: object) -> tuple[LcaStore, np.ndarray]:
    cfg = load_config(config).with_overrides(threads=1, **overrides)
    result = compute(run, cfg, run / "lca.zarr", overwrite=True)
    store = LcaStore.open(result.store)
    assert store.done().all() and result.flagged["train"] == []  # conserves: |residual| <= atol + rtol |ΔL|
    return store, np.asarray(store.array("train", "lca")[:])


@pytest.fixture(scope="module")
def pl_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lca_cli.training.integrations.lightning import LcaCallback

    root = tmp_path_factory.mktemp("pl")
    (root / "plclassifier.py").write_text(MODULE)
    sys.path.insert(0, str(root))
    import plclassifier

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(48, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :3].argmax(1)), batch_size=16)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1),
            LcaCallback(root / "lca", data="plclassifier:eval_set"),
        ],
    )
    trainer.fit(plclassifier.Classifier(hidden=8), loader)
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("plclassifier", None)


def test_callback_run_and_modelcheckpoint_files_give_the_same_rows(pl_run: Path) -> None:
    config = pl_run / "lca" / "lca.toml"
    assert 'factory = "lca_cli.training.integrations.lightning:from_hparams"' in config.read_text()
    flat_store, flat = rows(pl_run / "lca", config)
    assert flat_store.steps.tolist() == [0, 1, 2, 3, 4]  # step 0 from the callback
    assert json.loads((pl_run / "lca" / "lca.end").read_text())["last_step"] == 4  # training ended
    ckpt_store, ckpt = rows(pl_run / "ckpt", config)
    assert ckpt_store.steps.tolist() == [1, 2, 3, 4]  # ModelCheckpoint has no step 0
    assert np.array_equal(ckpt, flat[1:])


def test_a_factory_building_only_the_network_strips_the_attribute_prefix(pl_run: Path, tmp_path: Path) -> None:
    _, flat = rows(pl_run / "lca", pl_run / "lca" / "lca.toml")
    text = (pl_run / "lca" / "lca.toml").read_text()
    start = text.index("[model]")
    end = text.index("[data]")
    config = tmp_path / "lca.toml"
    config.write_text(text[:start] + '[model]\nfactory = "plclassifier:network"\n\n' + text[end:])
    store, net = rows(pl_run / "ckpt", config)
    assert [p.name for p in store.layout.params] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert np.array_equal(net, flat[1:])


def test_a_module_without_saved_hyperparameters_is_refused_at_train_start(pl_run: Path) -> None:
    import lightning as L
    import plclassifier

    from lca_cli.errors import ConfigError
    from lca_cli.training.integrations.lightning import LcaCallback

    x = torch.randn(8, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :3].argmax(1)), batch_size=8)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[LcaCallback(pl_run / "forgetful", data="plclassifier:eval_set")])  # fmt: skip
    with pytest.raises(ConfigError, match="saved no hyperparameters"):
        trainer.fit(plclassifier.Forgetful(), loader)
    assert not (pl_run / "forgetful" / "lca.toml").exists()
