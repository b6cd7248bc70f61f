"""Tiny training runs written to a temporary directory, for CLI and reduction tests.

The model and data factories live in a module written next to the checkpoints, so the run's lca.toml
imports them from its own directory, exactly as a user's run would.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lca_cli.training.record import CheckpointWriter

FACTORIES = """
import os
import time

import torch

class Pause(torch.nn.Module):
    # Sleeps LCA_TEST_PAUSE seconds per forward pass: slows a run down for signal tests, numbers unchanged.
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x

class Fail(torch.nn.Module):
    # Makes every output NaN: a torchrun rank that fails (LCA_TEST_FAIL_RANK), the others' numbers unchanged.
    def forward(self, x):
        return x * float("nan")

def model(hidden=12, features=6, classes=3, scale=0.5):
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential()
    if os.environ.get("LCA_TEST_PAUSE"):
        net.add_module("pause", Pause(float(os.environ["LCA_TEST_PAUSE"])))
    if os.environ.get("LCA_TEST_FAIL_RANK", "-") == os.environ.get("RANK"):
        net.add_module("fail", Fail())
    net.add_module("fc1", torch.nn.Linear(features, hidden))
    net.add_module("act", torch.nn.Tanh())
    net.add_module("fc2", torch.nn.Linear(hidden, classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return net

def data(n=150, features=6, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :classes].argmax(dim=1)).long()
    return x, y
"""


def make_tiny_run(root: Path, steps: int = 12, lr: float = 0.3, name: str = "run", hidden: int = 12) -> Path:
    """Train a 6-12-3 tanh MLP for ``steps`` SGD steps, a checkpoint per step, and write lca.toml.

    Args:
        root: Parent directory.
        steps: Number of training steps (checkpoints = steps + 1).
        lr: Learning rate (momentum 0.9).
        name: Run directory name.
        hidden: Hidden width (10 parameters each): 12 by default; 100,000 makes 4 MB rows. A wider net starts
            with weights scaled down by ``sqrt(12 / hidden)``, so that its logits and its steps stay as small.

    Returns:
        The run directory.
    """
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "tinyfactories.py").write_text(FACTORIES)
    namespace: dict[str, object] = {}
    exec(compile(FACTORIES, "tinyfactories", "exec"), namespace)
    kwargs = {} if hidden == 12 else {"hidden": hidden, "scale": 0.5 * (12 / hidden) ** 0.5}
    net = namespace["model"](**kwargs)  # type: ignore[operator]
    x, y = namespace["data"]()  # type: ignore[operator]
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    with CheckpointWriter(run) as writer:
        writer.write_config(
            model="tinyfactories:model", model_kwargs=kwargs, data="tinyfactories:data", loss="cross_entropy"
        )
        writer.save(net, 0)
        for step in range(1, steps + 1):
            idx = torch.randint(0, x.shape[0], (32,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            writer.save(net, step)
    return run
