"""Hugging Face runs without glue: the model from a checkpoint's ``config.json``, PEFT adapters over a frozen base.

A ``Trainer`` writes the model's ``config.json`` into every ``checkpoint-N/`` folder; :func:`auto_config` turns
it into the run's config when there is no ``lca.toml``: the model is the class the config names
(``architectures[0]``, built by :func:`from_config` with random weights that lca replaces by each checkpoint's),
the evaluation data ``--data`` (:mod:`lca_cli.computation.datafiles`) and the loss the model's own
(``model_loss``). Nothing is ever downloaded.

PEFT saves adapter-only checkpoints (``adapter_model.safetensors`` + ``adapter_config.json``): only the adapter's
parameters change along training. :func:`with_adapters` makes the run's model an :class:`AdapterModel`, the PEFT
model over a frozen base (from a model factory, or the local folder the adapter config names as
``base_model_name_or_path``) whose only parameters are the adapter's, under the names PEFT saves them with; the
frozen base tensors are fixed buffers, so LCA covers the trainable parameters and the store says which were
frozen (``evaluation.frozen``, docs/store-format.md).

``transformers`` and ``peft`` are imported when a model is built, never when this module is.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from lca_cli.computation.config import Config, FactorySpec, import_factory
from lca_cli.errors import ConfigError, UsageError
from lca_cli.sources.base import last_digits

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FACTORY",
    "HF_CONFIG",
    "adapter_model",
    "auto_config",
    "find_hf_folder",
    "from_config",
    "from_folder",
    "with_adapters",
]

#: A transformers model's config, in every ``save_pretrained`` / ``Trainer`` checkpoint folder.
HF_CONFIG = "config.json"
#: A PEFT adapter's config, beside ``adapter_model.safetensors`` in an adapter-only checkpoint folder.
ADAPTER_CONFIG = "adapter_config.json"
#: The model factory of an adapter-only run.
ADAPTER_FACTORY = "lca_cli.computation.hf_models:adapter_model"
_HF_EXTRA = "pip install 'lca-cli[hf]'"
_MAX_DEPTH = 3


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
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"building {architecture} needs transformers ({_HF_EXTRA})") from None

    cls = getattr(transformers, architecture, None)
    if cls is None or not hasattr(cls, "config_class"):
        raise ConfigError(
            f"transformers has no model class {architecture!r}; name a builder of your own instead ([model] factory = "
            "'pkg.module:build' in lca.toml, or model='pkg.module:build' to the callback)"
        )
    cfg = cls.config_class.from_dict(json.loads(config))
    model: torch.nn.Module = cls(cfg)
    return model


def from_folder(path: str) -> torch.nn.Module:
    """A ``transformers`` model with its weights from a local ``save_pretrained`` folder (never a download).

    Args:
        path: The folder (``config.json`` and the weights).

    Raises:
        ConfigError: If it is no local model folder or its architecture is unknown.

    """
    folder = Path(path)
    architecture = _architecture(_read_json(folder / HF_CONFIG), folder / HF_CONFIG)
    import transformers

    cls = getattr(transformers, architecture, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ConfigError(f"{folder / HF_CONFIG}: transformers has no model class {architecture!r}")
    try:
        model: torch.nn.Module = cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder}: cannot load the base model ({type(exc).__name__}: {exc})") from None
    return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def _architecture(config: Mapping[str, Any], where: Path) -> str:
    names = config.get("architectures")
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise ConfigError(
            f"{where} names no architecture (architectures = [...]); write lca.toml with a [model] factory"
        )
    return names[0]


def _step_folders(root: Path, depth: int = 0) -> Iterator[Path]:
    """Folders named with digits in ``root`` or, when it has none, in its sub-folders (as discovery looks)."""
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    steps = [p for p in entries if last_digits(p.name) is not None and p.suffix != ".zarr"]
    if steps:
        yield from steps
    elif depth < _MAX_DEPTH:
        for p in entries:
            yield from _step_folders(p, depth + 1)


def find_hf_folder(run_dir: Path) -> Path | None:
    """The newest checkpoint folder of a run holding ``config.json`` or ``adapter_config.json``, or None.

    The newest, because rotation (``save_total_limit``) and pruning delete the oldest.
    """
    found = [p for p in _step_folders(run_dir) if (p / ADAPTER_CONFIG).is_file() or (p / HF_CONFIG).is_file()]
    return max(found, key=lambda p: (last_digits(p.name) or 0, p.name)) if found else None


def _local_base(adapter: Mapping[str, Any], folder: Path, run_dir: Path) -> Path | None:
    """The adapter config's ``base_model_name_or_path`` when it is a local model folder, else None (a hub name).

    Tried as given (absolute, or relative to the current directory), then relative to the run and the folder.
    """
    name = adapter.get("base_model_name_or_path")
    if not isinstance(name, str) or not name:
        return None
    given = Path(name).expanduser()
    for candidate in (given, run_dir / given, folder / given):
        if (candidate / HF_CONFIG).is_file():
            return candidate.resolve()
    return None


def _adapter_refusal(folder: Path, adapter: Mapping[str, Any]) -> str:
    base = adapter.get("base_model_name_or_path")
    said = f"names base model {base!r}, which is no local model folder" if base else "names no base model"
    return (
        f"{folder} holds a PEFT adapter (adapter_model.safetensors + {ADAPTER_CONFIG}) whose config {said}; lca "
        "computes LCA over an adapter's parameters with the frozen base model, and never downloads it: write "
        "lca.toml with a [model] factory that builds the base model (or the PeftModel) and pass --config, or save "
        "the base model with save_pretrained and set base_model_name_or_path to that folder"
    )


def auto_config(run_dir: Path, data: FactorySpec | None) -> Config | None:
    """The config of a Hugging Face run without ``lca.toml``: the model from its checkpoints' configs.

    Args:
        run_dir: The run directory.
        data: ``--data``'s factory, or None when not given.

    Returns:
        The config (the model's own loss, ``model_loss``), or None when no checkpoint folder holds a config.

    Raises:
        UsageError: If the run is a Hugging Face one but no ``--data`` was given.
        ConfigError: If an adapter's base model cannot be found locally, or the config names no architecture.

    """
    folder = find_hf_folder(run_dir)
    if folder is None:
        return None
    if (folder / ADAPTER_CONFIG).is_file():
        adapter = _read_json(folder / ADAPTER_CONFIG)
        base = _local_base(adapter, folder, run_dir)
        if base is None:
            raise ConfigError(_adapter_refusal(folder, adapter))
        what, source = f"a PEFT adapter over the base model in {base}", folder / ADAPTER_CONFIG
        model = FactorySpec(ADAPTER_FACTORY, {"adapter": _compact(adapter), "base": str(base)})
    else:
        config = _read_json(folder / HF_CONFIG)
        architecture = _architecture(config, folder / HF_CONFIG)
        what, source = f"a {architecture}", folder / HF_CONFIG
        model = FactorySpec(
            "lca_cli.computation.hf_models:from_config", {"architecture": architecture, "config": _compact(config)}
        )
    if data is None:
        raise UsageError(
            f"{run_dir} holds Hugging Face checkpoints ({what}, from {source}) "
            "and no lca.toml: pass the evaluation data, --data eval.safetensors (named tensors: input_ids, "
            "attention_mask, labels) or a datasets folder saved with save_to_disk"
        )
    return Config(model=model, data={"train": data}, loss_name="model_loss")


def _compact(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def with_adapters(config: Config, run_dir: Path) -> Config:
    """The config with its model over PEFT adapters when the run's checkpoints are adapter-only.

    The config's own ``[model]`` factory then builds the frozen base model (or the whole PeftModel).

    Args:
        config: The run's config.
        run_dir: The run directory.

    Returns:
        The config, its model an :func:`adapter_model` when the newest checkpoint folder holds an adapter.

    """
    if config.model.factory == ADAPTER_FACTORY:
        return config
    folder = find_hf_folder(run_dir)
    if folder is None or not (folder / ADAPTER_CONFIG).is_file():
        return config
    adapter = _read_json(folder / ADAPTER_CONFIG)
    model = FactorySpec(
        ADAPTER_FACTORY,
        {"adapter": _compact(adapter), "base_factory": config.model.factory, "base_kwargs": dict(config.model.kwargs)},
    )
    return dataclasses.replace(config, model=model)


def _base_model(base: str | None, base_factory: str | None, base_kwargs: Mapping[str, Any] | None) -> Any:
    if base_factory:
        model = import_factory(base_factory)(**dict(base_kwargs or {}))
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"[model] factory {base_factory!r} returned {type(model).__name__}, not a Module")
        return model
    if base:
        return from_folder(base)
    raise ConfigError("a PEFT adapter needs its base model: a base folder or a [model] factory")


def adapter_model(
    adapter: str,
    base: str | None = None,
    base_factory: str | None = None,
    base_kwargs: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """The PEFT model of an adapter-only run as an :class:`AdapterModel` (a model factory).

    Args:
        adapter: The adapter's config as JSON (``adapter_config.json``).
        base: A local ``save_pretrained`` folder holding the base model with its weights.
        base_factory: ``"pkg.module:build"`` building the base model with its weights, or the whole PeftModel.
        base_kwargs: Keyword arguments of ``base_factory``.

    Returns:
        The model, whose parameters are the adapter's under the names PEFT saves them with.

    Raises:
        ConfigError: If peft is missing or the adapter does not fit the base model.

    """
    try:
        import peft
    except ImportError:
        raise ConfigError(f"the checkpoints are PEFT adapters; computing over them needs peft ({_HF_EXTRA})") from None
    model = _base_model(base, base_factory, base_kwargs)
    if not hasattr(model, "peft_config"):
        settings = json.loads(adapter)
        try:
            cfg = peft.PeftConfig.from_peft_type(**settings)
            cfg.inference_mode = False  # saved adapters say True, which would freeze the adapter itself
            model = peft.get_peft_model(model, cfg)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(f"the adapter config does not fit the base model ({type(exc).__name__}: {exc})") from None
    return AdapterModel(model)


def _saved_names(peft_model: Any, trainable: Mapping[str, torch.nn.Parameter]) -> dict[str, str]:
    """``inner name -> name in adapter_model.safetensors`` for the trainable parameters, as PEFT saves them."""
    from peft.utils import get_peft_model_state_dict

    by_storage = {(p.data_ptr(), tuple(p.shape)): name for name, p in trainable.items()}
    names: dict[str, str] = {}
    for saved, tensor in get_peft_model_state_dict(peft_model).items():
        inner = by_storage.get((tensor.data_ptr(), tuple(tensor.shape)))
        if inner is not None:
            names[inner] = saved
    missing = sorted(set(trainable) - set(names))
    if missing:
        raise ConfigError(f"PEFT does not save the trainable parameter(s) {', '.join(missing[:3])}; LCA needs them")
    return names


class _Node(torch.nn.Module):
    """A container that only names the adapter's parameters (``base_model.model.h.0.lora_A.weight``)."""


def _to_buffers(module: torch.nn.Module) -> None:
    """Every parameter and buffer of ``module`` becomes a non-persistent buffer: fixed, outside ``state_dict``."""
    for mod in module.modules():
        for name in list(mod._parameters):
            p = mod._parameters.pop(name)
            mod.register_buffer(name, None if p is None else p.detach(), persistent=False)  # None: e.g. no bias
        mod._non_persistent_buffers_set.update(mod._buffers)


class AdapterModel(torch.nn.Module):
    """A PEFT model whose parameters are the adapter's only, named as ``adapter_model.safetensors`` names them.

    The base model's tensors are fixed buffers of the wrapped model (its checkpoints never hold them); the
    forward calls the PEFT model with the adapter tensors this module holds (or that ``functional_call`` gives
    it). ``lca_frozen`` describes what is frozen, for the store.

    Args:
        peft_model: A ``peft.PeftModel``; its parameters with ``requires_grad`` are the adapter's.

    """

    def __init__(self, peft_model: torch.nn.Module) -> None:
        super().__init__()
        params = dict(peft_model.named_parameters())
        trainable = {n: p for n, p in params.items() if p.requires_grad}
        if not trainable:
            raise ConfigError("the PEFT model has no trainable parameters (is its adapter in inference mode?)")
        names = _saved_names(peft_model, trainable)
        frozen = [n for n, p in params.items() if not p.requires_grad]
        self.lca_frozen = {
            "lca_covers": "trainable",
            "trainable_numel": sum(p.numel() for p in trainable.values()),
            "frozen_numel": sum(params[n].numel() for n in frozen),
            "frozen": frozen,
        }
        _to_buffers(peft_model)
        self.lca_peft = peft_model
        self._inner = names  # inner name -> own (saved) name
        for inner, saved in names.items():
            *path, leaf = saved.split(".")
            node: torch.nn.Module = self
            for part in path:
                child = node._modules.get(part)
                if child is None:
                    child = _Node()
                    node.add_module(part, child)
                node = child
            node.register_parameter(leaf, torch.nn.Parameter(trainable[inner].detach().clone()))

    def _own(self, saved: str) -> torch.Tensor:
        path, _, leaf = saved.rpartition(".")
        tensor: torch.Tensor = getattr(self.get_submodule(path) if path else self, leaf)
        return tensor

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The PEFT model's forward with this module's adapter tensors."""
        from torch.func import functional_call

        tensors = {inner: self._own(saved) for inner, saved in self._inner.items()}
        return functional_call(self.lca_peft, tensors, args, kwargs)
