"""Lightning integration: a callback that writes an lca run while a ``lightning.pytorch.Trainer`` trains.

Usage (one line in the training script)::

    from lca_cli.training.integrations.lightning import LcaCallback

    trainer = L.Trainer(max_steps=1000, callbacks=[LcaCallback("runs/exp1", data="my_pkg.data:eval_set")])
    trainer.fit(module, train_loader)

It saves the LightningModule's ``state_dict`` as step 0 when training starts and after every optimizer step
(``trainer.global_step``), on global rank 0 only, and writes ``lca.toml``. Unless ``model=`` names a factory,
the model is rebuilt by :func:`from_hparams` from the LightningModule's class and the hyperparameters it saved
with ``self.save_hyperparameters()``.

Lightning's own ``ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)`` files work too (``lca compute``
reads ``.ckpt`` files and strips the module's attribute prefix), but miss step 0.

Needs ``lightning`` (``pip install 'lca-cli[lightning]'``); it is imported when this module is.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from lca_cli.errors import ConfigError
from lca_cli.training.record import CheckpointWriter

__all__ = ["LcaCallback", "from_hparams"]


def from_hparams(cls: str, hparams: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Build a LightningModule from its class (``"pkg.module:Class"``) and saved hyperparameters.

    Args:
        cls: The class, importable as ``pkg.module:Class``.
        hparams: Keyword arguments of its constructor (what ``save_hyperparameters()`` recorded).

    Returns:
        The module.

    """
    module_name, _, name = cls.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in name.split("."):
        obj = getattr(obj, part)
    model: torch.nn.Module = obj(**dict(hparams or {}))
    return model


class LcaCallback(Callback):
    """Writes a checkpoint at step 0 and after every optimizer step, and ``lca.toml``, into ``run_dir``.

    Args:
        run_dir: The lca run directory.
        data: Evaluation data factory ``"pkg.module:function"`` (or ``{set: factory}``), as for
            :func:`lca_cli.training.record.write_run_config`.
        loss: A built-in loss name or ``"pkg.module:fn"``.
        model: Model factory (building the LightningModule, or the network inside it: the attribute prefix is
            stripped); None = :func:`from_hparams` with the module's class and saved hyperparameters.
        model_kwargs: Keyword arguments of ``model``.
        data_kwargs: Keyword arguments of a single data factory.
        compute: Defaults for ``lca compute`` flags.
        append: Add to checkpoints already in ``run_dir`` (resuming a run) instead of refusing them.

    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        data: str | Mapping[str, Any],
        loss: str = "cross_entropy",
        model: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        data_kwargs: Mapping[str, Any] | None = None,
        compute: Mapping[str, Any] | None = None,
        append: bool = False,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.config = {"data": data, "loss": loss, "data_kwargs": data_kwargs, "compute": compute}
        self.model_factory = model
        self.model_kwargs = dict(model_kwargs or {})
        self.append = append
        self._writer: CheckpointWriter | None = None
        self._last: int | None = None

    def _save(self, module: torch.nn.Module, step: int) -> None:
        # With gradient accumulation a batch ends without an optimizer step: save only when the step moved.
        if self._writer is not None and step != self._last:
            self._writer.save(module, step)
            self._last = step

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Open the writer, write ``lca.toml`` and the weights before the first step."""
        if not trainer.is_global_zero:
            return
        factory, kwargs = self.model_factory, self.model_kwargs
        if factory is None:
            cls = type(pl_module)
            factory = "lca_cli.training.integrations.lightning:from_hparams"
            kwargs = {"cls": f"{cls.__module__}:{cls.__qualname__}", "hparams": dict(pl_module.hparams)}
            if cls.__module__ == "__main__":
                raise ConfigError(
                    f"{cls.__qualname__} is defined in the running script; move it into a module, or pass "
                    "model='pkg.module:build'"
                )
            takes = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
            if takes and not kwargs["hparams"]:
                # Without saved hyperparameters the module would be rebuilt with its defaults, maybe not these.
                raise ConfigError(
                    f"{cls.__qualname__} saved no hyperparameters: call self.save_hyperparameters() in its __init__, "
                    "or pass model='pkg.module:build'"
                )
        self._writer = CheckpointWriter(self.run_dir, append=self.append or trainer.global_step > 0)
        self._writer.write_config(model=factory, model_kwargs=kwargs, **self.config)
        self._save(pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Save the weights after an optimizer step."""
        self._save(pl_module, trainer.global_step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Wait for the last checkpoints to be written."""
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Flush what was saved before the failure; no end marker (training did not finish)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.abort()

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
