"""The :class:`Scan` record — line integrals with their geometry — and the default
reconstruction grid that covers a scan's field of view.

Array layout (as everywhere in dip-uq): sinograms ``(n_angles, n_cols)`` in 2D and
``(n_angles, n_rows, n_cols)`` in 3D, float32 line integrals ``y = ∫ μ dl`` (dimensionless;
lengths in the geometry's unit, :attr:`Scan.units`). Reading files into scans is
:mod:`dip_uq.io`; simulated scans are :func:`dip_uq.simulation.simulate_scan`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import Geometry, Volume

__all__ = ["CPU_GRID_SIDE", "Scan", "default_volume", "field_of_view", "grid_for_device"]


# --------------------------------------------------------------------------------------------
# the record
# --------------------------------------------------------------------------------------------
@dataclass
class Scan:
    """A tomographic scan as line integrals with its geometry and what the reader learned.

    Attributes:
        sinogram: float32 line integrals, ``(n_angles, n_cols)`` (2D) or
            ``(n_angles, n_rows, n_cols)`` (3D), equal to ``geometry.sino_shape``.
        geometry: the scan geometry (lengths in :attr:`units`, angles in radians).
        source_format: what was read, e.g. ``"nxtomo"``, ``"diamond-nexus"``,
            ``"aps-dxchange"``, ``"htc2022-mat"``, ``"mat"``, ``"tiff"``, ``"npy"``, ``"npz"``,
            ``"mrc"``, ``"xradia"``, or ``"array"`` for a scan made in memory.
        path: the file or folder it came from (None for a scan made in memory).
        angles_deg: projection angles in degrees for display, ``(n_angles,)``; derived from
            the geometry when not given.
        pixel_size: detector pixel pitch as recorded in the file, ``(row, col)`` or ``(col,)``
            in :attr:`units`; None when the file has none (the geometry then counts in pixels).
        distances: ``"source_origin"`` and ``"origin_detector"`` (fan/cone beam, or the
            sample-detector distance a parallel-beam file records), in :attr:`units`.
        units: the length unit of the geometry: ``"mm"``, ``"nm"`` (electron tomography), or
            ``"px"`` (detector pixels) when the file gives no pixel size. Reconstructions are
            then in ``1/units``.
        n_flats: number of flat-field frames that went into the line integrals (0: none).
        n_darks: number of dark frames that went into the line integrals (0: none).
        notes: what the reader and the preprocessing found and did, one sentence each.
        truth: a ground-truth image/volume stored with the scan (simulated scans), else None.
        volume: the reconstruction grid stored with the scan (the grid of ``truth``), else None.
        metadata: anything else read from the file (sample name, scanner, ...).
    """

    sinogram: np.ndarray
    geometry: Geometry
    source_format: str = "array"
    path: Path | None = None
    angles_deg: np.ndarray | None = None
    pixel_size: tuple[float, ...] | None = None
    distances: dict[str, float] = field(default_factory=dict)
    units: str = "mm"
    n_flats: int = 0
    n_darks: int = 0
    notes: list[str] = field(default_factory=list)
    truth: np.ndarray | None = None
    volume: Volume | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, Geometry):
            raise ValueError(f"geometry must be a dip_uq Geometry, got {type(self.geometry)}")
        sino = np.asarray(self.sinogram)
        if not np.issubdtype(sino.dtype, np.floating):
            raise ValueError(
                f"the sinogram must hold floating-point line integrals, got {sino.dtype}"
            )
        self.sinogram = np.ascontiguousarray(sino, dtype=np.float32)
        check_matches_geometry(self.sinogram.shape, self.geometry, "the sinogram")
        check_finite(self.sinogram, "the sinogram")
        if self.angles_deg is None:
            self.angles_deg = angles_deg(self.geometry)
        self.angles_deg = np.asarray(self.angles_deg, dtype=np.float64).reshape(-1)
        if self.angles_deg.size != self.geometry.n_angles:
            raise ValueError(
                f"angles_deg has {self.angles_deg.size} entries for {self.geometry.n_angles} "
                "projections"
            )
        if self.path is not None:
            self.path = Path(self.path)

    @property
    def ndim(self) -> int:
        """2 for a slice scan (sinogram ``(angles, cols)``), 3 for a volume scan."""
        return self.geometry.ndim

    @property
    def n_angles(self) -> int:
        """Number of projections."""
        return self.geometry.n_angles

    @property
    def name(self) -> str:
        """The file name, or ``"scan"`` for a scan made in memory."""
        return self.path.name if self.path is not None else "scan"

    def replace(self, **changes: Any) -> Scan:
        """A copy with some fields changed (``notes`` and ``distances`` are copied, not shared)."""
        changes.setdefault("notes", list(self.notes))
        changes.setdefault("distances", dict(self.distances))
        changes.setdefault("metadata", dict(self.metadata))
        return dataclasses.replace(self, **changes)

    def projections(self, index: Any, **changes: Any) -> Scan:
        """A copy with the projections ``index`` selects (a slice or integer indices along the
        angle axis) in ``sinogram``, ``geometry`` and ``angles_deg`` alike, and ``changes``
        as in :meth:`replace`."""
        return self.replace(
            sinogram=self.sinogram[index],
            geometry=self.geometry[index],
            angles_deg=self.angles_deg[index],
            **changes,
        )


# --------------------------------------------------------------------------------------------
# checks of the arrays a scan holds (the readers use them too)
# --------------------------------------------------------------------------------------------
def check_matches_geometry(shape: tuple[int, ...], geometry: Geometry, what: str) -> None:
    """Raise ValueError unless ``shape`` equals ``geometry.sino_shape``."""
    if tuple(shape) != geometry.sino_shape:
        layout = "(angles, cols)" if geometry.ndim == 2 else "(angles, rows, cols)"
        raise ValueError(
            f"{what} has shape {tuple(shape)} but the geometry expects {layout} = "
            f"{geometry.sino_shape}; check the geometry's angles and det_shape"
        )


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise ValueError naming how many NaN/Inf values ``array`` holds and where the first is."""
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            n_nan = int(np.isnan(array).sum())
            raise ValueError(
                f"{what} holds {n_nan} NaN and {int(bad.sum()) - n_nan} Inf values (first at "
                f"index {first}); the file is damaged or was written with missing data"
            )


def angles_deg(geometry: Geometry) -> np.ndarray:
    """Projection angles in degrees: the parametric angles, or for a vector geometry the
    angle ``θ`` of the source (``S ∝ (sin θ, -cos θ)``) or ray (``r = (-sin θ, cos θ)``)
    direction about the ``z`` axis, unwrapped."""
    if hasattr(geometry, "angles"):
        return np.rad2deg(np.asarray(geometry.angles, dtype=np.float64))
    first = next(iter(geometry.frames().values()))
    if geometry.kind == "parallel":
        theta = np.arctan2(-first[:, 0], first[:, 1])
    else:
        theta = np.arctan2(first[:, 0], -first[:, 1])
    return np.rad2deg(np.unwrap(theta))


# --------------------------------------------------------------------------------------------
# reconstruction grid
# --------------------------------------------------------------------------------------------
def field_of_view(geometry: Geometry) -> tuple[float, tuple[float, float] | None, float]:
    """Radius (about the ``z`` axis) and ``z`` range seen by the detector, and the pixel pitch
    at the rotation axis, in the geometry's length unit.

    The radius is the largest distance from the ``z`` axis of the rays through the two outer
    column edges of the detector (median over projections); for parallel beam with no offset
    it is half the detector width, for fan/cone beam about half the width over the
    magnification. The ``z`` range (3D only) is where the rays through the top and bottom row
    edges pass closest to the axis. Returns ``(radius, (z_min, z_max) or None, pitch)``.
    """
    f = geometry.frames_3d()
    first = f["ray"] if geometry.kind == "parallel" else f["source"]
    n_cols = geometry.det_shape[-1]
    n_rows = geometry.det_shape[0] if geometry.ndim == 3 else 1
    half_u = n_cols / 2 * f["u"]
    half_v = n_rows / 2 * f["v"]
    radii, z_values = [], []
    for sign_u in (-1.0, 1.0):
        for sign_v in (-1.0, 1.0):
            edge = f["center"] + sign_u * half_u + sign_v * half_v
            if geometry.kind == "parallel":
                direction, start = first, edge
            else:
                direction, start = edge - first, first
            dxy = direction[:, :2]
            t = -np.sum(start[:, :2] * dxy, 1) / np.maximum(np.sum(dxy * dxy, 1), 1e-30)
            closest = start + t[:, None] * direction
            radii.append(np.linalg.norm(closest[:, :2], axis=1))
            z_values.append(closest[:, 2])
    radius = float(np.median(np.max(radii, axis=0)))
    pitch = float(np.median(np.linalg.norm(f["u"], axis=1)))
    if geometry.kind != "parallel":
        d_sd = np.linalg.norm((f["center"] - first)[:, :2], axis=1)
        d_so = np.linalg.norm(first[:, :2], axis=1)
        pitch *= float(np.median(d_so / np.maximum(d_sd, 1e-30)))
    if geometry.ndim == 2:
        return radius, None, pitch
    z = np.median(np.stack(z_values), axis=1)
    return radius, (float(z.min()), float(z.max())), pitch


def default_volume(
    scan: Scan | Geometry,
    size: int | tuple[int, ...] | None = None,
    voxel_size: float | None = None,
) -> Volume:
    """A reconstruction grid that covers the scan's field of view, centred on the rotation axis.

    Args:
        scan: a :class:`Scan` (its stored :attr:`Scan.volume` is returned when neither
            ``size`` nor ``voxel_size`` is given) or a geometry.
        size: voxels per side in ``x`` and ``y`` (one number), or the full shape ``(ny, nx)`` /
            ``(nz, ny, nx)``; the voxel size is then chosen so the grid spans the field of view.
        voxel_size: voxel edge (the geometry's length unit); the default is the detector pixel
            pitch at the rotation axis (the pitch over the magnification for fan/cone beam).

    Returns:
        A square (2D) or square-based (3D) :class:`Volume` of side ``2 r`` where ``r`` is the
        radius seen by the detector (see :func:`field_of_view`): for parallel beam the detector
        width (plus twice any centre-of-rotation offset), for fan/cone beam about the width
        over the magnification. In 3D the height spans the rows' ``z`` range at the axis.
        Physical units as the geometry's.
    """
    if isinstance(scan, Scan):
        if size is None and voxel_size is None and scan.volume is not None:
            return scan.volume
        geometry = scan.geometry
    else:
        geometry = scan
    radius, z_range, pitch = field_of_view(geometry)
    width = 2 * radius
    height = None if z_range is None else z_range[1] - z_range[0]
    if size is not None:
        sizes = (int(size),) if np.isscalar(size) else tuple(int(s) for s in size)
        if any(s <= 0 for s in sizes) or len(sizes) not in (1, geometry.ndim):
            raise ValueError(
                f"size must be a positive number or {geometry.ndim} of them, got {size!r}"
            )
        side = sizes[-1]
        voxel = float(voxel_size) if voxel_size is not None else width / side
        if geometry.ndim == 2:
            shape: tuple[int, ...] = (sizes[-2] if len(sizes) == 2 else side, side)
        else:
            nz = sizes[0] if len(sizes) == 3 else max(1, math.ceil(height / voxel - 1e-6))
            shape = (nz, sizes[-2] if len(sizes) == 3 else side, side)
    else:
        voxel = float(voxel_size) if voxel_size is not None else pitch
        if not (math.isfinite(voxel) and voxel > 0):
            raise ValueError(f"voxel_size must be a positive number, got {voxel_size!r}")
        side = max(1, math.ceil(width / voxel - 1e-6))
        if geometry.ndim == 2:
            shape = (side, side)
        else:
            shape = (max(1, math.ceil(height / voxel - 1e-6)), side, side)
    center = 0.0 if z_range is None else (0.5 * (z_range[0] + z_range[1]), 0.0, 0.0)
    return Volume(shape, voxel_size=voxel, center=center)


# the largest default grid side on a CPU, by dimension: a DIP step costs in proportion to the
# voxels, and a finer default grid than these takes hours there (docs/performance.md)
CPU_GRID_SIDE = {2: 128, 3: 32}


def grid_for_device(scan: Scan, device: str | Any, dip: bool = True) -> tuple[Volume, str]:
    """The default reconstruction grid of ``scan`` on ``device``, and one line that says what
    was chosen and why.

    The scan's stored :attr:`Scan.volume` if it has one; else :func:`default_volume` (the
    detector's resolution at the axis), except for a ``dip`` on a CPU where that grid's side
    exceeds :data:`CPU_GRID_SIDE`: there the grid keeps the field of view at that many voxels
    per side (coarser voxels). Give a ``volume`` (``--size``, ``--voxel-size``) to choose
    another.
    """
    if scan.volume is not None:
        volume = scan.volume
        return volume, f"grid: {_shape(volume)} voxels, stored with the scan"
    full = default_volume(scan)
    cap = CPU_GRID_SIDE[scan.geometry.ndim]
    on_cpu = getattr(device, "type", str(device)).startswith("cpu")
    if not (dip and on_cpu) or max(full.shape[-2:]) <= cap:
        return full, (
            f"grid: {_shape(full)} voxels of {_voxel(full)} {scan.units}, the detector's "
            "resolution at the rotation axis"
        )
    coarse = default_volume(scan, size=cap)
    return coarse, (
        f"grid: {_shape(coarse)} voxels of {_voxel(coarse)} {scan.units}: the detector's "
        f"resolution would make {_shape(full)}, where the DIP takes hours on a CPU (choose with "
        "--size or --voxel-size; a GPU takes the full resolution)"
    )


def _shape(volume: Volume) -> str:
    return "×".join(map(str, volume.shape))


def _voxel(volume: Volume) -> str:
    return f"{float(np.max(volume.voxel_size)):.3g}"
