"""Analytic reconstruction: filtered backprojection (FBP) and FDK, in pure PyTorch.

One function, :func:`fbp`, reconstructs from any geometry of :mod:`dip_uq.geometry` through its
per-projection vectors (``geometry.frames()``): parallel beam in 2D and 3D, fan beam (2D) and
circular cone beam (3D, the Feldkamp–Davis–Kress algorithm), and :class:`VectorGeometry` scans
whose source or ray direction circles (approximately) around the ``z`` axis through the origin.
It runs on any device and dtype that torch supports, with any leading batch dimensions, and is
differentiable (it is linear in the sinogram).

Units
-----
The sinogram holds line integrals ``y = ∫ μ dl`` (dimensionless, lengths in the physical unit of
the geometry); the result is the attenuation ``μ`` in inverse physical length. Arrays follow
the conventions of :mod:`dip_uq.geometry`: sinograms ``(..., n_angles, n_cols)`` or
``(..., n_angles, n_rows, n_cols)``, images ``(..., ny, nx)`` and volumes ``(..., nz, ny, nx)``.

Method
------
Ramp filter (Kak & Slaney, *Principles of Computerized Tomographic Imaging*, eq. 3.61): the
spatial-domain band-limited ramp kernel sampled at spacing ``τ``::

    h(0) = 1 / (4 τ²),   h(n) = -1 / (n π τ)²  for odd n,   h(n) = 0 for even n ≠ 0

is zero-padded to at least twice the detector width, Fourier transformed and multiplied by an
apodisation window ``W(f)`` of the normalised frequency ``f ∈ [0, 1]`` (1 = Nyquist), so that
``Q = τ · (h ∗ y)`` along the detector columns (the ``u`` direction), row by row. This avoids the
DC offset of sampling ``|ω|`` directly.

Parallel beam, with ``Δθ_k`` the angular weight of projection ``k`` (see
:func:`angular_weights`) and ``τ = |u|`` (the part of ``u`` orthogonal to the ray)::

    f(x) = Σ_k Δθ_k · Q_k(π_k(x)),

where ``π_k(x)`` is the detector point hit by the ray through ``x``; ``Q_k`` is sampled with
bilinear interpolation between pixel centres and zero outside the detector.

Fan and cone beam (FDK), with ``n`` the unit detector normal pointing from the source ``s`` to
the detector, ``D_sd = (d - s)·n``, ``D_so = (0 - s)·n`` (the rotation axis passes through the
origin) and ``L(x) = (x - s)·n``::

    y'_k(p) = y_k(p) · D_sd / |p - s|                       (cosine pre-weight, pixel p)
    Q_k     = ramp filter of y'_k with τ = |u| · D_so / D_sd  (spacing at the rotation axis)
    f(x)    = Σ_k (Δβ_k / 2) · (D_so / L_k(x))² · Q_k(π_k(x))

where ``π_k(x)`` is the detector point on the line from the source through ``x`` and the
``1/2`` accounts for each ray being measured twice in a full 360° scan.

Limitations: short scans (source arc < 360°) and limited-angle scans are *not*
redundancy-weighted (no Parker weights); they reconstruct, with the usual artefacts and a
wrong scale where data are missing or counted twice. FDK is exact only in the central plane.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Geometry, Volume

__all__ = ["FBPFilter", "angular_weights", "fbp"]

# Bound on the working arrays of one backprojection step, in elements: (projections in the
# chunk) x (voxels in the slab) x (2 * batch + 6). 2**24 float32 elements are 64 MiB.
_CHUNK_ELEMENTS = 2**24
# "full scan" when the largest gap between neighbouring angles is at most this times the others
_WRAP_FACTOR = 1.5


class FBPFilter(str, enum.Enum):
    """Ramp filters: the plain ramp (``"ram-lak"``) and four apodised ramps.

    Windows of the normalised frequency ``f ∈ [0, 1]`` (1 = Nyquist), after rescaling by
    ``frequency_scaling`` ``c`` (``f' = f / c``, and zero where ``f > c``)::

        ram-lak      1
        shepp-logan  sin(π f'/2) / (π f'/2)
        cosine       cos(π f'/2)
        hann         (1 + cos(π f')) / 2
        hamming      0.54 + 0.46 cos(π f')
    """

    RAM_LAK = "ram-lak"
    SHEPP_LOGAN = "shepp-logan"
    COSINE = "cosine"
    HANN = "hann"
    HAMMING = "hamming"

    @classmethod
    def parse(cls, value: Any) -> FBPFilter:
        """The filter named by ``value`` (a member or its name, case-insensitive)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        known = ", ".join(repr(member.value) for member in cls)
        raise ValueError(f"unknown filter {value!r}; known filters: {known}")


def _window(filt: FBPFilter, freq: np.ndarray, scaling: float) -> np.ndarray:
    """Apodisation window at normalised frequencies ``freq`` (1 = Nyquist)."""
    f = freq / scaling
    if filt is FBPFilter.RAM_LAK:
        window = np.ones_like(f)
    elif filt is FBPFilter.SHEPP_LOGAN:
        window = np.sinc(f / 2)  # numpy's sinc(t) = sin(π t) / (π t)
    elif filt is FBPFilter.COSINE:
        window = np.cos(np.pi * f / 2)
    elif filt is FBPFilter.HANN:
        window = 0.5 + 0.5 * np.cos(np.pi * f)
    else:
        window = 0.54 + 0.46 * np.cos(np.pi * f)
    return np.where(freq <= scaling * (1 + 1e-12), window, 0.0)


def _filter_response(n_cols: int, filt: FBPFilter, scaling: float) -> tuple[int, np.ndarray]:
    """Padded length and real frequency response (``rfft`` layout) of the windowed ramp.

    The response is that of the unit-spacing kernel (``τ = 1``); the caller divides by ``τ``.
    """
    n_pad = max(64, 1 << math.ceil(math.log2(2 * n_cols)))
    offset = np.arange(n_pad)
    offset = np.where(offset <= n_pad // 2, offset, offset - n_pad)
    kernel = np.zeros(n_pad)
    kernel[0] = 0.25
    odd = offset % 2 == 1
    kernel[odd] = -1.0 / (np.pi * offset[odd]) ** 2
    response = np.fft.rfft(kernel).real  # the kernel is even, so its transform is real
    freq = np.arange(n_pad // 2 + 1) / (n_pad // 2)
    return n_pad, response * _window(filt, freq, scaling)


def angular_weights(geometry: Geometry) -> np.ndarray:
    """Quadrature weights ``Δ_k`` (radians) of the projections for the backprojection integral.

    The angle of projection ``k`` is the azimuth (about ``z``) of its ray direction (parallel
    beam, period ``π``) or of its source position (fan/cone beam, period ``2π``). With the
    angles sorted around the circle, each projection gets half the sum of the gaps to its two
    neighbours (midpoint rule). If the largest gap is at most 1.5 times every other gap the
    angles are taken to cover the full period and the rule wraps around; otherwise the circle
    is cut at the largest gap (a limited-angle or short scan) and each of the two end
    projections gets the full gap to its single neighbour. Repeated angles share their weight.

    >>> import numpy as np
    >>> from dip_uq.geometry import ParallelBeam
    >>> angular_weights(ParallelBeam(np.linspace(0, np.pi, 4, endpoint=False), (8,))) * 4 / np.pi
    array([1., 1., 1., 1.])
    """
    frames = geometry.frames()
    parallel = geometry.kind == "parallel"
    vec = frames["ray"] if parallel else frames["source"]
    period = math.pi if parallel else 2 * math.pi
    phi = np.mod(np.arctan2(vec[:, 1], vec[:, 0]), period)
    n = phi.size
    order = np.argsort(phi, kind="stable")
    sorted_phi = phi[order]
    # gap[k] = angle from sorted projection k to the next one, the last wrapping around
    gaps = np.diff(np.append(sorted_phi, sorted_phi[0] + period))
    gaps = np.clip(gaps, 0.0, None)
    if np.count_nonzero(gaps > 1e-12 * period) <= 1:
        return np.full(n, period / n)  # all projections at one angle: nothing to integrate
    widest = int(np.argmax(gaps))
    others = np.delete(gaps, widest)
    before = np.roll(gaps, 1)  # gap from the previous projection
    after = gaps.copy()
    if gaps[widest] > _WRAP_FACTOR * others.max():
        # cut at the widest gap: projection `widest` and `widest + 1` are the scan's ends
        after[widest] = before[widest]
        before[(widest + 1) % n] = after[(widest + 1) % n]
    weights = np.empty(n)
    weights[order] = (before + after) / 2
    return weights


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _check_inputs(sino: Any, volume: Any, geometry: Any, frequency_scaling: Any) -> float:
    if not isinstance(sino, torch.Tensor):
        raise ValueError(f"sino must be a torch.Tensor, got {type(sino).__name__}")
    if not isinstance(volume, Volume):
        raise ValueError(f"volume must be a dip_uq Volume, got {type(volume).__name__}")
    if not isinstance(geometry, Geometry):
        raise ValueError(f"geometry must be a dip_uq Geometry, got {type(geometry).__name__}")
    if volume.ndim != geometry.ndim:
        raise ValueError(
            f"a {geometry.ndim}D geometry needs a {geometry.ndim}D volume, got {volume!r}"
        )
    expected = tuple(geometry.sino_shape)
    if tuple(sino.shape[-len(expected) :]) != expected or sino.ndim < len(expected):
        raise ValueError(
            f"sinogram shape {tuple(sino.shape)} does not end with the geometry's sino_shape "
            f"{expected} (n_angles, [rows,] cols)"
        )
    if not sino.is_floating_point():
        raise ValueError(f"sinogram must have a floating-point dtype, got {sino.dtype}")
    if not bool(torch.isfinite(sino).all()):
        raise ValueError("sinogram contains NaN or Inf; replace them (e.g. torch.nan_to_num)")
    try:
        scaling = float(frequency_scaling)
    except (TypeError, ValueError):
        raise ValueError(
            f"frequency_scaling must be a number in (0, 1], got {frequency_scaling!r}"
        ) from None
    if not (math.isfinite(scaling) and 0 < scaling <= 1):
        raise ValueError(f"frequency_scaling must be in (0, 1], got {frequency_scaling!r}")
    return scaling


# --------------------------------------------------------------------------------------------
# per-projection parameters (numpy float64, geometry lifted to 3D)
# --------------------------------------------------------------------------------------------
def _parallel_parameters(
    frames: dict[str, np.ndarray], weights: np.ndarray, det_shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Affine maps ``x -> grid_sample`` coordinates of the ray through ``x``, filter scale.

    ``x - d = a u + b v - t r`` is solved for the detector offsets ``(a, b)`` (in pixels from
    the detector centre); ``grid_sample`` (``align_corners=False``) wants ``2a / n_cols`` and
    ``2b / n_rows``. The filter scale is ``Δθ / τ`` with ``τ = |u|`` orthogonal to the ray.
    """
    ray = frames["ray"] / np.linalg.norm(frames["ray"], axis=1, keepdims=True)
    u, v, d = frames["u"], frames["v"], frames["center"]
    system = np.stack([u, v, -ray], axis=2)  # columns u, v, -r
    if np.any(np.abs(np.linalg.det(system)) < 1e-12 * np.linalg.norm(u, axis=1) ** 2):
        raise ValueError("parallel rays must not lie in the detector plane")
    inverse = np.linalg.inv(system)
    n_rows, n_cols = det_shape
    rows_a, rows_b = inverse[:, 0, :] * (2 / n_cols), inverse[:, 1, :] * (2 / n_rows)
    u_perp = u - np.sum(u * ray, axis=1, keepdims=True) * ray
    tau = np.linalg.norm(u_perp, axis=1)
    return {
        "gx": rows_a,
        "gx0": -np.sum(rows_a * d, axis=1),
        "gy": rows_b,
        "gy0": -np.sum(rows_b * d, axis=1),
        "scale": weights / tau,
    }


def _cone_parameters(
    frames: dict[str, np.ndarray], weights: np.ndarray, det_shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Maps ``x -> grid_sample`` coordinates through the source, FDK weights, filter scale.

    With the dual vectors ``ũ, ṽ`` of the detector axes (``ũ·u = 1``, ``ũ·v = 0``, in the
    detector plane) and the magnification ``m(x) = D_sd / L(x)``, the line from the source
    through ``x`` meets the detector at offsets ``a = ũ·(s - d) + m(x) ũ·(x - s)`` (likewise
    ``b``). The backprojection weight ``(D_so / L)²`` is written ``m² (D_so / D_sd)²`` with the
    constant factor folded into the filter scale ``Δβ / 2 · (D_so / D_sd)² / τ``.
    """
    s, d, u, v = frames["source"], frames["center"], frames["u"], frames["v"]
    normal = np.cross(u, v)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    d_sd = np.sum((d - s) * normal, axis=1)
    normal *= np.where(d_sd < 0, -1.0, 1.0)[:, None]  # from the source towards the detector
    d_sd = np.abs(d_sd)
    d_so = -np.sum(s * normal, axis=1)
    if np.any(d_sd <= 0) or np.any(d_so <= 0):
        raise ValueError(
            "FDK needs each source off the detector plane and on the other side of the "
            "rotation axis (the origin) from the detector"
        )
    gram = np.stack(
        [
            np.stack([np.sum(u * u, 1), np.sum(u * v, 1)], 1),
            np.stack([np.sum(v * u, 1), np.sum(v * v, 1)], 1),
        ],
        1,
    )
    inv_gram = np.linalg.inv(gram)
    n_rows, n_cols = det_shape
    dual_u = (inv_gram[:, 0, :1] * u + inv_gram[:, 0, 1:] * v) * (2 / n_cols)
    dual_v = (inv_gram[:, 1, :1] * u + inv_gram[:, 1, 1:] * v) * (2 / n_rows)
    tau = np.linalg.norm(u, axis=1) * d_so / d_sd
    # |p - s|² = |d - s|² + 2a (d-s)·u + 2b (d-s)·v + a²|u|² + 2ab u·v + b²|v|² for the pixel
    # p = d + a u + b v: its coefficients give the cosine pre-weight D_sd / |p - s|
    w = d - s
    distance_terms = np.stack(
        [
            np.sum(w * w, 1),
            2 * np.sum(w * u, 1),
            2 * np.sum(w * v, 1),
            np.sum(u * u, 1),
            2 * np.sum(u * v, 1),
            np.sum(v * v, 1),
        ],
        1,
    )
    return {
        "gx": dual_u,
        "gx0": -np.sum(dual_u * s, axis=1),
        "gx_shift": np.sum(dual_u * (s - d), axis=1),
        "gy": dual_v,
        "gy0": -np.sum(dual_v * s, axis=1),
        "gy_shift": np.sum(dual_v * (s - d), axis=1),
        "normal": normal,
        "normal0": -np.sum(normal * s, axis=1),
        "d_sd": d_sd,
        "distance_terms": distance_terms,
        "scale": weights / 2 * (d_so / d_sd) ** 2 / tau,
    }


# --------------------------------------------------------------------------------------------
# the reconstruction
# --------------------------------------------------------------------------------------------
def _cosine_weight(
    terms: torch.Tensor, d_sd: torch.Tensor, det_shape: tuple[int, int]
) -> torch.Tensor:
    """Cosine weights ``D_sd / |p - s|`` of every pixel ``p``, shape ``(K, rows, cols)``."""
    n_rows, n_cols = det_shape
    a = torch.arange(n_cols, dtype=terms.dtype, device=terms.device) - (n_cols - 1) / 2
    b = torch.arange(n_rows, dtype=terms.dtype, device=terms.device) - (n_rows - 1) / 2
    a, b = a[None, None, :], b[None, :, None]
    t = [terms[:, i, None, None] for i in range(6)]
    squared = t[0] + t[1] * a + t[2] * b + t[3] * a * a + t[4] * a * b + t[5] * b * b
    return d_sd[:, None, None] / squared.sqrt()


def _affine(
    coef: torch.Tensor,
    const: torch.Tensor,
    axes: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``coef·(x, y, z) + const`` on the voxel grid, shape ``(K, nz, ny, nx)``.

    ``coef`` is ``(K, 3)`` in world order ``(x, y, z)``, ``axes`` the voxel coordinates in
    array order ``(z, y, x)``; written into ``out`` when given.
    """
    z, y, x = axes
    plane = coef[:, 0, None, None] * x + (coef[:, 1, None] * y + const[:, None])[:, :, None]
    height = coef[:, 2, None] * z  # (K, nz)
    if out is None:
        return plane[:, None] + height[:, :, None, None]
    return torch.add(plane[:, None], height[:, :, None, None], out=out)


def _backproject_chunk(
    filtered: torch.Tensor,
    par: dict[str, torch.Tensor],
    axes: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    parallel: bool,
) -> torch.Tensor:
    """``Σ_k w_k(x) Q_k(π_k(x))`` for ``K`` filtered projections ``(K, B, rows, cols)`` over the
    voxel grid given by ``axes``; returns ``(B, nz, ny, nx)``."""
    n_proj, n_batch = filtered.shape[:2]
    shape = (n_proj, *(a.numel() for a in axes))
    nz, ny, nx = shape[1:]
    # grid coordinates stored as (2, K, nz, ny, nx) and viewed as grid_sample's (K, H, W, 2)
    grid = torch.empty((2, *shape), dtype=filtered.dtype, device=filtered.device)
    if parallel:
        _affine(par["gx"], par["gx0"], axes, out=grid[0])
        _affine(par["gy"], par["gy0"], axes, out=grid[1])
        weight = None
    else:
        weight = _affine(par["normal"], par["normal0"], axes)  # L(x) = n·(x - s)
        behind_source = weight <= 0
        weight = weight.reciprocal_().mul_(par["d_sd"][:, None, None, None])  # m = D_sd / L
        if bool(behind_source.any()):
            weight = weight.masked_fill_(behind_source, 0.0)
        for k, key in enumerate(("gx", "gy")):
            _affine(par[key], par[key + "0"], axes, out=grid[k])
            grid[k].mul_(weight).add_(par[key + "_shift"][:, None, None, None])
        weight = weight.square_()  # m², the rest of (D_so / L)² is in the filter scale
    grid = grid.permute(1, 2, 3, 4, 0).reshape(n_proj, nz * ny, nx, 2)
    samples = F.grid_sample(
        filtered, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).reshape(n_proj, n_batch, nz, ny, nx)
    if weight is not None:
        samples = samples.mul_(weight[:, None])
    return samples.sum(0)


def fbp(
    sino: torch.Tensor,
    volume: Volume,
    geometry: Geometry,
    filter: str | FBPFilter = "ram-lak",
    frequency_scaling: float = 1.0,
) -> torch.Tensor:
    """Filtered backprojection (parallel beam) or FDK (fan/cone beam) of a sinogram.

    Args:
        sino: line integrals, shape ``(..., *geometry.sino_shape)``, i.e.
            ``(..., n_angles, n_cols)`` in 2D or ``(..., n_angles, n_rows, n_cols)`` in 3D, any
            leading batch dimensions; floating point, finite, on any device.
        volume: the grid to reconstruct on, ``(ny, nx)`` or ``(nz, ny, nx)``.
        geometry: the scan geometry (same dimension as ``volume``).
        filter: ``"ram-lak"``, ``"shepp-logan"``, ``"cosine"``, ``"hann"`` or ``"hamming"``
            (or an :class:`FBPFilter`).
        frequency_scaling: relative cutoff in ``(0, 1]``: frequencies above
            ``frequency_scaling`` times Nyquist are removed and the window is stretched to
            the remaining band.

    Returns:
        The attenuation image, shape ``(..., *volume.shape)``, in inverse physical length,
        same dtype (float16/bfloat16 are computed in float32) and device as ``sino``.

    Raises:
        ValueError: wrong sinogram shape, non-floating dtype, NaN/Inf values, unknown filter,
            ``frequency_scaling`` outside ``(0, 1]`` or a degenerate geometry.

    The formulas are in the module docstring. Short and limited-angle scans run but are not
    redundancy-weighted (no Parker weights). The work is chunked over projections (and
    z-slabs of the volume) so that the working memory stays near ``_CHUNK_ELEMENTS`` elements
    (docs/measurements.md gives the peak for one size). The result is
    differentiable in ``sino``; autograd then keeps every chunk's sampling grid
    (``2 × n_angles × n_voxels`` elements) for the backward pass.

    >>> import numpy as np, torch
    >>> from dip_uq.geometry import ParallelBeam, Volume
    >>> g = ParallelBeam(np.linspace(0, np.pi, 90, endpoint=False), det_shape=(64,))
    >>> s = torch.linspace(-31.5, 31.5, 64)
    >>> disc = 2 * (100 - s**2).clamp(min=0).sqrt()  # a unit disc of radius 10
    >>> image = fbp(disc.expand(90, 64), Volume((64, 64)), g)
    >>> round(float(image[32, 32]), 2)
    1.0
    """
    scaling = _check_inputs(sino, volume, geometry, frequency_scaling)
    filt = FBPFilter.parse(filter)
    out_dtype = sino.dtype
    dtype = sino.dtype if sino.dtype in (torch.float32, torch.float64) else torch.float32
    device = sino.device

    n_angles = geometry.n_angles
    det_shape = geometry.det_shape if geometry.ndim == 3 else (1, geometry.det_shape[0])
    n_rows, n_cols = det_shape
    batch_shape = sino.shape[: sino.ndim - len(geometry.sino_shape)]
    data = sino.to(dtype).reshape(-1, n_angles, n_rows, n_cols)
    n_batch = data.shape[0]

    frames = geometry.frames_3d()
    weights = angular_weights(geometry)
    parallel = geometry.kind == "parallel"
    make_parameters = _parallel_parameters if parallel else _cone_parameters
    params = make_parameters(frames, weights, det_shape)
    par = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in params.items()}

    n_pad, response = _filter_response(n_cols, filt, scaling)
    response_t = torch.as_tensor(response, dtype=dtype, device=device)

    if volume.ndim == 3:
        axes_np = volume.coordinates()
    else:
        axes_np = [np.zeros(1), *volume.coordinates()]
    axes = tuple(torch.as_tensor(a, dtype=dtype, device=device) for a in axes_np)
    nz, ny, nx = (a.numel() for a in axes)

    # chunking: `chunk` projections times a slab of `slab` z-slices per grid_sample call
    slice_elements = ny * nx * (2 * n_batch + 6)
    if nz * slice_elements <= _CHUNK_ELEMENTS:
        slab = nz
        chunk = max(1, min(n_angles, _CHUNK_ELEMENTS // (nz * slice_elements)))
    else:
        slab = max(1, _CHUNK_ELEMENTS // slice_elements)
        chunk = 1

    out = torch.zeros(n_batch, nz, ny, nx, dtype=dtype, device=device)
    for k0 in range(0, n_angles, chunk):
        k1 = min(n_angles, k0 + chunk)
        chunk_par = {k: v[k0:k1] for k, v in par.items()}
        proj = data[:, k0:k1]  # (B, K, rows, cols)
        if not parallel:
            proj = proj * _cosine_weight(chunk_par["distance_terms"], chunk_par["d_sd"], det_shape)
        spectrum = torch.fft.rfft(proj, n=n_pad, dim=-1) * response_t
        filtered = torch.fft.irfft(spectrum, n=n_pad, dim=-1)[..., :n_cols]
        filtered = filtered * chunk_par["scale"][:, None, None]
        filtered = filtered.transpose(0, 1)  # (K, B, rows, cols): projections as the batch
        for z0 in range(0, nz, slab):
            z1 = min(nz, z0 + slab)
            slab_axes = (axes[0][z0:z1], axes[1], axes[2])
            out[:, z0:z1] += _backproject_chunk(filtered, chunk_par, slab_axes, parallel)

    image = out if volume.ndim == 3 else out[:, 0]
    return image.reshape(*batch_shape, *volume.shape).to(out_dtype)
