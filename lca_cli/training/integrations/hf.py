"""Hugging Face ``Trainer`` integration: a callback that writes an lca run, and a model factory from a config.

Usage (one line in the training script)::

    from lca_cli.training.integrations.hf import LcaTrainerCallback

    trainer = Trainer(model=model, args=args, train_dataset=train,
                      callbacks=[LcaTrainerCallback("runs/exp1", data="my_pkg.data:eval_set", loss="causal_lm")])
    trainer.train()

The callback saves the initial weights as step 0 when training begins and the weights after every optimizer
step (``state.global_step``), on the main process only, and writes ``lca.toml``. Unless ``model=`` names a
factory, the model is rebuilt by :func:`from_config` from the architecture's class name and its config
(stored in ``lca.toml``), so a Hugging Face model needs no factory of its own.

Needs ``transformers`` (``pip install 'lca-cli[hf]'``); it is imported when this module is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from lca_cli.errors import ConfigError
from lca_cli.training.record import CheckpointWriter

__all__ = ["LcaTrainerCallback", "from_config"]


def from_config(architecture: str, config: str) -> torch.nn.Module:
    """Build a ``transformers`` model from its class name and its config (random weights; lca loads them).

    Args:
        architecture: A class exported by ``transformers`` (``"GPT2LMHeadModel"``, ``"BertForMaskedLM"``...).
        config: The model config as JSON (``model.config.to_json_string()``).

    Returns:
        The model.

    Raises:
        ConfigError: If the class is unknown to ``transformers`` or the config does not fit it.

    """
    import transformers

    cls = getattr(transformers, architecture, None)
    if cls is None or not hasattr(cls, "config_class"):
        raise ConfigError(
            f"transformers has no model class {architecture!r}; name a builder of your own instead ([model] factory = "
            "'pkg.module:build' in lca.toml, or model='pkg.module:build' to the callback)"
        )
    cfg = cls.config_class.from_dict(json.loads(config))
    model: torch.nn.Module = cls(cfg)
    return model


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DDP/accelerate wrappers keep the model in .module, torch.compile in ._orig_mod: save the plain model's names.
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        while isinstance(inner, torch.nn.Module):
            model, inner = inner, getattr(inner, attr, None)
    return model


class LcaTrainerCallback(TrainerCallback):
    """Writes a checkpoint at step 0 and after every optimizer step, and ``lca.toml``, into ``run_dir``.

    Args:
        run_dir: The lca run directory (separate from the Trainer's ``output_dir``, or inside it).
        data: Evaluation data factory ``"pkg.module:function"`` (or ``{set: factory}``), as for
            :func:`lca_cli.training.record.write_run_config`; it may return a dict of tensors (``input_ids``,
            ``attention_mask``, ``labels``), a tuple, or a map-style Dataset of these.
        loss: ``"model_loss"`` (the model's own loss; the data needs ``labels``), ``"causal_lm"``, any built-in
            name, or ``"pkg.module:fn"``.
        model: Model factory; None = :func:`from_config` with the trained model's class and config.
        model_kwargs: Keyword arguments of ``model``.
        data_kwargs: Keyword arguments of a single data factory.
        compute: Defaults for ``lca compute`` flags.
        every: Save every ``every`` optimizer steps (1 = every step, which LCA needs to allocate each iteration).
        append: Add to checkpoints already in ``run_dir`` (resuming a run) instead of refusing them.

    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        data: str | Mapping[str, Any],
        loss: str = "model_loss",
        model: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        data_kwargs: Mapping[str, Any] | None = None,
        compute: Mapping[str, Any] | None = None,
        every: int = 1,
        append: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = {"data": data, "loss": loss, "data_kwargs": data_kwargs, "compute": compute}
        self.model_factory = model
        self.model_kwargs = dict(model_kwargs or {})
        self.every = max(1, int(every))
        self.append = append
        self._writer: CheckpointWriter | None = None
        self._last: int | None = None

    def _save(self, model: torch.nn.Module, step: int) -> None:
        if self._writer is not None and step != self._last and step % self.every == 0:
            self._writer.save(_unwrap(model), step)
            self._last = step

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None, **kw: Any
    ) -> None:
        """Open the writer, write ``lca.toml`` and the weights before the first step."""
        if not state.is_world_process_zero or model is None:
            return
        plain = _unwrap(model)
        factory, kwargs = self.model_factory, self.model_kwargs
        if factory is None:
            config = getattr(plain, "config", None)
            if config is None:
                raise ConfigError("the model has no Hugging Face config; pass model='pkg.module:build'")
            factory = "lca_cli.training.integrations.hf:from_config"
            # The config as one compact JSON line (only what differs from the architecture's defaults).
            compact = json.dumps(
                json.loads(config.to_json_string(use_diff=True)), sort_keys=True, separators=(",", ":")
            )
            kwargs = {"architecture": type(plain).__name__, "config": compact}
        # Resuming from a Trainer checkpoint continues the same lca run.
        self._writer = CheckpointWriter(self.run_dir, append=self.append or state.global_step > 0)
        self._writer.write_config(model=factory, model_kwargs=kwargs, **self.config)
        self._save(plain, state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None, **kw: Any) -> None:
        """Save the weights after an optimizer step."""
        if model is not None:
            self._save(model, state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Wait for the last checkpoints to be written."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
