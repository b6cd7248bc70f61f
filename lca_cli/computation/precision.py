"""Float32 accumulation where a bound computed from the run shows it is safe, float64 otherwise (issue 23).

A row ``lca_i = Δ_i Σ_k W_k Σ_c w_c g_{k,c,i}`` (quadrature weights ``W_k`` over the points of the segment,
chunk weights ``w_c`` over the evaluation chunks) accumulated in a floating dtype of unit roundoff ``u`` is off
by at most ``n u`` times ``Δ_i Σ_k W_k Σ_c |w_c g_{k,c,i}|`` (Higham, *Accuracy and Stability of Numerical
Algorithms*, §3: a sum of ``n`` terms computed left to right, each product rounded once), where ``n`` counts the
roundings an entry sees (:func:`rounding_terms`): one per evaluation chunk added, the chunk weight, the
difference ``Δ``, the Simpson combination and scaling, one per panel summed into the row (at most
``max_splits / 2``) and ``log2 D`` for the per-tensor and residual sums. Relative to ``||lca||_1``, the row's L1
error is then at most ``n u κ``, with the cancellation ratio

    κ = Σ_i |Δ_i| Σ_k W_k Σ_c |w_c g_{k,c,i}|  /  Σ_i |Δ_i Σ_k W_k Σ_c w_c g_{k,c,i}| >= 1,

large where chunk gradients or the gradients along the segment cancel. :func:`measure_cancellation` measures κ
on the run's first pair with the two end points (the trapezoid rule), and the bound is ``SAFETY n u κ``
(:data:`SAFETY` for pairs that cancel more than the first). Float32 is used when that is at most :data:`SHARE`
of ``l1_tol`` (the run's accuracy target: 1e-3 relative L1 by default), so its rounding is a hundredth of the
error the run is allowed; float64 otherwise, for networks not in float32, without a per-parameter target, or
with ``accumulate="float64"``. The choice and every number of the bound go into the store's ``accumulation``
attribute when the store is made; later calls (appends, helpers) use the store's choice.

Float32 halves every parameter-sized buffer of the pair loop that holds gradients or rows
(:data:`lca_cli.computation.engine.MEMORY_BUDGET`) and drops the float64 casts of each chunk's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lca_cli.computation.engine import PairEngine, Point
from lca_cli.core.integrate import Evaluation
from lca_cli.store.lcastore import LcaStore

__all__ = [
    "SAFETY",
    "SHARE",
    "accumulation_bound",
    "accumulation_of",
    "choose_accumulation",
    "measure_cancellation",
    "rounding_terms",
]

#: The bound may use at most this share of ``l1_tol`` for float32 to be chosen.
SHARE = 0.01
#: Margin on the first pair's cancellation ratio, for pairs that cancel more.
SAFETY = 2.0
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def rounding_terms(chunks: int, max_splits: int, size: int) -> int:
    """Roundings an accumulated row entry sees at most (see the module docstring).

    Args:
        chunks: Evaluation chunks summed per gradient.
        max_splits: Cap on sub-intervals (panels summed into the row: at most half of it).
        size: Entries of the point vector (the per-tensor and residual sums).

    Returns:
        ``chunks + 1`` (the chunk sum and its weights) ``+ 4`` (``Δ``, the Simpson sum, its scaling and
        product) ``+ max_splits / 2`` (panels) ``+ ceil(log2 size)`` (the sums over entries).

    """
    return chunks + 1 + 4 + max(1, max_splits // 2) + math.ceil(math.log2(max(2, size)))


def accumulation_bound(chunks: int, max_splits: int, size: int, kappa: float, dtype: torch.dtype) -> float:
    """The bound on a row's relative L1 error from accumulating in ``dtype``: ``SAFETY n u κ``.

    Args:
        chunks: Evaluation chunks per gradient.
        max_splits: Cap on sub-intervals.
        size: Entries of the point vector.
        kappa: Cancellation ratio (:func:`measure_cancellation`).
        dtype: The accumulation dtype (its unit roundoff ``eps / 2``).

    Returns:
        The bound, relative to ``||lca||_1``.

    """
    u = torch.finfo(dtype).eps / 2
    return SAFETY * rounding_terms(chunks, max_splits, size) * u * kappa


def measure_cancellation(engine: PairEngine, read: Callable[[int], Point]) -> dict[str, float]:
    """κ per set, on the first pair, from the gradients at its two ends (module docstring).

    Uses ``Σ_i |Δ_i| |x_i| = Σ_i |Δ_i x_i|``, so only ``|Δ|`` is kept. The gradients are accumulated in float32:
    κ is a ratio of sums of magnitudes, needed to a few digits.

    Args:
        engine: The pair engine (its objectives accumulate in float32 afterwards: the pooled float32 buffers the
            probe touched are the ones the run scale and the pair loop then reuse, when float32 is chosen). Its
            :class:`~lca_cli.computation.reuse.ProbeReuse` keeps the two gradients: they are the pair loop's at
            checkpoints 0 and 1 when float32 is chosen (the magnitudes are summed beside the gradient, which
            is accumulated as without them), and :func:`choose_accumulation` drops them otherwise.
        read: ``i -> (point vector, fixed buffers)`` of checkpoint ``i``.

    Returns:
        ``{set: κ}``; ``inf`` where a norm is not finite, 1.0 where the first pair does not move.

    """
    (v0, fixed0), (v1, fixed1) = read(0), read(1)
    engine.accumulate = torch.float32
    absd = torch.sub(v1, v0, out=engine.pool.take(v0.numel(), torch.float32, v0.device)).abs_()  # (D,) |Δ|
    out: dict[str, float] = {}
    for s, obj in engine.objectives.items():
        mag = engine.pool.like(absd)  # (D,) Σ_c |w_c g_c| at one end, then the other
        loss0, g0 = obj.value_and_grad(v0, fixed0, magnitude=mag)
        magnitudes = float(torch.dot(absd, mag))
        loss1, g1 = obj.value_and_grad(v1, fixed1, magnitude=mag)
        magnitudes += float(torch.dot(absd, mag))
        engine.reuse.keep_checkpoint(0, s, v0, Evaluation(loss0, g0))  # copies, before g0 is summed into
        engine.reuse.keep_checkpoint(1, s, v1, Evaluation(loss1, g1))
        signed = float(torch.dot(absd, g0.add_(g1).abs_()))
        del g0, g1, mag
        if not (math.isfinite(magnitudes) and math.isfinite(signed)):
            out[s] = math.inf
        else:
            out[s] = magnitudes / signed if signed > 0 else 1.0
    return out


def choose_accumulation(
    engine: PairEngine,
    read: Callable[[int], Point],
    n_pairs: int,
    *,
    requested: str,
    network_dtype: str,
    l1_tol: float,
    max_splits: int,
    explicit_tolerance: bool,
) -> dict[str, Any]:
    """Decide float32 or float64 accumulation for a new store, and say why (the store's ``accumulation`` attr).

    Args:
        engine: The pair engine (its dtype is set to the choice).
        read: ``i -> point`` of checkpoint ``i``.
        n_pairs: Pairs of the run (the first is measured).
        requested: ``"auto"`` or ``"float64"`` (``--accumulate``).
        network_dtype: The resolved network dtype (``"float32"`` or ``"float64"``).
        l1_tol: The per-parameter target (0: none).
        max_splits: Cap on sub-intervals.
        explicit_tolerance: A residual tolerance (``--tolerance``/``--rtol``) was given.

    Decided before the run scale is measured, so that the scale's gradients are accumulated (and its buffers
    pooled) in the dtype the pair loop uses.

    Returns:
        ``{"dtype", "reason"}``, with the bound's numbers when it was measured: ``bound`` (the largest over the
        sets), ``limit`` (``SHARE l1_tol``), ``kappa`` and ``chunks`` per set, ``terms`` per set,
        ``unit_roundoff``, ``safety``.

    """
    record: dict[str, Any] = {"dtype": "float64"}
    if requested == "float64":
        record["reason"] = "--accumulate float64"
    elif network_dtype != "float32":
        record["reason"] = f"the network runs in {network_dtype}"
    elif l1_tol <= 0 or explicit_tolerance:
        record["reason"] = "no per-parameter target (--l1-tol) alone to bound against"
    elif n_pairs < 1:
        record["reason"] = "no pair to measure the bound on"
    else:
        kappa = measure_cancellation(engine, read)
        size = engine.vlayout.size
        chunks = {s: len(obj.evalset.chunks) for s, obj in engine.objectives.items()}
        bounds = {s: accumulation_bound(chunks[s], max_splits, size, kappa[s], torch.float32) for s in kappa}
        bound, limit = max(bounds.values()), SHARE * l1_tol
        record.update(
            bound=bound, limit=limit, kappa=kappa, chunks=chunks,
            terms={s: rounding_terms(chunks[s], max_splits, size) for s in chunks},
            unit_roundoff=torch.finfo(torch.float32).eps / 2, safety=SAFETY,
        )  # fmt: skip
        record["dtype"] = "float32" if bound <= limit else "float64"
        record["reason"] = f"bound {bound:.3g} {'<=' if bound <= limit else '>'} {SHARE:g} x l1_tol = {limit:.3g}"
        if record["dtype"] != "float32":
            engine.reuse.clear()  # the probe's float32 gradients are not the loop's
    engine.accumulate = _DTYPES[record["dtype"]]
    return record


def accumulation_of(store: LcaStore, requested: str) -> torch.dtype:
    """The accumulation dtype a store's rows use: its recorded choice, or float64 (older stores, or forced).

    Args:
        store: The store.
        requested: ``--accumulate`` of this call: ``"float64"`` forces float64 for the rows it computes.

    Returns:
        The dtype.

    """
    recorded = store.attrs.get("accumulation")
    if requested == "float64" or not isinstance(recorded, dict):
        return torch.float64
    return _DTYPES.get(str(recorded.get("dtype")), torch.float64)
