"""Reconstruction volumes and scan geometries.

Conventions used everywhere in dip-uq
-------------------------------------
World coordinates ``(x, y, z)`` are physical lengths (millimetres by convention; any unit works
as long as it is used throughout). The rotation axis is ``z``. Angles are in radians.

A :class:`Volume` of shape ``(nz, ny, nx)`` (3D) or ``(ny, nx)`` (2D) puts the centre of voxel
``(i_z, i_y, i_x)`` at::

    x = center_x + (i_x - (nx - 1) / 2) * voxel_x      (likewise y with i_y, z with i_z)

so ``y`` grows with the row index (a 2D image is the ``z = 0`` slice of a 3D volume).

Every scan geometry reduces to one canonical form, per-projection vectors in ASTRA's column
layout, which is all the projector backends consume:

* 3D: 12 columns ``(s_x, s_y, s_z, d_x, d_y, d_z, u_x, u_y, u_z, v_x, v_y, v_z)``
* 2D: 6 columns ``(s_x, s_y, d_x, d_y, u_x, u_y)``

``s`` is the source position (cone/fan) or the ray direction (parallel), ``d`` the detector
centre, ``u`` the step from one detector column to the next, ``v`` from one row to the next.
Detector pixel ``(row j, column i)`` is centred at::

    d + (i - (n_cols - 1) / 2) * u + (j - (n_rows - 1) / 2) * v

The parametric geometries place, at angle ``theta``::

    source   S = src_origin * ( sin θ, -cos θ, 0)
    detector D = origin_det * (-sin θ,  cos θ, 0) + det_offset * (cos θ, sin θ, 0)
    u        = det_spacing_col * (cos θ, sin θ, 0)
    v        = det_spacing_row * (0, 0, 1)
    parallel rays travel along (-sin θ, cos θ, 0)

which is ASTRA's own convention for its ``parallel3d``/``cone`` geometries. Sinograms are laid
out ``(n_angles, n_cols)`` in 2D and ``(n_angles, n_rows, n_cols)`` in 3D.

>>> import numpy as np
>>> g = ParallelBeam(np.array([0.0]), det_shape=(5,), det_spacing=0.5)
>>> g.vectors.round(3).tolist()   # ray along +y, columns along +x, 0.5 apart
[[-0.0, 1.0, 0.0, 0.0, 0.5, 0.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ConeBeam",
    "FanBeam",
    "Geometry",
    "ParallelBeam",
    "VectorGeometry",
    "Volume",
    "geometry_from_astra",
    "geometry_from_dict",
    "geometry_from_odl",
]

_TOLERANCE = 1e-9  # relative tolerance of ``==`` on geometries


# --------------------------------------------------------------------------------------------
# validation helpers: user input is checked with ValueError (never assert)
# --------------------------------------------------------------------------------------------
def _positive_int_tuple(name: str, value: Any, lengths: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
        exact = all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a tuple of integers, got {value!r}") from None
    if len(out) not in lengths or not exact or any(v <= 0 for v in out):
        allowed = " or ".join(str(n) for n in lengths)
        raise ValueError(f"{name} must be {allowed} positive integers, got {value!r}")
    return out


def _float_tuple(name: str, value: Any, length: int, positive: bool) -> tuple[float, ...]:
    """``length`` finite floats (a scalar is repeated), all > 0 when ``positive``."""
    kind = "positive number" if positive else "finite number"
    values = [value] * length if np.isscalar(value) else list(value)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a {kind}, got {value!r}") from None
    valid = all(math.isfinite(v) and (v > 0 or not positive) for v in out)
    if len(out) != length or not valid:
        raise ValueError(f"{name} must be a {kind} or {length} of them, got {value!r}")
    return out


def _positive_float_tuple(name: str, value: Any, length: int) -> tuple[float, ...]:
    return _float_tuple(name, value, length, positive=True)


def _finite_float_tuple(name: str, value: Any, length: int) -> tuple[float, ...]:
    return _float_tuple(name, value, length, positive=False)


def _angles(value: Any) -> np.ndarray:
    try:
        angles = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"angles must be a 1D array of radians, got {value!r}") from None
    if angles.ndim != 1 or angles.size == 0:
        raise ValueError(f"angles must be a non-empty 1D array (radians), got shape {angles.shape}")
    if not np.all(np.isfinite(angles)):
        raise ValueError("angles contain NaN or Inf; pass finite angles in radians")
    return angles


# --------------------------------------------------------------------------------------------
# volume
# --------------------------------------------------------------------------------------------
class Volume:
    """A rectangular grid of voxels in physical space.

    Args:
        shape: ``(ny, nx)`` for a 2D image or ``(nz, ny, nx)`` for a 3D volume (voxels).
        voxel_size: edge length of one voxel (physical units), one number or one per axis in
            array order ``(z, y, x)`` / ``(y, x)``.
        center: position of the grid centre (physical units, array order); the origin by
            default.

    >>> Volume((4, 6), voxel_size=0.5).extent
    (2.0, 3.0)
    """

    def __init__(
        self,
        shape: Sequence[int],
        voxel_size: float | Sequence[float] = 1.0,
        center: float | Sequence[float] = 0.0,
    ) -> None:
        self.shape = _positive_int_tuple("Volume shape", shape, (2, 3))
        self.voxel_size = _positive_float_tuple("voxel_size", voxel_size, self.ndim)
        self.center = _finite_float_tuple("center", center, self.ndim)

    @property
    def ndim(self) -> int:
        """2 for an image, 3 for a volume."""
        return len(self.shape)

    @property
    def extent(self) -> tuple[float, ...]:
        """Physical side lengths in array order."""
        return tuple(n * s for n, s in zip(self.shape, self.voxel_size, strict=True))

    @property
    def voxel_volume(self) -> float:
        """Area (2D) or volume (3D) of one voxel, in physical units squared/cubed."""
        return float(np.prod(self.voxel_size))

    @property
    def is_isotropic(self) -> bool:
        """Whether all voxel edges have the same length."""
        return max(self.voxel_size) - min(self.voxel_size) <= _TOLERANCE * max(self.voxel_size)

    def coordinates(self) -> list[np.ndarray]:
        """Voxel-centre coordinates per axis (array order), each a 1D array in physical units."""
        return [
            c + (np.arange(n) - (n - 1) / 2) * s
            for n, s, c in zip(self.shape, self.voxel_size, self.center, strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; :func:`geometry_from_dict` restores it."""
        return {
            "type": "volume",
            "shape": list(self.shape),
            "voxel_size": list(self.voxel_size),
            "center": list(self.center),
        }

    def to_astra(self) -> dict[str, Any]:
        """The ASTRA volume geometry (``astra.create_vol_geom`` layout) of the same grid.

        In 2D the ``y`` window is mirrored, like the vectors of :meth:`Geometry.to_astra`.
        """
        shape3 = self.shape if self.ndim == 3 else (1, *self.shape)
        size3 = self.voxel_size if self.ndim == 3 else (1.0, *self.voxel_size)
        center3 = self.center if self.ndim == 3 else (0.0, -self.center[0], self.center[1])
        lo = [c - n * s / 2 for n, s, c in zip(shape3, size3, center3, strict=True)]
        hi = [c + n * s / 2 for n, s, c in zip(shape3, size3, center3, strict=True)]
        geom: dict[str, Any] = {
            "GridRowCount": shape3[1],
            "GridColCount": shape3[2],
            "option": {
                "WindowMinX": lo[2],
                "WindowMaxX": hi[2],
                "WindowMinY": lo[1],
                "WindowMaxY": hi[1],
            },
        }
        if self.ndim == 3:
            geom["GridSliceCount"] = shape3[0]
            geom["option"].update(WindowMinZ=lo[0], WindowMaxZ=hi[0])
        return geom

    def to_odl(self, dtype: str = "float32") -> Any:
        """The ODL space (``odl.uniform_discr``) of the same grid, axes ``(x, y[, z])``: pass
        it ``image.T`` (2D) or ``volume.transpose(2, 1, 0)`` (3D). Needs the extra ``odl``."""
        from .interop import odl_space

        return odl_space(self.to_dict(), dtype)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Volume):
            return NotImplemented
        return (
            self.shape == other.shape
            and np.allclose(self.voxel_size, other.voxel_size, rtol=_TOLERANCE, atol=0)
            and np.allclose(self.center, other.center, rtol=_TOLERANCE, atol=_TOLERANCE)
        )

    def __hash__(self) -> int:
        return hash(self.shape)

    def __repr__(self) -> str:
        size = self.voxel_size[0] if self.is_isotropic else self.voxel_size
        text = f"Volume(shape={self.shape}, voxel_size={size}"
        if any(self.center):
            text += f", center={self.center}"
        return text + ")"


# --------------------------------------------------------------------------------------------
# geometries
# --------------------------------------------------------------------------------------------
class Geometry:
    """Base class of scan geometries: the per-projection vectors plus the detector shape.

    Subclasses define :attr:`vectors`; everything else (subsets, equality, dictionaries,
    ASTRA export) is shared. ``kind`` is ``"parallel"`` or ``"cone"`` (a 2D cone is a fan).
    """

    kind: str
    det_shape: tuple[int, ...]

    @property
    def vectors(self) -> np.ndarray:
        """Per-projection vectors, shape ``(n_angles, 6)`` in 2D or ``(n_angles, 12)`` in 3D."""
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        """2 for slice geometries (1D detector), 3 for volume geometries (2D detector)."""
        return len(self.det_shape) + 1

    @property
    def n_angles(self) -> int:
        """Number of projections."""
        return int(self.vectors.shape[0])

    @property
    def sino_shape(self) -> tuple[int, ...]:
        """Shape of one sinogram: ``(n_angles, n_cols)`` or ``(n_angles, n_rows, n_cols)``."""
        return (self.n_angles, *self.det_shape)

    def frames(self) -> dict[str, np.ndarray]:
        """The vectors split into ``source`` (or ``ray``), ``center``, ``u`` and ``v``.

        Each entry has shape ``(n_angles, ndim)``; ``v`` is absent in 2D.
        """
        vec, d = self.vectors, self.ndim
        names = ["ray" if self.kind == "parallel" else "source", "center", "u", "v"][: d + 1]
        return {name: vec[:, k * d : (k + 1) * d] for k, name in enumerate(names)}

    def frames_3d(self) -> dict[str, np.ndarray]:
        """:meth:`frames` as 3D vectors: a 2D geometry lies in the ``z = 0`` plane and gets
        one detector row, ``v = (0, 0, 1)``. Each entry has shape ``(n_angles, 3)``."""
        frames = self.frames()
        if self.ndim == 3:
            return frames
        n = self.n_angles
        lifted = {k: np.concatenate([v, np.zeros((n, 1))], axis=1) for k, v in frames.items()}
        lifted["v"] = np.tile([0.0, 0.0, 1.0], (n, 1))
        return lifted

    def to_vector_geometry(self) -> VectorGeometry:
        """The same geometry as a :class:`VectorGeometry`."""
        return VectorGeometry(self.vectors, self.det_shape, kind=self.kind)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; :func:`geometry_from_dict` restores it."""
        raise NotImplementedError

    def to_astra(self) -> dict[str, Any]:
        """ASTRA projection geometry in vector form (``parallel3d_vec``, ``cone_vec``,
        ``parallel_vec`` or ``fanflat_vec``) with the same sinogram layout semantics.

        ASTRA's 2D volumes put row 0 at the largest ``y``; the 2D vectors are mirrored in ``y``
        here so that the same image array gives the same sinogram in ASTRA and in dip-uq.
        """
        vectors = self.vectors.copy()
        if self.ndim == 2:
            vectors[:, 1::2] *= -1
            name = "parallel_vec" if self.kind == "parallel" else "fanflat_vec"
            return {"type": name, "DetectorCount": self.det_shape[0], "Vectors": vectors}
        name = "parallel3d_vec" if self.kind == "parallel" else "cone_vec"
        return {
            "type": name,
            "DetectorRowCount": self.det_shape[0],
            "DetectorColCount": self.det_shape[1],
            "Vectors": vectors,
        }

    def to_odl(self) -> Any:
        """The same scan as an ODL geometry (the optional extra ``odl``): ``Parallel2dGeometry``
        / ``Parallel3dAxisGeometry``, ``FanBeamGeometry`` or ``ConeBeamGeometry``.

        ODL's world axes and angles are dip-uq's; its arrays are ordered differently: volumes
        ``(x, y[, z])`` (``Volume.to_odl`` gives the space) and 3D sinograms
        ``(angles, cols, rows)``, i.e. ``sinogram.transpose(0, 2, 1)`` (see
        :mod:`dip_uq.interop`). Angles must increase.

        Raises:
            ValueError: a :class:`VectorGeometry` (ODL has no per-projection geometry: use
                :meth:`to_astra`), or angles that do not increase.
            ModuleNotFoundError: ODL is not installed.
        """
        from .interop import odl_geometry

        description = self.to_dict()
        if description["type"] == "vector":
            raise ValueError(
                "ODL has no per-projection vector geometry; to_odl converts ParallelBeam, "
                "FanBeam and ConeBeam (use to_astra for vectors)"
            )
        return odl_geometry(description)

    def _subset(self, index: Any) -> Geometry:
        raise NotImplementedError

    def __getitem__(self, index: Any) -> Geometry:
        """The geometry of a subset of the projections (slice, integer array or boolean mask)."""
        if isinstance(index, (int, np.integer)):
            index = slice(index, index + 1 if index != -1 else None)
        subset = np.arange(self.n_angles)[index]
        if subset.size == 0:
            raise ValueError(f"geometry[{index!r}] selects no projection")
        return self._subset(subset)

    def __len__(self) -> int:
        return self.n_angles

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        if (self.kind, self.det_shape) != (other.kind, other.det_shape):
            return False
        a, b = self.vectors, other.vectors
        scale = max(float(np.abs(a).max(initial=0.0)), 1.0)
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=0, atol=_TOLERANCE * scale))

    def __hash__(self) -> int:
        return hash((self.kind, self.det_shape, self.n_angles))


def _unit_frames(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors ``(sin θ, -cos θ, 0)`` (towards the source) and ``(cos θ, sin θ, 0)``."""
    sin, cos, zero = np.sin(angles), np.cos(angles), np.zeros_like(angles)
    return np.stack([sin, -cos, zero], 1), np.stack([cos, sin, zero], 1)


def _detector_args(det_shape: Any, det_spacing: Any, det_offset: Any, dims: Sequence[int]):
    shape = _positive_int_tuple("det_shape", det_shape, dims)
    spacing = _positive_float_tuple("det_spacing", det_spacing, len(shape))
    if np.isscalar(det_offset) and len(shape) == 2:
        det_offset = (0.0, det_offset)  # a single offset shifts columns (centre of rotation)
    offset = _finite_float_tuple("det_offset", det_offset, len(shape))
    return shape, spacing, offset


def _compose(
    angles: np.ndarray,
    spacing: tuple[float, ...],
    offset: tuple[float, ...],
    src_origin: float | None,
    origin_det: float,
) -> np.ndarray:
    """Vectors of a circular scan (see the module docstring); 2D when ``spacing`` has one entry."""
    to_source, along_u = _unit_frames(angles)
    z = np.array([0.0, 0.0, 1.0])
    u = spacing[-1] * along_u
    center = -origin_det * to_source + offset[-1] * along_u
    if len(spacing) == 2:
        center = center + offset[0] * z
    first = -to_source if src_origin is None else src_origin * to_source
    parts = [first, center, u]
    if len(spacing) == 2:
        parts.append(np.broadcast_to(spacing[0] * z, u.shape))
        return np.concatenate(parts, axis=1)
    return np.concatenate([p[:, :2] for p in parts], axis=1)


class ParallelBeam(Geometry):
    """Parallel-beam scan: 2D with ``det_shape=(cols,)``, 3D with ``det_shape=(rows, cols)``.

    Args:
        angles: projection angles (radians), any spacing and order.
        det_shape: detector pixels ``(cols,)`` or ``(rows, cols)``.
        det_spacing: pixel pitch (physical units), one number or ``(row, col)``.
        det_offset: shift of the detector centre along the columns (a centre-of-rotation
            offset, physical units), or ``(row, col)`` shifts in 3D.
    """

    kind = "parallel"

    def __init__(
        self,
        angles: Any,
        det_shape: Sequence[int],
        det_spacing: float | Sequence[float] = 1.0,
        det_offset: float | Sequence[float] = 0.0,
    ) -> None:
        self.angles = _angles(angles)
        self.det_shape, self.det_spacing, self.det_offset = _detector_args(
            det_shape, det_spacing, det_offset, (1, 2)
        )
        self._vectors = _compose(self.angles, self.det_spacing, self.det_offset, None, 0.0)

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors

    def _subset(self, index: np.ndarray) -> ParallelBeam:
        return ParallelBeam(self.angles[index], self.det_shape, self.det_spacing, self.det_offset)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "parallel",
            "angles": self.angles.tolist(),
            "det_shape": list(self.det_shape),
            "det_spacing": list(self.det_spacing),
            "det_offset": list(self.det_offset),
        }

    def __repr__(self) -> str:
        return (
            f"ParallelBeam(angles=<{self.n_angles} angles in "
            f"[{self.angles.min():.4g}, {self.angles.max():.4g}] rad>, "
            f"det_shape={self.det_shape}, det_spacing={self.det_spacing}, "
            f"det_offset={self.det_offset})"
        )


class _DivergentBeam(Geometry):
    """Shared constructor of the circular fan- and cone-beam scans (flat detector)."""

    kind = "cone"
    _type: str
    _dims: tuple[int, ...]

    def __init__(
        self,
        angles: Any,
        det_shape: Sequence[int],
        det_spacing: float | Sequence[float],
        src_origin: float,
        origin_det: float,
        det_offset: float | Sequence[float] = 0.0,
    ) -> None:
        self.angles = _angles(angles)
        self.det_shape, self.det_spacing, self.det_offset = _detector_args(
            det_shape, det_spacing, det_offset, self._dims
        )
        (self.src_origin,) = _positive_float_tuple("src_origin", src_origin, 1)
        (self.origin_det,) = _finite_float_tuple("origin_det", origin_det, 1)
        if self.src_origin + self.origin_det <= 0:
            raise ValueError(
                "the detector must lie beyond the source: src_origin + origin_det must be "
                f"positive, got {self.src_origin} + {self.origin_det}"
            )
        self._vectors = _compose(
            self.angles, self.det_spacing, self.det_offset, self.src_origin, self.origin_det
        )

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors

    @property
    def magnification(self) -> float:
        """(source–detector distance) / (source–rotation-axis distance)."""
        return (self.src_origin + self.origin_det) / self.src_origin

    def _subset(self, index: np.ndarray) -> _DivergentBeam:
        return type(self)(
            self.angles[index],
            self.det_shape,
            self.det_spacing,
            self.src_origin,
            self.origin_det,
            self.det_offset,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self._type,
            "angles": self.angles.tolist(),
            "det_shape": list(self.det_shape),
            "det_spacing": list(self.det_spacing),
            "src_origin": self.src_origin,
            "origin_det": self.origin_det,
            "det_offset": list(self.det_offset),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(angles=<{self.n_angles} angles in "
            f"[{self.angles.min():.4g}, {self.angles.max():.4g}] rad>, "
            f"det_shape={self.det_shape}, det_spacing={self.det_spacing}, "
            f"src_origin={self.src_origin}, origin_det={self.origin_det}, "
            f"det_offset={self.det_offset})"
        )


class FanBeam(_DivergentBeam):
    """2D fan-beam scan with a flat detector (``det_shape=(cols,)``).

    Args:
        angles: source angles (radians).
        det_shape: ``(cols,)`` detector pixels.
        det_spacing: pixel pitch on the detector (physical units).
        src_origin: source to rotation-centre distance (physical units).
        origin_det: rotation-centre to detector distance (physical units).
        det_offset: shift of the detector centre along its columns (physical units).
    """

    _type = "fan"
    _dims = (1,)


class ConeBeam(_DivergentBeam):
    """3D circular cone-beam scan with a flat detector (``det_shape=(rows, cols)``).

    Arguments as for :class:`FanBeam`; ``det_spacing`` and ``det_offset`` may be given per
    detector axis ``(row, col)``.
    """

    _type = "cone"
    _dims = (2,)


class VectorGeometry(Geometry):
    """Arbitrary per-projection geometry given by ASTRA-layout vectors.

    Args:
        vectors: ``(n_angles, 12)`` with ``det_shape=(rows, cols)``, or ``(n_angles, 6)`` with
            ``det_shape=(cols,)``; columns as in the module docstring (physical units).
        det_shape: detector pixels.
        kind: ``"cone"`` (``"fan"`` is accepted in 2D) or ``"parallel"``.
    """

    def __init__(self, vectors: Any, det_shape: Sequence[int], kind: str = "cone") -> None:
        self.det_shape = _positive_int_tuple("det_shape", det_shape, (1, 2))
        kind = {"fan": "cone"}.get(kind, kind)
        if kind not in ("cone", "parallel"):
            raise ValueError(f"kind must be 'cone' or 'parallel', got {kind!r}")
        self.kind = kind
        vec = np.array(vectors, dtype=np.float64)
        columns = 4 * self.ndim - 2 if self.ndim == 2 else 12
        if vec.ndim != 2 or vec.shape[1] != columns or vec.shape[0] == 0:
            raise ValueError(
                f"vectors must have shape (n_angles, {columns}) for det_shape {self.det_shape}, "
                f"got {vec.shape}"
            )
        if not np.all(np.isfinite(vec)):
            raise ValueError("vectors contain NaN or Inf")
        self._vectors = vec
        frames = self.frames()
        if np.any(np.linalg.norm(frames["u"], axis=1) == 0) or (
            "v" in frames and np.any(np.linalg.norm(frames["v"], axis=1) == 0)
        ):
            raise ValueError("detector pixel vectors u and v must be non-zero")

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors

    def _subset(self, index: np.ndarray) -> VectorGeometry:
        return VectorGeometry(self._vectors[index], self.det_shape, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "vector",
            "kind": self.kind,
            "det_shape": list(self.det_shape),
            "vectors": self._vectors.tolist(),
        }

    def __repr__(self) -> str:
        return (
            f"VectorGeometry(vectors=<{self.n_angles}x{self._vectors.shape[1]}>, "
            f"det_shape={self.det_shape}, kind={self.kind!r})"
        )


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------
_FROM_DICT = {
    "parallel": lambda d: ParallelBeam(
        d["angles"], d["det_shape"], d.get("det_spacing", 1.0), d.get("det_offset", 0.0)
    ),
    "fan": lambda d: FanBeam(
        d["angles"],
        d["det_shape"],
        d["det_spacing"],
        d["src_origin"],
        d["origin_det"],
        d.get("det_offset", 0.0),
    ),
    "cone": lambda d: ConeBeam(
        d["angles"],
        d["det_shape"],
        d["det_spacing"],
        d["src_origin"],
        d["origin_det"],
        d.get("det_offset", 0.0),
    ),
    "vector": lambda d: VectorGeometry(d["vectors"], d["det_shape"], d.get("kind", "cone")),
    "volume": lambda d: Volume(d["shape"], d.get("voxel_size", 1.0), d.get("center", 0.0)),
}


def geometry_from_dict(description: dict[str, Any]) -> Geometry | Volume:
    """Rebuild a geometry or a :class:`Volume` from its :meth:`to_dict` description.

    >>> g = ParallelBeam([0.0, 1.0], det_shape=(8,))
    >>> geometry_from_dict(g.to_dict()) == g
    True
    """
    if not isinstance(description, dict) or "type" not in description:
        raise ValueError("a geometry description must be a dict with a 'type' entry")
    kind = description["type"]
    if kind not in _FROM_DICT:
        raise ValueError(f"unknown geometry type {kind!r}; known types: {', '.join(_FROM_DICT)}")
    try:
        return _FROM_DICT[kind](description)
    except KeyError as missing:
        raise ValueError(f"geometry description of type {kind!r} lacks {missing}") from None


def geometry_from_astra(proj_geom: dict[str, Any]) -> VectorGeometry:
    """Convert an ASTRA projection geometry dict (as made by ``astra.create_proj_geom``).

    Supports ``parallel``, ``fanflat``, ``parallel3d``, ``cone`` and their ``_vec`` forms.
    Lengths keep ASTRA's units. 2D geometries are mirrored in ``y`` (see
    :meth:`Geometry.to_astra`), so an image array gives the same sinogram in both libraries.
    """
    kind = proj_geom.get("type")
    angles = np.atleast_1d(np.asarray(proj_geom.get("ProjectionAngles", []), dtype=np.float64))
    if kind in ("parallel", "fanflat"):
        det = (int(proj_geom["DetectorCount"]),)
        spacing = (float(proj_geom["DetectorWidth"]),)
        src = float(proj_geom["DistanceOriginSource"]) if kind == "fanflat" else None
        dist = float(proj_geom["DistanceOriginDetector"]) if kind == "fanflat" else 0.0
        vectors = _compose(angles, spacing, (0.0,), src, dist)
    elif kind in ("parallel3d", "cone"):
        det = (int(proj_geom["DetectorRowCount"]), int(proj_geom["DetectorColCount"]))
        spacing = (float(proj_geom["DetectorSpacingY"]), float(proj_geom["DetectorSpacingX"]))
        src = float(proj_geom["DistanceOriginSource"]) if kind == "cone" else None
        dist = float(proj_geom["DistanceOriginDetector"]) if kind == "cone" else 0.0
        vectors = _compose(angles, spacing, (0.0, 0.0), src, dist)
    elif kind in ("parallel_vec", "fanflat_vec"):
        det = (int(proj_geom["DetectorCount"]),)
        vectors = np.array(proj_geom["Vectors"], dtype=np.float64)
    elif kind in ("parallel3d_vec", "cone_vec"):
        det = (int(proj_geom["DetectorRowCount"]), int(proj_geom["DetectorColCount"]))
        vectors = np.array(proj_geom["Vectors"], dtype=np.float64)
    else:
        raise ValueError(
            f"unsupported ASTRA geometry type {kind!r}; supported: parallel, fanflat, "
            "parallel3d, cone and their _vec forms"
        )
    if len(det) == 1:
        vectors[:, 1::2] *= -1  # ASTRA's 2D frame is mirrored in y (see Geometry.to_astra)
    parallel = kind.startswith("parallel")
    return VectorGeometry(vectors, det, kind="parallel" if parallel else "cone")


def geometry_from_odl(geometry: Any) -> Geometry:
    """A dip-uq geometry from an ODL one (parallel 2D/3D-axis, fan or cone beam with a flat
    detector; the optional extra ``odl``).

    The rays come from ODL's own geometry functions at every angle, so shifted, tilted or
    helical ODL geometries come out exactly, as a :class:`VectorGeometry`; a geometry with
    ODL's default axes comes out as the matching :class:`ParallelBeam`, :class:`FanBeam` or
    :class:`ConeBeam`. Lengths keep ODL's units; sinogram layouts as in :meth:`Geometry.to_odl`.

    Raises:
        ValueError: Euler-angle geometries, curved or unevenly spaced detectors.
        ModuleNotFoundError: ODL is not installed.
    """
    from .interop import odl_description

    exact, parametric = odl_description(geometry)
    vectors = geometry_from_dict(exact)
    candidate = geometry_from_dict(parametric)
    return candidate if candidate == vectors else vectors
