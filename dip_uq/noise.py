"""What the reconstructors read off the data: input checks, the noise level, the defaults.

* :func:`check_sinogram` — one finite floating-point sinogram laid out as the geometry says.
* :func:`estimate_noise_sigma` — the noise std ``σ`` of a sinogram, from the data alone.
* The default rules of :class:`dip_uq.dip.DIP` (and the step sizes of
  :func:`dip_uq.tv.tv_reconstruct`), each a function of the data and the ray transform only,
  never of the ground truth, so they hold for real scans as for simulated ones:

  - the network's unit ``c = image_scale(FBP(y))``, the 99.9th percentile of ``|FBP(y)|``;
  - the TV weight ``γ = κ σ a / m`` (:func:`default_tv_weight`, ``κ =`` :data:`TV_KAPPA`);
  - the iteration budget ``2000 · (0.05 / ν)^0.7`` with ``ν = σ / mean|y|``
    (:func:`default_iterations`).

Each docstring gives the measurements its constant rests on. Unless said otherwise they were
taken on the regression phantoms: 64² Shepp-Logan and random-ellipse scans, parallel beam,
1-5 % noise relative to ``mean|y|`` (:func:`dip_uq.simulate`).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .geometry import Geometry
    from .projector.ray_transform import RayTransform

__all__ = [
    "PRETRAINED_ITERATION_FACTOR",
    "SCALE_QUANTILE",
    "TV_KAPPA",
    "check_sinogram",
    "default_iterations",
    "default_tv_weight",
    "estimate_noise_sigma",
    "image_scale",
    "ray_transform_gain",
    "relative_noise",
]

SCALE_QUANTILE = 0.999  # c = this quantile of |FBP(y)|: a few noisy voxels do not set it
TV_KAPPA = 0.5  # γ = κ σ a / m; the calibration is in default_tv_weight
PRETRAINED_ITERATION_FACTOR = 0.7  # default_iterations after pretrain(); see there
AIR_THRESHOLD = 3.0  # |y| below this many σ: a pixel that sees air (_air_sigma)
AIR_FRACTION = 0.05  # the least share of detector triples in air for the air estimate
_MAX_QUANTILE_ELEMENTS = 2**20  # subsample for the quantile (torch.quantile caps at 2**24)


# --------------------------------------------------------------------------------------------
# argument checks shared by the reconstructors (DIP, pretrain, tv_reconstruct)
# --------------------------------------------------------------------------------------------
def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """``value`` as an int when it is a positive integer (or ``None`` with ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    """``value`` as a float when it is finite and > 0 (>= 0 with ``allow_zero``); ``None``
    passes through."""
    if value is None:
        return None
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        relation = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {relation} (or None), got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# the measured data
# --------------------------------------------------------------------------------------------
def check_sinogram(A: RayTransform, y: Any) -> torch.Tensor:
    """Validate one measured sinogram against the geometry of ``A`` and return it.

    A NumPy array is wrapped as a tensor (no copy); a tensor is returned as it is.

    Raises ``ValueError`` with a one-line message when ``y`` is not a floating-point tensor,
    its shape is not ``A.geometry.sino_shape`` (``(angles, cols)`` or ``(angles, rows,
    cols)``), or it holds NaN/Inf values.
    """
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a torch.Tensor sinogram, got {type(y).__name__}")
    if not y.is_floating_point():
        raise ValueError(f"y must be floating point, got dtype {y.dtype}; use y.float()")
    expected = tuple(A.geometry.sino_shape)
    if tuple(y.shape) != expected:
        axes = "(angles, cols)" if len(expected) == 2 else "(angles, rows, cols)"
        raise ValueError(
            f"sinogram shape {tuple(y.shape)} does not match the geometry's {expected} "
            f"{axes}; pass one sinogram laid out {axes} for this geometry"
        )
    finite = torch.isfinite(y)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"y contains {bad} NaN/Inf values; replace or mask bad detector pixels before "
            "reconstructing"
        )
    return y


def _quantile(values: torch.Tensor, q: float) -> float:
    """``q``-quantile of a tensor, on a deterministic strided subsample when it is large."""
    flat = values.detach().reshape(-1)
    stride = max(1, math.ceil(flat.numel() / _MAX_QUANTILE_ELEMENTS))
    return float(torch.quantile(flat[::stride].float(), q))


def image_scale(fbp_image: torch.Tensor) -> float:
    """The network's unit ``c``: the 99.9th percentile of ``|fbp_image|`` (1.0 if that is 0)."""
    c = _quantile(fbp_image.abs(), SCALE_QUANTILE)
    return c if c > 0 and math.isfinite(c) else 1.0


def _parallel_moment_sigma(y: torch.Tensor, geometry: Geometry, degree: int = 10) -> float | None:
    """Noise std from the Helgason-Ludwig consistency of a parallel-beam sinogram, or None.

    For parallel rays perpendicular to the rotation axis ``z``, the ``k``-th moment of a
    projection over the detector coordinate ``s``, ``M_k(θ) = Σ_s s^k y(θ, s)``, equals
    ``∫ x(r) (r·e_θ)^k dr``: a trigonometric polynomial of degree ``k`` in the ray angle
    ``θ``. With the detector's polynomials orthonormalised (QR of the Vandermonde matrix), the
    noise of the moments is white with variance ``σ²``, so the residual of a least-squares fit
    of each moment by a degree-``k`` trigonometric polynomial gives ``σ²`` with
    ``Σ_k (n_angles - 2k - 1)`` degrees of freedom per detector row (``k <= degree``).
    Exact when the detector covers the object; truncation and the projector's own
    discretisation error inflate it. None when the geometry is not of that kind.
    """
    if getattr(geometry, "kind", None) != "parallel":
        return None
    frames = geometry.frames()
    ray, u, center = frames["ray"], frames["u"], frames["center"]
    if geometry.ndim == 3 and (np.abs(ray[:, 2]).max() > 1e-9 or np.abs(u[:, 2]).max() > 1e-9):
        return None  # rays or columns not perpendicular to z: rows are not 2D slices
    spacing = np.linalg.norm(u, axis=1)
    e = u / spacing[:, None]
    offset = (center * e).sum(1)
    if np.abs((ray * e).sum(1)).max() > 1e-6 or np.ptp(spacing) > 1e-9 * spacing[0]:
        return None
    if np.ptp(offset) > 1e-6 * spacing[0]:
        return None
    n_cols, n_angles = geometry.det_shape[-1], geometry.n_angles
    degree = min(degree, n_cols - 1, (n_angles - 3) // 2)
    if degree < 0:
        return None
    s = (np.arange(n_cols) - (n_cols - 1) / 2) * spacing[0] + offset[0]
    t = s / max(np.abs(s).max(), 1e-12)
    basis, _ = np.linalg.qr(np.stack([t**k for k in range(degree + 1)], axis=1))
    theta = np.arctan2(ray[:, 1], ray[:, 0])
    moments = y.detach().double().cpu().numpy().reshape(n_angles, -1, n_cols) @ basis
    rss, dof = 0.0, 0
    for k in range(degree + 1):
        trig = [np.ones_like(theta)]
        for j in range(1, k + 1):
            trig += [np.cos(j * theta), np.sin(j * theta)]
        design = np.stack(trig, axis=1)
        coef, _, rank, _ = np.linalg.lstsq(design, moments[:, :, k], rcond=1e-10)
        rss += float(((moments[:, :, k] - design @ coef) ** 2).sum())
        dof += (n_angles - rank) * moments.shape[1]
    return math.sqrt(rss / dof) if dof > 0 else None


def _second_difference_sigma(y: torch.Tensor, triples: torch.Tensor | None = None) -> float:
    """``median(|y[j+1] - 2 y[j] + y[j-1]|) / (0.6745 √6)`` along the detector columns, over
    the triples ``j-1, j, j+1`` marked in ``triples`` (shape ``y[..., 1:-1]``; all by
    default)."""
    d2 = y[..., 2:] - 2 * y[..., 1:-1] + y[..., :-2]
    if triples is not None:
        d2 = d2[triples]
    return _quantile(d2.abs(), 0.5) / (0.6745 * math.sqrt(6.0))


def _air_sigma(y: torch.Tensor, sigma: float) -> float | None:
    """Noise std from the detector pixels that see no object, or None where too few do.

    Pixels with ``|y| < AIR_THRESHOLD · σ`` are taken as air, with ``σ`` first the given
    (over-)estimate, then the air estimate itself; on air the second differences hold noise
    only. Each of the two passes must keep at least :data:`AIR_FRACTION` of the triples, else
    there is no air around ``y = 0`` to read (an object filling the field of view, or air
    whose line integral is offset from 0 by the flat field) and the result is None.
    """
    for _ in range(2):
        keep = y.abs() < AIR_THRESHOLD * sigma
        triples = keep[..., 2:] & keep[..., 1:-1] & keep[..., :-2]
        if int(triples.sum()) < max(AIR_FRACTION * triples.numel(), 100):
            return None
        sigma = _second_difference_sigma(y, triples)
        if not sigma > 0:
            return None
    return sigma


def estimate_noise_sigma(y: torch.Tensor, geometry: Geometry | None = None) -> float:
    """Estimate the noise std ``σ`` of one sinogram (its units).

    Three estimators, each of which signal leaking into it can only push up; the smallest
    that applies is returned:

    * parallel beam (2D, or 3D with rays perpendicular to ``z``): the consistency of the
      projection moments across angles (:func:`_parallel_moment_sigma`), close to the
      true ``σ`` on simulated scans from 1 % noise up, less so below;
    * any geometry: the median absolute deviation of second differences along the detector
      columns, ``median(|y[j+1] - 2 y[j] + y[j-1]|) / (0.6745 √6)``. Sharp edges in the
      projections leak into it, the more the less noise there is: an upper bound;
    * other geometries (fan, cone, tilted axes): the same statistic over the detector pixels
      that see air (:func:`_air_sigma`), close to the true ``σ`` on simulated fan and
      cone scans. With transmission data the noise
      of ``-log(I/I₀)`` grows with the attenuation, so on a real scan it reads the smallest
      noise level, that of air; where it cannot find air (HTC 2022's fan-beam scan, whose air
      sits off 0) the second estimate is used. Give ``noise_sigma`` when the noise is known.

    ``σ`` also absorbs the projector's own model error, which a fit cannot remove either.
    """
    if y.shape[-1] < 3:
        raise ValueError(
            f"cannot estimate the noise from {y.shape[-1]} detector columns; pass noise_sigma"
        )
    sigma = _second_difference_sigma(y)
    moment = None if geometry is None else _parallel_moment_sigma(y, geometry)
    if moment is not None:
        return min(sigma, moment)
    if geometry is not None and sigma > 0:
        air = _air_sigma(y, sigma)
        if air is not None:
            sigma = min(sigma, air)
    return sigma


def relative_noise(y: torch.Tensor, noise_sigma: float) -> float:
    """``σ / mean(|y|)``: the noise level relative to the data (the convention of
    :func:`dip_uq.simulate`)."""
    mean = float(y.detach().abs().mean())
    return noise_sigma / mean if mean > 0 else math.inf


# --------------------------------------------------------------------------------------------
# the default rules
# --------------------------------------------------------------------------------------------
def ray_transform_gain(
    A: RayTransform, *, probes: int = 2, seed: int = 0, device: str | torch.device | None = None
) -> float:
    """``a = ‖A‖_F / √N``: the root-mean-square gain of the ray transform per voxel.

    Hutchinson's estimate ``‖A‖_F² ≈ mean_k ‖A z_k‖²`` with Rademacher vectors ``z_k`` (±1
    per voxel) from a CPU generator seeded with ``seed``, projected in one batch on
    ``device`` (CPU by default). For a 2D parallel scan of unit voxels it is about
    ``√(0.65 · n_angles)``.
    """
    shape = tuple(A.volume.shape)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (probes, *shape), generator=generator).float().mul_(2).sub_(1)
    with torch.no_grad():
        energy = float(A(z.to(device)).double().square().sum())
    return math.sqrt(energy / (probes * math.prod(shape)))


def default_tv_weight(noise_sigma: float, gain: float, n_measurements: int) -> float:
    """The default TV weight of the DIP loss ``‖Ax - y‖²/m + γ TV(x)``::

        γ = κ · σ · a / m,        a² = ‖A‖_F² / N   (κ = TV_KAPPA = 0.5)

    Args:
        noise_sigma: noise std ``σ`` of the sinogram (its units).
        gain: ``a``, the RMS gain of the ray transform per voxel (:func:`ray_transform_gain`;
            ``N`` is the number of voxels).
        n_measurements: ``m``, the number of values in the sinogram (angles × detector pixels).

    Reasoning: where ``AᵀA ≈ a² I``, the data term ``½‖Ax - y‖²`` is ``½ a² ‖x - x̂‖²`` with
    ``x̂`` a least-squares image whose voxel noise is ``σ / a``; the weight of TV denoising
    that works best grows linearly with the noise level (as a wavelet threshold does),
    ``λ ∝ a² · σ / a = σ a``, and ``½‖Ax - y‖² + λ TV`` is ``m/2`` times the DIP loss with
    ``γ = 2λ/m``. The rule is independent of the units (``x → αx`` scales ``σ`` and ``γ`` by
    ``α``).

    ``κ`` is the geometric mean of the best values of the converged TV reconstruction
    (:func:`dip_uq.tv.tv_reconstruct`) on simulated scans; a rule quadratic in σ (the MAP
    balance of a Gaussian likelihood and a Laplace prior) needed κ to change tenfold across
    the same scans. The DIP is insensitive to γ within a factor of a few around the rule
    (docs/measurements.md).
    """
    return TV_KAPPA * noise_sigma * gain / n_measurements


def default_iterations(relative_noise_level: float, pretrained: bool = False) -> int:
    """The default iteration budget from the relative noise level ``ν = σ / mean|y|``::

        iterations = 2000 · (0.05 / ν)^0.7        (from scratch)

    rounded to 100 and clipped to ``[500, 20000]``; after :func:`dip_uq.pretraining.pretrain`,
    times :data:`PRETRAINED_ITERATION_FACTOR`. Reasoning: the budget should let the data fit
    reach the noise floor (``‖A x - y‖²/m ≈ σ²``, the discrepancy principle) and then leave as
    many iterations again for the TV term to clean up. The less noise, the more detail must
    be fitted and the longer that takes: the iterations to reach ``σ²`` grow as
    ``(0.05/ν)^0.7`` and do not depend on the number of angles, so it enters only through
    ``ν``; a pretrained network reaches the same PSNR in about 0.7 times the iterations
    (docs/measurements.md and docs/dip-stopping.md have the runs).
    """
    if not (relative_noise_level > 0 and math.isfinite(relative_noise_level)):
        return 20000 if relative_noise_level == 0 else 500
    iterations = 2000 * (0.05 / relative_noise_level) ** 0.7
    if pretrained:
        iterations *= PRETRAINED_ITERATION_FACTOR
    return int(min(max(round(iterations, -2), 500), 20000))
