"""The prior's overall scale chosen by the likelihood of projections a fit did not see.

Every block variance of the prior is multiplied by one factor; the factor whose posterior
predicts held-out projections best (:func:`dip_uq.laplace.predictive.predictive`, Gaussian
log-likelihood per detector pixel) is kept. The search is 1-D in ``log10`` of the factor
(:func:`best_decade`): the held-out likelihood is smooth and single-peaked there, so a walk
by decades, a half decade beside the best and a parabola place its top in 4-6 evaluations.
Each evaluation draws the same posterior samples (by index) at another scale, so candidates
differ by the scale alone, not by sampling noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import reduce
from typing import TYPE_CHECKING, Any

import torch

from ..metrics import gaussian_tll
from .moments import batches
from .predictive import predictive

if TYPE_CHECKING:
    from ..projector.operator import Operator
    from .posterior import LinearisedLaplace
    from .solvers import SolverConfig

__all__ = ["PRIOR_SCALE_DECADES", "best_decade", "choose_prior_scale"]

logger = logging.getLogger("dip_uq")
# the range of the factors searched, in decades of the starting variances: wide enough that
# the held-out likelihood's peak has lain inside it on every scan tried (docs/calibration.md)
PRIOR_SCALE_DECADES = (-3, 2)


def _vertex(points: list[tuple[float, float]]) -> float | None:
    """The ``x`` of the top of the parabola through three points ``(x, f)`` (``x`` ascending),
    or None where it opens upwards or is flat (no top between them)."""
    (x0, f0), (x1, f1), (x2, f2) = points
    rise, fall = (f1 - f0) / (x1 - x0), (f2 - f1) / (x2 - x1)
    curvature = (fall - rise) / (x2 - x0)  # half the second derivative
    if curvature >= 0:
        return None
    return 0.5 * (x0 + x1) - rise / (2 * curvature)


def best_decade(
    score: Callable[[float], float], low: int, high: int
) -> tuple[float, dict[float, float]]:
    """The maximiser of ``score(e)`` over ``log10`` factors ``e`` in ``[low, high]``
    (``low <= -1 < 0 <= high``), and the scores it evaluated (by ``e``).

    Walks uphill from ``e = 0`` in steps of one decade until the score falls (or the range
    ends); scores the half decade beside the best on the side where the parabola through the
    best and its neighbours peaks (a parabola in decades misplaces the top of a lopsided
    score); returns the vertex of the parabola through the best point scored and its
    nearest scored neighbours, or the best point itself at a range end or without a peak.
    A score with one peak costs 4-6 evaluations.

    >>> best, seen = best_decade(lambda e: -((e + 0.3) ** 2), -3, 2)
    >>> round(best, 6), sorted(seen)
    (-0.3, [-1.0, -0.5, 0.0, 1.0])
    """
    seen: dict[float, float] = {}

    def at(e: float) -> float:
        if e not in seen:
            seen[float(e)] = float(score(e))
        return seen[e]

    best = -1 if at(-1) > at(0) else 0
    step = -1 if best == -1 else 1
    while low <= best + step <= high and at(best + step) > at(best):
        best += step
    centre = min(max(best, low + 1), high - 1)  # at a range end: the end's two neighbours
    vertex = _vertex([(e, at(e)) for e in (centre - 1, centre, centre + 1)])
    if vertex is None or vertex == best:
        return float(best), seen
    half = best + (0.5 if vertex > best else -0.5)
    if low <= half <= high:
        at(half)
    scored = sorted(seen)
    top = max(scored, key=seen.__getitem__)
    if top in (scored[0], scored[-1]):
        return float(top), seen
    index = scored.index(top)
    vertex = _vertex([(e, seen[e]) for e in scored[index - 1 : index + 2]])
    return (float(top) if vertex is None else vertex), seen


def choose_prior_scale(
    lap: LinearisedLaplace,
    A_held: Operator,
    y_held: torch.Tensor,
    mean: torch.Tensor,
    *,
    samples: int,
    batch: int | None = None,
    decades: tuple[int, int] = PRIOR_SCALE_DECADES,
    on_candidate: Callable[[float, float], None] | None = None,
) -> dict[str, Any]:
    """Multiply ``lap``'s prior variances by the factor that maximises the held-out
    projections' predictive log-likelihood; returns the search for ``run.json``
    (``factors`` tried and their ``tll_per_pixel``, ``chosen_factor``,
    ``samples_per_candidate``, and of every candidate's solves the ``worst_residual`` and
    the most ``cg_iterations``).

    A 1-D search by cross-validation over angles (:func:`best_decade`, factors
    ``10**decades[0]`` to ``10**decades[1]``): every candidate scales all block variances of
    the current prior by one factor and draws ``samples`` posterior samples (the same
    indices, so the candidates differ by the scale only, not by sampling noise), reusing
    the DIP fit and, through the shared scale, the preconditioner. ``on_candidate(factor,
    tll)`` is called as each candidate is scored, for a progress display (a candidate costs
    ``samples`` posterior samples: minutes on a large scan).
    """
    start = dict(lap.prior.variances)
    # by candidate: every sample's relative residual and whether round-off stalled it
    solves: dict[float, dict[str, torch.Tensor]] = {}
    iterations: dict[float, int] = {}  # by candidate: the most CG iterations of its solves

    def tll(decade: float) -> float:
        lap.prior.variances = start
        lap.prior.scale_variances(10.0**decade)
        parts = []
        for first, stop in batches(samples, batch, lap.group):
            # unconverged candidates are the search's to report (_report_unconverged)
            parts.append(lap.sample(stop - first, start=first, warn=False))
            solves[decade] = _merged(solves.get(decade), lap.last_solve)
            made = int(lap.last_solve["iterations"])
            iterations[decade] = max(iterations.get(decade, 0), made)
        drawn = torch.cat(parts)
        predicted, std, _ = predictive(A_held, mean, drawn, lap.noise_variance, group=lap.group)
        score = gaussian_tll(predicted - torch.as_tensor(y_held).to(predicted), std)
        if on_candidate is not None:
            on_candidate(10.0**decade, score)
        return score

    best, seen = best_decade(tll, *decades)
    lap.prior.variances = start
    lap.prior.scale_variances(10.0**best)
    _report_unconverged(seen, solves, best, lap.solver)
    if not decades[0] < best < decades[1]:
        smallest = best <= decades[0]
        logger.warning(
            "the held-out projections liked the %s prior scale searched best (%g times the "
            "start): the best may lie beyond it, and the std be %s than it should",
            "smallest" if smallest else "largest",
            10.0**best,
            "wider" if smallest else "narrower",
        )
    tried = sorted(seen)
    return {
        "factors": [10.0**e for e in tried],
        "tll_per_pixel": [seen[e] for e in tried],
        "chosen_factor": 10.0**best,
        "samples_per_candidate": samples,
        "worst_residual": [float(solves[e]["residual"].max()) for e in tried],
        "cg_iterations": [iterations[e] for e in tried],
    }


def _merged(
    solves: dict[str, torch.Tensor] | None, info: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """``solves`` with the rows of one more solve's ``info`` (``residual``, ``stalled``)."""
    if solves is None:
        return {key: info[key] for key in ("residual", "stalled")}
    return {key: torch.cat([solves[key], info[key]]) for key in solves}


def _report_unconverged(
    seen: dict[float, float],
    solves: dict[float, dict[str, torch.Tensor]],
    best: float,
    solver: SolverConfig,
) -> None:
    """Warn when a candidate whose samples stopped above ten times the solver's tolerance is
    one the choice rests on (the best scored and its scored neighbours, which place the
    parabola's top); note the others. Such samples stay close to the prior, which widens
    that candidate's predictive and lowers its held-out likelihood."""
    residuals = {e: float(solves[e]["residual"].max()) for e in seen}
    off = sorted(e for e in seen if solver.unconverged(residuals[e]))
    if not off:
        return
    scored = sorted(seen)
    top = scored.index(max(scored, key=seen.__getitem__))
    rests_on = any(e in off for e in scored[max(top - 1, 0) : top + 2])
    message = (
        f"prior-scale search: the samples of the candidate factor{'s' if len(off) > 1 else ''} "
        f"{', '.join(f'{10.0**e:.3g}' for e in off)} stopped at relative residuals up to "
        f"{max(residuals[e] for e in off):.1e} (tolerance {solver.tolerance:.0e}, at most "
        f"{solver.iterations} iterations)"
    )
    if not rests_on:
        logger.info("%s: the chosen factor does not rest on them", message)
        return
    solver.warn(
        f"{message}: the chosen factor {10.0**best:.3g} rests on their held-out likelihood, "
        "which is uncertain",
        reduce(_merged, (solves[e] for e in off), None),
    )
