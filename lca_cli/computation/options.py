"""The one vocabulary of ``lca compute``: every option's name, type, default, choices and help, written once.

Three things are generated from :data:`OPTIONS`: the click options of ``lca compute`` (``lca_cli.cli.compute``),
the keys and value types a config file's ``[compute]`` table accepts (:mod:`lca_cli.computation.config`), and
the defaults and choices the help text shows (a help template names ``{default}`` and ``{choices}`` instead of
restating them). The library entry point (:func:`lca_cli.computation.entry.compute_run`) takes the same options
under their Python names (``max_splits``), the CLI under their flags (``--max-splits``); :func:`speak_arguments`
turns a message that names flags into one that names arguments.

This module imports neither torch nor click: the config loader and the CLI's help read it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lca_cli.core.columns import GRANULARITIES

__all__ = [
    "ACCUMULATIONS",
    "BN_MODES",
    "COMPUTE_KEYS",
    "DEFAULT_ATOL",
    "DEFAULT_L1_TOL",
    "DOUBLING_RTOL",
    "DTYPES",
    "IDLE_TIMEOUT_SECONDS",
    "L1_SCOPES",
    "METHODS",
    "OPTIONS",
    "REFINES",
    "RUN_KEYS",
    "SCALE_FRACTION",
    "SCALE_PAIRS",
    "Option",
    "default_of",
    "flag_of",
    "help_of",
    "speak_arguments",
]

METHODS = ("rk4", "euler")
#: How refinement picks sub-intervals (:mod:`lca_cli.core.integrate`): split only the panels whose error estimate
#: is large, or double them all.
REFINES = ("local", "doubling")
#: What ``l1_tol`` is relative to (``refine="local"``): ``"run"``, each pair's own ``||lca||_1`` or the run's scale
#: (a fraction of its mean one, measured when the store is created and as the run grows, recorded in it), whichever is
#: larger; ``"pair"``, each pair's own.
L1_SCOPES = ("run", "pair")
DTYPES = ("auto", "float32", "float64")
#: How gradients and rows are accumulated: float32 where the run's recorded bound allows it, or float64 always.
ACCUMULATIONS = ("auto", "float64")
BN_MODES = ("batch", "running")
#: Per-parameter accuracy target of ``refine="local"``: the estimated L1 error of each row relative to its L1 norm,
#: or to the run's scale when that is larger (``l1_scope``), so that the run's relative L1 error per parameter is
#: about this or below (README, "Accuracy").
DEFAULT_L1_TOL = 1e-3
#: ``refine="doubling"`` defaults: absolute residual tolerance by network dtype (about 10x its loss rounding noise)
#: and the relative part.
DEFAULT_ATOL = {"float64": 1e-9, "float32": 1e-7}
DOUBLING_RTOL = 1e-4
#: Pairs whose rows estimate a run's mean ``||lca||_1`` when its store is created (``l1_scope="run"``).
SCALE_PAIRS = 8
#: The run scale is this fraction of the estimated mean ``||lca||_1``. Measured on ten ReLU, tanh and CNN runs
#: (BENCHMARKS.md): at 0.8 the run's relative L1 error was <= 0.88e-3 on all ten, and <= 0.93e-3 on the five
#: replayed with 7 other choices of the sampled pairs; at 1.0 the tests' Adam CNN (rows all of about the same
#: size, so that most of them took the looser budget) reached 1.04-1.12e-3.
SCALE_FRACTION = 0.8
#: Default ``idle_timeout``: training that wrote no checkpoint for this long has probably stopped.
IDLE_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class Option:
    """One option of ``lca compute``.

    Attributes:
        name: The Python name (an argument of :func:`~lca_cli.computation.entry.compute_run`, a ``[compute]``
            key when ``config_key``); the flag is ``--`` and the name with dashes, unless ``flag`` says otherwise.
        type: ``str``, ``int``, ``float``, ``bool`` (an on/off pair or a flag), ``tuple`` (repeatable, of
            strings) or ``"threads"`` (``auto`` or a count).
        default: The value when neither a flag nor the config gives one (None: resolved from other settings).
        help: The help text; ``{default}`` and ``{choices}`` are filled in from this spec, and the module's
            constants (``{DEFAULT_L1_TOL}`` ...) from it too.
        choices: The values allowed, or empty for any.
        config_key: Also a key of the config file's ``[compute]`` table (a setting of the computation, where a
            flag wins over the config); False for what only concerns one call (``overwrite``, ``steps`` ...).
        flag: The flag when it is not derived from ``name``.
        metavar: Shown for the value in the help.
        switch: A bool given as ``--x/--no-x`` (True) or as a bare ``--x`` (False); bools only.

    """

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    config_key: bool = True
    flag: str = ""
    metavar: str = ""
    switch: bool = True

    @property
    def cli_flag(self) -> str:
        """The option's flag (``--max-splits``)."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def help_text(self) -> str:
        """The help with the defaults and choices of this spec filled in."""
        return self.help.format(default=_shown(self.default), choices=", ".join(self.choices), **_CONSTANTS)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _power(value: float) -> str:
    """A power of ten as help text writes it (``1e-3``, not ``0.001`` or ``1e-03``)."""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:.0e}")


#: Constants the help templates name, as they are shown.
_CONSTANTS: dict[str, Any] = {
    "DEFAULT_L1_TOL": _power(DEFAULT_L1_TOL),
    "ATOL64": _power(DEFAULT_ATOL["float64"]),
    "ATOL32": _power(DEFAULT_ATOL["float32"]),
    "DOUBLING_RTOL": _power(DOUBLING_RTOL),
    "SCALE_PAIRS": SCALE_PAIRS,
    "SCALE_FRACTION": SCALE_FRACTION,
}

#: Every option, in the order ``lca compute --help`` lists them: first the settings of the computation (the
#: ``[compute]`` keys), then those of one call.
OPTIONS: tuple[Option, ...] = (
    Option(
        "method", str, "rk4", "rk4: adaptive composite Simpson (the paper's 'RK4'); euler: first order, for "
        "comparison [default: {default}].", METHODS,
    ),
    Option(
        "refine", str, "local", "local: split only the sub-intervals whose per-parameter error estimate is large; "
        "doubling: double every sub-interval while the residual is over tolerance [default: {default}].", REFINES,
    ),
    Option(
        "l1_tol", float, None, "Per-parameter accuracy target: refine until a row's estimated L1 error is at most "
        "this times its L1 norm, or the run's scale when that is larger (--l1-scope), so the run's relative L1 "
        "error per parameter is about this [default: {DEFAULT_L1_TOL}; --refine doubling: 0 = off, else the "
        "relative L1 change of the last doubling].",
    ),
    Option(
        "l1_scope", str, "run", "What --l1-tol is relative to. run: a pair's own L1 norm or the run's scale, "
        "whichever is larger ({SCALE_FRACTION:g} x the mean L1 norm of {SCALE_PAIRS} pairs spread over the run, "
        "measured when the store is created and again as the run grows, recorded in it), so pairs that hardly "
        "move are not refined for "
        "their own sake; pair: every pair to its own row (costlier on ReLU nets) [default: {default}].", L1_SCOPES,
    ),
    Option(
        "tolerance", float, None, "Absolute residual tolerance per pair, in loss units: also refine until "
        "|residual| <= tolerance + rtol*|ΔL| [default: none; --refine doubling: {ATOL64} in float64, {ATOL32} "
        "in float32].",
    ),
    Option(
        "rtol", float, None, "Relative residual tolerance per pair (see --tolerance) [default: none; --refine "
        "doubling: {DOUBLING_RTOL}].",
    ),
    Option(
        "max_splits", int, 32, "Cap on sub-intervals (power of two) [default: {default}]; 2 = plain Simpson, no "
        "refinement.",
    ),
    Option("batch_size", int, 1024, "Evaluation chunk size in samples [default: {default}]."),
    Option("device", str, "auto", "auto (CUDA when present), cpu, cuda or cuda:N [default: {default}]."),
    Option(
        "dtype", str, "auto", "Network dtype; losses are reduced in float64 either way [default: {default}: the "
        "checkpoints' dtype].", DTYPES,
    ),
    Option(
        "accumulate", str, "auto", "Gradients and rows: auto = float32 where a bound measured on the run (chunk "
        "count, cancellation, float32's unit roundoff) keeps its error under 1% of --l1-tol, float64 otherwise; "
        "float64 = always (the choice and the bound are recorded in the store) [default: {default}].",
        ACCUMULATIONS,
    ),
    Option(
        "bn_mode", str, "batch", "BatchNorm: batch = statistics of each evaluation chunk (the paper); running = "
        "checkpoint running statistics, interpolated, their share stored as buffer_lca [default: {default}].",
        BN_MODES,
    ),
    Option("allow_tf32", bool, False, "Allow TF32 on GPU (faster, less exact) [default: {default}]."),
    Option("compile", bool, False, "torch.compile the model (opt-in) [default: {default}]."),
    Option(
        "rows_per_chunk", int, 0, "Store rows per chunk ({default} = about 8 MiB per chunk) [default: {default}]."
    ),
    Option(
        "threads", "threads", "auto", "CPU threads for torch: auto = time one thread against every usable core at "
        "start-up (and again when pairs slow down) and keep the faster; N fixes the count; 0 = torch's default "
        "[default: {default}].",
    ),
    Option(
        "state_dict_key", str, "", "Entry of the saved checkpoint dicts holding the model's state_dict (a/b for a "
        "deeper one) [default: found: state_dict, model, model_state_dict or module].",
    ),
    Option(
        "granularity", str, "parameter", "What a stored lca column holds: one parameter, one neuron (output unit "
        "of a layer) or one tensor; neuron and tensor rows take orders of magnitude less disk. Pairs are "
        "integrated over every parameter either way [default: {default}].", GRANULARITIES,
    ),
    Option(
        "params", tuple, (), "Store the columns of the tensors whose names match (repeatable, e.g. 'encoder.*'); "
        "the rest is stored as one '(other)' column, so rows still sum to the loss change [default: every "
        "tensor]. With --granularity neuron a match keeps its whole layer (a neuron sums every tensor of it).",
        metavar="GLOB",
    ),
    # -- one call's options (not [compute] keys) ---------------------------------------------------------------
    Option(
        "data", str, None, "Evaluation data without a data factory: a .safetensors or .pt file of named tensors "
        "(input_ids, attention_mask, labels, ...) or a datasets folder saved with save_to_disk; it replaces the "
        "config's [data]. With Hugging Face checkpoints (config.json in checkpoint-N/) and no lca.toml, the model "
        "is built from their config and scored by its own loss: no config needed.", config_key=False,
        metavar="PATH",
    ),
    Option(
        "overwrite", bool, False, "Replace an existing lca store instead of resuming it (only an lca store or an "
        "empty folder is ever replaced; the old store stays until the new one has its first rows).",
        config_key=False, switch=False,
    ),
    Option(
        "repair", bool, False, "Verify every chunk's checksum and recompute the rows of damaged chunks (see `lca "
        "verify`).", config_key=False, switch=False,
    ),
    Option(
        "unsafe_pickle", bool, False, "Allow torch checkpoints that need pickle (it can run any code: only for "
        "files you trust) [default: {default}, weights_only=True].", config_key=False, switch=False,
    ),
    Option(
        "strict", bool, False, "Exit with code 8 when a pair computed by this call stays over tolerance at the cap "
        "(pairs flagged by earlier calls are reported, not judged again).", config_key=False, switch=False,
    ),
    Option(
        "steps", str, None, "Compute only the pairs whose start step is in A:B (half-open; either end may be "
        "omitted) [default: all].", config_key=False, metavar="A:B",
    ),
    Option(
        "shard", str, None, "Compute the I-th of N contiguous parts of the pairs (Slurm array tasks, machines "
        "without torchrun); parts may run at once (implies --cooperate) or one after another.",
        config_key=False, metavar="I/N",
    ),
    Option(
        "cooperate", bool, False, "When another lca compute holds the store, compute the chunks it has not "
        "claimed instead of exiting 9.", config_key=False, switch=False,
    ),
    Option(
        "follow", bool, False, "Keep computing pairs as checkpoints arrive (beside training); stops at --until, "
        "at the end marker lca.end the lca writer and callbacks leave, or after --idle-timeout.",
        config_key=False, switch=False,
    ),
    Option(
        "until", int, None, "With --follow: stop once every pair before STEP is done.", config_key=False,
        metavar="STEP",
    ),
    Option(
        "idle_timeout", float, IDLE_TIMEOUT_SECONDS, "With --follow: stop after this long without a new "
        "checkpoint [default: {default}].", config_key=False, metavar="SECONDS",
    ),
    Option(
        "prune", bool, False, "Delete each checkpoint once every pair needing it is stored (never the newest; "
        "only the run's checkpoint files and folders). Only when no other store is still to be computed from the "
        "run.", config_key=False, switch=False,
    ),
)  # fmt: skip

_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: The ``[compute]`` keys of a config file (the fields of :class:`~lca_cli.computation.config.ComputeOptions`).
COMPUTE_KEYS: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.config_key)
#: The options of one call (arguments of :func:`~lca_cli.computation.entry.compute_run`, never config keys).
RUN_KEYS: tuple[str, ...] = tuple(o.name for o in OPTIONS if not o.config_key)


def default_of(name: str) -> Any:
    """The default of an option (what a dataclass field or a function argument defaults to).

    Args:
        name: The option's Python name.

    Returns:
        Its default.

    """
    return _BY_NAME[name].default


def flag_of(name: str) -> str:
    """The flag of an option (``max_splits`` -> ``--max-splits``)."""
    return _BY_NAME[name].cli_flag


def help_of(name: str) -> str:
    """The help text of an option, defaults and choices filled in."""
    return _BY_NAME[name].help_text


def _argument(match: re.Match[str]) -> str:
    negated, word = match.group(1), match.group(2)
    name = word.replace("-", "_")
    option = _BY_NAME.get(name)
    if option is None or (negated and option.type is not bool):
        return match.group(0)
    return f"{name}=False" if negated else name


_FLAG = re.compile(r"(?<![\w-])--(no-)?([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def speak_arguments(message: str, aliases: Mapping[str, str] | None = None) -> str:
    """A message that names ``lca compute`` flags, with the Python argument names instead.

    ``--max-splits 2`` becomes ``max_splits 2`` and ``--no-allow-tf32`` becomes ``allow_tf32=False``; words that
    are no option of this spec (``--config`` is the ``config`` argument too) are mapped by ``aliases`` or kept.

    Args:
        message: The message (an error's text).
        aliases: Further ``flag -> argument`` names (``{"--out": "out"}``).

    Returns:
        The message for a library caller.

    """
    out = _FLAG.sub(_argument, message)
    for flag, name in (aliases or {}).items():
        out = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", name, out)
    return out
