"""Synthetic test objects: the Shepp-Logan head phantom and random ellipse phantoms.

Coordinates
-----------
A phantom of shape ``(ny, nx)`` or ``(nz, ny, nx)`` fills the square/cube ``[-1, 1]^d`` in
normalised coordinates, each axis independently (a non-square shape stretches the phantom).
Voxel ``i`` of an axis of length ``n`` is sampled at its centre::

    t_i = (i - (n - 1) / 2) * 2 / n        (i = 0 .. n-1)

which is :class:`dip_uq.geometry.Volume`'s convention with ``voxel_size = 2 / n`` and
``center = 0``: ``x`` is the last axis (grows with the column index), ``y`` the second-to-last
(grows with the row index) and ``z`` the first axis of a 3D phantom. To put a phantom on a
volume of physical size ``L`` (an isotropic cube), scale: the phantom's ``[-1, 1]`` is the
volume's ``[-L/2, L/2]``.

Rasterisation
-------------
Each ellipse (ellipsoid) adds its intensity to every voxel whose centre lies inside it.
``supersample=s`` (an integer >= 1) instead evaluates ``s^d`` sub-voxel centres per voxel (a
regular ``s x s (x s)`` grid, i.e. the phantom rasterised at ``s`` times the resolution) and
averages them, which anti-aliases the edges; ``s = 1`` is plain point sampling.

>>> img = shepp_logan((64, 64))
>>> tuple(img.shape), round(float(img.max()), 3), float(img.min())
((64, 64), 1.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch

from .geometry import Volume

__all__ = ["random_ellipses", "shepp_logan"]

# --------------------------------------------------------------------------------------------
# Shepp-Logan tables, in the frame of the literature: x to the right, y *up*, angles in degrees
# counter-clockwise from +x. Columns: intensity (original), intensity (modified / Toft),
# semi-axis a (along the ellipse's own x), b (its y), c (its z, 3D only), centre x0, y0,
# rotation phi about z.
#
# 2D: Shepp & Logan (1974); modified intensities from P. Toft, "The Radon transform" (1996),
# pp. 199-200, as in MATLAB's phantom('Modified Shepp-Logan').
# 3D: the z semi-axes of the Kak & Slaney / Toft 3D table (M. Schabel's phantom3d). All
# ellipsoids are centred at z = 0 with a single rotation about z (as ODL does), so the central
# slice z = 0 is exactly the 2D phantom. (phantom3d's extra z offsets of the three small
# ellipsoids and its Euler psi = 10 deg on the two ventricles -- which with theta = 0 silently
# adds to phi and breaks the left/right mirror -- are not reproduced.)
# --------------------------------------------------------------------------------------------
_SHEPP_LOGAN = np.array(
    [
        # orig   mod      a       b      c      x0      y0     phi
        [2.00, 1.00, 0.6900, 0.9200, 0.810, 0.00, 0.0000, 0.0],
        [-0.98, -0.80, 0.6624, 0.8740, 0.780, 0.00, -0.0184, 0.0],
        [-0.02, -0.20, 0.1100, 0.3100, 0.220, 0.22, 0.0000, -18.0],
        [-0.02, -0.20, 0.1600, 0.4100, 0.280, -0.22, 0.0000, 18.0],
        [0.01, 0.10, 0.2100, 0.2500, 0.410, 0.00, 0.3500, 0.0],
        [0.01, 0.10, 0.0460, 0.0460, 0.050, 0.00, 0.1000, 0.0],
        [0.01, 0.10, 0.0460, 0.0460, 0.050, 0.00, -0.1000, 0.0],
        [0.01, 0.10, 0.0460, 0.0230, 0.050, -0.08, -0.6050, 0.0],
        [0.01, 0.10, 0.0230, 0.0230, 0.020, 0.00, -0.6060, 0.0],
        [0.01, 0.10, 0.0230, 0.0460, 0.020, 0.06, -0.6050, 0.0],
    ]
)

_MIN_AXIS = 0.02  # smallest semi-axis of a random ellipse (normalised units)
_DEFAULT_N = {2: 20, 3: 50}  # random_ellipses: number of ellipses by dimension
_DEFAULT_AXIS_SCALE = {2: 0.2, 3: 0.25}  # random_ellipses: mean semi-axis by dimension


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, Volume):
        shape = shape.shape  # a Volume stands for its shape
    try:
        out = tuple(int(n) for n in shape)
        exact = all(float(n) == int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"shape must be (ny, nx) or (nz, ny, nx) integers, got {shape!r}"
        ) from None
    if len(out) not in (2, 3) or not exact or any(n <= 0 for n in out):
        raise ValueError(
            f"shape must be 2 or 3 positive integers (ny, nx) / (nz, ny, nx), got {shape!r}"
        )
    return out


def _int_at_least(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


# --------------------------------------------------------------------------------------------
# rasteriser
# --------------------------------------------------------------------------------------------
def _rasterize(
    shape: tuple[int, ...],
    values: np.ndarray,
    centers: np.ndarray,
    axes: np.ndarray,
    rotations: np.ndarray,
    *,
    supersample: int,
    dtype: torch.dtype,
    device: Any,
    shift_negative: bool = False,
) -> torch.Tensor:
    """Sum of ellipse indicator functions, sampled at (sub-)voxel centres.

    All parameters are in normalised array-order coordinates (``(y, x)`` or ``(z, y, x)``):
    ``values (n,)``, ``centers (n, d)``, ``axes (n, d)`` semi-axes, ``rotations (n, d, d)``
    whose column ``k`` is the unit direction of semi-axis ``k``. A point ``p`` lies inside
    ellipse ``e`` when ``sum_k ((R_e^T (p - c_e))_k / a_ek)^2 <= 1``.

    With ``shift_negative`` the covered region (the union of the ellipses) is shifted up by
    its most negative value, on the fine grid, before averaging (see :func:`random_ellipses`).
    """
    d = len(shape)
    fine = tuple(n * supersample for n in shape)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    coords = [(torch.arange(n, device=device, dtype=work) - (n - 1) / 2) * (2.0 / n) for n in fine]
    out = torch.zeros(fine, dtype=work, device=device)
    covered = torch.zeros(fine, dtype=torch.bool, device=device) if shift_negative else None
    # half-extent of the axis-aligned bounding box: sqrt(sum_k R_jk^2 a_k^2) along axis j
    half = np.sqrt(((rotations * axes[:, None, :]) ** 2).sum(axis=2))
    for e in range(len(values)):
        index = []
        for j, n in enumerate(fine):
            lo = math.floor((centers[e, j] - half[e, j]) * n / 2 + (n - 1) / 2) - 1
            hi = math.ceil((centers[e, j] + half[e, j]) * n / 2 + (n - 1) / 2) + 1
            index.append(slice(max(lo, 0), min(hi, n - 1) + 1))
        if any(s.start >= s.stop for s in index):
            continue
        local = []
        for j, s in enumerate(index):
            view = [1] * d
            view[j] = -1
            local.append((coords[j][s] - float(centers[e, j])).reshape(view))
        q = None
        for k in range(d):
            u = sum(float(rotations[e, j, k]) * local[j] for j in range(d))
            term = (u * (1.0 / float(axes[e, k]))) ** 2
            q = term if q is None else q + term
        inside = q <= 1.0
        out[tuple(index)] += float(values[e]) * inside
        if covered is not None:
            covered[tuple(index)] |= inside
    if covered is not None:
        lowest = float(torch.where(covered, out, math.inf).min())  # +inf if nothing covered
        if lowest < 0:
            out -= lowest * covered  # (masked indexing is far slower on the CPU)
    if supersample > 1:
        split = [m for n in shape for m in (n, supersample)]
        out = out.reshape(split).mean(dim=tuple(range(1, 2 * d, 2)))
    return out.to(dtype)


def _rotation_2d(phi: np.ndarray) -> np.ndarray:
    """``(n, 2, 2)`` rotations in (first, second) coordinates by ``phi`` (radians)."""
    c, s = np.cos(phi), np.sin(phi)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


# --------------------------------------------------------------------------------------------
# public phantoms
# --------------------------------------------------------------------------------------------
def shepp_logan(
    shape: Sequence[int],
    *,
    modified: bool = True,
    supersample: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The Shepp-Logan head phantom, 2D ``(ny, nx)`` or 3D ``(nz, ny, nx)``.

    The ellipse table is the standard one (Shepp & Logan 1974; the 3D ellipsoids of Kak &
    Slaney / Toft with every ellipsoid centred at ``z = 0``, so the central slice equals the 2D
    phantom). ``modified=True`` (default) uses Toft's higher-contrast intensities, the
    familiar picture with values in ``[0, 1]``: background 0, skull 1, brain 0.2, ventricles 0,
    small features 0.3-0.4. ``modified=False`` uses the original intensities (skull 2, brain
    1.02, features 1.03-1.04, ventricles 1.0).

    Orientation: the tables are written with ``y`` pointing up; here ``y`` grows with the row
    index, so the table is mirrored in ``y`` (``y_array = -y_table``). The array therefore
    looks like the usual picture when shown with row 0 at the top (``plt.imshow(img)``): the
    head is taller than wide, the large round feature sits above the centre, the three small
    ones at the bottom, and the larger dark ventricle is on the left. It is not left/right
    symmetric.

    Args:
        shape: ``(ny, nx)`` or ``(nz, ny, nx)`` voxels (a :class:`~dip_uq.geometry.Volume`
            is accepted for its shape). The phantom spans ``[-1, 1]`` along every axis.
        modified: Toft's high-contrast intensities (True) or the original ones.
        supersample: sub-voxel samples per axis averaged per voxel (1 = point sampling at
            voxel centres; see the module docstring).
        dtype: floating-point dtype of the result.
        device: torch device of the result (CPU when None).

    Returns:
        A tensor of ``shape``, values >= 0 (tiny negative rounding residues are clamped to 0).

    >>> img = shepp_logan((5, 5))
    >>> round(float(img[2, 2]), 3)   # centre: brain, 1 - 0.8
    0.2
    """
    shape = _shape(shape)
    supersample = _int_at_least("supersample", supersample, 1)
    dtype = _dtype(dtype)
    table = _SHEPP_LOGAN
    values = table[:, 1] if modified else table[:, 0]
    phi = np.deg2rad(table[:, 7])
    n = len(table)
    if len(shape) == 2:
        # table frame (x, y_up) -> array order (y_array, x) = (-y_up, x)
        to_array = np.array([[0.0, -1.0], [1.0, 0.0]])
        centers_t = table[:, [5, 6]]
        axes = table[:, [2, 3]]
        rot_t = _rotation_2d(phi)
    else:
        # table frame (x, y_up, z) -> array order (z, y_array, x)
        to_array = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
        centers_t = np.concatenate([table[:, [5, 6]], np.zeros((n, 1))], axis=1)
        axes = table[:, [2, 3, 4]]
        rot_t = np.zeros((n, 3, 3))
        rot_t[:, :2, :2] = _rotation_2d(phi)
        rot_t[:, 2, 2] = 1.0
    centers = centers_t @ to_array.T
    rotations = to_array @ rot_t
    out = _rasterize(
        shape,
        values,
        centers,
        axes,
        rotations,
        supersample=supersample,
        dtype=dtype,
        device=device,
    )
    return out.clamp_min_(0.0)


def random_ellipses(
    shape: Sequence[int],
    n: int | None = None,
    *,
    seed: int | np.random.Generator = 0,
    intensity_range: tuple[float, float] = (-0.4, 1.0),
    axis_scale: float | None = None,
    max_axis: float = 0.5,
    supersample: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A random phantom of ``n`` overlapping ellipses (2D) or ellipsoids (3D), values in [0, 1].

    One function for both dimensions: a 2-entry ``shape`` gives ellipses, a 3-entry shape
    ellipsoids. These are the synthetic training images for pretraining (the recipe follows the
    "ellipses" data set of the DIP-CT literature, e.g. dival's ``EllipsesDataset``), with every
    ellipse kept inside the unit disc/ball so the object lies in the field of view of a scan
    over any angle. For each ellipse, drawn from a local ``numpy.random.Generator``:

    * semi-axes ``a_k = clip(axis_scale * Exponential(1), 0.02, max_axis)`` (normalised units);
    * a centre uniform in the disc/ball of radius ``1 - max_k a_k`` (so the ellipse stays in
      the unit disc/ball);
    * a uniform rotation (angle in ``[0, pi)`` in 2D, a uniform random rotation in 3D);
    * an intensity uniform in ``intensity_range``.

    Intensities add where ellipses overlap. The covered region is then shifted up by its most
    negative value (if any; the background stays exactly 0, so negative ellipses read as holes
    of lower density) and the whole image divided by its maximum, so the result spans [0, 1].

    Args:
        shape: ``(ny, nx)`` or ``(nz, ny, nx)`` voxels (or a :class:`~dip_uq.geometry.Volume`);
            the phantom spans ``[-1, 1]`` along every axis.
        n: number of ellipses (>= 0; 0 gives zeros); None means 20 in 2D and 50 in 3D.
        seed: an integer seed or a ``numpy.random.Generator`` (to draw a stream of phantoms
            from one generator). The global RNGs are never touched.
        intensity_range: ``(low, high)`` of the uniform intensity of one ellipse, before
            normalisation.
        axis_scale: mean semi-axis before clipping (normalised units, the image is 2 wide);
            None means 0.2 in 2D and 0.25 in 3D. (The 3D defaults fill the ball about as
            densely as the 2D ones fill the disc.)
        max_axis: largest semi-axis, in ``[0.02, 1)``.
        supersample: sub-voxel samples per axis averaged per voxel (anti-aliased edges).
        dtype: floating-point dtype of the result.
        device: torch device of the result (CPU when None).

    Returns:
        A tensor of ``shape`` with values in ``[0, 1]`` (max exactly 1 unless ``n == 0``).
        The same seed gives the same phantom on every device (up to rounding at edges).

    >>> a = random_ellipses((32, 32), n=5, seed=1)
    >>> bool(torch.equal(a, random_ellipses((32, 32), n=5, seed=1))), float(a.max())
    (True, 1.0)
    """
    shape = _shape(shape)
    d = len(shape)
    n = _int_at_least("n", _DEFAULT_N[d] if n is None else n, 0)
    axis_scale = _DEFAULT_AXIS_SCALE[d] if axis_scale is None else axis_scale
    supersample = _int_at_least("supersample", supersample, 1)
    dtype = _dtype(dtype)
    if isinstance(seed, np.random.Generator):
        rng = seed
    else:
        rng = np.random.default_rng(_int_at_least("seed", seed, 0))
    try:
        low, high = (float(v) for v in intensity_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"intensity_range must be (low, high) numbers, got {intensity_range!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"intensity_range must be finite with low < high, got {intensity_range!r}")
    if not (isinstance(axis_scale, Real) and math.isfinite(axis_scale) and axis_scale > 0):
        raise ValueError(f"axis_scale must be a positive number, got {axis_scale!r}")
    if not (isinstance(max_axis, Real) and _MIN_AXIS <= max_axis < 1):
        raise ValueError(f"max_axis must be a number in [{_MIN_AXIS}, 1), got {max_axis!r}")

    axes = np.clip(axis_scale * rng.exponential(1.0, (n, d)), _MIN_AXIS, max_axis)
    # uniform in the ball of radius 1 - max semi-axis: direction ~ N(0, I), radius ~ U^(1/d)
    direction = rng.standard_normal((n, d))
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    radius = (1.0 - axes.max(axis=1)) * rng.random(n) ** (1.0 / d)
    centers = direction * radius[:, None]
    if d == 2:
        rotations = _rotation_2d(rng.uniform(0.0, np.pi, n))
    else:
        rotations = _random_rotations_3d(rng, n)
    values = rng.uniform(low, high, n)
    out = _rasterize(
        shape,
        values,
        centers,
        axes,
        rotations,
        supersample=supersample,
        dtype=dtype,
        device=device,
        shift_negative=True,
    )
    peak = out.max()
    if peak > 0:
        out /= peak
    return out.clamp_(0.0, 1.0)


def _random_rotations_3d(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 3, 3)`` rotation matrices, uniform on SO(3) (normalised Gaussian quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
