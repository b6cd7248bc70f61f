"""The built-in mean losses ``(outputs, targets) -> scalar``, each reduced in float64, and their target checks.

A loss is named in a config's ``[loss] name``; :func:`builtin_loss` builds it. Every built-in loss keeps each
element's loss in the network's dtype and reduces in float64 (see :func:`_mean64` for why). The objective
weights chunk means by what :meth:`BuiltinLoss.units` counts, so the set's loss is an exact mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lca_cli.core.batch import Inputs, Targets, batch_len
from lca_cli.errors import ConfigError

__all__ = ["IGNORE_INDEX", "LOSSES", "BuiltinLoss", "LossFn", "builtin_loss", "check_targets", "model_outputs"]

#: A mean loss ``(outputs, targets) -> scalar``: a built-in one or a config's ``[loss] factory``.
LossFn = Callable[[Any, Any], torch.Tensor]

#: Label value the token losses ignore (the Hugging Face / PyTorch convention).
IGNORE_INDEX = -100


def model_outputs(out: Any) -> Any:
    """The logits in a model's output: a tensor as is; ``logits`` of a ``ModelOutput`` or dict; element 0 of a tuple.

    Args:
        out: What the model returned.

    Returns:
        The tensor the built-in losses work on (or ``out`` unchanged when none is found, for the caller to refuse).

    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if "logits" in out:
            return out["logits"]
        values = list(out.values())
        return values[0] if values else out
    if isinstance(out, tuple | list) and out:
        return out[0]
    return out


class BuiltinLoss:
    """A built-in mean loss ``(outputs, targets) -> scalar``, with what the objective needs to know about it.

    Attributes:
        name: The config name.
        classes: Whether targets are class indices (``cross_entropy``, ``nll``, ``causal_lm``).
        model_labels: Whether the model gets the targets as ``labels=`` and computes the loss (``model_loss``).

    """

    def __init__(self, name: str, fn: Callable[[torch.Tensor, Any], torch.Tensor], classes: bool = False,
                 model_labels: bool = False) -> None:  # fmt: skip
        self.name = name
        self._fn = fn
        self.classes = classes
        self.model_labels = model_labels

    def __call__(self, out: Any, y: Any) -> torch.Tensor:
        """The chunk's mean loss."""
        if self.model_labels:
            return _model_loss(out)
        return self._fn(model_outputs(out), y)

    def units(self, inputs: Inputs, targets: Targets) -> int:
        """What the mean is over, counted in one chunk: samples, or the scored tokens of ``causal_lm``."""
        if self.name == "causal_lm" and targets is not None:
            if targets.dim() < 2:
                raise ConfigError(
                    f"causal_lm needs token labels of shape (samples, tokens), got {tuple(targets.shape)}"
                )
            return int((targets[:, 1:] != IGNORE_INDEX).sum())
        return batch_len(inputs)

    def targets_from_inputs(self, inputs: Inputs) -> Targets:
        """``causal_lm`` without targets: the input ids, padding (``attention_mask == 0``) ignored."""
        if self.name != "causal_lm":
            return None
        ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else inputs
        if not isinstance(ids, torch.Tensor):
            return None
        labels = ids.clone()
        mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
            labels[mask == 0] = IGNORE_INDEX
        return labels


def _model_loss(out: Any) -> torch.Tensor:
    loss = out.get("loss") if isinstance(out, Mapping) else (out[0] if isinstance(out, tuple | list) and out else None)
    if loss is None:
        raise ConfigError(
            "model_loss: the model returned no 'loss'; give the evaluation set 'labels' (or targets) so that the "
            "model computes its loss"
        )
    return loss


def _mean64(per_element: torch.Tensor) -> torch.Tensor:
    """The float64 mean of per-element losses.

    A float32 network's mean loss rounded to float32 is quantised to its ulp (4.8e-7 at a loss of 5): late in
    training, or at small learning rates, the loss change of a pair is a few of those steps, and its residual
    against the float64 sum of the row is that rounding, not the integration's error (flagged pairs, refinement
    to the cap, on a row that was right). Each element's loss keeps the network's dtype; only the reduction is
    float64, which costs nothing beside the network and leaves the gradient as it was.
    """
    return per_element.double().mean()


def _causal_lm(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Next-token prediction: position t's logits score token t + 1. Mean over the scored tokens of the chunk
    # (labels != -100; ignored ones score 0); the objective weights chunks by their scored tokens, so the set's
    # loss is the exact token mean. A chunk with none scored contributes 0 (its weight is 0 too). The sum is
    # float64 (see _mean64).
    vocab = logits.shape[-1]
    shift_logits = logits[..., :-1, :].reshape(-1, vocab)  # (N*(T-1), V)
    shift_labels = y[..., 1:].reshape(-1).to(logits.device)  # (N*(T-1),)
    per_token = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    return per_token.double().sum() / max(1, int((shift_labels != IGNORE_INDEX).sum()))


def _as_targets(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Targets of an elementwise loss: (N,) against (N, 1) outputs would broadcast to (N, N), so shapes align."""
    return (y.reshape(out.shape) if y.numel() == out.numel() else y).to(out.dtype)


# Every built-in loss returns the float64 mean of its per-element losses (see _mean64).
LOSSES: dict[str, dict[str, Any]] = {
    "cross_entropy": {"fn": lambda out, y: _mean64(F.cross_entropy(out, y, reduction="none")), "classes": True},
    "nll": {"fn": lambda out, y: _mean64(F.nll_loss(out, y, reduction="none")), "classes": True},
    "mse": {"fn": lambda out, y: _mean64(F.mse_loss(out, _as_targets(out, y), reduction="none"))},
    "bce_with_logits": {
        "fn": lambda out, y: _mean64(F.binary_cross_entropy_with_logits(out, _as_targets(out, y), reduction="none"))
    },
    "causal_lm": {"fn": _causal_lm, "classes": True},
    "model_loss": {"fn": None, "model_labels": True},
}


def builtin_loss(name: str) -> BuiltinLoss:
    """A built-in mean loss ``(outputs, targets) -> scalar``.

    Outputs may be a tensor, a ``ModelOutput`` or dict (its ``logits``), or a tuple (its first element).

    Args:
        name: ``cross_entropy``, ``nll``, ``mse``, ``bce_with_logits``, ``causal_lm`` (shifted next-token
            cross-entropy over the tokens whose label is not -100; targets default to the input ids) or
            ``model_loss`` (the ``loss`` the model returns when called with ``labels=``).

    Returns:
        The loss function (mean over the chunk; the objective reweights chunk means exactly).

    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r} (known: {', '.join(LOSSES)})")
    return BuiltinLoss(name, **LOSSES[name])


def check_targets(loss: BuiltinLoss, out: Any, targets: Sequence[Targets], head: str) -> None:
    """Targets against the model's outputs, for the built-in losses (every chunk's targets, on the host).

    Args:
        loss: The built-in loss.
        out: The model's outputs on the first chunk (unwrapped by :func:`model_outputs`).
        targets: Every chunk's targets, in order.
        head: Opens each message (names the evaluation set).

    Raises:
        ConfigError: If targets are missing, of the wrong dtype or shape, or a class label is out of range.

    """
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise ConfigError(
            f"{head}: the model returned {type(out).__name__}; the built-in {loss.name} loss needs a floating tensor "
            "(or a ModelOutput/dict with 'logits', or a tuple whose first element is one)"
        )
    if any(y is None for y in targets):
        raise ConfigError(
            f"{head}: the {loss.name} loss needs targets; return (inputs, targets), or a dict with 'labels'"
        )
    y0 = targets[0]
    assert y0 is not None
    if not loss.classes:
        if y0[0].numel() != out[0].numel():
            raise ConfigError(
                f"{head}: targets of shape {tuple(y0.shape)[1:]} per sample do not match outputs of shape "
                f"{tuple(out.shape)[1:]} per sample ({loss.name})"
            )
        return
    if y0.is_floating_point():
        if loss.name == "cross_entropy" and y0.shape == out.shape:
            return  # class probabilities
        raise ConfigError(
            f"{head}: {loss.name} needs integer class labels, got {str(y0.dtype).removeprefix('torch.')} targets; "
            "convert them with .long() (or give class probabilities of the outputs' shape)"
        )
    n_classes = int(out.shape[-1] if loss.name == "causal_lm" else (out.shape[1] if out.dim() > 1 else 0))
    for y in targets:
        assert y is not None
        valid = y[y != IGNORE_INDEX]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= n_classes):
            bad = int(valid.max()) if int(valid.max()) >= n_classes else int(valid.min())
            raise ConfigError(
                f"{head}: label {bad} is out of range for the model's {n_classes} classes (outputs "
                f"{tuple(out.shape)[1:]} per sample)"
            )
