"""The defaults as users get them: ``lca compute RUN`` with no flag the README does not show, on the models users bring.

Each case trains a tiny run the way its kind of user would (plain ``torch.save`` files of a state_dict, real
Lightning ``ModelCheckpoint`` files, bfloat16 checkpoints written by casting a state_dict, the README's own plain
PyTorch loop), then runs the two commands a user runs, as subprocesses, with the defaults (``--threads auto``
included): ``lca compute RUN`` and ``lca summarize STORE --by layer --json``. Both must exit 0 and the store must
keep the README's *Accuracy* contract: the run conserves (``Σ|residual| / Σ|ΔL| <= 1e-3``, so ``Σ LCA`` is ``ΔL``
within that) and no pair is flagged.

Defects of issue 21 that these cases reproduce on the code before their fixes: tied weights under ``--threads auto``
(exit 70: the timing probe called the model with both tied names) and half-precision checkpoints evaluated in
float32 without a note. The Lightning cases run both of the README's commands for ``ModelCheckpoint`` files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import lca_cli

pytestmark = pytest.mark.slow  # about 2 s per `lca compute` subprocess (torch's import), a dozen of them

README = Path(__file__).resolve().parent.parent / "README.md"
#: The README's contract (section *Accuracy*): the run conserves to 1e-3 of its summed |ΔL|.
CONSERVATION = 1e-3


def lca(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lca`` command as a user would (the console script beside this interpreter)."""
    script = Path(sys.executable).with_name("lca")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "lca_cli"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # factories come from the run folder
    return subprocess.run(
        [*head, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def compute_and_summarize(run: Path, *extra: str | Path, cwd: Path | None = None) -> tuple[dict[str, Any], str]:
    """``lca compute RUN [extra]`` then ``lca summarize STORE --by layer --json``; checks exit codes and the contract.

    Args:
        run: The run folder (the store is ``RUN/lca.zarr``), relative to ``cwd`` or absolute.
        extra: Arguments the README shows for this case (``--config FILE``).
        cwd: Where the commands run (default: the run folder's parent).

    Returns:
        ``(the summary's header, compute's stderr)``.

    """
    cwd = cwd or run.parent
    done = lca("compute", run, *extra, cwd=cwd)
    assert done.returncode == 0, f"lca compute exited {done.returncode}:\n{done.stderr[-3000:]}"
    store = (cwd / run / "lca.zarr").resolve()
    summary = lca("summarize", store, "--by", "layer", "--json", cwd=cwd)
    assert summary.returncode == 0, f"lca summarize exited {summary.returncode}:\n{summary.stderr[-3000:]}"
    doc = json.loads(summary.stdout)
    header = doc["header"]
    iterations = lca_cli.open_store(store).summarize(by="iteration").to_dict()["rows"]
    abs_delta = sum(abs(r["delta_loss"]) for r in iterations)
    assert header["iterations"] == len(iterations) > 0
    assert header["flagged"] == 0, header["flagged_steps"]
    assert header["integration_error"] <= CONSERVATION * abs_delta, (header["integration_error"], abs_delta)
    assert abs(header["sum_lca"] - header["delta_loss"]) <= CONSERVATION * abs_delta
    assert sum(r["lca"] for r in doc["rows"]) == pytest.approx(header["sum_lca"], rel=1e-6, abs=1e-9)
    header["gradients_per_pair"] = sum(r["splits"] for r in iterations) / len(iterations)
    return header, done.stderr


def train_plain(run: Path, factories: str, steps: int = 6, lr: float = 0.05, cast: torch.dtype | None = None) -> Path:
    """Train ``model()`` on ``data()`` of ``factories`` (written to ``run/factories.py``) and ``torch.save`` its
    state_dict every step, as a plain PyTorch loop does; ``lca.toml`` names the factories.

    Args:
        run: The run folder (created).
        factories: Python source defining ``model()``, ``data()`` and ``train_step(model, opt, data)``.
        steps: Optimizer steps (checkpoints: steps + 1, step 0 the initial weights).
        lr: Adam's learning rate.
        cast: Save the state_dict cast to this dtype (e.g. bfloat16), else as it is.

    Returns:
        The run folder.

    """
    run.mkdir(parents=True)
    (run / "factories.py").write_text(textwrap.dedent(factories))
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(factories), str(run / "factories.py"), "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["model"]()
    data = namespace["data"]()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps + 1):
        if step:
            namespace["train_step"](model, opt, data)
        state = model.state_dict()
        if cast is not None:
            state = {k: v.to(cast) if v.is_floating_point() else v for k, v in state.items()}
        torch.save(state, run / f"ckpt_{step:04d}.pt")
    (run / "lca.toml").write_text(
        '[model]\nfactory = "factories:model"\n[data]\nfactory = "factories:data"\n[loss]\nname = "cross_entropy"\n'
    )
    return run


#: ``train_step`` shared by the factories below: one full-batch Adam step on cross-entropy.
TRAIN_STEP = """
def train_step(model, opt, data):
    x, y = data
    opt.zero_grad()
    out = model(**x) if isinstance(x, dict) else model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    opt.step()
"""

TIED = (
    """
import torch

class TiedLM(torch.nn.Module):
    # GPT-2's tying in miniature: the output layer is the embedding (one tensor, two names in the state_dict).
    def __init__(self, vocab=12, dim=8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.emb(ids))))

def model():
    torch.manual_seed(0)
    return TiedLM()

def data(n=48):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 12, (n,), generator=g)
    return ids, (ids * 5 + 1) % 12
"""
    + TRAIN_STEP
)

BATCHNORM_CNN = (
    """
import torch

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 3),
    )

def data(n=40):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return x, (x[:, 0, :3, :3].sum((1, 2)) > 0).long() + (x[:, 0, 3:, 3:].sum((1, 2)) > 0).long()
"""
    + TRAIN_STEP
)

DICT_INPUTS = (
    """
import torch

class Masked(torch.nn.Module):
    # Keyword inputs, as a tokenizer returns them: features and a mask of the ones present.
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 10)
        self.fc2 = torch.nn.Linear(10, 3)

    def forward(self, features, mask):
        return self.fc2(torch.tanh(self.fc1(features * mask)))

def model():
    torch.manual_seed(0)
    return Masked()

def data(n=40):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    mask = (torch.rand(n, 6, generator=g) > 0.2).float()
    return {"features": x, "mask": mask}, (x * mask)[:, :3].argmax(1)
"""
    + TRAIN_STEP
)

VIT = (
    """
import torch

class TinyViT(torch.nn.Module):
    # 8x8 images in 2x2 patches, one pre-norm encoder layer (attention, ReLU feed-forward), mean-pooled head.
    def __init__(self, dim=8):
        super().__init__()
        self.embed = torch.nn.Linear(4, dim)
        self.pos = torch.nn.Parameter(torch.randn(1, 16, dim) * 0.1)
        self.enc = torch.nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
        self.head = torch.nn.Linear(dim, 3)

    def forward(self, x):
        patches = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        return self.head(self.enc(self.embed(patches) + self.pos).mean(1))

def model():
    torch.manual_seed(0)
    return TinyViT()

def data(n=48):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, 8, generator=g)
    quarters = [x[:, :4, :4], x[:, 4:, 4:], x[:, :4, 4:]]
    return x, torch.stack([q.mean((1, 2)) for q in quarters], 1).argmax(1)
"""
    + TRAIN_STEP
)


MLP = (
    """
import torch

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))

def data(n=40):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    return x, x[:, :3].argmax(1)
"""
    + TRAIN_STEP
)


def test_tied_weights(tmp_path: Path) -> None:
    """A plain PyTorch model with tied weights (both names saved): ``--threads auto`` used to exit 70."""
    run = train_plain(tmp_path / "tied", TIED)
    assert {"emb.weight", "head.weight"} <= set(torch.load(run / "ckpt_0000.pt"))
    header, _ = compute_and_summarize(run)
    assert header["tied"] == {"head.weight": "emb.weight"}


def test_tied_weights_on_a_probed_run(tmp_path: Path) -> None:
    """The same tied-weights model over enough pairs for the survey's probes, ``lca compute --json`` with the
    defaults: the pair loop takes the survey's gradients (its own count is its pairs' sub-intervals less them), the
    JSON on stdout stays parseable, and the run keeps the contract's conservation."""
    from lca_cli.computation.scale import MIN_PROBED_PAIRS, probe_count, scale_pairs
    from lca_cli.store.lcastore import LcaStore

    n = MIN_PROBED_PAIRS
    run = train_plain(tmp_path / "tied", TIED, steps=n)
    done = lca("compute", run, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    store = LcaStore.open(run / "lca.zarr")
    assert store.attrs["calibration"]["train"]["probes"] == probe_count(n)
    picked = scale_pairs(n)
    splits = store.read("train", "splits")
    probed = [picked[i] for i in scale_pairs(len(picked), probe_count(n))]
    # and every sampled pair's start, and the accumulation probe's two (checkpoints 0 and 1, float32 chosen)
    assert store.attrs["accumulation"]["dtype"] == "float32" and min(picked) > 1
    saved = sum(2 if k == 2 else 4 for k in splits[probed]) + len(picked) + 2
    assert result["computed"] == n and result["gradients_per_pair"] * n == pytest.approx(splits.sum() + 1 - saved)
    assert result["reused"] == saved
    header, _ = compute_and_summarize(run)  # a second call: nothing left to compute, the summary's checks
    assert header["tied"] == {"head.weight": "emb.weight"} and header["iterations"] == n


def test_batchnorm_cnn(tmp_path: Path) -> None:
    """A BatchNorm CNN (the default ``--bn-mode batch``: each chunk's statistics)."""
    header, _ = compute_and_summarize(train_plain(tmp_path / "bn", BATCHNORM_CNN))
    assert header["parameters"] == 4 * 9 + 4 + 4 + 4 + 16 * 3 + 3


def test_dict_inputs(tmp_path: Path) -> None:
    """A data factory returning ``({name: tensor}, targets)``: the model is called with keywords."""
    compute_and_summarize(train_plain(tmp_path / "dict", DICT_INPUTS))


def test_bfloat16_checkpoints(tmp_path: Path) -> None:
    """The same run saved in float32 and cast to bfloat16: the note, conservation, and no extra gradients.

    Issue 21 measured bfloat16 checkpoints of a tiny ViT at about 18 gradients per pair against 2-4 for float32;
    the bound here is the issue's: at most 1.25 times float32's.
    """
    # Small steps (Adam at 2e-4): most bfloat16 deltas are 0 or one rounding step, unlike the float32 run's.
    f32, f32_err = compute_and_summarize(train_plain(tmp_path / "f32", VIT, steps=16, lr=2e-4))
    bf16, err = compute_and_summarize(train_plain(tmp_path / "bf16", VIT, steps=16, lr=2e-4, cast=torch.bfloat16))
    assert "Note: checkpoints are bfloat16; evaluated in float32" in err
    assert "Note: checkpoints are" not in f32_err
    assert bf16["gradients_per_pair"] <= 1.25 * f32["gradients_per_pair"], (bf16, f32)
    assert bf16["delta_loss"] == pytest.approx(f32["delta_loss"], rel=0.05)  # the same run, rounded


LIGHTNING_MODULE = """
import lightning as L
import torch

class Classifier(L.LightningModule):
    def __init__(self, hidden=8, lr=0.2):
        super().__init__()
        self.save_hyperparameters()
        self.model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3))

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

def eval_set(n=40):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 4, generator=g)
    return x, x[:, :3].argmax(1)
"""

LIGHTNING_TRAIN = """
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from classifier import Classifier

warnings.simplefilter("ignore")  # Lightning's advice on workers and logging intervals
torch.manual_seed(0)
x = torch.randn(48, 4)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :3].argmax(1)), batch_size=16)
checkpoints = ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)
trainer = L.Trainer(max_steps=5, accelerator="cpu", callbacks=[checkpoints], enable_progress_bar=False)
trainer.fit(Classifier(), loader)
"""


@pytest.fixture(scope="module")
def lightning_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where a Lightning script trained with ``ModelCheckpoint`` (no lca callback): ``lightning_logs/``."""
    if importlib.util.find_spec("lightning") is None:
        pytest.skip("needs the lightning extra")
    root = tmp_path_factory.mktemp("pl")
    (root / "classifier.py").write_text(LIGHTNING_MODULE)
    (root / "train.py").write_text(LIGHTNING_TRAIN)
    done = subprocess.run([sys.executable, "train.py"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (root / "lca.toml").write_text(
        '[model]\nfactory = "classifier:Classifier"\n'
        '[data]\nfactory = "classifier:eval_set"\n[loss]\nname = "cross_entropy"\n'
    )
    return root


def test_lightning_checkpoints_folder(lightning_root: Path) -> None:
    """``lca compute lightning_logs/version_0/checkpoints --config lca.toml``, as the README writes it."""
    folder = Path("lightning_logs/version_0/checkpoints")
    assert len(list((lightning_root / folder).glob("*.ckpt"))) == 5
    header, _ = compute_and_summarize(folder, "--config", "lca.toml", cwd=lightning_root)
    assert header["iterations"] == 4  # steps 1..5: ModelCheckpoint saves no step 0


def test_lightning_folder_that_holds_the_logs(lightning_root: Path, tmp_path: Path) -> None:
    """The README's other form: ``lca compute`` on the folder that holds ``lightning_logs/`` (and its lca.toml)."""
    header, _ = compute_and_summarize(Path("."), cwd=lightning_root)
    assert header["iterations"] == 4


def readme_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## `` section of the README, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end >= 0 else len(text)], flags=re.S)


def test_readme_plain_pytorch_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's *Plain PyTorch* loop, verbatim, around a tiny model; ``lca.toml`` by ``write_run_config``."""
    from lca_cli.training.record import write_run_config

    (block,) = readme_blocks("Plain PyTorch")
    run = tmp_path / "runs" / "plain"
    run.mkdir(parents=True)
    (run / "factories.py").write_text(textwrap.dedent(MLP))
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(MLP), "factories", "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["model"]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    data = namespace["data"]()
    monkeypatch.chdir(tmp_path)  # the block writes runs/plain/..., relative to the working directory
    user = {
        "torch": torch,
        "model": model,
        "optimizer": optimizer,
        "n_steps": 6,
        "train_one_step": lambda model, optimizer: namespace["train_step"](model, optimizer, data),
    }
    exec(compile(block, "README.md Plain PyTorch block", "exec"), user)
    assert len(list(run.glob("ckpt_*.pt"))) == 7
    write_run_config(run, model="factories:model", data="factories:data")
    compute_and_summarize(Path("runs/plain"), cwd=tmp_path)
