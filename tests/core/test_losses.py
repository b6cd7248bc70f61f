"""The built-in losses: float64 reductions, shapes that must not broadcast, unknown names."""

from __future__ import annotations

import pytest
import reference
import torch
from torch import nn

from lca_cli.core.losses import builtin_loss
from lca_cli.errors import ConfigError


def _loss_case(name: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 outputs and targets of 4,096 samples for one built-in loss."""
    n, c = 4096, 5
    if name == "causal_lm":
        return torch.randn(64, 65, c, generator=g), torch.randint(0, c, (64, 65), generator=g)
    out = torch.randn(n, c, generator=g)
    if name == "nll":
        return out.log_softmax(1), torch.randint(0, c, (n,), generator=g)
    if name == "cross_entropy":
        return out, torch.randint(0, c, (n,), generator=g)
    if name == "mse":
        return out, torch.randn(n, c, generator=g)
    return out, torch.randint(0, 2, (n, c), generator=g).float()  # bce_with_logits


@pytest.mark.parametrize("name", ["cross_entropy", "nll", "mse", "bce_with_logits", "causal_lm"])
def test_builtin_losses_are_not_rounded_to_the_networks_dtype(name: str) -> None:
    # A float32 mean is a multiple of its ulp (1.2e-7 near 1): a loss change of a few ulps, late in training, would
    # be that rounding. Nudge 10% of the float32 outputs by one float32 step, 40 times: the float64-reduced loss
    # follows each nudge, where the float32 mean takes a handful of values.
    g = torch.Generator().manual_seed(0)
    out, y = _loss_case(name, g)
    loss_fn = builtin_loss(name)
    values64, values32 = set(), set()
    for _ in range(40):
        nudged = torch.where(torch.rand(out.shape, generator=g) < 0.1, torch.nextafter(out, out + 1), out)
        loss = loss_fn(nudged, y)
        assert loss.dtype == torch.float64
        values64.add(float(loss))
        values32.add(float(loss.float()))
    assert len(values32) <= 8 and len(values64) >= 30, (len(values32), len(values64))


def test_builtin_losses() -> None:
    out = torch.tensor([[0.5], [1.5], [-1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    # (N, 1) outputs against (N,) targets must not broadcast to (N, N).
    assert float(builtin_loss("mse")(out, y)) == pytest.approx((0.25 + 0.25 + 1.0) / 3)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    ce = float(builtin_loss("cross_entropy")(logits, labels))
    assert ce == pytest.approx(float(reference.ref_loss("cross_entropy")(logits, labels)))
    assert float(builtin_loss("nll")(torch.log_softmax(logits, 1), labels)) == pytest.approx(ce)
    bce = float(builtin_loss("bce_with_logits")(out, y))
    assert bce == pytest.approx(float(nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), y)))
    with pytest.raises(ConfigError, match="unknown loss"):
        builtin_loss("hinge")
