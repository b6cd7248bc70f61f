"""Framework callbacks that write an lca run while training: Hugging Face ``Trainer`` and Lightning.

Each lives in its own module and imports its framework only when that module is imported, so ``lca_cli``
never needs them: ``pip install 'lca-cli[hf]'`` or ``'lca-cli[lightning]'``.

* :class:`lca_cli.training.integrations.hf.LcaTrainerCallback` (a ``transformers.TrainerCallback``);
* :class:`lca_cli.training.integrations.lightning.LcaCallback` (a ``lightning.pytorch.Callback``).

Both write step 0 (the initial weights) and a checkpoint after every optimizer step with
:class:`lca_cli.training.record.CheckpointWriter`, and ``lca.toml``; ``lca compute RUN_DIR`` then needs no more glue.
"""
