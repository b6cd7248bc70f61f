"""The survey's evaluations, kept for the pair loop so that no gradient is evaluated twice.

The run's survey (:mod:`lca_cli.computation.scale`) evaluates the gradient at the start checkpoint of each of
its pairs and refines a few probe pairs once; the pair loop (:mod:`lca_cli.computation.engine`) takes those
evaluations when it reaches them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lca_cli.core.integrate import Evaluation

__all__ = ["REUSE_BYTES", "ProbeReuse"]

#: The gradients a survey evaluated are kept for the pair loop within this many bytes (at most one per sampled pair
#: and four per probe, per evaluation set, and the accumulation probe's two; what does not fit is not kept and the
#: loop evaluates it). The survey keeps them pair by pair in the order it evaluates them: a kept checkpoint
#: gradient always saves one, a probe's inner points save one or three of their three.
REUSE_BYTES = 64 << 20


class ProbeReuse:
    """The gradients the run's survey evaluated, kept for the pair loop (each taken once).

    A probe (:mod:`lca_cli.computation.scale`) evaluates its pair at ``s = 1/4, 1/2, 3/4`` and at the end
    checkpoint: the points of plain Simpson and of its first split (the end is kept as a checkpoint's gradient,
    below; the inner points under the pair's fingerprint). Without them the loop evaluates the same
    points again: 2-4 per probe and evaluation set, 8-14 a call on seven 200-pair runs (BENCHMARKS.md, *Cost per
    accuracy*). Both evaluate them the same way (:meth:`~lca_cli.core.objective.Objective.value_and_grad_at`
    inside the pair, ``value_and_grad`` at its end) on the same checkpoints, dtype and thread count, so a kept
    gradient has the bits a new one would: a store is the same whether its probe pairs were taken from here or
    evaluated again (tested), as they are by a process that did not survey (a ``--cooperate`` helper, tested;
    torchrun's other ranks join as helpers too). A fingerprint of the pair (the sums of its start point and its
    difference, the accumulation dtype, the thread count) must match, or the entry is dropped.

    The survey also evaluates the gradient at the start checkpoint of every pair it samples for the run scale (8
    a call): the loop takes it as the end of the pair before (or the start of a block), under the checkpoint's own
    fingerprint (:meth:`checkpoint_mark`): 8 gradients a call, 0.08 per pair on a 100-pair run. So are the
    accumulation probe's two, at checkpoints 0 and 1 (:func:`~lca_cli.computation.precision.measure_cancellation`),
    when the loop accumulates in float32 as the probe did.

    Args:
        limit_bytes: Gradient bytes kept at most (:data:`REUSE_BYTES`); 0 keeps nothing.

    """

    def __init__(self, limit_bytes: int = REUSE_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self.nbytes = 0
        #: Gradients the pair loop took from here and used (checkpoints' as taken, inner points by
        #: :meth:`count_used`), over the object's life.
        self.used = 0
        self._handed = 0  # entries handed to the loop (or dropped there as not matching)
        self._kept: dict[tuple[int, str], tuple[tuple[Any, ...], dict[float, Evaluation]]] = {}
        self._checkpoints: dict[tuple[int, str], tuple[tuple[Any, ...], Evaluation]] = {}

    @staticmethod
    def fingerprint(v0: torch.Tensor, delta: torch.Tensor) -> tuple[Any, ...]:
        """What must be equal for a kept evaluation of pair ``v0 -> v0 + delta`` to be the loop's."""
        return (
            float(v0.sum(dtype=torch.float64)), float(delta.sum(dtype=torch.float64)), delta.dtype,
            torch.get_num_threads(),
        )  # fmt: skip

    @staticmethod
    def checkpoint_mark(v: torch.Tensor, dtype: torch.dtype) -> tuple[Any, ...]:
        """What must be equal for a kept gradient at the checkpoint of point vector ``v`` to be the loop's.

        Args:
            v: The checkpoint's point vector.
            dtype: The accumulation dtype the gradient is evaluated in.

        """
        return float(v.sum(dtype=torch.float64)), dtype, torch.get_num_threads()

    def keep_checkpoint(self, i: int, name: str, v: torch.Tensor, evaluation: Evaluation) -> bool:
        """Keep the evaluation at checkpoint ``i`` in set ``name`` (a copy), within the byte limit.

        Args:
            i: The checkpoint (the start of pair ``i``, the end of pair ``i - 1``).
            name: The evaluation set.
            v: The checkpoint's point vector (for its :meth:`checkpoint_mark`).
            evaluation: Its loss and gradient (in the accumulation dtype).

        Returns:
            True when kept; False when it would take the kept bytes over the limit.

        """
        old = self._checkpoints.pop((i, name), None)  # one entry per checkpoint: an earlier one goes
        if old is not None:
            self.nbytes -= old[1].grad.nbytes
        if not self._admit(evaluation.grad.nbytes):
            return False
        mark = self.checkpoint_mark(v, evaluation.grad.dtype)
        self._checkpoints[(i, name)] = (mark, Evaluation(evaluation.loss, evaluation.grad.clone()))
        return True

    def take_checkpoint(self, i: int, name: str, v: torch.Tensor, dtype: torch.dtype) -> Evaluation | None:
        """Checkpoint ``i``'s kept evaluation in set ``name``, removed; None when none or not matching.

        Args:
            i: The checkpoint.
            name: The evaluation set.
            v: The point vector the loop read for it.
            dtype: The accumulation dtype the loop evaluates in.

        """
        kept = self._checkpoints.pop((i, name), None)
        if kept is None:
            return None
        self.nbytes -= kept[1].grad.nbytes
        self._handed += 1
        if kept[0] != self.checkpoint_mark(v, dtype):
            return None
        self.used += 1  # the loop uses every checkpoint gradient it takes
        return kept[1]

    def peek_checkpoint(self, i: int, name: str, v: torch.Tensor, dtype: torch.dtype) -> Evaluation | None:
        """Checkpoint ``i``'s kept evaluation in set ``name``, left in place; None when none or not matching.

        The survey's second look starts its probes from the gradients its first pass kept for the loop.

        Args:
            i: The checkpoint.
            name: The evaluation set.
            v: The point vector read for it.
            dtype: The accumulation dtype.

        """
        kept = self._checkpoints.get((i, name))
        return kept[1] if kept is not None and kept[0] == self.checkpoint_mark(v, dtype) else None

    def keep(self, t: int, name: str, mark: tuple[Any, ...], points: Mapping[float, Evaluation]) -> bool:
        """Keep pair ``t``'s evaluations in set ``name`` (copies: the objectives' pooled buffers go back).

        Args:
            t: The pair.
            name: The evaluation set.
            mark: :meth:`fingerprint` of the pair.
            points: ``{s: evaluation}`` inside the pair (its end checkpoint's goes to :meth:`keep_checkpoint`).

        Returns:
            True when kept; False when they would take the kept bytes over the limit.

        """
        if not self._admit(sum(e.grad.nbytes for e in points.values())):
            return False
        self._kept[(t, name)] = (mark, {s: Evaluation(e.loss, e.grad.clone()) for s, e in points.items()})
        return True

    def _admit(self, size: int) -> bool:
        """Count ``size`` more bytes as kept, unless that would take them over the limit."""
        if self.nbytes + size > self.limit_bytes:
            return False
        self.nbytes += size
        return True

    def pending(self, t: int) -> bool:
        """Whether anything is kept for pair ``t``."""
        return any(key[0] == t for key in self._kept)

    def take(self, t: int, name: str, mark: tuple[Any, ...]) -> dict[float, Evaluation]:
        """Pair ``t``'s kept evaluations in set ``name``, removed from here; empty when none or not matching."""
        kept = self._kept.pop((t, name), None)
        if kept is None:
            return {}
        self.nbytes -= sum(e.grad.nbytes for e in kept[1].values())
        self._handed += 1
        return kept[1] if kept[0] == mark else {}

    def count_used(self, n: int) -> None:
        """Count ``n`` of a probe pair's inner points (from :meth:`take`) the loop used instead of evaluating them."""
        self.used += n

    @property
    def entries(self) -> int:
        """Entries kept now or handed to the loop: what a loop over every pair saves at least, in gradients.

        A checkpoint's gradient saves one where the loop computes a pair that starts or ends there; a probe
        pair's inner points (one entry per set) save one, its midpoint, or three where the pair splits.
        """
        return len(self._checkpoints) + len(self._kept) + self._handed

    def clear_probes(self) -> None:
        """Drop the probes' points (the checkpoints' gradients stay)."""
        self.nbytes -= sum(e.grad.nbytes for _, points in self._kept.values() for e in points.values())
        self._kept.clear()

    def clear(self) -> None:
        """Drop everything kept."""
        self._kept.clear()
        self._checkpoints.clear()
        self.nbytes = 0
        self._handed = 0
