"""The run's survey (``l1_scope="run"``): the scale of ``l1_tol`` and the first panel's factor, as the run grows.

A pair's accuracy budget is ``l1_tol * max(||lca||_1, S)``, where S is :data:`SCALE_FRACTION` of the run's mean
``||lca||_1``, estimated from :data:`SCALE_PAIRS` pairs spread over the run: the Euler row's norm
``||Δ ⊙ ∇L(v_t)||_1`` (one gradient), or, for a pair the store already holds, its stored row's norm (no gradient).
On runs of at least :data:`MIN_CALIBRATED_PAIRS` (100) pairs, some of those pairs are also *probes*: refined once
(four more gradients each, which the pair loop then takes instead of evaluating them again) to calibrate the local
scheme's first-panel factor on this run (:mod:`lca_cli.core.calibration`). Runs of 50-99 pairs are probed too, but
their probes may only raise the first panel's factor (:func:`~lca_cli.core.calibration.careful_first_factor`).

The survey is made when a store is created and made again by a later call (an append, a nightly cron call, a
``--follow`` that has seen the run grow) once the run has :data:`RESURVEY_GROWTH` times the pairs the last one
saw, so that a store begun on a run's first, nearly flat iterations (a learning-rate warm-up, a cron job's first
night) does not hold the rest of the run to their scale. Each survey is recorded in the store (``l1_scale``,
``first_factor``, ``l1_scale_over``) and so are the rows computed under it (``l1_scale_calls``: which scale and
factor each row met); every process of one call (helpers, torchrun ranks) reads the same from the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lca_cli.computation.engine import PairEngine, Point
from lca_cli.computation.options import SCALE_FRACTION, SCALE_PAIRS
from lca_cli.computation.reuse import ProbeReuse
from lca_cli.core.calibration import (
    MIN_PROBES,
    Probe,
    careful_first_factor,
    deep_panel_factor,
    first_panel_factor,
    full_pooling_factor,
    plain_error_share,
    wants_second_look,
)
from lca_cli.core.integrate import DEEP_FACTOR, JUMP_FACTOR, Evaluation
from lca_cli.errors import StoreError
from lca_cli.store.lcastore import LcaStore

__all__ = [
    "CALLS_ATTR",
    "MIN_CALIBRATED_PAIRS",
    "MIN_PROBED_PAIRS",
    "PAIRS_PER_PROBE",
    "RESURVEY_GROWTH",
    "SCALE_FRACTION",
    "SCALE_PAIRS",
    "SLOW_SCALE_SECONDS",
    "Survey",
    "deep_factors_of",
    "first_factors_of",
    "l1_scales_of",
    "measure_l1_scales",
    "needs_survey",
    "probe_count",
    "record_rows",
    "row_scales",
    "scale_pairs",
    "survey_attrs",
    "survey_run",
]

#: A survey expected to take longer than this is announced in a note.
SLOW_SCALE_SECONDS = 5.0
#: A store's survey is made again once the run has this many times the pairs the last one saw.
RESURVEY_GROWTH = 1.5
#: One probe per this many pairs (at most :data:`SCALE_PAIRS`): four gradients each, at most 0.08 per pair. With
#: one per 25 (8 probes on 200 pairs, 0.16 per pair) the probes cost more than they saved on three of the five
#: bench runs measured (BENCHMARKS.md, *Cost per accuracy*); four on 200 pairs gave the same factors but one.
PAIRS_PER_PROBE = 50
#: Runs of this many pairs and more are probed (:data:`~lca_cli.core.calibration.MIN_PROBES` probes up to 200 pairs).
#: On 100-199 pairs the probes evaluate 16 gradients, of which the loop takes back 8-16 (:class:`ProbeReuse`). In a
#: replay of ten recorded runs cut to 100-150 pairs they saved gradients on 25 of 40 cuts (up to 1.5 per pair) and
#: cost some on 12 (up to 0.24); on the bench's 100-pair MNIST-FC the call went from 3.25 to 2.63 gradients per pair
#: (BENCHMARKS.md, *The probes' gradients taken by the loop*).
MIN_CALIBRATED_PAIRS = 100
#: Shorter runs from this many pairs on are probed too, but their probes may only raise the first panel's factor
#: (:func:`~lca_cli.core.calibration.careful_first_factor`); runs under it (the tests' runs, a nightly job's first
#: nights) are not probed.
MIN_PROBED_PAIRS = 50
#: The store attribute listing, per survey, the rows computed under it.
CALLS_ATTR = "l1_scale_calls"


@dataclass(frozen=True)
class Survey:
    """What a survey measured, per evaluation set.

    Attributes:
        scales: ``{set: S}`` in loss units.
        over: Pairs of the run when it was made.
        factors: ``{set: first-panel factor}`` for the sets it calibrated (the others use ``JUMP_FACTOR``).
        calibration: ``{set: {"rho", "kappa", "probes", "plain"}}``: how each factor came about (``"plain"``: the
            probes' plain-Simpson error over their target; ``"second_look"``: the probes a second look had, where
            it was taken; ``"careful"``: a short run's).
        gradients: Gradients it evaluated.
        deep_factors: ``{set: deeper panels' factor}`` for the sets it calibrated (the others: uncalibrated).

    """

    scales: dict[str, float]
    over: int
    factors: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    gradients: int = 0
    deep_factors: dict[str, float] = field(default_factory=dict)


def scale_pairs(n_pairs: int, count: int = SCALE_PAIRS) -> list[int]:
    """The pairs, spread evenly over a run of ``n_pairs``, that estimate its scale (the middle of each slice).

    Args:
        n_pairs: Pairs of the run (checkpoints - 1).
        count: How many to take (all of them when the run has fewer).

    Returns:
        Increasing pair indices.

    """
    m = min(count, n_pairs)
    return [((2 * j + 1) * n_pairs) // (2 * m) for j in range(m)]


def probe_count(n_pairs: int) -> int:
    """Probe pairs of a run of ``n_pairs``: one per :data:`PAIRS_PER_PROBE`, at most :data:`SCALE_PAIRS`.

    From :data:`MIN_PROBED_PAIRS` pairs on there are at least ``MIN_PROBES``; shorter runs get none.
    """
    if n_pairs < MIN_PROBED_PAIRS:
        return 0
    return min(SCALE_PAIRS, max(MIN_PROBES, n_pairs // PAIRS_PER_PROBE))


def _probe(
    obj: Any, start: Point, end: Point, delta: torch.Tensor, g0: torch.Tensor
) -> tuple[Probe, dict[float, Evaluation]]:
    """Plain Simpson and one split on one pair: the first panel's indicator, ``||S_2 - S_4||_1``, ``||S_2||_1``.

    The points are evaluated as the pair loop evaluates them (inside the pair at ``v0 + s Δ``, the end at its own
    checkpoint), so that the loop can take them instead (:class:`~lca_cli.computation.reuse.ProbeReuse`); they
    are returned with the probe.
    """
    (v0, fixed0), (v1, fixed1) = start, end
    points = {s: Evaluation(*obj.value_and_grad_at(v0, delta, s, fixed0)) for s in (0.25, 0.5, 0.75)}
    points[1.0] = Evaluation(*obj.value_and_grad(v1, fixed1))
    g = {s: e.grad for s, e in points.items()}
    ends = g0 + g[1.0]  # (D,) accumulation dtype
    indicator = float(torch.add(ends, g[0.5], alpha=-2.0).mul_(delta).abs_().sum()) / 12.0
    s2 = torch.add(ends, g[0.5], alpha=4.0).mul_(delta).div_(6.0)  # (D,) plain Simpson's row
    s4 = torch.add(ends, g[0.5], alpha=2.0).add_(g[0.25] + g[0.75], alpha=4.0).mul_(delta).div_(12.0)  # one split
    return Probe(indicator, float(torch.dist(s2, s4, 1)), float(s2.abs().sum())), points


def survey_run(
    engine: PairEngine,
    read: Callable[[int], Point | None],
    n_pairs: int,
    note: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    stored: Callable[[str, int], float | None] | None = None,
    reuse: ProbeReuse | None = None,
) -> Survey | None:
    """Survey a run: its scale per set and, with enough pairs, the first panel's factor (module docstring).

    The scale is :data:`SCALE_FRACTION` of the mean norm over :func:`scale_pairs`; the Euler row's norm was
    0.95-1.13 times the mean plain-Simpson ``||lca||_1`` on the bench's runs (1.82 on one SGD CNN, where a few
    pairs are far larger than the rest; a larger scale loosens the budget of the smaller pairs only;
    BENCHMARKS.md). The probes are the first :func:`probe_count` of those pairs' spread, refined once; where
    they would pool further at a wider margin (:func:`~lca_cli.core.calibration.wants_second_look`), the rest of
    the sampled pairs are probed too, and the run keeps plain Simpson if all the probes show it may
    (:func:`~lca_cli.core.calibration.full_pooling_factor`).

    Args:
        engine: The pair engine (its objectives evaluate the gradients; its ``l1_tol`` is the target).
        read: ``i -> (point vector, fixed buffers)`` of checkpoint ``i``, on the engine's device; None when its
            file is gone (a followed run's used checkpoints): the pair is left out unless the store holds it.
        n_pairs: Pairs of the run.
        note: Told, when the first gradient says the rest will take more than :data:`SLOW_SCALE_SECONDS`, what
            is being done (before the progress display starts, a big model would otherwise sit silent).
        stop: When set, the survey ends before its next gradient (a big model's take minutes).
        stored: ``(set, t) -> ||lca_t||_1`` of a pair the store holds (None: not held); its norm then stands for
            the Euler row's. None: every sampled pair costs a gradient.
        reuse: Receives the probes' evaluations for the pair loop (the engine's
            :class:`~lca_cli.computation.reuse.ProbeReuse`; what it held before is dropped); None: not kept.

    Returns:
        The survey (scale 0.0 when the run has no pair; pairs whose norm is not finite are left out); None when
        stopped.

    """
    sets = list(engine.objectives)
    norms: dict[str, list[float]] = {s: [] for s in sets}
    probes: dict[str, list[Probe]] = {s: [] for s in sets}
    picked = scale_pairs(n_pairs)
    probed = {picked[i] for i in scale_pairs(len(picked), probe_count(n_pairs))}  # spread over the picked pairs
    t0, done = time.perf_counter(), 0
    if reuse is not None:
        reuse.clear_probes()  # an earlier survey's probes: this one's replace them (checkpoints stay: still valid)
    planned = sum(4 * (t in probed) + 1 for t in picked) * len(sets)
    for t in picked:
        known = {s: stored(s, t) for s in sets} if stored is not None else {}
        held = t not in probed and all(known.get(s) is not None for s in sets)
        start, end = (None, None) if held else (read(t), read(t + 1))
        if start is None or end is None:  # held in the store, or its checkpoints are gone
            for s in sets:
                if known.get(s) is not None:
                    norms[s].append(float(known[s]))  # type: ignore[arg-type]
            continue
        (v0, fixed0), (v1, _) = start, end
        delta = engine.delta(v0, v1)  # (D,) accumulation dtype (exact in float64), a pooled buffer
        mark = ProbeReuse.fingerprint(v0, delta) if reuse is not None and t in probed else None
        for s, obj in engine.objectives.items():
            if stop is not None and stop.is_set():
                return None
            loss, grad = obj.value_and_grad(v0, fixed0)  # grad: (D,) accumulation dtype
            if reuse is not None and known.get(s) is None:  # the loop computes pair t: it takes its start
                reuse.keep_checkpoint(t, s, v0, Evaluation(loss, grad))
            norm = known.get(s)
            norm = float(torch.linalg.vector_norm(delta * grad, 1)) if norm is None else norm
            if np.isfinite(norm):  # a diverged checkpoint is the pair loop's to report, in one line
                norms[s].append(norm)
            done += 1
            if note is not None and done == 1:
                rest = (time.perf_counter() - t0) * (planned - 1)
                if rest > SLOW_SCALE_SECONDS:
                    note(
                        f"measuring the run scale of --l1-tol on {len(picked)} pair(s) ({planned} gradients, about "
                        f"{rest:.0f} s more; when a store is made and as its run grows, --l1-scope pair skips it)"
                    )
            if t in probed:
                probe, points = _probe(obj, start, end, delta, grad)
                done += 4
                if np.isfinite([probe.indicator, probe.diff, probe.norm]).all():
                    probes[s].append(probe)
                    if known.get(s) is None:  # not held: the loop computes pair t and takes the points
                        _keep_probe(reuse, t, s, mark, v1, points)
                del points
    scales = {s: SCALE_FRACTION * float(np.mean(v)) if v else 0.0 for s, v in norms.items()}
    first = {s: list(v) for s, v in probes.items()}
    looking = [] if n_pairs < MIN_CALIBRATED_PAIRS else [
        s for s in sets if wants_second_look(probes[s], engine.l1_tol, scales[s], JUMP_FACTOR)
    ]  # fmt: skip
    pace = (note, (time.perf_counter() - t0) / max(1, done))  # to announce a slow second look as the survey
    others = [t for t in picked if t not in probed]
    more = _second_look(engine, read, others, looking, probes, stop, stored, reuse, pace)
    if more is None:
        return None
    factors, calibration, deep = _calibrate(engine.l1_tol, n_pairs, first, probes, looking, scales)
    return Survey(scales, n_pairs, factors, calibration, done + more, deep)


def _keep_probe(
    reuse: ProbeReuse | None,
    t: int,
    name: str,
    mark: tuple[Any, ...] | None,
    v1: torch.Tensor,
    points: dict[float, Evaluation],
) -> None:
    """Keep a probe's points of pair ``t`` in set ``name`` for the loop: its end as checkpoint ``t + 1``'s."""
    if reuse is not None and mark is not None:
        reuse.keep_checkpoint(t + 1, name, v1, points.pop(1.0))
        reuse.keep(t, name, mark, points)  # the inner points


def _second_look(
    engine: PairEngine,
    read: Callable[[int], Point | None],
    pairs: list[int],
    looking: list[str],
    probes: dict[str, list[Probe]],
    stop: threading.Event | None,
    stored: Callable[[str, int], float | None] | None,
    reuse: ProbeReuse | None,
    pace: tuple[Callable[[str], None] | None, float] = (None, 0.0),
) -> int | None:
    """Probe ``pairs`` (the sampled pairs not probed yet) in the sets ``looking``, adding to ``probes``.

    A pair's start gradient is the one the survey kept for the loop where it was (the same bits: same checkpoint,
    dtype and threads), else evaluated again. The points go to ``reuse`` as the first probes' do. ``pace`` is the
    survey's note function and its seconds per gradient: a second look expected to take longer than
    :data:`SLOW_SCALE_SECONDS` is announced.

    Returns:
        The gradients evaluated; None when stopped.

    """
    note, seconds = pace[0], pace[1] * 5 * len(pairs) * len(looking)
    if note is not None and seconds > SLOW_SCALE_SECONDS:  # a big model's take minutes
        note(
            f"probing {len(pairs)} more pair(s) of the survey (up to {5 * len(pairs) * len(looking)} gradients, about "
            f"{seconds:.0f} s): the first probes would let the run keep plain Simpson if more of them confirm it"
        )
    done = 0
    for t in pairs if looking else []:
        start, end = read(t), read(t + 1)
        if start is None or end is None:  # its checkpoints are gone (a followed run's used ones)
            continue
        (v0, fixed0), (v1, _) = start, end
        delta = engine.delta(v0, v1)  # (D,) accumulation dtype, a pooled buffer
        mark = ProbeReuse.fingerprint(v0, delta) if reuse is not None else None
        for s in looking:
            if stop is not None and stop.is_set():
                return None
            obj = engine.objectives[s]
            kept = reuse.peek_checkpoint(t, s, v0, delta.dtype) if reuse is not None else None
            if kept is None:
                kept = Evaluation(*obj.value_and_grad(v0, fixed0))
                done += 1
            probe, points = _probe(obj, start, end, delta, kept.grad)
            done += 4
            if np.isfinite([probe.indicator, probe.diff, probe.norm]).all():
                probes[s].append(probe)
                if stored is None or stored(s, t) is None:  # not held: the loop computes pair t
                    _keep_probe(reuse, t, s, mark, v1, points)
            del points, kept
    return done


def _calibrate(
    l1_tol: float,
    n_pairs: int,
    first: dict[str, list[Probe]],
    probes: dict[str, list[Probe]],
    looked: list[str],
    scales: dict[str, float],
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float]]:
    """Each set's first-panel factor, its calibration record and its deeper panels' factor, from its probes.

    Args:
        l1_tol: The per-parameter target.
        n_pairs: Pairs of the run.
        first: The first probes of each set.
        probes: Every probe of each set (the second look's too, for the sets in ``looked``).
        looked: The sets that took a second look.
        scales: Each set's run scale.

    Returns:
        ``(factors, calibration, deep factors)`` for the sets calibrated (the others keep the fixed factor).

    """
    factors, calibration, deep = {}, {}, {}
    for s, mine in first.items():
        if n_pairs < MIN_CALIBRATED_PAIRS:  # too short to pool: the probes may only make the first panel careful
            careful = careful_first_factor(mine, JUMP_FACTOR, DEEP_FACTOR)
            if careful is not None:
                factors[s] = careful[0]
                calibration[s] = {"rho": careful[1], "kappa": 1.0, "probes": float(len(mine)), "careful": 1.0}
            continue
        pooled = full_pooling_factor(probes[s], l1_tol, scales[s], JUMP_FACTOR) if s in looked else None
        used = probes[s] if pooled is not None else mine
        got = pooled or first_panel_factor(mine, l1_tol, scales[s], JUMP_FACTOR)
        if got is not None:
            factors[s] = got[0]
            plain = plain_error_share(used, l1_tol)
            deep_factor = deep_panel_factor(got[1], JUMP_FACTOR, DEEP_FACTOR, plain)
            if deep_factor is not None:  # jumps from the first panel on (else: uncalibrated below it)
                deep[s] = deep_factor
            calibration[s] = {"rho": got[1], "kappa": got[2], "probes": float(len(used))}
            if np.isfinite(plain):  # the store's attributes are JSON
                calibration[s]["plain"] = plain
            if s in looked:
                calibration[s]["second_look"] = float(len(probes[s]))
    return factors, calibration, deep


def measure_l1_scales(
    engine: PairEngine,
    read: Callable[[int], Point],
    n_pairs: int,
    note: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, float] | None:
    """The scales alone of :func:`survey_run` (``{set: scale}``; None when stopped)."""
    survey = survey_run(engine, read, n_pairs, note, stop)
    return None if survey is None else survey.scales


def survey_attrs(survey: Survey) -> dict[str, Any]:
    """The store attributes that record a survey (the current one: later calls read it)."""
    return {
        "l1_scale": dict(survey.scales),
        "l1_scale_pairs": SCALE_PAIRS,
        "l1_scale_over": survey.over,
        "first_factor": dict(survey.factors),
        "deep_factor": dict(survey.deep_factors),
        "calibration": {s: dict(c) for s, c in survey.calibration.items()},
    }


def needs_survey(store: LcaStore, n_pairs: int, scope: str) -> bool:
    """Whether a call on an existing store surveys the run again: it has grown by :data:`RESURVEY_GROWTH`.

    Args:
        store: The store (its attributes say what the last survey saw; for a store made before surveys were
            repeated, its done pairs stand for it).
        n_pairs: Pairs of the run now.
        scope: The store's ``l1_scope``.

    Returns:
        True when the run is to be surveyed again.

    """
    if scope != "run":
        return False
    recorded = store.attrs.get("l1_scale_over")
    over = int(recorded) if recorded is not None else int(store.done().sum())
    return n_pairs > over and n_pairs >= RESURVEY_GROWTH * over


def l1_scales_of(store: LcaStore, scope: str) -> dict[str, float]:
    """The run scales a store recorded (``l1_scope="run"``), per set; empty for ``"pair"``.

    Args:
        store: The store.
        scope: The store's ``l1_scope``.

    Returns:
        ``{set: scale}``.

    Raises:
        StoreError: If the store's settings say ``"run"`` and it holds no scale.

    """
    if scope != "run":
        return {}
    recorded = store.attrs.get("l1_scale")
    if not isinstance(recorded, dict) or set(recorded) != set(store.sets):
        raise StoreError(
            f"{store.path} was made with --l1-scope run but records no run scale (l1_scale): recompute it with "
            "--overwrite, or pass --l1-scope pair to a new store"
        )
    return {str(k): float(v) for k, v in recorded.items()}


def deep_factors_of(store: LcaStore) -> dict[str, float]:
    """The deeper panels' factors a store's last survey calibrated, per set (sets absent: uncalibrated)."""
    recorded = store.attrs.get("deep_factor")
    return {str(k): float(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}


def first_factors_of(store: LcaStore) -> dict[str, float]:
    """The first-panel factors a store's last survey calibrated, per set (sets absent: the fixed factor)."""
    recorded = store.attrs.get("first_factor")
    return {str(k): float(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}


def _ranges(mask: np.ndarray) -> list[list[int]]:
    """``[[start, stop), ...]`` of the runs of True in a boolean ``(T,)`` mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2], strict=True)]


def record_rows(
    store: LcaStore,
    rows: np.ndarray,
    scales: Mapping[str, float],
    factors: Mapping[str, float],
    over: int,
    deep_factors: Mapping[str, float] | None = None,
) -> None:
    """Record that ``rows`` were computed under these scales and factors (``l1_scale_calls``).

    Rows computed under the same survey as the last entry's join that entry.

    Args:
        store: The store (owned: its attributes are written).
        rows: bool ``(T,)``: the rows.
        scales: ``{set: S}`` they met.
        factors: ``{set: first-panel factor}`` they met (absent: the fixed one).
        over: Pairs the survey behind them saw.
        deep_factors: ``{set: deeper panels' factor}`` they met (absent: uncalibrated); None: not recorded.

    """
    if not rows.any():
        return
    entry: dict[str, Any] = {"scale": dict(scales), "first_factor": dict(factors), "over": int(over)}
    if deep_factors is not None:
        entry["deep_factor"] = dict(deep_factors)
    calls = list(store.attrs.get(CALLS_ATTR) or [])
    if calls and {k: calls[-1].get(k) for k in entry} == entry:
        # The same survey as the last call's (a resume, a shard, a --follow block): one entry grows, so that the
        # record stays one entry per survey and its size does not grow with the number of calls.
        rows = rows.copy()
        for a, b in calls[-1]["rows"]:
            rows[a : min(b, rows.size)] = True
        calls.pop()
    store.update_attrs({CALLS_ATTR: [*calls, {**entry, "rows": _ranges(rows)}]})


def row_scales(store: LcaStore, set_name: str) -> np.ndarray:
    """The scale each row met, from ``l1_scale_calls`` (rows it does not name: the store's ``l1_scale``).

    Args:
        store: The store.
        set_name: The evaluation set.

    Returns:
        float64 ``(T,)``.

    """
    out = np.full(store.n_pairs, float((store.attrs.get("l1_scale") or {}).get(set_name, 0.0)))
    named = np.zeros(store.n_pairs, dtype=bool)
    for entry in reversed(store.attrs.get(CALLS_ATTR) or []):  # the latest call that computed a row wins
        for a, b in entry["rows"]:
            b = min(b, store.n_pairs)
            fresh = ~named[a:b]
            out[a:b][fresh] = float(entry["scale"].get(set_name, 0.0))
            named[a:b] = True
    return out
