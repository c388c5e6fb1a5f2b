"""Preprocessing of scans: detector rows, centre of rotation, column crop, binning, angles.

Every step changes the sinogram and the geometry together, so a preprocessed scan is as
consistent as the one read: cropping or binning moves the detector centre and scales the
pixel pitch (``det_offset``/``det_spacing`` of parametric geometries, ``d``/``u``/``v`` of
vector geometries) instead of pretending the new detector is centred.

Centre of rotation
------------------
``center_offset`` is in detector pixels of the scan passed in: the rotation axis projects
``center_offset`` columns to the right of (towards larger column indices than) where the
current geometry puts it. For a freshly read scan the geometry puts it at the detector centre
``(n_cols - 1) / 2``, so the axis column is ``(n_cols - 1) / 2 + center_offset``. With
dip-uq's convention (module docstring of :mod:`dip_uq.geometry`: the detector centre sits at
``det_offset · (cos θ, sin θ, 0)`` and column ``i`` at ``(i - (n - 1) / 2) · spacing`` from it)
the axis (the origin) projects to column ``(n - 1) / 2 - det_offset / spacing``, so the
correction is ``det_offset -= center_offset · spacing`` (``d -= center_offset · u`` for vector
geometries).

``center_offset="auto"`` estimates it for parallel beam (:func:`estimate_rotation_center`):

* ``"mirror"`` (used when the scan holds pairs of projections 180° apart, e.g. 0°…180°
  inclusive or 360° scans): in parallel beam ``p(θ + π, t) = p(θ, 2c - t)`` for the axis
  column ``c``, so the mirrored opposite projection is the original shifted by ``2 (c - m)``
  (``m = (n - 1) / 2``). The shift minimising the mean squared difference, averaged over up to
  64 pairs and 8 rows, refined to sub-pixel by a parabola through the three best shifts,
  gives ``c``.
* ``"com"`` (otherwise, e.g. 0°…179° scans): the centre of mass of each projection,
  ``Σ t p(θ, t) / Σ p(θ, t)``, follows ``c + a cos θ + b sin θ`` in parallel beam (the projected
  centre of mass of the object); a least-squares fit over all projections gives ``c``. It needs
  the object inside the field of view in every projection (no truncation) and line integrals
  near zero outside the object; projections whose edges carry signal get a note.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry import (
    ConeBeam,
    FanBeam,
    Geometry,
    ParallelBeam,
    VectorGeometry,
)
from ..scan import Scan

__all__ = ["axis_column", "estimate_rotation_center", "preprocess", "select_rows"]

_MAX_PAIRS = 64  # opposite-projection pairs used by the mirror method
_MAX_ROWS = 8  # detector rows used by the centre estimate


# --------------------------------------------------------------------------------------------
# geometry transforms
# --------------------------------------------------------------------------------------------
def window_geometry(
    geometry: Geometry,
    *,
    cols: tuple[int, int] | None = None,
    rows: tuple[int, int] | None = None,
    binning: int = 1,
    col_shift: float = 0.0,
) -> Geometry:
    """The geometry of a sub-window of the detector, binned, and/or shifted along the columns.

    Args:
        geometry: the scan geometry.
        cols: ``(start, stop)`` columns kept (all when None).
        rows: ``(start, stop)`` rows kept (3D only; all when None).
        binning: ``b``: each new pixel is the mean of ``b`` columns (and ``b`` rows in 3D) of
            the window, whose length must be divisible by ``b``.
        col_shift: move the whole detector by this many (old) columns along ``u`` before
            windowing (used for the centre-of-rotation correction).

    The new detector centre is the old position of the window's centre, in old pixel units
    ``((start + stop - 1) / 2 - (n - 1) / 2)`` along ``u`` (and ``v``), and the pitch is
    multiplied by ``binning``.
    """
    det = geometry.det_shape
    n_cols = det[-1]
    c0, c1 = cols if cols is not None else (0, n_cols)
    r0, r1 = rows if rows is not None else ((0, det[0]) if geometry.ndim == 3 else (0, 1))
    n_rows = det[0] if geometry.ndim == 3 else 1
    new_cols, new_rows = c1 - c0, r1 - r0
    if new_cols % binning or (geometry.ndim == 3 and new_rows % binning):
        raise ValueError(f"the detector window {new_rows}x{new_cols} is not divisible by {binning}")
    du = (c0 + c1 - 1) / 2 - (n_cols - 1) / 2 + col_shift
    dv = (r0 + r1 - 1) / 2 - (n_rows - 1) / 2
    if geometry.ndim == 3:
        new_det: tuple[int, ...] = (new_rows // binning, new_cols // binning)
    else:
        new_det = (new_cols // binning,)
    if isinstance(geometry, (ParallelBeam, FanBeam, ConeBeam)):
        spacing = list(geometry.det_spacing)
        offset = list(geometry.det_offset)
        offset[-1] += du * spacing[-1]
        spacing[-1] *= binning
        if geometry.ndim == 3:
            offset[0] += dv * spacing[0]
            spacing[0] *= binning
        if isinstance(geometry, ParallelBeam):
            return ParallelBeam(geometry.angles, new_det, tuple(spacing), tuple(offset))
        return type(geometry)(
            geometry.angles,
            new_det,
            tuple(spacing),
            geometry.src_origin,
            geometry.origin_det,
            tuple(offset),
        )
    frames = geometry.frames()
    first = frames["ray"] if geometry.kind == "parallel" else frames["source"]
    center = frames["center"] + du * frames["u"]
    parts = [first, center, frames["u"] * binning]
    if geometry.ndim == 3:
        parts[1] = center + dv * frames["v"]
        parts.append(frames["v"] * binning)
    return VectorGeometry(np.concatenate(parts, axis=1), new_det, geometry.kind)


def slice_geometry(geometry: Geometry) -> Geometry:
    """The 2D geometry of a one-row 3D parallel-beam geometry (the slice through that row)."""
    if geometry.kind != "parallel" or geometry.ndim != 3 or geometry.det_shape[0] != 1:
        raise ValueError("only a one-row parallel-beam scan becomes a 2D scan")
    if isinstance(geometry, ParallelBeam):
        return ParallelBeam(
            geometry.angles,
            geometry.det_shape[1:],
            geometry.det_spacing[1],
            geometry.det_offset[1],
        )
    f = geometry.frames()
    if np.abs(f["ray"][:, 2]).max() > 1e-9 or np.abs(f["u"][:, 2]).max() > 1e-9:
        raise ValueError(
            "this parallel-beam vector geometry is tilted (rays or detector rows leave the "
            "xy-plane), so one row is not a 2D slice; keep the scan 3D"
        )
    vectors = np.concatenate([f["ray"][:, :2], f["center"][:, :2], f["u"][:, :2]], axis=1)
    return VectorGeometry(vectors, geometry.det_shape[1:], "parallel")


def _bin(array: np.ndarray, binning: int, axes: tuple[int, ...]) -> np.ndarray:
    """Mean over blocks of ``binning`` along each of ``axes`` (lengths divisible by it)."""
    shape: list[int] = []
    mean_axes = []
    for k, n in enumerate(array.shape):
        if k in axes:
            shape.extend([n // binning, binning])
            mean_axes.append(len(shape) - 1)
        else:
            shape.append(n)
    return array.reshape(shape).mean(axis=tuple(mean_axes), dtype=np.float64).astype(np.float32)


# --------------------------------------------------------------------------------------------
# centre of rotation
# --------------------------------------------------------------------------------------------
def axis_column(geometry: Geometry) -> float | None:
    """Detector column (0-based, fractional) where the rotation axis projects, for a parallel
    beam geometry (median over projections); None for fan/cone beam."""
    if geometry.kind != "parallel":
        return None
    f = geometry.frames_3d()
    u = f["u"]
    t = -np.sum(f["center"] * u, 1) / np.sum(u * u, 1)  # origin's coordinate along u, in pixels
    return float(np.median(t) + (geometry.det_shape[-1] - 1) / 2)


def _opposite_pairs(angles: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` with ``θ_j - θ_i = π`` (mod 2π) within a tenth of a step."""
    if angles.size < 2:
        return []
    steps = np.abs(np.diff(np.sort(angles)))
    step = float(np.median(steps[steps > 0])) if np.any(steps > 0) else 1.0
    tolerance = 0.1 * step
    pairs = []
    for i, a in enumerate(angles):
        gap = np.abs(np.angle(np.exp(1j * (angles - a - np.pi))))
        j = int(np.argmin(gap))
        if gap[j] <= tolerance and j != i and (j, i) not in pairs:
            pairs.append((i, j))
    if len(pairs) > _MAX_PAIRS:
        keep = np.linspace(0, len(pairs) - 1, _MAX_PAIRS).round().astype(int)
        pairs = [pairs[k] for k in keep]
    return pairs


def _mirror_center(proj: np.ndarray, pairs: list[tuple[int, int]]) -> tuple[float, str]:
    """Axis column from opposite pairs; ``proj`` is ``(angles, rows, cols)``.

    The mean squared difference between the mirrored opposite view ``q`` and the view ``p``
    shifted by ``s`` columns, over their overlap, for every ``|s| <= n / 2`` at once: the
    cross term by FFT correlation, the squares by cumulative sums.
    """
    n = proj.shape[-1]
    p = proj[[i for i, _ in pairs]].reshape(-1, n).astype(np.float64)
    q = proj[[j for _, j in pairs]][..., ::-1].reshape(-1, n).astype(np.float64)
    size = 2 * n
    cross = np.fft.irfft(np.conj(np.fft.rfft(q, size)) * np.fft.rfft(p, size), size).sum(0)
    shifts = np.arange(-(n // 2), n // 2 + 1)
    q2 = np.concatenate([[0.0], np.cumsum((q * q).sum(0))])  # q2[k] = sum of q² over t < k
    p2 = np.concatenate([[0.0], np.cumsum((p * p).sum(0))])
    lo = np.maximum(0, -shifts)  # overlap t in [lo, hi) of q, t + s of p
    hi = np.minimum(n, n - shifts)
    sq = (q2[hi] - q2[lo]) + (p2[hi + shifts] - p2[lo + shifts])
    cost = (sq - 2 * cross[shifts % size]) / ((hi - lo) * len(p))
    k = int(np.argmin(cost))
    shift = float(shifts[k])
    if 0 < k < cost.size - 1:
        a, b, c = cost[k - 1], cost[k], cost[k + 1]
        denominator = a - 2 * b + c
        if denominator > 0:
            shift += 0.5 * (a - c) / denominator
    return (n - 1) / 2 + shift / 2, f"mirrored opposite projections ({len(pairs)} pairs)"


def _com_center(proj: np.ndarray, angles: np.ndarray) -> tuple[float, str]:
    """Axis column from the sinusoid of the projections' centres of mass."""
    span = float(np.ptp(np.unwrap(np.sort(angles))))
    if span < np.deg2rad(90):
        raise ValueError(
            f"the scan spans only {np.rad2deg(span):.0f}° and has no projections 180° apart, "
            "too little to estimate the centre of rotation; pass center_offset in pixels"
        )
    profile = np.clip(proj.astype(np.float64).sum(axis=1), 0, None)  # (angles, cols)
    n = profile.shape[-1]
    mass = profile.sum(axis=1)
    if np.any(mass <= 0):
        raise ValueError(
            "some projections are empty (no positive line integrals); the centre of rotation "
            "cannot be estimated from them; pass center_offset in pixels"
        )
    com = profile @ np.arange(n) / mass
    basis = np.stack([np.ones_like(angles), np.cos(angles), np.sin(angles)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, com, rcond=None)
    residual = float(np.sqrt(np.mean((com - basis @ coef) ** 2)))
    edge = max(1, n // 50)
    edge_level = float(np.concatenate([profile[:, :edge], profile[:, -edge:]], 1).mean())
    text = (
        f"centre-of-mass sinusoid fit over {len(angles)} projections (rms residual "
        f"{residual:.2f} px)"
    )
    if edge_level > 0.05 * float(profile.mean(axis=1).max()):
        text += "; the object seems to reach the detector edges, so the estimate may be biased"
    return float(coef[0]), text


def _estimate(scan: Scan, method: str) -> tuple[float, str]:
    geometry = scan.geometry
    if geometry.kind != "parallel":
        raise ValueError(
            "automatic centre-of-rotation estimation is implemented for parallel beam only; "
            "pass center_offset in pixels for fan/cone-beam scans"
        )
    if method not in ("auto", "mirror", "com"):
        raise ValueError(f"unknown centre method {method!r}; known: auto, mirror, com")
    proj = scan.sinogram if scan.ndim == 3 else scan.sinogram[:, None, :]
    if proj.shape[1] > _MAX_ROWS:
        keep = np.linspace(0, proj.shape[1] - 1, _MAX_ROWS).round().astype(int)
        proj = proj[:, keep]
    angles = np.deg2rad(np.asarray(scan.angles_deg, dtype=np.float64))
    pairs = _opposite_pairs(angles) if method in ("auto", "mirror") else []
    if pairs:
        return _mirror_center(proj, pairs)
    if method == "mirror":
        raise ValueError(
            "no projections 180° apart in this scan, so the mirror method cannot run; use "
            "method 'com' or pass center_offset in pixels"
        )
    return _com_center(proj, angles)


def estimate_rotation_center(scan: Scan, method: str = "auto") -> float:
    """The detector column (0-based, sub-pixel) onto which the rotation axis projects.

    Args:
        scan: a parallel-beam scan (2D or 3D; up to 8 rows are used).
        method: ``"mirror"`` (pairs of projections 180° apart), ``"com"`` (centre-of-mass
            sinusoid fit) or ``"auto"`` (mirror when such pairs exist, else com); see the
            module docstring.

    Returns:
        The axis column ``c``; the ``center_offset`` for :func:`preprocess` relative to the
        scan's current geometry is ``c - axis_column(geometry)`` (for a scan read without an
        offset: ``c - (n_cols - 1) / 2``).

    Raises:
        ValueError: fan/cone-beam scans, less than 90° of angles without opposite pairs,
            empty projections, unknown method.
    """
    return _estimate(scan, method)[0]


# --------------------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------------------
def index_range(value: Any, n: int, what: str) -> tuple[int, int, bool]:
    """``(start, stop, single)`` for an index, a slice or ``(start, stop)`` over ``n`` items."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        k = int(value) + (n if value < 0 else 0)
        if not 0 <= k < n:
            raise ValueError(f"{what} {value} is outside the range 0..{n - 1}")
        return k, k + 1, True
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = slice(*value)
    if isinstance(value, slice):
        start, stop, step = value.indices(n)
        if step != 1 or stop <= start:
            raise ValueError(f"{what} {value!r} must be a contiguous non-empty range within 0..{n}")
        return start, stop, False
    raise ValueError(f"{what} must be an index, a slice or (start, stop), got {value!r}")


def select_rows(scan: Scan, rows: Any) -> Scan:
    """Keep detector rows ``rows`` (an index, a slice or ``(start, stop)``) of a 3D scan.

    One index of a parallel-beam scan gives a 2D scan (the slice through that row); a cone-beam
    scan stays 3D with one row.
    """
    if scan.ndim != 3:
        raise ValueError("rows can only be selected in a 3D scan (this one is 2D)")
    n_rows = scan.geometry.det_shape[0]
    start, stop, single = index_range(rows, n_rows, "rows")
    geometry = window_geometry(scan.geometry, rows=(start, stop))
    sino = scan.sinogram[:, start:stop]
    what = f"row {start}" if single else f"rows {start}..{stop - 1}"
    note = f"kept detector {what} of {n_rows}"
    pixel = scan.pixel_size
    if single and geometry.kind == "parallel":
        geometry = slice_geometry(geometry)
        sino = sino[:, 0]
        pixel = pixel[1:] if pixel is not None and len(pixel) == 2 else pixel
        note += ": a 2D parallel-beam slice"
    elif single:
        note += " (a cone-beam scan stays 3D with one row)"
    return scan.replace(
        sinogram=sino, geometry=geometry, pixel_size=pixel, notes=[*scan.notes, note]
    )


def preprocess(
    scan: Scan,
    *,
    rows: int | slice | tuple[int, int] | None = None,
    center_offset: float | str | None = None,
    center_method: str = "auto",
    crop: slice | tuple[int, int] | None = None,
    binning: int = 1,
    angle_step: int = 1,
) -> Scan:
    """A new scan with the detector and angles reduced and the centre of rotation corrected.

    Steps, in this order (each adds a note):

    1. ``rows``: keep detector rows (an index, a slice or ``(start, stop)``; 3D only). One
       index of a parallel-beam scan makes it 2D.
    2. ``center_offset``: pixels (of the scan passed in) by which the rotation axis projects
       to the right of where the geometry puts it, or ``"auto"`` to estimate it (parallel
       beam, see the module docstring and ``center_method``); ``det_offset`` moves by
       ``-center_offset * spacing``.
    3. ``crop``: keep detector columns ``(start, stop)`` (or a slice) of the scan passed in;
       the geometry follows (the detector centre moves to the window's centre).
    4. ``binning``: mean over ``binning`` columns (and rows in 3D); the pitch grows by that
       factor. Columns/rows beyond a multiple of ``binning`` are dropped at the end.
    5. ``angle_step``: keep every ``angle_step``-th projection (``geometry[::k]``).

    Returns:
        A new :class:`Scan`; the input is not changed.

    Raises:
        ValueError: out-of-range rows/columns, a bad ``binning``/``angle_step``, rows of a 2D
            scan, or an automatic centre where it cannot be estimated.
    """
    out = scan.replace()
    if rows is not None:
        out = select_rows(out, rows)
    if center_offset is not None:
        n_cols = out.geometry.det_shape[-1]
        if isinstance(center_offset, str):
            if center_offset != "auto":
                raise ValueError(
                    f"center_offset must be a number of pixels or 'auto', got {center_offset!r}"
                )
            column, how = _estimate(out, center_method)
            current = axis_column(out.geometry)
            offset = column - current
            note = (
                f"estimated the rotation axis at column {column:.2f} of {n_cols} by {how}: "
                f"offset {offset:+.2f} px from the geometry's {current:.2f}"
            )
        else:
            offset = float(center_offset)
            if not np.isfinite(offset):
                raise ValueError(f"center_offset must be finite, got {center_offset!r}")
            note = f"centre of rotation moved by {offset:+.2f} px (given)"
        geometry = window_geometry(out.geometry, col_shift=-offset)
        out = out.replace(geometry=geometry, notes=[*out.notes, note])
    if crop is not None:
        n_cols = out.geometry.det_shape[-1]
        start, stop, single = index_range(crop, n_cols, "crop")
        if single:
            raise ValueError(f"crop must be a range of columns (start, stop), got {crop!r}")
        out = out.replace(
            sinogram=out.sinogram[..., start:stop],
            geometry=window_geometry(out.geometry, cols=(start, stop)),
            notes=[*out.notes, f"kept detector columns {start}..{stop - 1} of {n_cols}"],
        )
    if isinstance(binning, bool) or not isinstance(binning, (int, np.integer)) or binning < 1:
        raise ValueError(f"binning must be a positive integer, got {binning!r}")
    if binning > 1:
        g = out.geometry
        n_cols = g.det_shape[-1]
        n_rows = g.det_shape[0] if g.ndim == 3 else 1
        if n_cols < binning or (g.ndim == 3 and n_rows < binning):
            raise ValueError(f"binning {binning} is larger than the detector {g.det_shape}")
        keep_c = n_cols - n_cols % binning
        keep_r = n_rows - n_rows % binning if g.ndim == 3 else 1
        sino = out.sinogram[..., :keep_c]
        if g.ndim == 3:
            sino = sino[:, :keep_r]
        geometry = window_geometry(
            g, cols=(0, keep_c), rows=(0, keep_r) if g.ndim == 3 else None, binning=binning
        )
        axes = (1, 2) if g.ndim == 3 else (1,)
        note = f"binned {binning}x{binning if g.ndim == 3 else 1} detector pixels (mean)"
        if keep_c != n_cols or (g.ndim == 3 and keep_r != n_rows):
            note += f", dropping {n_cols - keep_c} trailing columns and {n_rows - keep_r} rows"
        pixel = tuple(p * binning for p in out.pixel_size) if out.pixel_size else None
        out = out.replace(
            sinogram=_bin(sino, binning, axes),
            geometry=geometry,
            pixel_size=pixel,
            notes=[*out.notes, note],
        )
    if (
        isinstance(angle_step, bool)
        or not isinstance(angle_step, (int, np.integer))
        or angle_step < 1
    ):
        raise ValueError(f"angle_step must be a positive integer, got {angle_step!r}")
    if angle_step > 1:
        n = out.n_angles
        note = f"kept one in {angle_step} of {n} projections"
        out = out.projections(slice(None, None, angle_step), notes=[*out.notes, note])
    return out
