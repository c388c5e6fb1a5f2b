"""Held-out projections: a calibration check of a run that needs no ground truth.

Every ``K``-th projection (indices ``K-1, 2K-1, ...``) is kept out of the fit, the EM and
the posterior. Afterwards the held-out measurements ``y_h`` are scored under the posterior
predictive of the linearised model,

    y_h ~ N(A_h x̂, A_h Σ A_hᵀ + σ_y² I),

estimated per detector pixel from the posterior samples: the predictive variance of pixel
``j`` is ``mean_k (A_h d_k)_j² + σ_y²`` with ``d_k`` the samples' deviations from the mean
(``J ζ_k`` for the linearised Laplace, ``x_k - x̄`` for MC dropout and SGLD). Scores: the
coverage of the central 50 % and 90 % intervals of the pixels, their Gaussian test
log-likelihood (nats per pixel) and a calibration curve.

What it measures: the calibration of the *predicted measurements*. It says something about
the image only through them: errors in directions that every projection sees (which the
held-out angles see too) show, errors in the null space of the held-out angles do not. With
a limited angular range the held-out angles lie inside the measured arc, so the missing
wedge, the largest error of such a scan, is invisible to it.

That is why the cross-validation of the prior's scale (:func:`cross_validation_indices`)
holds out half of its projections at the two ends of a limited arc: a fit to the arc's
middle is scored on projections just beyond what it saw, where the errors of a missing
wedge start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .laplace.moments import batches
from .laplace.solvers import SolverConfig
from .metrics import calibration_curve, coverage, gaussian_tll
from .projector import RayTransform

if TYPE_CHECKING:
    from .geometry import Geometry, Volume
    from .laplace import LinearisedLaplace
    from .laplace.distributed import DistContext
    from .projector import Operator
    from .scan import Scan

__all__ = [
    "ENDS_AND_INSIDE",
    "INTERLEAVED",
    "LEVELS",
    "PRIOR_SCALE_DECADES",
    "Data",
    "HoldoutScores",
    "best_decade",
    "check",
    "check_every",
    "choose_prior_scale",
    "cross_validation_indices",
    "holdout_indices",
    "largest_angular_gap",
    "predictive",
    "score",
    "split",
    "split_scan",
]

logger = logging.getLogger("dip_uq")
LEVELS = (0.5, 0.9)  # central intervals reported
# where cross_validation_indices holds projections out: of a full scan, of a limited arc
INTERLEAVED, ENDS_AND_INSIDE = "interleaved", "ends and inside"
# the range of choose_prior_scale's factors on the starting variances, in decades: on seven
# scans the best of 1e-2 ... 1e1 (in half decades) lay between 1e-2 and 3.2, the held-out
# likelihood smooth and single-peaked in log10 of the factor
PRIOR_SCALE_DECADES = (-3, 2)
# an arc is limited when its largest gap is this many times π / n_angles (the step of n
# angles spread evenly over the half circle) and at least LIMITED_GAP_MIN radians: full
# scans stay below, uneven (golden-angle: 1.4) or doubled on the half circle (360°: 2)
LIMITED_GAP_STEPS = 4.0
LIMITED_GAP_MIN = np.pi / 18


def check_every(every: int) -> None:
    """Refuse a ``holdout`` that is not an integer ``K >= 2`` (``1`` would hold out every
    projection) with a one-line ``ValueError``."""
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 2:
        raise ValueError(
            f"holdout must be an integer K >= 2 (every K-th projection is held out), got "
            f"{every!r}; use 0 to switch the check off"
        )


def holdout_indices(n_angles: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held)``: the projection indices of the fit and of the check, ascending.

    ``held`` is every ``every``-th projection, ``every - 1, 2 every - 1, ...``.

    Raises:
        ValueError: ``every`` below 2 (:func:`check_every`) or above ``n_angles`` (no
            projection would be held out).
    """
    check_every(every)
    if every > n_angles:
        raise ValueError(
            f"holdout {every} is larger than the {n_angles} projections of the scan, so none "
            f"would be held out; use at most {n_angles}"
        )
    index = np.arange(n_angles)
    held = (index + 1) % every == 0
    return index[~held], index[held]


def _directions(geometry: Geometry) -> np.ndarray:
    """Each projection's angle (radians) in ``[0, π)``: of its ray direction (parallel) or
    its source position (fan, cone) about the rotation axis (``z``). Modulo π for divergent
    beams too: rays there return after half a turn plus the fan angle, so a 180° scan misses
    only the fan's margin, not a wedge."""
    vectors = geometry.vectors
    return np.mod(np.arctan2(vectors[:, 1], vectors[:, 0]), np.pi)


def largest_angular_gap(geometry: Geometry) -> tuple[float, int]:
    """``(gap, after)``: the widest angular gap (radians) between neighbouring projections of
    ``geometry`` on the half circle (:func:`_directions`), and the index of the projection
    the arc starts at, right after that gap."""
    return _widest_gap(_directions(geometry))


def _widest_gap(directions: np.ndarray) -> tuple[float, int]:
    """:func:`largest_angular_gap` of projection ``directions`` (radians in ``[0, π)``)."""
    order = np.argsort(directions, kind="stable")
    steps = np.diff(np.append(directions[order], directions[order[0]] + np.pi))
    widest = int(np.argmax(steps))
    return float(steps[widest]), int(order[(widest + 1) % len(order)])


def cross_validation_indices(geometry: Geometry, every: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(kept, held, where)``: the projection indices (ascending) a cross-validation fits and
    scores, and ``where`` the held ones lie.

    A scan whose angles cover the half circle holds out every ``every``-th projection
    (:func:`holdout_indices`, ``where=INTERLEAVED``). A limited arc (its largest gap is
    :data:`LIMITED_GAP_STEPS` times ``π / n_angles`` and :data:`LIMITED_GAP_MIN` or more)
    holds out as many, half of them at its two ends and the rest spread evenly inside
    (``where=ENDS_AND_INSIDE``): held-out angles inside the arc see what their neighbours
    see, so alone they miss the missing wedge's errors, which a fit to a shorter arc makes
    just beyond its ends; the ends alone miss the errors inside. On a 120° scan the factor
    chosen was 0.12 with the held-out angles inside only (90 % coverage 0.82, TLL 5.69),
    1.3 with the ends only (0.96, 5.84) and 0.63 with both (0.92, 5.95; the weights' scale:
    0.95, 5.90).
    """
    kept, held = holdout_indices(geometry.n_angles, every)
    directions = _directions(geometry)
    gap, start = _widest_gap(directions)
    if gap < max(LIMITED_GAP_STEPS * np.pi / geometry.n_angles, LIMITED_GAP_MIN):
        return kept, held, INTERLEAVED
    along_arc = np.argsort(np.mod(directions - directions[start], np.pi), kind="stable")
    n_ends = (len(held) + 1) // 2
    first, last = (n_ends + 1) // 2, len(along_arc) - n_ends // 2
    inside = along_arc[first:last]
    n_inside = len(held) - n_ends  # evenly spaced, away from the ends held out already
    spread = np.round(len(inside) * np.arange(1, n_inside + 1) / (n_inside + 1)).astype(int)
    held = np.sort(np.concatenate([along_arc[:first], along_arc[last:], inside[spread]]))
    return np.setdiff1d(np.arange(geometry.n_angles), held), held, ENDS_AND_INSIDE


@dataclass
class Data:
    """The measurements a run fits and the ones it holds out.

    Attributes:
        A: the ray transform of the fitted projections.
        y: their sinogram, ``A.range_shape``.
        A_held: the ray transform of the held-out projections, or None.
        y_held: their sinogram, ``A_held.range_shape``, or None.
    """

    A: RayTransform
    y: torch.Tensor
    A_held: RayTransform | None = None
    y_held: torch.Tensor | None = None


def split_scan(
    scan: Scan, volume: Volume, every: int, *, backend: str, device: torch.device
) -> Data:
    """The ray transforms and sinograms of the fit and of the check: with ``every`` (``K``)
    every K-th projection is held out (:func:`holdout_indices`); with 0 none is."""
    y = torch.as_tensor(scan.sinogram, device=device)
    if not every:
        return Data(RayTransform(volume, scan.geometry, backend=backend), y)
    kept, held = holdout_indices(scan.geometry.n_angles, every)
    return _split(volume, scan.geometry, y, kept, held, backend)


def split(A: RayTransform, y: torch.Tensor, kept: np.ndarray, held: np.ndarray) -> Data:
    """:class:`Data` of measurements ``y`` (``A.range_shape``, already projected by ``A``) into
    the projections ``kept`` and ``held`` (indices, e.g. from :func:`cross_validation_indices`)."""
    return _split(A.volume, A.geometry, y, kept, held, A.backend)


def _split(
    volume: Volume,
    geometry: Geometry,
    y: torch.Tensor,
    kept: np.ndarray,
    held: np.ndarray,
    backend: str,
) -> Data:
    """The projectors are built for the parts only (set-up costs time, ASTRA's memory)."""
    parts = []
    for indices in (kept, held):
        part = RayTransform(volume, geometry[indices], backend=backend)
        parts += [part, y[torch.as_tensor(indices, device=y.device)]]
    return Data(*parts)


@dataclass
class HoldoutScores:
    """The calibration of the predicted held-out measurements.

    Attributes:
        every: the ``K`` of "every K-th projection".
        n_projections: how many projections were held out.
        coverage: nominal level -> fraction of held-out detector pixels inside the central
            predictive interval (for :data:`LEVELS`).
        tll: mean Gaussian log-likelihood of the held-out pixels, nats per pixel.
        expected, observed: the calibration curve (nominal against observed coverage).
        noise_std: the ``σ_y`` in the predictive (line-integral units).
        sample_std: the median over pixels of the samples' part of the predictive std,
            ``sqrt(mean_k (A_h d_k)²)``: how much of the predictive spread the posterior
            contributes beside the noise.
    """

    every: int
    n_projections: int
    coverage: dict[float, float]
    tll: float
    expected: np.ndarray
    observed: np.ndarray
    noise_std: float
    sample_std: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values, under the names ``run.json`` uses."""
        return {
            "every": self.every,
            "projections": self.n_projections,
            **{f"coverage_{round(100 * level)}": v for level, v in self.coverage.items()},
            "tll_per_pixel": self.tll,
            "noise_std": self.noise_std,
            "median_sample_std": self.sample_std,
            "calibration_curve": {
                "expected": self.expected.tolist(),
                "observed": self.observed.tolist(),
            },
        }


def predictive(
    A_held: Operator,
    mean: torch.Tensor,
    deviations: torch.Tensor,
    noise_variance: float,
    *,
    group: DistContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The posterior predictive of the held-out measurements, per detector pixel.

    Args:
        A_held: the ray transform of the held-out projections.
        mean: the reconstruction ``x̂``, ``A_held.domain_shape``.
        deviations: posterior samples minus the mean, ``(n, *domain_shape)``; with a
            ``group``, this rank's share.
        noise_variance: ``σ_y²`` of one measurement.
        group: the processes that share the samples (their sums are all-reduced).

    Returns:
        ``(predicted, std, sample_std)``, each ``A_held.range_shape``: ``A_h x̂``, the
        predictive std ``sqrt(mean_k (A_h d_k)² + σ_y²)`` and its samples' part alone.
    """
    with torch.no_grad():
        predicted = A_held(mean)
        projected = A_held(deviations).double()
        total = projected.square().sum(0)
        count = torch.tensor(float(projected.shape[0]), dtype=torch.float64)
        if group is not None:
            total = group.all_reduce_sum(total, "all-reduce of the held-out predictive")
            count = group.all_reduce_sum(count, "all-reduce of the held-out sample count")
        sample_var = total / count
        std = (sample_var + noise_variance).sqrt()
    return predicted, std.to(predicted.dtype), sample_var.sqrt().to(predicted.dtype)


def score(
    y_held: torch.Tensor,
    predicted: torch.Tensor,
    std: torch.Tensor,
    *,
    every: int,
    noise_std: float,
    sample_std: torch.Tensor | None = None,
) -> HoldoutScores:
    """Score the held-out measurements ``y_held`` under ``N(predicted, std²)`` per pixel
    (all three shaped like the held-out sinogram, ``(n_held, [rows,] cols)``)."""
    y_held = torch.as_tensor(y_held).to(predicted)
    expected, observed = calibration_curve(predicted, std, y_held)
    return HoldoutScores(
        every=every,
        n_projections=int(y_held.shape[0]),
        coverage=coverage(predicted, std, y_held, LEVELS),
        tll=gaussian_tll(predicted - y_held, std),
        expected=expected,
        observed=observed,
        noise_std=float(noise_std),
        sample_std=float("nan") if sample_std is None else float(sample_std.median()),
    )


def check(
    A_held: Operator,
    y_held: torch.Tensor,
    mean: torch.Tensor,
    deviations: torch.Tensor,
    noise_variance: float,
    *,
    every: int,
    group: DistContext | None = None,
) -> HoldoutScores:
    """:func:`predictive` and :func:`score` in one call (arguments as there)."""
    predicted, std, sample_std = predictive(A_held, mean, deviations, noise_variance, group=group)
    return score(
        y_held,
        predicted,
        std,
        every=every,
        noise_std=noise_variance**0.5,
        sample_std=sample_std,
    )


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
    n_samples: int,
    batch: int | None = None,
    decades: tuple[int, int] = PRIOR_SCALE_DECADES,
) -> dict[str, Any]:
    """Multiply ``lap``'s prior variances by the factor that maximises the held-out
    projections' predictive log-likelihood; returns the search for ``run.json``
    (``factors`` tried and their ``tll_per_pixel``, ``chosen_factor``,
    ``samples_per_candidate``, and the ``worst_residual`` of every candidate's solves).

    A 1-D search by cross-validation over angles (:func:`best_decade`, factors
    ``10**decades[0]`` to ``10**decades[1]``): every candidate scales all block variances of
    the current prior by one factor and draws ``n_samples`` posterior samples (the same
    indices, so the candidates differ by the scale only, not by sampling noise), reusing
    the DIP fit and, through the shared scale, the preconditioner.
    """
    start = dict(lap.prior.variances)
    # by candidate: every sample's relative residual and whether round-off stalled it
    solves: dict[float, dict[str, torch.Tensor]] = {}

    def tll(decade: float) -> float:
        lap.prior.variances = start
        lap.prior.scale_variances(10.0**decade)
        parts = []
        for first, stop in batches(n_samples, batch, lap.group):
            # unconverged candidates are the search's to report (_report_unconverged)
            parts.append(lap.sample(stop - first, start=first, warn=False))
            solves[decade] = _merged(solves.get(decade), lap.last_solve)
        samples = torch.cat(parts)
        scores = check(A_held, y_held, mean, samples, lap.noise_variance, every=0, group=lap.group)
        return scores.tll

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
        "samples_per_candidate": n_samples,
        "worst_residual": [float(solves[e]["residual"].max()) for e in tried],
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
    (logger.warning if rests_on else logger.info)(
        "prior-scale search: the samples of the candidate factor%s %s stopped at relative "
        "residuals up to %.1e (tolerance %.0e, at most %d iterations): %s",
        "s" if len(off) > 1 else "",
        ", ".join(f"{10.0**e:.3g}" for e in off),
        max(residuals[e] for e in off),
        solver.tolerance,
        solver.iterations,
        f"the chosen factor {10.0**best:.3g} rests on their held-out likelihood, which is "
        f"uncertain ({solver.remedy(reduce(_merged, (solves[e] for e in off), None))})"
        if rests_on
        else "the chosen factor does not rest on them",
    )
