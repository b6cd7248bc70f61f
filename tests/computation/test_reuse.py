"""The survey's probe evaluations kept for the pair loop (:class:`~lca_cli.computation.reuse.ProbeReuse`)."""

from __future__ import annotations

import torch

from lca_cli.computation.reuse import ProbeReuse
from lca_cli.core.integrate import Evaluation


def _points(d: int, dtype: torch.dtype = torch.float64) -> dict[float, Evaluation]:
    return {s: Evaluation(torch.tensor(s, dtype=torch.float64), torch.full((d,), s, dtype=dtype)) for s in (0.5, 1.0)}


def test_kept_points_are_taken_once_and_only_for_the_same_pair() -> None:
    v0, delta = torch.arange(6, dtype=torch.float32), torch.linspace(-1, 1, 6, dtype=torch.float64)
    mark = ProbeReuse.fingerprint(v0, delta)
    reuse = ProbeReuse(limit_bytes=1 << 20)
    points = _points(6)
    assert reuse.keep(3, "train", mark, points) and reuse.pending(3) and not reuse.pending(4)
    points[0.5].grad.fill_(7.0)  # the caller's pooled buffer is reused: what was kept is a copy
    got = reuse.take(3, "train", mark)
    assert sorted(got) == [0.5, 1.0] and torch.equal(got[0.5].grad, torch.full((6,), 0.5, dtype=torch.float64))
    assert reuse.take(3, "train", mark) == {} and not reuse.pending(3) and reuse.nbytes == 0


def test_a_pair_that_differs_is_evaluated_again() -> None:
    """Another start point, another difference or another thread count: the kept points are dropped, not used."""
    v0, delta = torch.zeros(4), torch.ones(4, dtype=torch.float64)
    reuse = ProbeReuse(limit_bytes=1 << 20)
    reuse.keep(0, "train", ProbeReuse.fingerprint(v0, delta), _points(4))
    reuse.keep(1, "train", ProbeReuse.fingerprint(v0, delta), _points(4))
    assert reuse.take(0, "train", ProbeReuse.fingerprint(v0 + 1, delta)) == {}
    before = torch.get_num_threads()
    torch.set_num_threads(2 if before == 1 else 1)
    try:
        assert reuse.take(1, "train", ProbeReuse.fingerprint(v0, delta)) == {}
    finally:
        torch.set_num_threads(before)
    assert reuse.nbytes == 0 and not reuse.pending(0) and not reuse.pending(1)


def test_nothing_is_kept_past_the_byte_limit() -> None:
    mark = ProbeReuse.fingerprint(torch.zeros(8), torch.ones(8, dtype=torch.float64))
    reuse = ProbeReuse(limit_bytes=2 * 8 * 8)  # two float64 (8,) gradients: one probe's pair of points
    assert reuse.keep(0, "train", mark, _points(8))
    assert not reuse.keep(1, "train", mark, _points(8)) and not reuse.pending(1)
    assert not ProbeReuse(limit_bytes=0).keep(0, "train", mark, _points(8))
    reuse.clear()
    assert reuse.nbytes == 0 and not reuse.pending(0)


def test_a_checkpoint_gradient_is_taken_once_for_the_same_checkpoint_and_dtype() -> None:
    """The survey's gradient at a sampled pair's start: taken once under its checkpoint's fingerprint, dropped when
    the checkpoint or the accumulation dtype differs, within the same byte limit as the probes' points."""
    v = torch.arange(5, dtype=torch.float32)
    evaluation = Evaluation(torch.tensor(0.25, dtype=torch.float64), torch.full((5,), 3.0, dtype=torch.float64))
    reuse = ProbeReuse(limit_bytes=2 * 5 * 8)
    assert reuse.keep_checkpoint(7, "train", v, evaluation) and not reuse.pending(7)  # not a probe pair's points
    evaluation.grad.zero_()  # the caller's pooled buffer is reused: what was kept is a copy
    assert reuse.take_checkpoint(6, "train", v, torch.float64) is None
    got = reuse.take_checkpoint(7, "train", v, torch.float64)
    assert got is not None and torch.equal(got.grad, torch.full((5,), 3.0, dtype=torch.float64))
    assert reuse.take_checkpoint(7, "train", v, torch.float64) is None and reuse.nbytes == 0
    reuse.keep_checkpoint(7, "train", v, evaluation)
    assert reuse.keep_checkpoint(7, "train", v, evaluation) and reuse.nbytes == 5 * 8  # replaced, not added
    reuse.clear_probes()  # a new survey's: the checkpoints' gradients stay
    assert reuse.take_checkpoint(7, "train", v, torch.float64) is not None and reuse.nbytes == 0
    reuse.keep_checkpoint(1, "train", v, evaluation)
    reuse.keep_checkpoint(2, "train", v, evaluation)
    assert not reuse.keep_checkpoint(3, "train", v, evaluation)  # over the limit
    assert reuse.take_checkpoint(1, "train", v + 1, torch.float64) is None  # another checkpoint
    assert reuse.take_checkpoint(2, "train", v, torch.float32) is None  # another accumulation dtype
    assert reuse.nbytes == 0


def test_entries_and_used_count_what_the_loop_can_take_and_took() -> None:
    """``entries`` (the dry run's lower bound of the gradients a call saves) counts each kept checkpoint once, however
    often it is kept again, and each probe pair's points once; ``used`` counts only what matched."""
    v = torch.arange(5, dtype=torch.float32)
    evaluation = Evaluation(torch.tensor(0.25, dtype=torch.float64), torch.full((5,), 3.0, dtype=torch.float64))
    mark = ProbeReuse.fingerprint(v, torch.ones(5, dtype=torch.float64))
    reuse = ProbeReuse(limit_bytes=1 << 20)
    reuse.keep_checkpoint(0, "train", v, evaluation)
    reuse.keep_checkpoint(0, "train", v, evaluation)  # the accumulation probe's, then the survey's: one entry
    reuse.keep_checkpoint(1, "train", v, evaluation)
    reuse.keep(4, "train", mark, _points(5))
    assert reuse.entries == 3 and reuse.used == 0
    assert reuse.take_checkpoint(0, "train", v, torch.float64) is not None  # used
    assert reuse.take_checkpoint(1, "train", v + 1, torch.float64) is None  # handed over, not matching: not used
    reuse.count_used(len(reuse.take(4, "train", mark)) - 1)  # the pair used one of its two points
    assert reuse.entries == 3 and reuse.used == 2
    off = ProbeReuse(limit_bytes=0)  # reuse off: nothing kept, nothing to count on
    assert not off.keep_checkpoint(0, "train", v, evaluation) and off.entries == 0
    reuse.clear()
    assert reuse.entries == 0


def test_a_peeked_checkpoint_gradient_stays_for_the_loop() -> None:
    """The survey's second look starts a probe from a kept checkpoint gradient without taking it from the loop."""
    v = torch.arange(5, dtype=torch.float32)
    evaluation = Evaluation(torch.tensor(0.5, dtype=torch.float64), torch.full((5,), 2.0, dtype=torch.float64))
    reuse = ProbeReuse(limit_bytes=1 << 20)
    assert reuse.peek_checkpoint(4, "train", v, torch.float64) is None  # nothing kept
    reuse.keep_checkpoint(4, "train", v, evaluation)
    assert reuse.peek_checkpoint(4, "train", v + 1, torch.float64) is None  # another checkpoint
    assert reuse.peek_checkpoint(4, "train", v, torch.float32) is None  # another accumulation dtype
    peeked = reuse.peek_checkpoint(4, "train", v, torch.float64)
    assert peeked is not None and torch.equal(peeked.grad, evaluation.grad)
    assert reuse.entries == 1 and reuse.used == 0  # still there, not counted as used
    taken = reuse.take_checkpoint(4, "train", v, torch.float64)
    assert taken is not None and reuse.used == 1 and reuse.nbytes == 0
