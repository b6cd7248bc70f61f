"""Map a loaded checkpoint onto the model's ``state_dict`` names: nested dicts, key prefixes, tied aliases.

Rules, applied to each checkpoint on its own (a row depends only on its two checkpoints):

* a flat ``name -> tensor`` map is used as is; a dict that nests one under ``state_dict``, ``model``,
  ``model_state_dict`` or ``module`` is unwrapped when exactly one of those fits the model
  (``--state-dict-key`` chooses any entry, ``a/b`` for a deeper one);
* key prefixes are stripped when stripping makes the keys the model's: any prefix common to all keys
  (``module.`` from DDP, ``_orig_mod.`` from ``torch.compile``, ``model.`` from a LightningModule attribute),
  or the tensors under one leading component when exactly one such sub-tree fits (a LightningModule holding
  the model beside other modules);
* tied parameters (one tensor under two names, e.g. GPT-2's ``lm_head.weight`` and ``transformer.wte.weight``)
  may be present or absent under the alias; the result holds the owner only, the name ``named_parameters()``
  keeps, so that the model is evaluated with one leaf per shared tensor;
* integer tensors for floating-point model tensors (and the reverse) are refused, never cast.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch

from lca_cli.errors import CheckpointError
from lca_cli.sources.base import ModelSpec, listing

__all__ = ["NESTED_KEYS", "check_state_dict", "select_entry", "to_model_state"]

#: Entries of a saved dict that commonly hold the model's state_dict, tried in this order.
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")


def _is_flat(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _fits(keys: frozenset[str], spec: ModelSpec) -> bool:
    """The keys are the model's, up to tied names: one name of each shared tensor suffices."""
    missing = spec.shapes.keys() - keys
    via_alias = {owner for alias, owner in spec.aliases.items() if alias in keys}
    return keys <= spec.shapes.keys() and all(k in spec.aliases or k in via_alias for k in missing)


def _prefixes(keys: tuple[str, ...]) -> list[tuple[str, bool]]:
    """Candidate ``(prefix, select_only)`` plans: common prefixes first (shortest first), then sub-trees."""
    out: list[tuple[str, bool]] = []
    parts = keys[0].split(".")
    for i in range(1, len(parts)):
        p = ".".join(parts[:i]) + "."
        if all(k.startswith(p) for k in keys):
            out.append((p, False))
        else:
            break
    heads = sorted({k.split(".", 1)[0] + "." for k in keys if "." in k})
    out.extend((h, True) for h in heads if (h, False) not in out)
    return out


@functools.lru_cache(maxsize=64)
def _plan(keys: tuple[str, ...], spec: ModelSpec) -> tuple[str, bool] | list[str] | None:
    """How to turn these keys into the model's names.

    Returns ``(prefix, select_only)``; None when nothing fits; or the sub-tree prefixes when several fit (which
    one is the model cannot be told).
    """
    if _fits(frozenset(keys), spec):
        return ("", False)
    subtrees: list[str] = []
    for prefix, select in _prefixes(keys):
        chosen = [k for k in keys if k.startswith(prefix)] if select else list(keys)
        stripped = frozenset(k[len(prefix) :] if k.startswith(prefix) else k for k in chosen)
        if len(stripped) == len(chosen) and _fits(stripped, spec):
            if not select:
                return (prefix, False)
            subtrees.append(prefix)
    if len(subtrees) > 1:
        return subtrees
    return (subtrees[0], True) if subtrees else None


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):

        def kind(v: Any) -> str:
            if isinstance(v, torch.Tensor):
                return "tensor"
            if isinstance(v, Mapping):
                n = sum(isinstance(x, torch.Tensor) for x in v.values())
                return f"dict of {len(v)}" + (f", {n} tensors" if n else "")
            return type(v).__name__

        entries = [f"{k} ({kind(v)})" for k, v in obj.items()]
        return f"a dict with keys {listing(entries, 8)}"
    return f"a {type(obj).__name__}"


def select_entry(obj: Any, key: str, where: str) -> Any:
    """The entry ``key`` of a loaded checkpoint (``a/b`` for a nested one), as ``--state-dict-key`` names it.

    Raises:
        CheckpointError: If there is no such entry (the message says what the checkpoint holds).

    """
    node = obj
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise CheckpointError(f"{where}: --state-dict-key {key!r} not found; the checkpoint holds {_describe(obj)}")
        node = node[part]
    return node


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], path: object) -> None:
    """Check a checkpoint's tensors against the model's ``state_dict`` names, shapes and dtypes.

    Tied aliases (when ``expected`` is a :class:`ModelSpec`) may be absent; floating-point model tensors must
    be floating point in the checkpoint, and integer ones integer.

    Args:
        state: The checkpoint's tensors.
        expected: ``name -> shape`` of the model's ``state_dict()`` (or a :class:`ModelSpec`).
        path: The checkpoint, for the message.

    Raises:
        CheckpointError: Listing missing, unexpected, mis-shaped and wrongly typed tensors, if any.

    """
    aliases = expected.aliases if isinstance(expected, ModelSpec) else {}
    missing = [k for k in expected if k not in state and k not in aliases]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} != model {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    mistyped: list[str] = []
    if isinstance(expected, ModelSpec):
        for k in expected:
            if k in state and state[k].is_floating_point() != (k in expected.floating):
                want = "floating point" if k in expected.floating else "an integer tensor"
                mistyped.append(f"{k} is {str(state[k].dtype).removeprefix('torch.')}, the model's is {want}")
    problems = []
    if missing:
        problems.append(f"missing: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected: {listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped: {listing(misshaped, 3)}")
    if mistyped:
        problems.append(f"wrong dtype (never cast): {listing(mistyped, 3)}")
    if problems:
        raise CheckpointError(
            f"{path} does not match the model built from the config ({'; '.join(problems)}); "
            "check [model] factory and kwargs, or that this is the right checkpoint"
        )


def _nested(obj: Mapping[str, Any], spec: ModelSpec, where: str) -> tuple[str, Mapping[str, torch.Tensor]]:
    found = [k for k in NESTED_KEYS if k in obj and _is_flat(obj[k])]
    fitting = [k for k in found if isinstance(_plan(tuple(obj[k]), spec), tuple)]
    if len(fitting) == 1:
        return fitting[0], obj[fitting[0]]
    if len(fitting) > 1:
        raise CheckpointError(
            f"{where}: entries {', '.join(fitting)} each fit the model; pass --state-dict-key NAME to choose one"
        )
    if len(found) == 1:
        return found[0], obj[found[0]]  # the only state_dict there: its mismatch is the useful message
    raise CheckpointError(
        f"{where}: expected a flat name -> tensor state_dict, found {_describe(obj)}; "
        "pass --state-dict-key NAME to choose the entry that holds the model's state_dict"
    )


def to_model_state(
    obj: Any, spec: ModelSpec, where: object, state_dict_key: str | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Turn a loaded checkpoint into the model's ``state_dict`` (tied aliases dropped), checked.

    Args:
        obj: What the file(s) held: a flat ``name -> tensor`` map, or a dict nesting one.
        spec: The model's expectations.
        where: The checkpoint (path), for messages.
        state_dict_key: Entry to use (``--state-dict-key``; ``a/b`` for nested entries), else found automatically.

    Returns:
        ``(state, notes)``: the tensors under the model's names (owners only for tied parameters), and notes for
        the user on what was done (a nested entry used, a prefix stripped, an alias dropped).

    Raises:
        CheckpointError: In one line, when the checkpoint cannot be mapped onto the model.

    """
    notes: list[str] = []
    if state_dict_key:
        obj = select_entry(obj, state_dict_key, str(where))
        if not _is_flat(obj):
            raise CheckpointError(
                f"{where}: --state-dict-key {state_dict_key!r} holds {_describe(obj)}, not a state_dict"
            )
    elif not _is_flat(obj):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{where}: expected a flat name -> tensor state_dict, found {_describe(obj)}")
        key, obj = _nested(obj, spec, str(where))
        notes.append(f"using the checkpoints' {key!r} entry as the model's state_dict")
    flat: Mapping[str, torch.Tensor] = obj
    plan = _plan(tuple(flat), spec)
    if isinstance(plan, list):
        raise CheckpointError(
            f"{where}: the tensors under {', '.join(repr(p) for p in plan)} each fit the model; save the model's "
            "own state_dict, or nest each under its own key and pass --state-dict-key"
        )
    if plan is None:
        check_state_dict(flat, spec, where)  # lists what differs
        raise CheckpointError(f"{where}: tensor names do not match the model's")  # pragma: no cover - check raises
    prefix, select = plan
    if prefix:
        state = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
        if not select:
            state.update({k: v for k, v in flat.items() if not k.startswith(prefix)})
        dropped = len(flat) - len(state)
        notes.append(
            f"stripped the key prefix {prefix!r} from the checkpoints' tensor names"
            + (f" (and ignored {dropped} tensor(s) outside it)" if dropped else "")
        )
    else:
        state = dict(flat)
    for alias, owner in spec.aliases.items():
        if alias not in state:
            continue
        value = state.pop(alias)
        if owner not in state:
            state[owner] = value
        elif state[owner].shape != value.shape or not torch.equal(state[owner], value):
            raise CheckpointError(
                f"{where}: {alias} and {owner} are one tied tensor in the model but differ in the checkpoint; "
                "it was saved from a model without that tie: build the same model in [model]"
            )
    check_state_dict(state, spec, where)
    return state, notes
