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

A PEFT model (LoRA...) needs none either: the callback saves the adapter's parameters only, as PEFT names them
in ``adapter_model.safetensors``, and the frozen base once (the local folder the adapter config names, else
``RUN_DIR/base_model/`` written by ``save_pretrained`` at the start); lca computes LCA over the adapter's
parameters (:func:`lca_cli.computation.hf_models.adapter_model`).

Needs ``transformers`` (``pip install 'lca-cli[hf]'``); it is imported when this module is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from lca_cli.computation.hf_models import ADAPTER_FACTORY, HF_CONFIG, from_config
from lca_cli.errors import ConfigError
from lca_cli.training.record import CheckpointWriter

__all__ = ["LcaTrainerCallback", "from_config"]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DDP/accelerate wrappers keep the model in .module, torch.compile in ._orig_mod: save the plain model's names.
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        while isinstance(inner, torch.nn.Module):
            model, inner = inner, getattr(inner, attr, None)
    return model


def _adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A PEFT model's trainable tensors under the names ``adapter_model.safetensors`` gives them."""
    from peft.utils import get_peft_model_state_dict

    trainable = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    saved = get_peft_model_state_dict(model)
    return {k: v for k, v in saved.items() if v.data_ptr() in trainable}


def _save_base(model: torch.nn.Module, folder: Path) -> None:
    """Save a PEFT model's frozen base as a plain ``save_pretrained`` folder (the adapter layers left out)."""
    from safetensors.torch import save_file

    base = getattr(model, "get_base_model")()  # noqa: B009 - a PeftModel's
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    owners = {name: p for name, p in base.named_parameters(remove_duplicate=False)}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in base.state_dict().items():
        if name in owners and id(owners[name]) in trainable:
            continue  # the adapter's: saved per step
        # PEFT wraps each adapted layer's original module as ``base_layer``: the plain model's name drops it.
        tensors[name.replace(".base_layer.", ".")] = tensor.detach().cpu().clone().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads(base.config.to_json_string(use_diff=False))
    config["architectures"] = [type(base).__name__]  # a model built in memory has none; lca builds this class
    (folder / HF_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _peft_model_config(model: torch.nn.Module, run_dir: Path) -> dict[str, Any]:
    """The lca.toml ``[model]`` kwargs of a PEFT model: its adapter config and the folder of its frozen base."""
    adapter = next(iter(getattr(model, "peft_config").values()))  # noqa: B009 - not every Module has one
    settings = adapter.to_dict()
    name = settings.get("base_model_name_or_path")
    local = Path(name).expanduser() if isinstance(name, str) and name else None
    if local is not None and (local / HF_CONFIG).is_file():
        base = local.resolve()
    else:  # a hub name or a model built in memory: lca never downloads, so the base is saved with the run
        base = run_dir.resolve() / "base_model"
        _save_base(model, base)
    settings = json.loads(json.dumps(settings, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
    compact = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return {"adapter": compact, "base": str(base)}


class LcaTrainerCallback(TrainerCallback):
    """Writes a checkpoint at step 0 and after every optimizer step, and ``lca.toml``, into ``run_dir``.

    Args:
        run_dir: The lca run directory (separate from the Trainer's ``output_dir``, or inside it).
        data: Evaluation data factory ``"pkg.module:function"`` (or ``{set: factory}``), as for
            :func:`lca_cli.training.record.write_run_config`; it may return a dict of tensors (``input_ids``,
            ``attention_mask``, ``labels``), a tuple, or a map-style Dataset of these.
        loss: ``"model_loss"`` (the model's own loss; the data needs ``labels``), ``"causal_lm"``, any built-in
            name, or ``"pkg.module:fn"``.
        model: Model factory; None = :func:`from_config` with the trained model's class and config (a PEFT
            model: its adapter over the frozen base, saved once unless its config names a local folder).
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
        self._adapter = False  # a PEFT model: only the adapter's tensors are saved

    def _save(self, model: torch.nn.Module, step: int) -> None:
        if self._writer is not None and step != self._last and step % self.every == 0:
            plain = _unwrap(model)
            self._writer.save(_adapter_state(plain) if self._adapter else plain, step)
            self._last = step

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None, **kw: Any
    ) -> None:
        """Open the writer, write ``lca.toml`` and the weights before the first step."""
        if not state.is_world_process_zero or model is None:
            return
        plain = _unwrap(model)
        factory, kwargs = self.model_factory, self.model_kwargs
        if factory is None and hasattr(plain, "peft_config"):
            factory, kwargs, self._adapter = ADAPTER_FACTORY, _peft_model_config(plain, self.run_dir), True
        elif factory is None:
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
