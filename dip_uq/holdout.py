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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .directions import is_limited_gap
from .laplace.predictive import predictive
from .metrics import calibration_curve, coverage, gaussian_tll
from .projector import RayTransform

if TYPE_CHECKING:
    from .distributed import DistContext
    from .geometry import Geometry, Volume
    from .projector import Operator
    from .scan import Scan

__all__ = [
    "ENDS_AND_INSIDE",
    "INTERLEAVED",
    "LEVELS",
    "Data",
    "HoldoutScores",
    "check",
    "check_every",
    "cross_validation_indices",
    "holdout_indices",
    "largest_angular_gap",
    "score",
    "split",
    "split_scan",
]

logger = logging.getLogger("dip_uq")
LEVELS = (0.5, 0.9)  # central intervals reported
# where cross_validation_indices holds projections out: of a full scan, of a limited arc
INTERLEAVED, ENDS_AND_INSIDE = "interleaved", "ends and inside"


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
    (:func:`holdout_indices`, ``where=INTERLEAVED``). A limited arc (its largest gap between
    the projections' directions passes :func:`dip_uq.directions.is_limited_gap`)
    holds out as many, half of them at its two ends and the rest spread evenly inside
    (``where=ENDS_AND_INSIDE``): held-out angles inside the arc see what their neighbours
    see, so alone they miss the missing wedge's errors, which a fit to a shorter arc makes
    just beyond its ends; the ends alone miss the errors inside (docs/calibration.md compares
    the three on a 120° scan).
    """
    kept, held = holdout_indices(geometry.n_angles, every)
    directions = _directions(geometry)
    gap, start = _widest_gap(directions)
    if not is_limited_gap(np.degrees(gap), geometry.n_angles):
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
