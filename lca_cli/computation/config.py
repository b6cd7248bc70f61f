"""The run config: frozen dataclasses, TOML loading, CLI overrides and strict validation.

A config (``lca.toml`` in the run directory, or ``--config FILE``) says how to rebuild the model, the fixed
evaluation set(s) and the loss; ``[compute]`` holds defaults for every ``lca compute`` flag (a flag wins).
Unknown keys are an error: a typo must not silently change what is computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lca_cli.computation.options import (
    COMPUTE_KEYS,
    DEFAULT_ATOL,
    DEFAULT_L1_TOL,
    DOUBLING_RTOL,
    DTYPES,
    L1_SCOPES,
    OPTIONS,
    REFINES,
    default_of,
    flag_of,
)
from lca_cli.errors import ConfigError, LcaError

if TYPE_CHECKING:
    from lca_cli.core.losses import LossFn

__all__ = [
    "DEFAULT_L1_TOL",
    "L1_SCOPES",
    "LOSS_NAMES",
    "REFINES",
    "ComputeOptions",
    "Config",
    "FactorySpec",
    "build_model",
    "call_factory",
    "config_loss",
    "import_factory",
    "import_path",
    "load_config",
    "parse_config",
    "settings_mismatch",
]

LOSS_NAMES = ("cross_entropy", "mse", "nll", "bce_with_logits", "causal_lm", "model_loss")


@dataclass(frozen=True)
class FactorySpec:
    """An importable callable (``"pkg.module:function"``) and its keyword arguments."""

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for the store's attributes."""
        return {"factory": self.factory, "kwargs": dict(self.kwargs)}


@dataclass(frozen=True)
class ComputeOptions:
    """Settings of ``lca compute``; every field is also a CLI flag (dashes for underscores).

    Attributes:
        method: ``"rk4"`` (adaptive composite Simpson, what the paper calls RK4) or ``"euler"`` (first order).
        refine: ``"local"`` (split only the sub-intervals whose per-parameter error estimate is large) or
            ``"doubling"`` (double every sub-interval while the residual is over tolerance).
        tolerance: Absolute residual tolerance per pair, in loss units, or None. ``"local"``: None means no
            residual criterion besides ``l1_tol``; ``"doubling"``: None means :data:`DEFAULT_ATOL` by dtype.
        rtol: Relative residual tolerance (times ``|ΔL|``), or None (``"doubling"``: :data:`DOUBLING_RTOL`). When
            either is given, a pair also needs ``|residual| <= tolerance + rtol |ΔL|``.
        l1_tol: Per-parameter target, relative L1: ``"local"`` refines until the row's estimated L1 error is at
            most ``l1_tol ||lca||_1``; ``"doubling"`` until the last doubling moved the row by at most this much.
            None: :data:`DEFAULT_L1_TOL` for ``"local"``, 0 (off) for ``"doubling"``.
        l1_scope: What ``l1_tol`` is relative to with ``"local"`` (:data:`L1_SCOPES`): ``"run"`` (default) budgets
            each pair ``l1_tol * max(||lca||_1, S)`` where S, the run's scale, is 0.8 times its mean ``||lca||_1``
            (estimated when the store is created, and again as the run grows, from a few pairs spread over the run,
            and recorded in the store; :func:`lca_cli.computation.scale.survey_run`), so the run as a whole meets
            ``l1_tol`` and pairs that hardly move are not refined for their own sake; ``"pair"`` holds every pair
            to ``l1_tol`` of its own row. Resolved to ``"pair"`` where nothing is refined against ``l1_tol``
            (``"doubling"``, ``"euler"``, ``max_splits`` 2, ``l1_tol`` 0).
        max_splits: Cap on sub-intervals (power of two >= 2); 2 is plain Simpson with no refinement.
        batch_size: Evaluation chunk size (samples per forward pass).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:i"``.
        dtype: dtype the network runs in (losses are always reduced in float64). ``"auto"``: the checkpoints'
            dtype (float64 when every floating tensor of the first checkpoint is float64, else float32), on every
            device: a float32 network gave the same per-parameter error as a float64 one on every net measured,
            at about half the cost on CPU.
        accumulate: ``"auto"`` (float32 gradients and rows where :mod:`lca_cli.computation.precision`'s bound
            allows it, float64 otherwise) or ``"float64"`` (always).
        bn_mode: ``"batch"`` (statistics of each evaluation chunk, as in the paper) or ``"running"``
            (the checkpoints' running statistics, interpolated along the segment and allocated separately).
        allow_tf32: Allow TF32 matmuls/convolutions on GPU (faster, less accurate; off by default).
        compile: Use ``torch.compile`` on the model (opt-in).
        rows_per_chunk: Rows per store chunk along the iteration axis (0 = choose from the row size).
        threads: CPU threads for torch: ``"auto"`` (measure one thread against all usable cores at start-up and
            again when pairs slow down; see :mod:`lca_cli.computation.tuning`), a count >= 1, or 0 for torch's default.
        state_dict_key: Entry of the saved checkpoint dicts that holds the model's state_dict (``a/b`` for a
            deeper one); empty = found automatically (:mod:`lca_cli.sources.keys`).
        granularity: What a stored ``lca`` column holds: ``"parameter"`` (default), ``"neuron"`` or ``"tensor"``
            (:mod:`lca_cli.core.columns`); the pair is integrated over every parameter either way.
        params: Glob patterns of the tensors whose columns are stored; the others are summed into one
            ``(other)`` column (empty: every tensor).

    """

    # Defaults come from the one option spec (lca_cli.computation.options), like the CLI's help and the config keys.
    method: str = default_of("method")
    refine: str = default_of("refine")
    tolerance: float | None = default_of("tolerance")
    rtol: float | None = default_of("rtol")
    l1_tol: float | None = default_of("l1_tol")
    l1_scope: str = default_of("l1_scope")
    max_splits: int = default_of("max_splits")
    batch_size: int = default_of("batch_size")
    device: str = default_of("device")
    dtype: str = default_of("dtype")
    accumulate: str = default_of("accumulate")
    bn_mode: str = default_of("bn_mode")
    allow_tf32: bool = default_of("allow_tf32")
    compile: bool = default_of("compile")
    rows_per_chunk: int = default_of("rows_per_chunk")
    threads: int | str = default_of("threads")
    state_dict_key: str = default_of("state_dict_key")
    granularity: str = default_of("granularity")
    params: tuple[str, ...] = default_of("params")

    def validate(self) -> ComputeOptions:
        """Check every value, raising :class:`~lca_cli.errors.UsageError` on the first bad one.

        Returns:
            ``self``, for chaining.

        """
        from lca_cli.errors import UsageError

        def bad(key: str, why: str) -> UsageError:
            return UsageError(f"{flag_of(key)}: {why}")

        for key, choices in _CHOICES.items():  # method, refine, l1_scope, dtype, bn_mode, granularity
            value = getattr(self, key)
            if value not in choices:
                raise bad(key, f"{value!r} is not one of {', '.join(choices)}")
        if self.tolerance is not None and not (self.tolerance >= 0):
            raise bad("tolerance", f"{self.tolerance} must be >= 0")
        if self.rtol is not None and not (self.rtol >= 0):
            raise bad("rtol", f"{self.rtol} must be >= 0")
        if self.l1_tol is not None and not (self.l1_tol >= 0):
            raise bad("l1_tol", f"{self.l1_tol} must be >= 0 (0 = off)")
        th = self.threads
        if th != "auto" and (isinstance(th, bool) or not isinstance(th, int) or th < 0):
            raise bad("threads", f"{th!r} must be auto or a count >= 1 (0 = torch's default)")
        ms = self.max_splits
        if ms < 2 or ms & (ms - 1):
            raise bad("max_splits", f"{ms} is not a power of two >= 2 (2 = plain Simpson)")
        if self.batch_size < 1:
            raise bad("batch_size", f"{self.batch_size} must be >= 1")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise bad("device", f"{dev!r} is not auto, cpu, cuda or cuda:N")
        if self.rows_per_chunk < 0:
            raise bad("rows_per_chunk", "must be >= 0")
        if self.params and self.granularity == "tensor":
            raise bad("params", "needs --granularity parameter or neuron (tensor rows are already one per tensor)")
        return self

    def resolved(self, device_type: str, checkpoint_dtype: str = "float32") -> ComputeOptions:
        """Replace the automatic choices (``dtype="auto"``, tolerances left None) by concrete values.

        Args:
            device_type: ``"cpu"`` or ``"cuda"`` (the resolved device's type; no choice depends on it today).
            checkpoint_dtype: ``"float32"`` or ``"float64"``: what ``dtype="auto"`` becomes (see
                :func:`lca_cli.computation.tuning.checkpoint_dtype`).

        Returns:
            A copy with a concrete dtype and the scheme's default tolerances (``"local"`` keeps an absent residual
            tolerance as None: it has none unless asked).

        """
        del device_type  # the dtype follows the checkpoints on every device (issue 9)
        dtype = self.dtype if self.dtype != "auto" else checkpoint_dtype
        if self.refine == "doubling":
            tol = self.tolerance if self.tolerance is not None else DEFAULT_ATOL[dtype]
            rtol = self.rtol if self.rtol is not None else DOUBLING_RTOL
            l1 = self.l1_tol if self.l1_tol is not None else 0.0
            return dataclasses.replace(self, dtype=dtype, tolerance=tol, rtol=rtol, l1_tol=l1, l1_scope="pair")
        l1 = self.l1_tol if self.l1_tol is not None else DEFAULT_L1_TOL
        # A run scale matters only where rows are refined against l1_tol: not for Euler, nor plain Simpson (its
        # survey would cost 8 gradients per set for nothing).
        scope = self.l1_scope if self.method == "rk4" and l1 > 0 and self.max_splits > 2 else "pair"
        return dataclasses.replace(self, dtype=dtype, l1_tol=l1, l1_scope=scope)

    def result_settings(self) -> dict[str, Any]:
        """The settings that change the numbers in a store (a resumed run must use the same ones)."""
        keys = (
            "method", "refine", "tolerance", "rtol", "l1_tol", "l1_scope", "max_splits", "batch_size", "dtype",
            "bn_mode", "allow_tf32",
        )  # fmt: skip
        settings = {k: getattr(self, k) for k in keys}
        if self.state_dict_key:  # which weights are read; absent when automatic, so older stores still match
            settings["state_dict_key"] = self.state_dict_key
        # What the stored columns hold: absent for the plain per-parameter rows, so older stores still match.
        if self.granularity != "parameter":
            settings["granularity"] = self.granularity
        if self.params:
            settings["params"] = list(self.params)
        return settings


@dataclass(frozen=True)
class Config:
    """A resolved run config.

    Attributes:
        model: Factory building the ``torch.nn.Module``.
        data: Evaluation sets by name (a single ``[data]`` table is the set ``"train"``).
        loss_name: A built-in loss name, or None when ``loss_factory`` is given.
        loss_factory: Custom ``(outputs, targets) -> mean loss`` callable, or None.
        compute: Options of ``lca compute``.
        base_dir: Directory factories are imported from (the config file's), or None.
        train: The optional ``[train]`` table, used only by training scripts.

    """

    model: FactorySpec
    data: Mapping[str, FactorySpec]
    loss_name: str | None = "cross_entropy"
    loss_factory: str | None = None
    compute: ComputeOptions = field(default_factory=ComputeOptions)
    base_dir: Path | None = None
    train: Mapping[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What defines the numbers of a store: model, data, loss and result-changing compute settings."""
        return {
            "model": self.model.to_dict(),
            "data": {k: v.to_dict() for k, v in self.data.items()},
            "loss": {"name": self.loss_name, "factory": self.loss_factory},
            "compute": self.compute.result_settings(),
        }

    def with_overrides(self, **overrides: Any) -> Config:
        """Copy with ``[compute]`` fields replaced by the given non-None values (CLI flags win)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, compute=dataclasses.replace(self.compute, **given))


#: Result settings a store's identity leaves out at their default (so older stores still match), with that default.
_ABSENT_SETTINGS: dict[str, Any] = {"granularity": "parameter", "params": [], "state_dict_key": ""}


def _flag_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_mismatch(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """Which compute settings differ between a store and this call, and the flags that keep using the store.

    Args:
        stored: The store's identity.
        current: This call's identity (:meth:`Config.identity`).

    Returns:
        One line for an error message, or None when something other than compute settings differs (model,
        data or loss: the store belongs to another run) or nothing does.

    """
    if {k: v for k, v in stored.items() if k != "compute"} != {k: v for k, v in current.items() if k != "compute"}:
        return None
    old = {**_ABSENT_SETTINGS, **dict(stored.get("compute") or {})}
    new = {**_ABSENT_SETTINGS, **dict(current.get("compute") or {})}
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if not keys:
        return None
    # What the store's refine scheme and dtype imply (doubling brings its own default tolerances).
    implied: dict[str, Any] = {}
    if old.get("refine") in REFINES and old.get("dtype") in DTYPES[1:]:
        implied = ComputeOptions(refine=old["refine"]).resolved("cpu", old["dtype"]).result_settings()
    diffs: list[str] = []
    flags: list[str] = []
    implied_flags: list[str] = []
    for k in keys:
        was, now = old.get(k), new.get(k)
        diffs.append(f"{k} {_flag_value(was)} (this call: {_flag_value(now)})")
        flag = "--" + k.replace("_", "-")
        if isinstance(was, bool):
            text = flag if was else f"--no-{k.replace('_', '-')}"
        elif isinstance(was, list):
            text = " ".join(f"{flag} {p!r}" for p in was) if was else f"no {flag}"
        elif was is None or was == "":
            text = f"no {flag}"
        else:
            text = f"{flag} {_flag_value(was)}"
        implied_by_scheme = k not in ("refine", "dtype") and k in implied and implied[k] == was
        (implied_flags if implied_by_scheme else flags).append(text)
    # Settings the store's refine scheme and dtype imply are left out when those flags bring them; when only such
    # settings differ (a default changed by this call's flags), they are the flags to pass.
    flags = flags or implied_flags
    return (
        f"other result-changing settings: {'; '.join(diffs)}. To keep appending to it with the settings it was "
        f"made with, pass {' '.join(flags)}; or pass --overwrite to recompute it with the new ones"
    )


#: The TOML type of each [compute] key, from the option spec (ints are accepted for floats; threads is "auto" or an
#: int; a repeatable option is a list).
_COMPUTE_TYPES: dict[str, type] = {
    o.name: {"threads": int, tuple: list}.get(o.type, o.type) for o in OPTIONS if o.config_key
}
#: The choices of each [compute] key that has a fixed set.
_CHOICES: dict[str, tuple[str, ...]] = {o.name: o.choices for o in OPTIONS if o.choices}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str, source: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} in {where} (allowed: {', '.join(sorted(allowed))})"
        )


def _factory(table: Any, where: str, source: str) -> FactorySpec:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: {where} must be a table with a 'factory' key")
    _check_keys(table, {"factory", "kwargs"}, where, source)
    fac = table.get("factory")
    if not isinstance(fac, str) or ":" not in fac:
        raise ConfigError(f"{source}: {where}.factory must be a string like 'my_pkg.module:function'")
    kwargs = table.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{source}: {where}.kwargs must be a table")
    return FactorySpec(fac, dict(kwargs))


def parse_config(raw: Mapping[str, Any], source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document and build a :class:`Config`.

    Args:
        raw: The parsed TOML.
        source: Name used in messages (the file path).
        base_dir: Directory factories are imported from.

    Returns:
        The config.

    Raises:
        ConfigError: On unknown keys, missing tables or malformed values.

    """
    _check_keys(raw, {"model", "data", "loss", "compute", "train"}, "the top level", source)
    if "model" not in raw:
        raise ConfigError(f"{source}: missing [model] table (factory = 'pkg.module:build')")
    if "data" not in raw:
        raise ConfigError(f"{source}: missing [data] table (factory = 'pkg.module:eval_set')")
    model = _factory(raw["model"], "[model]", source)
    data_raw = raw["data"]
    if not isinstance(data_raw, Mapping):
        raise ConfigError(f"{source}: [data] must be a table")
    if "factory" in data_raw:
        data = {"train": _factory(data_raw, "[data]", source)}
    else:
        if not data_raw:
            raise ConfigError(f"{source}: [data] is empty; give factory = ... or [data.train], [data.val]")
        data = {name: _factory(t, f"[data.{name}]", source) for name, t in data_raw.items()}
        for name in data:
            if not name.isidentifier():
                raise ConfigError(f"{source}: evaluation set name {name!r} must be an identifier")
    loss_raw = raw.get("loss", {"name": "cross_entropy"})
    if not isinstance(loss_raw, Mapping):
        raise ConfigError(f"{source}: [loss] must be a table")
    _check_keys(loss_raw, {"name", "factory"}, "[loss]", source)
    loss_name, loss_factory = loss_raw.get("name"), loss_raw.get("factory")
    if (loss_name is None) == (loss_factory is None):
        raise ConfigError(f"{source}: [loss] needs exactly one of name = ... or factory = ...")
    if loss_name is not None and loss_name not in LOSS_NAMES:
        raise ConfigError(f"{source}: [loss] name {loss_name!r} is not one of {', '.join(LOSS_NAMES)}")
    if loss_factory is not None and (not isinstance(loss_factory, str) or ":" not in loss_factory):
        raise ConfigError(f"{source}: [loss] factory must be a string like 'pkg.module:loss_fn'")
    comp_raw = raw.get("compute", {})
    if not isinstance(comp_raw, Mapping):
        raise ConfigError(f"{source}: [compute] must be a table")
    _check_keys(comp_raw, set(COMPUTE_KEYS), "[compute]", source)
    for name, value in comp_raw.items():
        # TOML values have types; a wrong one (max_splits = "8") would crash validate() with a TypeError.
        want = _COMPUTE_TYPES[name]
        if name == "threads" and value == "auto":
            continue
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if not ok and not (want is float and isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"{source}: [compute] {name} = {value!r} must be a {want.__name__}")
        if want is list and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: [compute] {name} = {value!r} must be a list of strings")
    if "params" in comp_raw:
        comp_raw = {**comp_raw, "params": tuple(comp_raw["params"])}
    try:
        compute = ComputeOptions(**comp_raw)
    except TypeError as exc:
        raise ConfigError(f"{source}: [compute]: {exc}") from None
    train = raw.get("train", {})
    if not isinstance(train, Mapping):
        raise ConfigError(f"{source}: [train] must be a table")
    return Config(model, data, loss_name, loss_factory, compute, base_dir, dict(train))


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file.

    Args:
        path: The file.

    Returns:
        The config, with ``base_dir`` set to the file's directory.

    Raises:
        ConfigError: If the file is missing, is not valid TOML, or fails validation.

    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass --config FILE or write lca.toml in the run directory")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    return parse_config(raw, str(p), p.resolve().parent)


def call_factory(spec: FactorySpec, base_dir: Path | None, where: str) -> Any:
    """Import a factory and call it with its kwargs; any failure becomes a one-line :class:`ConfigError`.

    Args:
        spec: The factory and its keyword arguments.
        base_dir: Extra import directory (the config file's).
        where: The table it comes from, for messages (``"[model]"``, ``"[data.val]"``...).

    Returns:
        Whatever the factory returns.

    Raises:
        ConfigError: If it cannot be imported or raises.

    """
    fn = import_factory(spec.factory, base_dir)
    try:
        with import_path(base_dir):  # a factory may import inside its body
            return fn(**spec.kwargs)
    except LcaError:
        raise
    except SystemExit as exc:  # sys.exit() in a factory must not end lca silently with its code
        raise ConfigError(
            f"{where} factory {spec.factory!r} called sys.exit({exc.code!r}); a factory must return its object"
        ) from None
    except Exception as exc:  # a user factory can fail in any way; report it as a config problem
        raise ConfigError(f"{where} factory {spec.factory!r} failed: {type(exc).__name__}: {exc}") from exc


def build_model(config: Config) -> Any:
    """Build the config's model (a fresh ``torch.nn.Module``).

    Args:
        config: The config.

    Returns:
        The module.

    Raises:
        ConfigError: If the factory fails or does not return a module with parameters.

    """
    import torch

    model = call_factory(config.model, config.base_dir, "[model]")
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"[model] factory {config.model.factory!r} returned {type(model).__name__}, not a Module")
    if not any(True for _ in model.parameters()):
        raise ConfigError(f"[model] factory {config.model.factory!r} built a model with no parameters")
    return model


@contextlib.contextmanager
def import_path(base_dir: Path | None) -> Iterator[None]:
    """Put the config's folder and the current directory first on ``sys.path`` for the duration.

    Factories are imported *and called* inside it (a factory may import inside its body), and the pipeline runs
    the model inside it (a forward may import lazily), wherever ``lca`` is run from. Only entries it added are
    removed afterwards.

    Args:
        base_dir: The config file's folder (None: only the current directory).

    """
    extra = [str(d) for d in (base_dir, Path.cwd()) if d is not None]
    added = [d for d in dict.fromkeys(extra) if d not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(d)


def import_factory(spec: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """Import ``"pkg.module:attr"``, looking in ``base_dir``, the current directory and ``PYTHONPATH``.

    Args:
        spec: The factory reference.
        base_dir: Extra directory to search first (the config file's directory).

    Returns:
        The callable.

    Raises:
        ConfigError: If the module or attribute cannot be imported or is not callable.

    """
    module_name, _, attr = spec.partition(":")
    if module_name == "__main__":
        raise ConfigError(
            f"factory {spec!r}: __main__ is whatever script runs, not your training script; move the factory into "
            "a module (a .py file beside lca.toml works) and name it module:function"
        )
    try:
        with import_path(base_dir):
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        searched = ", ".join(dict.fromkeys(str(d) for d in (base_dir, Path.cwd()) if d is not None))
        raise ConfigError(
            f"factory {spec!r}: cannot import module {module_name!r} ({exc}); searched {searched} and the "
            "installed packages (PYTHONPATH)"
        ) from None
    except SystemExit as exc:
        raise ConfigError(f"factory {spec!r}: importing {module_name!r} called sys.exit({exc.code!r})") from None
    except Exception as exc:  # an import can fail with any exception; report it as a config problem
        raise ConfigError(
            f"factory {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"factory {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"factory {spec!r} is not callable")
    return obj


def config_loss(config: Config) -> LossFn:
    """The config's loss: its ``[loss] factory`` if given, else the built-in ``[loss] name``.

    Args:
        config: The config.

    Returns:
        A mean loss ``(outputs, targets) -> scalar``.

    """
    from lca_cli.core.losses import builtin_loss  # torch: only when a loss is built

    if config.loss_factory:
        fn: LossFn = import_factory(config.loss_factory, config.base_dir)
        return fn
    assert config.loss_name is not None
    return builtin_loss(config.loss_name)
