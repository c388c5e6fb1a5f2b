"""Geometries and grids to and from ODL (the optional extra ``dip-uq[odl]``, imported only here
and only when called).

The functions speak dip-uq's ``to_dict`` descriptions (:mod:`dip_uq.geometry`), so this module
depends on no other part of dip-uq; :meth:`~dip_uq.geometry.Geometry.to_odl`,
:meth:`~dip_uq.geometry.Volume.to_odl` and :func:`~dip_uq.geometry.geometry_from_odl` are the
public entry points.

ODL's conventions equal dip-uq's where it matters: the same world axes ``(x, y, z)``, rotation
about ``z``, at angle ``θ`` the rays (parallel) travel along ``(-sin θ, cos θ, 0)`` and the
detector's first axis is ``(cos θ, sin θ, 0)``; the source of a fan/cone beam sits at
``src_radius (sin θ, -cos θ, 0)``. Array layouts differ: an ODL volume is indexed ``(x, y[, z])``
(dip-uq: ``(z, y, x)``, so ``image.T`` in 2D and ``volume.transpose(2, 1, 0)`` in 3D) and an
ODL 3D sinogram ``(angles, cols, rows)`` (dip-uq: ``(angles, rows, cols)``, so
``sinogram.transpose(0, 2, 1)``); 2D sinograms are ``(angles, cols)`` in both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["odl_description", "odl_geometry", "odl_space"]

_INSTALL = "ODL interop needs the optional extra: pip install 'dip-uq[odl]' (or pip install odl)"


def _odl() -> tuple[Any, Any]:
    """The ``odl`` package and its tomography module, or ModuleNotFoundError saying how to get
    them."""
    try:
        import odl
        from odl.applications import tomo
    except ImportError:
        raise ModuleNotFoundError(_INSTALL) from None
    return odl, tomo


def _angle_partition(odl: Any, angles: np.ndarray) -> Any:
    """A uniform partition whose cell centres are evenly spaced ``angles``, else a
    non-uniform one through them; ODL needs them increasing."""
    if angles.size > 1 and not np.all(np.diff(angles) > 0):
        raise ValueError(
            "ODL needs increasing angles; reorder the projections first (order = "
            "np.argsort(angles); geometry[order], sinogram[order])"
        )
    step = float(np.diff(angles).mean()) if angles.size > 1 else 1.0
    if np.allclose(np.diff(angles), step, rtol=1e-9, atol=1e-12):
        return odl.uniform_partition(angles[0] - step / 2, angles[-1] + step / 2, angles.size)
    return odl.nonuniform_partition(angles)


def odl_geometry(description: dict[str, Any]) -> Any:
    """The ODL geometry of a ``parallel``, ``fan`` or ``cone`` description (``to_dict``).

    Parallel beam becomes ``Parallel2dGeometry`` / ``Parallel3dAxisGeometry``, fan beam
    ``FanBeamGeometry``, cone beam ``ConeBeamGeometry`` (circular, flat detector). Detector
    offsets become the centre of the detector partition (``(col, row)`` in ODL's order).
    """
    odl, tomo = _odl()
    kind = description["type"]
    angles = np.asarray(description["angles"], dtype=np.float64)
    shape = list(description["det_shape"])[::-1]  # ODL: (cols,) or (cols, rows)
    spacing = np.asarray(description["det_spacing"], dtype=np.float64)[::-1]
    offset = np.asarray(description["det_offset"], dtype=np.float64)[::-1]
    half = spacing * np.asarray(shape) / 2
    lo, hi = offset - half, offset + half
    if len(shape) == 1:
        lo, hi, shape = float(lo[0]), float(hi[0]), shape[0]
    apart = _angle_partition(odl, angles)
    dpart = odl.uniform_partition(lo, hi, shape)
    if kind == "parallel":
        if isinstance(shape, int):
            return tomo.Parallel2dGeometry(apart, dpart)
        return tomo.Parallel3dAxisGeometry(apart, dpart)
    radii = (description["src_origin"], description["origin_det"])
    if kind == "fan":
        return tomo.FanBeamGeometry(apart, dpart, *radii)
    return tomo.ConeBeamGeometry(apart, dpart, *radii)


def odl_space(description: dict[str, Any], dtype: str = "float32") -> Any:
    """The ODL ``uniform_discr`` of a ``volume`` description: the same grid, axes
    ``(x, y[, z])``."""
    odl, _ = _odl()
    shape = np.asarray(description["shape"])[::-1]
    size = np.asarray(description["voxel_size"], dtype=np.float64)[::-1]
    center = np.asarray(description["center"], dtype=np.float64)[::-1]
    lo, hi = center - shape * size / 2, center + shape * size / 2
    return odl.uniform_discr(lo, hi, tuple(int(n) for n in shape), dtype=dtype)


def odl_description(geometry: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """dip-uq descriptions of an ODL geometry: the exact one as per-projection vectors, and the
    parametric one (``parallel``/``fan``/``cone``) that matches it if ODL's default axes were
    used (the caller checks that it does).

    The vectors come from ODL's own functions at every angle: the detector centre
    ``det_point_position`` at the partition's midpoint (for parallel beam moved along the rays
    into the plane through the origin), the pixel steps ``det_axes`` × cell size, and
    ``src_position`` (fan/cone) or ``-det_to_src`` (parallel, the ray direction).

    Raises:
        ValueError: a geometry with more than one motion parameter (e.g. Euler angles), a
            curved or non-uniform detector, or another beam than parallel/fan/cone.
    """
    _, tomo = _odl()
    name = type(geometry).__name__
    if geometry.motion_params.ndim != 1:
        raise ValueError(f"{name}: dip-uq takes geometries with one rotation angle per projection")
    if not isinstance(geometry.detector, (tomo.Flat1dDetector, tomo.Flat2dDetector)):
        raise ValueError(f"{name}: the detector is curved; dip-uq's detectors are flat")
    dpart = geometry.det_partition
    if not dpart.is_uniform:
        raise ValueError(f"{name}: the detector pixels are not evenly spaced")
    divergent = isinstance(geometry, tomo.DivergentBeamGeometry)
    if not (divergent or isinstance(geometry, tomo.ParallelBeamGeometry)):
        raise ValueError(f"{name}: not a parallel, fan or cone beam geometry")
    angles = np.asarray(geometry.angles, dtype=np.float64)
    mid = np.asarray(dpart.mid_pt, dtype=np.float64)
    cells = np.asarray(dpart.cell_sides, dtype=np.float64)
    ndim = geometry.ndim
    center = np.asarray(geometry.det_point_position(angles, mid if ndim == 3 else mid[0]))
    if ndim == 2:
        axes = np.asarray(geometry.det_axis(angles))[:, None, :]
    else:
        axes = np.asarray(geometry.det_axes(angles))
    steps = [axes[:, k] * cells[k] for k in range(ndim - 1)]  # u (cols), then v (rows)
    if divergent:
        first = np.asarray(geometry.src_position(angles))
    else:
        ray = -np.asarray(geometry.det_to_src(angles, mid if ndim == 3 else mid[0]))
        first = ray / np.linalg.norm(ray, axis=-1, keepdims=True)
        # ODL puts a parallel-beam detector one unit along the rays (det_pos_init); moving it
        # along the rays changes no line integral, and dip-uq keeps it through the origin
        center = center - np.sum(center * first, axis=-1, keepdims=True) * first
    vectors = np.concatenate([first, center, *steps], axis=1)
    det_shape = [int(n) for n in dpart.shape[::-1]]  # dip-uq: (cols,) or (rows, cols)
    kind = "cone" if divergent else "parallel"
    exact = {"type": "vector", "kind": kind, "det_shape": det_shape, "vectors": vectors.tolist()}
    parametric: dict[str, Any] = {
        "type": "parallel",
        "angles": angles.tolist(),
        "det_shape": det_shape,
        "det_spacing": cells[::-1].tolist(),
        "det_offset": mid[::-1].tolist(),
    }
    if divergent:
        parametric.update(
            type="fan" if ndim == 2 else "cone",
            src_origin=float(geometry.src_radius),
            origin_det=float(geometry.det_radius),
        )
    return exact, parametric
