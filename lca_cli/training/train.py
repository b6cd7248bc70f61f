"""A small, deterministic training loop that writes an LCA run directory from a config's ``[train]`` table.

``lca compute`` never trains; this module exists so that the quick start, the paper reproduction
(``scripts/reproduce_paper.py``) and the tests can produce run directories from the same TOML config that
describes the evaluation: the config's ``[model]``, ``[data...]`` and ``[loss]`` tables build the network and
the loss, and ``[train]`` says how to train it::

    [train]
    iterations = 100          # optimizer steps; checkpoints 0 (the initial weights) .. iterations
    batch_size = 250          # minibatch size (the LCA authors' code used 250)
    optimizer = "sgd"         # "sgd" (momentum, as in the paper) or "adam"
    lr = 0.1
    momentum = 0.9            # sgd only
    weight_decay = 0.0
    seed = 0                  # minibatch order and dropout; the initial weights come from [model].kwargs
    freeze = ["fc3"]          # layer-name prefixes whose parameters stop moving ...
    freeze_from = 0           # ... from this checkpoint on (0 = frozen at initialisation)
    data = { factory = "lca_cli.training.zoo.data:digits", kwargs = { split = "train" } }  # default: the "train" set

The written run directory holds one checkpoint per iteration (``step_00000000.safetensors`` is the
initial model) and ``lca.toml`` with the config's ``[model]``, ``[data...]``, ``[loss]`` and ``[compute]``
tables (not ``[train]``), so ``lca compute RUN_DIR`` needs no other argument.

Minibatches are drawn without replacement from a seeded :class:`torch.Generator`: the training set is
reshuffled every epoch and the epochs are chained, so every batch is full. The global RNG state of the
caller is restored afterwards (dropout draws come from the global generator, seeded inside a fork).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lca_cli.computation.config import (
    ComputeOptions,
    Config,
    FactorySpec,
    build_model,
    call_factory,
    config_loss,
    load_config,
)
from lca_cli.core.evalset import as_tensors
from lca_cli.core.layout import layer_name
from lca_cli.errors import ConfigError, NumericalError, RunDirError, UsageError, one_line
from lca_cli.training.record import CheckpointWriter

__all__ = [
    "OPTIMIZERS",
    "TrainOptions",
    "TrainProgressFn",
    "batch_indices",
    "frozen_parameter_names",
    "load_training_data",
    "parse_train_options",
    "train_run",
]

OPTIMIZERS = ("sgd", "adam")

#: ``progress(iteration, iterations, minibatch_loss)``, called after every optimizer step.
TrainProgressFn = Callable[[int, int, float], None]

_TRAIN_KEYS = {
    "iterations",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "seed",
    "freeze",
    "freeze_from",
    "data",
}


@dataclass(frozen=True)
class TrainOptions:
    """The ``[train]`` table of a config, validated.

    Attributes:
        iterations: Optimizer steps; the run gets ``iterations + 1`` checkpoints (step 0 is the initial model).
        batch_size: Minibatch size.
        optimizer: ``"sgd"`` (with momentum) or ``"adam"``.
        lr: Learning rate.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 weight decay applied by the optimizer (it is not part of the LCA loss).
        seed: Seed of the minibatch order and of dropout.
        freeze: Layer-name prefixes (``"fc3"``, ``"layer1.0"``) whose parameters are frozen.
        freeze_from: Checkpoint from which frozen parameters stop moving; 0 freezes them at initialisation.
        data: Factory of the training data; None means the config's ``train`` evaluation set.

    """

    iterations: int = 100
    batch_size: int = 250
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    freeze: tuple[str, ...] = ()
    freeze_from: int = 0
    data: FactorySpec | None = field(default=None)


def _int_option(table: Mapping[str, Any], key: str, default: int, minimum: int, source: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{source}: [train] {key}={value!r} must be an integer >= {minimum}")
    return value


def _float_option(table: Mapping[str, Any], key: str, default: float, source: str, positive: bool = False) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{source}: [train] {key}={value!r} must be a finite number")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{source}: [train] {key}={value!r} must be {'> 0' if positive else '>= 0'}")
    return float(value)


def parse_train_options(table: Mapping[str, Any], source: str = "<config>") -> TrainOptions:
    """Validate a ``[train]`` table (unknown keys are an error, as everywhere in a config).

    Args:
        table: The parsed ``[train]`` table (may be empty: every key has a default).
        source: Name used in messages (the config file).

    Returns:
        The options.

    Raises:
        ConfigError: On an unknown key or a bad value.

    """
    unknown = sorted(set(table) - _TRAIN_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} in [train] (allowed: {', '.join(sorted(_TRAIN_KEYS))})"
        )
    d = TrainOptions()
    optimizer = table.get("optimizer", d.optimizer)
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"{source}: [train] optimizer={optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    freeze = table.get("freeze", [])
    if isinstance(freeze, str) or not isinstance(freeze, Sequence) or not all(isinstance(f, str) for f in freeze):
        raise ConfigError(f"{source}: [train] freeze must be a list of layer-name prefixes, e.g. ['fc3']")
    data_spec: FactorySpec | None = None
    if "data" in table:
        raw = table["data"]
        if not isinstance(raw, Mapping) or not isinstance(raw.get("factory"), str) or ":" not in raw["factory"]:
            raise ConfigError(f"{source}: [train] data must be a table {{ factory = 'pkg.module:fn', kwargs = {{}} }}")
        extra = sorted(set(raw) - {"factory", "kwargs"})
        if extra:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(extra)} in [train] data (allowed: factory, kwargs)")
        kwargs = raw.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"{source}: [train] data.kwargs must be a table")
        data_spec = FactorySpec(raw["factory"], dict(kwargs))
    return TrainOptions(
        iterations=_int_option(table, "iterations", d.iterations, 1, source),
        batch_size=_int_option(table, "batch_size", d.batch_size, 1, source),
        optimizer=str(optimizer),
        lr=_float_option(table, "lr", d.lr, source, positive=True),
        momentum=_float_option(table, "momentum", d.momentum, source),
        weight_decay=_float_option(table, "weight_decay", d.weight_decay, source),
        seed=_int_option(table, "seed", d.seed, 0, source),
        freeze=tuple(freeze),
        freeze_from=_int_option(table, "freeze_from", d.freeze_from, 0, source),
        data=data_spec,
    )


def frozen_parameter_names(names: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """The parameter names a list of freeze prefixes selects.

    A prefix selects a parameter when it equals the parameter's name or its layer name
    (``fc3`` selects ``fc3.weight`` and ``fc3.bias``), or is a leading run of whole name components
    (``layer1`` selects ``layer1.0.conv1.weight``; it does not select ``layer10.weight``).

    Args:
        names: Parameter names, in model order.
        prefixes: Freeze prefixes.

    Returns:
        The selected names, in model order.

    Raises:
        ConfigError: If a prefix selects no parameter (a typo must not silently train everything).

    """
    selected: list[str] = []
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or layer_name(n) == prefix or n.startswith(prefix + ".")]
        if not hits:
            raise ConfigError(f"[train] freeze: {prefix!r} matches no parameter (parameters: {', '.join(names)})")
        selected.extend(h for h in hits if h not in selected)
    order = {n: i for i, n in enumerate(names)}
    return sorted(selected, key=order.__getitem__)


def load_training_data(config: Config, opts: TrainOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the training data: ``[train] data`` if given, else the config's ``train`` evaluation set.

    Args:
        config: The config.
        opts: Its training options.

    Returns:
        ``(inputs, targets)`` on the CPU.

    Raises:
        ConfigError: If there is no training data, the factory fails, or returns something unusable.

    """
    spec = opts.data
    where = "[train] data"
    if spec is None:
        if "train" not in config.data:
            raise ConfigError(
                f"the config has no 'train' evaluation set (sets: {', '.join(config.data)}); "
                "name the training data in [train] data = { factory = ..., kwargs = {...} }"
            )
        spec, where = config.data["train"], "[data.train]"
    return as_tensors(call_factory(spec, config.base_dir, where), f"{where} (training data)")


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless minibatch indices: a fresh permutation per epoch, epochs chained so every batch is full.

    Args:
        n: Number of training samples.
        batch_size: Minibatch size (may exceed ``n``: a batch then spans several epochs).
        generator: Seeded generator; the sequence depends only on its state.

    Yields:
        int64 index tensors of length ``batch_size``.

    """
    pending = torch.empty(0, dtype=torch.int64)
    while True:
        while pending.numel() < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def _check_fits(
    model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor, n: int
) -> None:
    """One forward and loss on the first ``n`` samples, before anything is written.

    Evaluation mode and no gradient, so no random number is drawn and no running statistic moves: training
    afterwards is what it would have been. A model, data and loss that do not fit fail here in one line,
    instead of a traceback after the run directory got step 0 and ``lca.toml``.

    Raises:
        ConfigError: If the forward pass or the loss fails.

    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            loss_fn(model(inputs[:n]), targets[:n])
    except Exception as exc:  # the user's model or data can fail in any way
        raise ConfigError(f"the model, data and loss do not fit: {one_line(exc)}") from exc
    finally:
        model.train(was_training)


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(f"{run_dir} is not empty; pass --overwrite to replace its checkpoints and store")
        for path in run_dir.iterdir():
            name = path.name
            if name.endswith(".safetensors") or name.endswith(".safetensors.partial") or name == "lca.toml":
                path.unlink()
            elif name == "lca.zarr" and path.is_dir():
                shutil.rmtree(path)
    run_dir.mkdir(parents=True, exist_ok=True)


def _compute_table(compute: ComputeOptions) -> dict[str, Any]:
    """The ``[compute]`` settings that differ from the defaults (what the config file said)."""
    default = ComputeOptions()
    return {
        f.name: getattr(compute, f.name)
        for f in dataclasses.fields(ComputeOptions)
        if getattr(compute, f.name) != getattr(default, f.name)
    }


def _resolve_device(spec: str) -> torch.device:
    from lca_cli.computation.plan import resolve_device  # local: the plan imports heavy modules

    return resolve_device(spec)


def _with_overrides(opts: TrainOptions, iterations: int | None, seed: int | None) -> TrainOptions:
    """``opts`` with the caller's ``iterations`` and ``seed`` (when given) in place of the ``[train]`` table's.

    Raises:
        UsageError: If ``iterations`` is not an integer >= 1 or ``seed`` not an integer >= 0.

    """
    if iterations is not None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise UsageError(f"--iterations {iterations!r}: must be an integer >= 1")
        opts = dataclasses.replace(opts, iterations=iterations)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UsageError(f"--seed {seed!r}: must be an integer >= 0")
        opts = dataclasses.replace(opts, seed=seed)
    return opts


def _optimizer(trainable: list[torch.nn.Parameter], opts: TrainOptions) -> torch.optim.Optimizer:
    """The ``[train] optimizer`` over ``trainable``: SGD with momentum, or Adam."""
    if opts.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    return torch.optim.Adam(trainable, lr=opts.lr, weight_decay=opts.weight_decay)


def _write_config(ckpt: CheckpointWriter, cfg: Config) -> None:
    """``lca.toml``: the config's ``[model]``, ``[data...]``, ``[loss]`` and ``[compute]`` tables (not ``[train]``)."""
    data_tables: dict[str, dict[str, Any]] = {n: s.to_dict() for n, s in cfg.data.items()}
    ckpt.write_config(
        model=cfg.model.factory,
        model_kwargs=dict(cfg.model.kwargs),
        data=data_tables,
        loss=cfg.loss_factory or cfg.loss_name or "cross_entropy",
        compute=_compute_table(cfg.compute) or None,
    )


def _step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    where: str,
    lr: float,
) -> float:
    """One optimizer step on a minibatch; returns its loss.

    Raises:
        NumericalError: If the minibatch loss is not finite (``where`` names the iteration).

    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(inputs), targets)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NumericalError(f"training loss is {value} {where}; lower [train] lr (now {lr}) and retrain")
    loss.backward()
    optimizer.step()
    return value


def train_run(
    config: str | Path | Config,
    run_dir: str | Path,
    *,
    iterations: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: TrainProgressFn | None = None,
) -> Path:
    """Train the config's model as its ``[train]`` table says and write an LCA run directory.

    Writes ``step_00000000.safetensors`` (the initial weights), one checkpoint after every optimizer
    step, and ``lca.toml`` (the config's ``[model]``, ``[data...]``, ``[loss]`` and ``[compute]`` tables).
    The model is in ``train()`` mode while training (dropout on, BatchNorm running statistics updated).
    Parameters selected by ``[train] freeze`` get no update (``requires_grad`` off, gradient ``None``, so
    neither the gradient nor momentum or weight decay moves them) from checkpoint ``freeze_from`` on:
    their saved tensors stay bitwise identical and their LCA is exactly 0.

    Args:
        config: A config file or a loaded :class:`~lca_cli.computation.config.Config`.
        run_dir: Output run directory (created; must be empty unless ``overwrite``).
        iterations: Override ``[train] iterations``.
        seed: Override ``[train] seed`` (minibatch order and dropout; the initial weights come from the
            model factory's own ``seed`` keyword).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:i"`` or ``"auto"``.
        overwrite: Allow a non-empty run directory; its checkpoints, ``lca.toml`` and ``lca.zarr`` are removed.
        progress: Called after every step with ``(iteration, iterations, minibatch loss)``.

    Returns:
        The run directory.

    Raises:
        ConfigError: Bad ``[train]`` table, factories or data.
        RunDirError: The run directory is not empty and ``overwrite`` is false.
        UsageError: Bad ``iterations``/``seed``/``device`` arguments.
        NumericalError: The training loss became non-finite.

    """
    cfg = config if isinstance(config, Config) else load_config(config)
    opts = parse_train_options(cfg.train, str(config) if not isinstance(config, Config) else "config")
    opts = _with_overrides(opts, iterations, seed)
    dev = _resolve_device(device)
    run = Path(run_dir)

    # Build everything before touching the run directory, so a config error leaves it as it was.
    model = build_model(cfg)
    loss_fn = config_loss(cfg)
    inputs, targets = load_training_data(cfg, opts)
    names = [n for n, _ in model.named_parameters()]
    frozen = set(frozen_parameter_names(names, opts.freeze))

    model = model.to(dev)
    inputs, targets = inputs.to(dev), targets.to(dev)
    _check_fits(model, loss_fn, inputs, targets, opts.batch_size)
    _prepare_run_dir(run, overwrite)
    params = dict(model.named_parameters())
    optimizer = _optimizer(list(params.values()), opts)

    gen = torch.Generator().manual_seed(opts.seed)
    batches = batch_indices(int(inputs.shape[0]), opts.batch_size, gen)
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), CheckpointWriter(run) as ckpt:
        torch.manual_seed(opts.seed)  # dropout masks; restored on exit by fork_rng
        _write_config(ckpt, cfg)
        ckpt.save(model, step=0)
        model.train()
        for it in range(1, opts.iterations + 1):
            if it - 1 >= opts.freeze_from:
                # Frozen from checkpoint freeze_from on: no gradient, so SGD/Adam skip the tensor entirely
                # (momentum buffers and weight decay would otherwise still move it).
                for n in frozen:
                    params[n].requires_grad_(False)
                    params[n].grad = None
            idx = next(batches).to(dev)
            value = _step(model, optimizer, loss_fn, inputs[idx], targets[idx], f"at iteration {it}", opts.lr)
            ckpt.save(model, step=it)
            if progress is not None:
                progress(it, opts.iterations, value)
    return run
