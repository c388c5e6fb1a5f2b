"""The :class:`Scan` record, the conversion of raw intensities to line integrals, the default
reconstruction grid and the human-readable summary.

Array layout (as everywhere in dip-uq): sinograms ``(n_angles, n_cols)`` in 2D and
``(n_angles, n_rows, n_cols)`` in 3D, float32 line integrals ``y = ∫ μ dl`` (dimensionless;
lengths in the geometry's unit, :attr:`Scan.units`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Geometry, Volume

__all__ = ["Scan", "default_volume", "describe", "flat_dark_correct"]

# Bad flat-field pixels (flat - dark <= 0) up to this fraction of the detector are filled in
# from their neighbours along the row; more than that is an error.
_MAX_BAD_FLAT_FRACTION = 0.01


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
            or ``"array"`` for a scan made in memory.
        path: the file or folder it came from (None for a scan made in memory).
        angles_deg: projection angles in degrees for display, ``(n_angles,)``; derived from
            the geometry when not given.
        pixel_size: detector pixel pitch as recorded in the file, ``(row, col)`` or ``(col,)``
            in :attr:`units`; None when the file has none (the geometry then counts in pixels).
        distances: ``"source_origin"`` and ``"origin_detector"`` (fan/cone beam, or the
            sample-detector distance a parallel-beam file records), in :attr:`units`.
        units: the length unit of the geometry: ``"mm"``, or ``"px"`` (detector pixels) when
            the file gives no pixel size. Reconstructions are then in ``1/units``.
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


# --------------------------------------------------------------------------------------------
# checks shared by the readers
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
# intensities to line integrals
# --------------------------------------------------------------------------------------------
def flat_dark_correct(
    projections: np.ndarray,
    flats: np.ndarray | None,
    darks: np.ndarray | None,
    where: str,
) -> tuple[np.ndarray, list[str]]:
    """Line integrals ``-log((p - dark) / (flat - dark))`` from raw frames.

    Args:
        projections: raw intensities ``(n_angles, rows, cols)`` (any numeric dtype).
        flats: flat fields (beam, no sample) ``(n_flats, rows, cols)``; their mean is used.
        darks: dark frames (no beam) ``(n_darks, rows, cols)``; their mean is used; None or
            empty: a dark level of 0.
        where: a name for the messages (file and dataset).

    Returns:
        ``(line_integrals, notes)``: float32 ``(n_angles, rows, cols)`` and what was done.

    Transmissions ``(p - dark) / (flat - dark) <= 0`` (noise at the dark level) are clipped to
    the smallest positive transmission in the data before the log, so they become the largest
    finite line integral; a note gives how many. Detector pixels whose flat does not exceed the
    dark (``flat - dark <= 0``: dead pixels, empty flats) are filled in along each row from the
    nearest good columns when they are at most 1% of the detector; more is an error.

    Raises:
        ValueError: NaN/Inf in the frames, flats/darks of another frame shape, flat - dark <= 0
            on more than 1% of the detector, or no positive transmission at all.
    """
    notes: list[str] = []
    for array, what in ((projections, "projections"), (flats, "flats"), (darks, "darks")):
        if array is not None:
            check_finite(np.asarray(array), f"{where}: the {what}")
    if flats is None or len(flats) == 0:
        raise ValueError(f"{where}: no flat fields, so intensities cannot become line integrals")
    frame = projections.shape[1:]
    for array, what in ((flats, "flats"), (darks, "darks")):
        if array is not None and len(array) and array.shape[1:] != frame:
            raise ValueError(
                f"{where}: the {what} have frames of shape {array.shape[1:]} but the projections "
                f"{frame}; they do not belong to the same detector region"
            )
    flat = np.mean(flats, axis=0, dtype=np.float64)
    dark = np.mean(darks, axis=0, dtype=np.float64) if darks is not None and len(darks) else 0.0
    gain = flat - dark
    bad = ~(gain > 0)
    if bad.all():
        raise ValueError(
            f"{where}: flat minus dark is <= 0 at every detector pixel (mean flat "
            f"{float(np.mean(flat)):.4g}, mean dark {float(np.mean(dark)):.4g}); the flat fields "
            "are empty or flats and darks are swapped: check image_key / data_white"
        )
    if bad.mean() > _MAX_BAD_FLAT_FRACTION:
        rows, cols = np.nonzero(bad.reshape(-1, bad.shape[-1]))
        raise ValueError(
            f"{where}: flat minus dark is <= 0 at {int(bad.sum())} of {bad.size} detector pixels "
            f"(rows {rows.min()}-{rows.max()}, columns {cols.min()}-{cols.max()}); the flat "
            "fields are unusable there: use other flats or cut that region out of the files"
        )
    gain = np.where(bad, 1.0, gain).astype(np.float32)
    trans = (np.asarray(projections, dtype=np.float32) - np.float32(dark)) / gain
    trans[:, bad] = 1.0  # filled in below
    nonpositive = trans <= 0
    n_clip = int(nonpositive.sum())
    if n_clip == trans.size - int(bad.sum()) * len(trans):
        raise ValueError(
            f"{where}: every projection value is at or below the dark level, so no line "
            "integral can be formed; the projections are empty or the darks are wrong"
        )
    if n_clip:
        floor = float(trans[~nonpositive].min())
        trans[nonpositive] = floor
        notes.append(
            f"clipped {n_clip} non-positive transmissions ({100 * n_clip / trans.size:.3g}% of "
            f"the data, p <= dark) to the smallest positive one ({floor:.3g}) before -log"
        )
    line = -np.log(trans)
    if bad.any():
        _fill_bad_pixels(line, bad)
        notes.append(
            f"{int(bad.sum())} detector pixels with flat - dark <= 0 were filled in from the "
            "neighbouring columns"
        )
    n_flats = len(flats)
    n_darks = 0 if darks is None else len(darks)
    notes.insert(
        0,
        f"line integrals -log((p - dark) / (flat - dark)) with the mean of {n_flats} flats and "
        f"{n_darks} darks" + ("" if n_darks else " (no darks: dark level 0)"),
    )
    return line.astype(np.float32, copy=False), notes


def _fill_bad_pixels(line: np.ndarray, bad: np.ndarray) -> None:
    """Replace ``line[:, r, c]`` at ``bad[r, c]`` by linear interpolation along the row."""
    bad2 = bad.reshape(-1, bad.shape[-1])
    view = line.reshape(line.shape[0], -1, bad.shape[-1])
    cols = np.arange(bad.shape[-1])
    for r in np.nonzero(bad2.any(axis=1))[0]:
        good = np.nonzero(~bad2[r])[0]
        if good.size == 0:
            view[:, r, :] = 0.0
            continue
        for c in np.nonzero(bad2[r])[0]:
            right = np.searchsorted(good, c)
            lo = good[max(right - 1, 0)]
            hi = good[min(right, good.size - 1)]
            w = 0.0 if hi == lo else (cols[c] - lo) / (hi - lo)
            view[:, r, c] = (1 - w) * view[:, r, lo] + w * view[:, r, hi]


def transmission_to_line_integrals(data: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """``-log(data)`` for frames that are already normalised transmissions (flat = 1, dark = 0)."""
    check_finite(data, where)
    ones = np.ones((1, *data.shape[1:]), dtype=np.float32)
    line, notes = flat_dark_correct(data, ones, None, where)
    notes[0] = "line integrals -log(p) of frames that are already normalised transmissions"
    return line, notes


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


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return f"{value:.6g}"


def axis_column(geometry: Geometry) -> float | None:
    """Detector column (0-based, fractional) where the rotation axis projects, for a parallel
    beam geometry (median over projections); None for fan/cone beam."""
    if geometry.kind != "parallel":
        return None
    f = geometry.frames_3d()
    u = f["u"]
    t = -np.sum(f["center"] * u, 1) / np.sum(u * u, 1)  # origin's coordinate along u, in pixels
    return float(np.median(t) + (geometry.det_shape[-1] - 1) / 2)


def describe(scan: Scan) -> str:
    """A multi-line human summary of a scan (what ``dip-uq info`` prints)."""
    g = scan.geometry
    sino = scan.sinogram
    layout = "(angles, cols)" if g.ndim == 2 else "(angles, rows, cols)"
    lines = [f"{scan.path if scan.path is not None else 'scan'}: {scan.source_format}"]
    lines.append(
        f"  sinogram   {sino.dtype} {sino.shape} {layout}, line integrals in "
        f"[{_fmt(float(sino.min()))}, {_fmt(float(sino.max()))}], mean {_fmt(float(sino.mean()))}"
    )
    a = scan.angles_deg
    step = np.diff(a)
    step_text = (
        f", step {_fmt(float(np.median(step)))}°"
        if step.size and np.allclose(step, np.median(step), rtol=0.05, atol=1e-6)
        else (", irregular steps" if step.size else "")
    )
    lines.append(
        f"  angles     {a.size} from {_fmt(float(a[0]))}° to {_fmt(float(a[-1]))}° (span "
        f"{_fmt(float(a.max() - a.min()))}°{step_text})"
    )
    if scan.n_flats or scan.n_darks:
        lines.append(
            f"  flats      {scan.n_flats} flat fields, {scan.n_darks} dark frames (means used)"
        )
    else:
        lines.append("  flats      none (the file holds line integrals)")
    lines.append(f"  geometry   {g!r}")
    det = " x ".join(str(n) for n in g.det_shape)
    frames = g.frames()
    pitch = [float(np.median(np.linalg.norm(frames["u"], axis=1)))]
    if "v" in frames:
        pitch.insert(0, float(np.median(np.linalg.norm(frames["v"], axis=1))))
    pixel = " x ".join(_fmt(p) for p in pitch) + f" {scan.units}"
    if scan.units == "px":
        pixel += " (the file gives no pixel size: lengths are in detector pixels)"
    lines.append(f"  detector   {det} pixels, pitch {pixel}")
    column = axis_column(g)
    if column is not None:
        centre = (g.det_shape[-1] - 1) / 2
        lines.append(
            f"  rotation   axis at detector column {column:.2f} (detector centre {centre:.1f}, "
            f"offset {column - centre:+.2f} px)"
        )
    if scan.distances:
        parts = [f"{k.replace('_', '-')} {_fmt(v)} {scan.units}" for k, v in scan.distances.items()]
        if hasattr(g, "magnification"):
            parts.append(f"magnification {_fmt(g.magnification)}")
        lines.append("  distances  " + ", ".join(parts))
    lines.append(
        f"  units      lengths in {scan.units}, angles in radians inside the geometry; "
        f"reconstructions in 1/{scan.units}"
    )
    volume = default_volume(scan)
    lines.append(f"  grid       default reconstruction grid {volume!r}")
    if scan.truth is not None:
        lines.append(f"  truth      ground truth {scan.truth.dtype} {scan.truth.shape}")
    for key, value in scan.metadata.items():
        lines.append(f"  {key:<10} {value}")
    if scan.notes:
        lines.append("  notes")
        lines.extend(f"    - {note}" for note in scan.notes)
    return "\n".join(lines)
