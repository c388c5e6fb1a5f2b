"""Readers of real scan files, dispatched on the file's content.

=================  ===========================================================================
format             what is read
=================  ===========================================================================
``nxtomo``         NeXus HDF5: NXtomo (``/entry/instrument/detector/data``, ``image_key``,
                   ``/entry/sample/rotation_angle``) and the Diamond layout (frames found via
                   ``NX_class=NXdetector`` / ``NXdata@signal``, external links followed),
                   and the NXtomo files :func:`~dip_uq.io.write_nxtomo` writes
``dxchange``       APS Data Exchange HDF5: ``/exchange/data``, ``data_white``, ``data_dark``,
                   ``theta`` (degrees)
``mat``            MATLAB .mat v5 (scipy) and v7.3 (HDF5, arrays transposed); the HTC2022
                   ``CtData*`` struct (sinogram + parameters) becomes a fan-beam scan
``tiff``           a folder of TIFF files (one projection each, sorted by name) or a
                   multi-page TIFF; needs a geometry
``npy`` / ``npz``  NumPy arrays; need a geometry (an ``.npz`` may carry one as JSON)
=================  ===========================================================================

Frames of raw intensities become line integrals with
:func:`~dip_uq.io.scan.flat_dark_correct`; data already stored as line integrals (HTC2022,
NumPy, dip-uq's own NXtomo files) pass through. Every reader returns a :class:`Scan` whose
``notes`` say which datasets were used and what was done to them.

Angles in files are taken as the geometry's ``θ`` directly (degrees converted to radians): a
scanner that turns the other way gives a mirror-image reconstruction, nothing worse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from struct import error as struct_error
from typing import Any

import numpy as np

from ..geometry import (
    FanBeam,
    Geometry,
    ParallelBeam,
    Volume,
    geometry_from_astra,
    geometry_from_dict,
)
from .preprocess import index_range, select_rows, slice_geometry, window_geometry
from .scan import (
    Scan,
    check_finite,
    check_matches_geometry,
    flat_dark_correct,
    transmission_to_line_integrals,
)

__all__ = ["FORMATS", "detect_format", "load_geometry", "read_scan"]

FORMATS = ("nxtomo", "dxchange", "mat", "tiff", "npy", "npz")
_ALIASES = {"nexus": "nxtomo", "nx": "nxtomo", "h5": None, "hdf5": None, "tif": "tiff"}

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_TIFF_SUFFIXES = (".tif", ".tiff")
_GEOMETRY_HINT = (
    "pass --geometry geom.json (the to_dict format of dip_uq.geometry) or an ASTRA vector file"
)
_LENGTH_TO_MM = {
    "m": 1e3,
    "cm": 10.0,
    "mm": 1.0,
    "um": 1e-3,
    "µm": 1e-3,
    "μm": 1e-3,
    "micron": 1e-3,
    "microns": 1e-3,
    "nm": 1e-6,
}


# --------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------
def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def detect_format(path: str | Path) -> str:
    """The format of a scan file or folder, from its content (one of :data:`FORMATS`).

    HDF5 files are told apart by their datasets (Data Exchange, MATLAB 7.3, NeXus); a folder is
    a TIFF stack. Raises FileNotFoundError when nothing is there and ValueError for unknown or
    unreadable content.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        if not _tiff_files(path):
            raise ValueError(
                f"{path}: the folder holds no .tif/.tiff files; a folder is read as a TIFF "
                "stack (one projection per file)"
            )
        return "tiff"
    head = _head(path)
    if not head:
        raise ValueError(f"{path.name}: the file is empty")
    if head.startswith(b"MATLAB 7.3") or _is_hdf5(head):
        return _detect_hdf5(path)
    if head.startswith(b"MATLAB") or path.suffix.lower() == ".mat":
        return "mat"
    if head.startswith(_TIFF_MAGICS):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    raise ValueError(
        f"{path.name}: unknown scan format (first bytes {head[:8]!r}); dip-uq reads NeXus/NXtomo "
        "and Data Exchange HDF5, MATLAB .mat, TIFF stacks and .npy/.npz"
    )


def _is_hdf5(head: bytes) -> bool:
    """Whether the HDF5 signature is at offset 0 or after a user block (512, 1024, 2048)."""
    return any(head[k : k + 8] == _HDF5_MAGIC for k in (0, 512, 1024, 2048))


def _open_h5(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        reason = str(error).split("(")[-1].rstrip(")") if "(" in str(error) else str(error)
        raise ValueError(
            f"{path.name}: cannot read the HDF5 file ({reason}); it is truncated or damaged"
        ) from None


def _detect_hdf5(path: Path) -> str:
    if _head(path, 16).startswith(b"MATLAB 7.3"):
        return "mat"
    with _open_h5(path) as f:
        if "exchange" in f and "data" in f["exchange"]:
            return "dxchange"
        for key in f:
            obj = f.get(key, getlink=False)
            if obj is not None and "MATLAB_class" in obj.attrs:
                return "mat"
        if any(_nx_class(f.get(k)) == "NXentry" for k in f) or "entry" in f:
            return "nxtomo"
    raise ValueError(
        f"{path.name}: an HDF5 file with neither a NeXus entry nor /exchange/data; "
        "dip-uq reads NXtomo/NeXus and Data Exchange layouts"
    )


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def read_scan(
    path: str | Path,
    *,
    geometry: Geometry | dict | str | Path | None = None,
    format: str | None = None,
    rows: int | slice | tuple[int, int] | None = None,
    flats: str | Path | np.ndarray | None = None,
    darks: str | Path | np.ndarray | None = None,
    geometry_kind: str | None = None,
) -> Scan:
    """Read a scan file (or a folder of TIFFs) as line integrals with its geometry.

    Args:
        path: the file or folder.
        geometry: needed for TIFF and NumPy data (and generic .mat arrays); overrides the
            file's own for the others. A :class:`Geometry`, a ``to_dict`` dictionary, a JSON
            file of one, or an ASTRA vector text file (12 columns in 3D, 6 in 2D, one line per
            projection, ASTRA's conventions; see :func:`load_geometry`).
        format: one of :data:`FORMATS` to skip detection (``"nexus"`` is an alias of
            ``"nxtomo"``).
        rows: detector rows to keep (an index, a ``slice`` or ``(start, stop)``); HDF5 frames
            are read only there. One index of a parallel-beam scan gives a 2D scan.
        flats, darks: flat-field and dark frames for raw TIFF/NumPy projections (an array
            ``(n, rows, cols)`` or a file/folder readable as one); the projections are then
            converted with ``-log((p - dark) / (flat - dark))``.
        geometry_kind: ``"parallel"`` or ``"cone"`` for an ASTRA vector file (inferred from
            the vectors when not given).

    Returns:
        A :class:`Scan` (sinogram float32 ``(angles, cols)`` or ``(angles, rows, cols)``).

    Raises:
        FileNotFoundError: the path (or the geometry file) does not exist.
        ValueError: unknown, truncated or damaged file; missing datasets; a geometry that does
            not fit the data; NaN/Inf in the data; unusable flats. Messages are one line and
            say what to do.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if format is not None:
        key = str(format).lower()
        key = _ALIASES.get(key, key)
        if key is None:
            key = _detect_hdf5(path)
        if key not in FORMATS:
            raise ValueError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    else:
        key = detect_format(path)
    options = {
        "geometry": geometry,
        "rows": rows,
        "flats": flats,
        "darks": darks,
        "geometry_kind": geometry_kind,
    }
    reader = {
        "nxtomo": _read_nexus,
        "dxchange": _read_dxchange,
        "mat": _read_mat,
        "tiff": _read_tiff,
        "npy": _read_npy,
        "npz": _read_npz,
    }[key]
    try:
        return reader(path, **options)
    except FileNotFoundError:
        raise
    except (OSError, KeyError, EOFError) as error:  # h5py/tifffile on truncated content
        raise ValueError(
            f"{path.name}: cannot read the file ({str(error).splitlines()[0]}); it is truncated "
            "or damaged"
        ) from None


# --------------------------------------------------------------------------------------------
# geometry files
# --------------------------------------------------------------------------------------------
def load_geometry(
    source: Geometry | dict | str | Path,
    *,
    kind: str | None = None,
    det_shape: Sequence[int] | None = None,
) -> Geometry:
    """A geometry from an object, a ``to_dict`` dictionary, a JSON file or an ASTRA vector file.

    Args:
        source: a :class:`Geometry` (returned as is), a dictionary in the ``to_dict`` format,
            a ``.json`` file holding one, or a text file of ASTRA vectors (``np.loadtxt``): one
            line per projection, 12 columns ``(s, d, u, v)`` for ``parallel3d_vec``/``cone_vec``
            or 6 columns ``(s, d, u)`` for ``parallel_vec``/``fanflat_vec``, in ASTRA's
            conventions (2D vectors are mirrored in ``y`` like :func:`geometry_from_astra`).
        kind: ``"parallel"`` or ``"cone"`` (``"fan"``) for a vector file; inferred when None:
            parallel if every first vector has unit length (a ray direction), else cone.
        det_shape: the detector ``(rows, cols)`` or ``(cols,)`` for a vector file, which does
            not record it (the readers take it from the data).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable content, wrong number of columns, a volume instead of a
            geometry, a missing ``det_shape``.
    """
    return _load_geometry(source, kind=kind, det_shape=det_shape)[0]


def _load_geometry(
    source: Any, *, kind: str | None = None, det_shape: Sequence[int] | None = None
) -> tuple[Geometry, str | None]:
    """:func:`load_geometry` plus a note on where the geometry came from (None for objects)."""
    if isinstance(source, Geometry):
        return source, None
    if isinstance(source, dict):
        return _geometry_from_description(source, "the geometry dictionary"), None
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such geometry file")
    text = path.read_text(errors="replace")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            description = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name}: not valid JSON ({error})") from None
        return _geometry_from_description(description, path.name), f"geometry from {path.name}"
    try:
        vectors = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except ValueError as error:
        raise ValueError(
            f"{path.name}: neither JSON nor a table of numbers ({error}); a geometry file is a "
            "to_dict JSON or an ASTRA vector text file"
        ) from None
    if vectors.shape[1] not in (6, 12):
        raise ValueError(
            f"{path.name}: {vectors.shape[1]} columns; an ASTRA vector file has 12 (3D: "
            "source/ray, detector centre, u, v) or 6 (2D) per line"
        )
    if det_shape is None:
        raise ValueError(
            f"{path.name}: a vector file does not record the detector shape; pass det_shape"
        )
    det = tuple(int(n) for n in det_shape)
    dims = 2 if vectors.shape[1] == 6 else 3
    if dims == 3 and len(det) == 1:
        det = (1, *det)
    if dims == 2 and len(det) == 2 and det[0] == 1:
        det = det[1:]
    if len(det) != dims - 1:
        raise ValueError(
            f"{path.name}: {vectors.shape[1]}-column vectors describe a {dims}D scan but the data "
            f"have detector shape {det}"
        )
    inferred = kind is None
    if kind is None:
        norms = np.linalg.norm(vectors[:, :dims], axis=1)
        kind = "parallel" if np.allclose(norms, 1.0, rtol=0, atol=1e-6) else "cone"
    kind = {"fan": "cone", "fanflat": "cone"}.get(kind, kind)
    if kind not in ("parallel", "cone"):
        raise ValueError(f"geometry_kind must be 'parallel' or 'cone', got {kind!r}")
    if dims == 3:
        astra_type = "parallel3d_vec" if kind == "parallel" else "cone_vec"
        proj = {"DetectorRowCount": det[0], "DetectorColCount": det[1]}
    else:
        astra_type = "parallel_vec" if kind == "parallel" else "fanflat_vec"
        proj = {"DetectorCount": det[0]}
    geometry = geometry_from_astra({"type": astra_type, "Vectors": vectors, **proj})
    how = "inferred from the vector lengths" if inferred else "as given"
    return geometry, f"geometry from the ASTRA vector file {path.name} ({astra_type}, {how})"


def _geometry_from_description(description: Any, where: str) -> Geometry:
    if not isinstance(description, dict):
        raise ValueError(f"{where}: a geometry description must be a JSON object")
    try:
        result = geometry_from_dict(description)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if isinstance(result, Volume):
        raise ValueError(f"{where}: describes a volume, not a scan geometry")
    return result


# --------------------------------------------------------------------------------------------
# row selection at read time
# --------------------------------------------------------------------------------------------
def _read_rows(rows: Any, n_rows: int, where: str) -> tuple[int, int, bool]:
    """``rows`` (an index, a slice or ``(start, stop)``) as ``(start, stop, single)``."""
    if rows is None:
        return 0, n_rows, False
    try:
        return index_range(rows, n_rows, "rows")
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _scan_from_rows(
    line: np.ndarray, geometry: Geometry, start: int, stop: int, single: bool, **fields: Any
) -> Scan:
    """A Scan from the line integrals of detector rows ``start:stop`` (``line``, read from the
    file) and the geometry of the full detector. One row of a parallel-beam scan becomes 2D."""
    notes = fields.setdefault("notes", [])
    if geometry.ndim == 2:  # a 2D geometry given by the caller for one-row frames
        if line.ndim == 3 and line.shape[1] == 1:
            line = line[:, 0]
        return Scan(line, geometry, **fields)
    n_rows = geometry.det_shape[0]
    check_matches_geometry((line.shape[0], n_rows, line.shape[2]), geometry, "the frames")
    if (start, stop) == (0, n_rows) and not single:
        return Scan(line, geometry, **fields)
    geometry = window_geometry(geometry, rows=(start, stop))
    notes.append(f"read detector rows {start}..{stop - 1} of {n_rows}")
    if single and geometry.kind == "parallel":
        geometry = slice_geometry(geometry)
        line = line[:, 0]
        pixel = fields.get("pixel_size")
        if pixel is not None and len(pixel) == 2:
            fields["pixel_size"] = pixel[1:]
        notes[-1] += ": a 2D parallel-beam slice"
    return Scan(line, geometry, **fields)


# --------------------------------------------------------------------------------------------
# HDF5 helpers
# --------------------------------------------------------------------------------------------
def _nx_class(obj: Any) -> str | None:
    if obj is None:
        return None
    value = obj.attrs.get("NX_class")
    return (
        value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)
    )


def _attr_str(obj: Any, name: str) -> str | None:
    value = obj.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe_get(group: Any, name: str) -> tuple[Any, str | None]:
    """``group[name]`` or ``(None, reason)`` when it is absent or a broken (external) link."""
    import h5py

    try:
        link = group.get(name, getlink=True)
    except (KeyError, OSError, RuntimeError):
        return None, None
    if link is None:
        return None, None
    try:
        return group[name], None
    except (KeyError, OSError, RuntimeError):
        if isinstance(link, h5py.ExternalLink):
            return None, f"its external file {link.filename} is missing or unreadable"
        return None, "a broken link"


def _read_scalar(group: Any, name: str) -> tuple[float, str | None] | None:
    ds, _ = _safe_get(group, name)
    if ds is None or not hasattr(ds, "shape"):
        return None
    try:
        value = float(np.asarray(ds[()], dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return value, _attr_str(ds, "units")


def _to_mm(value: float, units: str | None) -> tuple[float, str]:
    """A length in mm (or unchanged when the unit is unknown, with the unit's name)."""
    if units is None:
        return value, "mm (no units attribute; mm assumed)"
    key = units.strip().lower()
    if key in _LENGTH_TO_MM:
        return value * _LENGTH_TO_MM[key], "mm"
    return value, f"mm (unknown unit {units!r}; mm assumed)"


def _angles_to_rad(values: np.ndarray, units: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(radians, degrees, note)`` from angles in the given unit (degrees when None)."""
    if units is not None and units.strip().lower() in ("rad", "radian", "radians"):
        return values, np.rad2deg(values), "radians"
    note = "degrees" if units is not None else "degrees (no units attribute; degrees assumed)"
    return np.deg2rad(values), values, note


# --------------------------------------------------------------------------------------------
# NeXus (NXtomo, Diamond)
# --------------------------------------------------------------------------------------------
def _find_entry(f: Any) -> Any:
    entries = [f[k] for k in f if _nx_class(f.get(k)) == "NXentry"]
    for entry in entries:
        definition, _ = _safe_get(entry, "definition")
        if definition is not None and b"NXtomo" in np.asarray(definition[()]).tobytes():
            return entry
    if entries:
        return entries[0]
    if "entry" in f:
        return f["entry"]
    return f


def _frame_candidates(entry: Any) -> list[tuple[Any, str]]:
    """``(group, dataset name)`` pairs that may hold the frames, most likely first."""
    out: list[tuple[Any, str]] = []
    instrument, _ = _safe_get(entry, "instrument")
    if instrument is not None:
        detector, _ = _safe_get(instrument, "detector")
        if detector is not None:
            out.append((detector, "data"))
        for key in instrument:
            group, _ = _safe_get(instrument, key)
            if group is not None and _nx_class(group) == "NXdetector" and key != "detector":
                out.append((group, "data"))
    data_group, _ = _safe_get(entry, "data")
    if data_group is not None and hasattr(data_group, "keys"):
        out.append((data_group, _attr_str(data_group, "signal") or "data"))
    for key in entry:
        group, _ = _safe_get(entry, key)
        if group is not None and _nx_class(group) == "NXdata" and key != "data":
            signal = _attr_str(group, "signal")
            if signal:
                out.append((group, signal))
    return out


def _find_frames(entry: Any, where: str) -> tuple[Any, Any, str, list[str]]:
    """The frames dataset, its group, its path in this file, and notes on skipped candidates."""
    skipped: list[str] = []
    for group, name in _frame_candidates(entry):
        if name not in group:
            continue
        ds, reason = _safe_get(group, name)
        label = f"{group.name}/{name}"
        if ds is None:
            if reason:
                skipped.append(f"skipped {label}: {reason}")
            continue
        if not hasattr(ds, "shape") or ds.ndim != 3 or not np.issubdtype(ds.dtype, np.number):
            continue
        return ds, group, label, skipped
    raise ValueError(
        f"{where}: no 3D frames found (looked at /entry/instrument/detector/data, NXdetector "
        "groups and NXdata signals" + (f"; {'; '.join(skipped)}" if skipped else "") + ")"
    )


def _find_1d(
    groups: Sequence[Any], names: Sequence[str], n: int
) -> tuple[np.ndarray, str, str | None] | None:
    for group in groups:
        if group is None:
            continue
        for name in names:
            ds, _ = _safe_get(group, name)
            if ds is not None and hasattr(ds, "shape") and ds.shape == (n,):
                return np.asarray(ds[()]), f"{group.name}/{name}", _attr_str(ds, "units")
    return None


def _same_dataset(a: Any, b: Any) -> bool:
    return (
        a is not None and b is not None and (a.file.filename, a.name) == (b.file.filename, b.name)
    )


def _nxdata_axes(entry: Any, frames: Any) -> list[tuple[Any, str]]:
    """Axis-0 fields of NXdata groups (``AXIS_indices == 0``) that look like angles; those of
    the group whose signal is ``frames`` first, measured values before set points."""
    out: list[tuple[Any, str, bool]] = []
    for key in entry:
        group, _ = _safe_get(entry, key)
        if group is None or _nx_class(group) != "NXdata":
            continue
        signal = _attr_str(group, "signal")
        own = bool(signal) and _same_dataset(_safe_get(group, signal)[0], frames)
        for attr, value in group.attrs.items():
            if not attr.endswith("_indices") or int(np.asarray(value).reshape(-1)[0]) != 0:
                continue
            name = attr[: -len("_indices")]
            if re.search("angle|theta|rot", name, re.IGNORECASE):
                out.append((group, name, own))
    out.sort(key=lambda item: (not item[2], item[1].endswith("_set")))
    return [(group, name) for group, name, _ in out]


def _read_nexus(path: Path, *, geometry: Any, rows: Any, **_: Any) -> Scan:
    where = path.name
    with _open_h5(path) as f:
        entry = _find_entry(f)
        own = _safe_get(entry, "dip_uq")[0]
        if own is not None and "geometry" in own:
            return _read_own_nxtomo(path, entry, own, geometry=geometry, rows=rows)
        frames, group, frames_name, notes = _find_frames(entry, where)
        n_frames, n_rows_total, n_cols = frames.shape
        notes.insert(0, f"frames from {frames_name} {frames.shape} {frames.dtype}")
        axes = _nxdata_axes(entry, frames)

        key_found = _find_1d(
            [group, _safe_get(entry, "data")[0], *(g for g, _ in axes)],
            ["image_key", "image_key_control"],
            n_frames,
        )
        if key_found is None:
            image_key = np.zeros(n_frames, dtype=np.int64)
            notes.append("no image_key: every frame taken as a projection")
        else:
            image_key = key_found[0].astype(np.int64)
            notes.append(f"image_key from {key_found[1]}")

        sample = _safe_get(entry, "sample")[0]
        angle_found = _find_1d([sample, _safe_get(entry, "data")[0]], ["rotation_angle"], n_frames)
        if angle_found is None:
            for axis_group, name in axes:
                angle_found = _find_1d([axis_group], [name], n_frames)
                if angle_found is not None:
                    break
        if angle_found is None and geometry is None:
            raise ValueError(
                f"{where}: no rotation angles (/entry/sample/rotation_angle or an NXdata angle "
                f"axis of length {n_frames}); {_GEOMETRY_HINT}"
            )

        start, stop, single = _read_rows(rows, n_rows_total, where)
        data = np.asarray(frames[:, start:stop, :])
        diamond = "diamond_scan" in entry

        pixel_size = None
        units = "px"
        x = _read_scalar(group, "x_pixel_size")
        y = _read_scalar(group, "y_pixel_size")
        if x is not None:
            col_mm, unit_note = _to_mm(*x)
            row_mm = _to_mm(*y)[0] if y is not None else col_mm
            pixel_size, units = (row_mm, col_mm), "mm"
            notes.append(f"pixel size from {group.name}/x_pixel_size in {unit_note}")
        else:
            notes.append("no pixel size in the file: lengths are in detector pixels")
        distances: dict[str, float] = {}
        distance = _read_scalar(group, "distance")
        if distance is not None and units == "mm":
            distances["origin_detector"] = _to_mm(*distance)[0]
        title = _safe_get(entry, "title")[0]
        metadata = {}
        if title is not None and hasattr(title, "shape"):
            value = title[()]
            metadata["title"] = value.decode() if isinstance(value, bytes) else str(value)

    is_proj, is_flat, is_dark = image_key == 0, image_key == 1, image_key == 2
    other = int((~(is_proj | is_flat | is_dark)).sum())
    if other:
        notes.append(f"ignored {other} frames with image_key not 0/1/2 (invalid/alignment)")
    if not is_proj.any():
        raise ValueError(f"{where}: no projection frames (image_key 0) among {n_frames} frames")
    projections = data[is_proj]
    n_flats, n_darks = int(is_flat.sum()), int(is_dark.sum())
    if n_flats:
        line, more = flat_dark_correct(projections, data[is_flat], data[is_dark], where)
    else:
        line, more = _unflatted(projections, frames_name="frames", where=where)
    notes.extend(more)

    if geometry is not None:
        geom, note = _load_geometry(geometry, det_shape=(n_rows_total, n_cols))
        notes.append(note or "geometry given by the caller")
        angles_deg = None
        units = "mm" if pixel_size is None else units
    else:
        values, source, angle_units = angle_found
        radians, degrees, unit_note = _angles_to_rad(
            np.asarray(values, dtype=np.float64)[is_proj], angle_units
        )
        notes.append(f"angles from {source} in {unit_note}")
        spacing = pixel_size if pixel_size is not None else (1.0, 1.0)
        geom = ParallelBeam(radians, (n_rows_total, n_cols), spacing)
        angles_deg = degrees
        notes.append("parallel beam (NeXus tomography frames)")
    if frames_name.endswith("/instrument/detector/data"):
        source_format = "nxtomo"
    else:
        source_format = "diamond-nexus" if diamond else "nexus"
    return _scan_from_rows(
        line,
        geom,
        start,
        stop,
        single,
        source_format=source_format,
        path=path,
        angles_deg=angles_deg,
        pixel_size=pixel_size,
        distances=distances,
        units=units,
        n_flats=n_flats,
        n_darks=n_darks,
        notes=notes,
        metadata=metadata,
    )


def _unflatted(data: np.ndarray, frames_name: str, where: str) -> tuple[np.ndarray, list[str]]:
    """Frames without flat fields: normalised transmissions in (0, ~1.5] become -log(p);
    anything else is an error."""
    check_finite(np.asarray(data, dtype=np.float32), f"{where}: the {frames_name}")
    values = np.asarray(data, dtype=np.float32)
    if values.size and 0 < float(values.max()) <= 1.5 and np.issubdtype(data.dtype, np.floating):
        return transmission_to_line_integrals(values, where)
    raise ValueError(
        f"{where}: the {frames_name} hold raw intensities (max {float(values.max()):.4g}) but the "
        "file has no flat fields (image_key 1 / data_white), so they cannot become line integrals"
    )


# --------------------------------------------------------------------------------------------
# dip-uq's own NXtomo files (write_nxtomo)
# --------------------------------------------------------------------------------------------
def _read_own_nxtomo(path: Path, entry: Any, own: Any, *, geometry: Any, rows: Any) -> Scan:
    where = path.name
    description = json.loads(_string(own["geometry"][()]))
    geom = (
        _load_geometry(geometry)[0]
        if geometry is not None
        else _geometry_from_description(description, f"{where} /entry/dip_uq/geometry")
    )
    frames = entry["instrument/detector/data"]
    quantity = _attr_str(frames, "quantity") or "intensity"
    data = np.asarray(frames[()], dtype=np.float32)
    notes = [_string(n) for n in own["notes"][()]] if "notes" in own else []
    notes.append(f"dip-uq NXtomo file: frames from {frames.name} ({quantity}), geometry from JSON")
    if quantity != "line_integrals":
        raise ValueError(f"{where}: unexpected frame quantity {quantity!r} in a dip-uq file")
    if geom.ndim == 2 and data.ndim == 3 and data.shape[1] == 1:
        data = data[:, 0, :]
    check_matches_geometry(data.shape, geom, f"{where}: the frames")
    truth = volume = None
    if "truth" in own:
        truth = np.asarray(own["truth"][()])
        volume_json = _attr_str(own["truth"], "volume")
        volume = geometry_from_dict(json.loads(volume_json)) if volume_json else None
    units = _attr_str(own, "units") or "mm"
    distances = json.loads(_attr_str(own, "distances") or "{}")
    pixel = json.loads(_attr_str(own, "pixel_size") or "null")
    metadata = json.loads(_attr_str(own, "metadata") or "{}")
    angles = np.asarray(entry["sample/rotation_angle"][()], dtype=np.float64)
    scan = Scan(
        data,
        geom,
        source_format="nxtomo",
        path=path,
        angles_deg=angles if geometry is None else None,
        pixel_size=tuple(pixel) if pixel is not None else None,
        distances=distances,
        units=units,
        notes=notes,
        truth=truth,
        volume=volume,
        metadata=metadata,
    )
    if rows is not None:
        scan = select_rows(scan, rows=rows)
    return scan


def _string(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------------------------
# APS Data Exchange
# --------------------------------------------------------------------------------------------
def _read_dxchange(path: Path, *, geometry: Any, rows: Any, **_: Any) -> Scan:
    where = path.name
    with _open_h5(path) as f:
        exchange = f["exchange"]
        data_ds = exchange["data"]
        if data_ds.ndim != 3:
            raise ValueError(
                f"{where}: /exchange/data has shape {data_ds.shape}; expected (angles, rows, cols)"
            )
        n_angles, n_rows_total, n_cols = data_ds.shape
        start, stop, single = _read_rows(rows, n_rows_total, where)
        data = np.asarray(data_ds[:, start:stop, :])
        white = (
            np.asarray(exchange["data_white"][:, start:stop, :])
            if "data_white" in exchange
            else None
        )
        dark = (
            np.asarray(exchange["data_dark"][:, start:stop, :]) if "data_dark" in exchange else None
        )
        theta = None
        if "theta" in exchange:
            theta = (
                np.asarray(exchange["theta"][()], dtype=np.float64).reshape(-1),
                _attr_str(exchange["theta"], "units"),
            )
        metadata = {}
        for key, label in (("measurement/sample/name", "sample"), ("exchange/title", "title")):
            if key in f:
                metadata[label] = _string(f[key][()])
    notes = [f"frames from /exchange/data {(n_angles, n_rows_total, n_cols)} {data.dtype}"]
    if white is not None:
        line, more = flat_dark_correct(data, white, dark, where)
        more[0] += " (/exchange/data_white, /exchange/data_dark)"
    else:
        line, more = _unflatted(data, "frames", where)
    notes.extend(more)
    if geometry is not None:
        geom, note = _load_geometry(geometry, det_shape=(n_rows_total, n_cols))
        notes.append(note or "geometry given by the caller")
        angles_deg = None
    else:
        if theta is None:
            raise ValueError(f"{where}: no /exchange/theta (rotation angles); {_GEOMETRY_HINT}")
        if theta[0].size != n_angles:
            raise ValueError(
                f"{where}: /exchange/theta has {theta[0].size} angles for {n_angles} projections"
            )
        units = theta[1] or "degrees"
        radians, angles_deg, unit_note = _angles_to_rad(theta[0], units)
        notes.append(f"angles from /exchange/theta in {unit_note}")
        geom = ParallelBeam(radians, (n_rows_total, n_cols), 1.0)
        notes.append("parallel beam; no pixel size in the file: lengths are in detector pixels")
    return _scan_from_rows(
        line,
        geom,
        start,
        stop,
        single,
        source_format="aps-dxchange",
        path=path,
        angles_deg=angles_deg,
        units="px" if geometry is None else "mm",
        n_flats=0 if white is None else len(white),
        n_darks=0 if dark is None else len(dark),
        notes=notes,
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------------
# arrays that need a geometry (TIFF, NumPy, generic .mat)
# --------------------------------------------------------------------------------------------
def _array_scan(
    data: np.ndarray,
    path: Path,
    source_format: str,
    what: str,
    *,
    geometry: Any,
    rows: Any,
    flats: Any,
    darks: Any,
    geometry_kind: str | None,
    notes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Scan:
    """A scan from an array of projections/sinograms and a geometry given by the caller."""
    where = path.name
    notes = list(notes or [])
    if geometry is None:
        raise ValueError(f"{where}: {what} needs a geometry; {_GEOMETRY_HINT}")
    if data.ndim not in (2, 3) or not np.issubdtype(data.dtype, np.number):
        raise ValueError(
            f"{where}: expected a numeric array (angles, cols) or (angles, rows, cols), got "
            f"{data.dtype} {data.shape}"
        )
    det_shape = data.shape[1:]
    geom, note = _load_geometry(geometry, kind=geometry_kind, det_shape=det_shape)
    if note:
        notes.append(note)
    data = _fit_layout(data, geom, where)
    n_flats = n_darks = 0
    if flats is not None:
        flat_frames = _fit_layout(_load_frames(flats, "flats"), geom, "the flats", frames=True)
        dark_frames = (
            _fit_layout(_load_frames(darks, "darks"), geom, "the darks", frames=True)
            if darks is not None
            else None
        )
        three = lambda a: a if a.ndim == 3 else a[:, None, :]  # noqa: E731
        line, more = flat_dark_correct(
            three(data),
            three(flat_frames),
            None if dark_frames is None else three(dark_frames),
            where,
        )
        line = line.reshape(data.shape)
        n_flats, n_darks = len(flat_frames), 0 if dark_frames is None else len(dark_frames)
        notes.extend(more)
    else:
        if darks is not None:
            raise ValueError(f"{where}: darks were given without flats; pass both")
        if not np.issubdtype(data.dtype, np.floating):
            raise ValueError(
                f"{where}: holds integer values ({data.dtype}), which look like raw counts; pass "
                "flat fields (and darks) to convert them, or store float line integrals"
            )
        check_finite(data, f"{where}: the data")
        line = data.astype(np.float32)
        notes.append("data taken as line integrals (no flat fields given)")
    scan = Scan(
        line,
        geom,
        source_format=source_format,
        path=path,
        n_flats=n_flats,
        n_darks=n_darks,
        notes=notes,
        **(extra or {}),
    )
    if rows is not None:
        scan = select_rows(scan, rows)
    return scan


def _fit_layout(data: np.ndarray, geom: Geometry, where: str, frames: bool = False) -> np.ndarray:
    """``data`` reshaped to the geometry's layout where only a unit row axis differs."""
    target = geom.sino_shape
    if frames:  # flats/darks: any number of frames of the detector's shape
        target = (data.shape[0], *geom.det_shape)
    if data.shape == target:
        return data
    if data.size == int(np.prod(target)) and data.shape[0] == target[0]:
        squeezed = [n for n in data.shape[1:] if n != 1]
        wanted = [n for n in target[1:] if n != 1]
        if squeezed == wanted:
            return data.reshape(target)
    layout = "(angles, cols)" if geom.ndim == 2 else "(angles, rows, cols)"
    raise ValueError(
        f"{where}: data of shape {data.shape} do not match the geometry, which expects {layout} "
        f"= {target}; check the number of angles and the detector shape"
    )


def _load_frames(source: Any, what: str) -> np.ndarray:
    """Flat or dark frames from an array or a file/folder (TIFF, .npy)."""
    if isinstance(source, np.ndarray):
        return source
    path = Path(source)
    fmt = detect_format(path)
    if fmt == "tiff":
        return _tiff_array(path)
    if fmt == "npy":
        return _npy_array(path)
    raise ValueError(f"{path.name}: {what} must be a TIFF file/folder or a .npy file")


# --------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------
def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _tiff_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in _TIFF_SUFFIXES and p.is_file()]
    return sorted(files, key=_natural_key)


def _tiff_array(path: Path) -> np.ndarray:
    import tifffile

    try:
        if path.is_dir():
            files = _tiff_files(path)
            if not files:
                raise ValueError(f"{path}: the folder holds no .tif/.tiff files")
            first = tifffile.imread(files[0])
            stack = np.empty((len(files), *first.shape), dtype=first.dtype)
            stack[0] = first
            for k, file in enumerate(files[1:], start=1):
                image = tifffile.imread(file)
                if image.shape != first.shape:
                    raise ValueError(
                        f"{file.name}: image of shape {image.shape}, but {files[0].name} has "
                        f"{first.shape}; every projection must have the same size"
                    )
                stack[k] = image
            return stack
        return np.asarray(tifffile.imread(path))
    except (tifffile.TiffFileError, OSError, struct_error) as error:
        raise ValueError(
            f"{path.name}: cannot read the TIFF ({error}); truncated or damaged"
        ) from None


def _read_tiff(path: Path, **options: Any) -> Scan:
    data = _tiff_array(path)
    kind = "a folder of TIFFs" if path.is_dir() else "a TIFF stack"
    if path.is_dir():
        note = f"{len(_tiff_files(path))} TIFF files read in name order as projections"
    elif data.ndim == 2:
        note = "one TIFF image read as a sinogram (angles, cols)"
    else:
        note = f"{data.shape[0]} TIFF pages read as projections"
    return _array_scan(data, path, "tiff", kind, notes=[note], **options)


# --------------------------------------------------------------------------------------------
# NumPy
# --------------------------------------------------------------------------------------------
def _npy_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path.name}: cannot read the .npy file ({error}); truncated?") from None


def _read_npy(path: Path, **options: Any) -> Scan:
    data = _npy_array(path)
    return _array_scan(
        data, path, "npy", "a .npy sinogram", notes=[f"array {data.dtype} {data.shape}"], **options
    )


def _read_npz(path: Path, *, geometry: Any, **options: Any) -> Scan:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path.name}: cannot read the .npz file ({error}); truncated?") from None
    name = next((k for k in ("sinogram", "sino", "projections", "data") if k in arrays), None)
    numeric = [
        k for k, v in arrays.items() if v.ndim in (2, 3) and np.issubdtype(v.dtype, np.number)
    ]
    if name is None:
        if len(numeric) != 1:
            raise ValueError(
                f"{path.name}: cannot tell which array is the sinogram among {sorted(arrays)}; "
                "name it 'sinogram'"
            )
        name = numeric[0]
    notes = [f"array '{name}' {arrays[name].dtype} {arrays[name].shape}"]
    if geometry is None and "geometry" in arrays:
        geometry = _geometry_from_description(json.loads(str(arrays["geometry"])), path.name)
        notes.append("geometry from the archive's 'geometry' entry (JSON)")
    for key in ("flats", "darks"):
        if options.get(key) is None and key in arrays:
            options[key] = arrays[key]
    extra = {"truth": arrays["truth"]} if "truth" in arrays else None
    return _array_scan(
        arrays[name],
        path,
        "npz",
        "a .npz sinogram",
        geometry=geometry,
        notes=notes,
        extra=extra,
        **options,
    )


# --------------------------------------------------------------------------------------------
# MATLAB
# --------------------------------------------------------------------------------------------
def _mat73_value(obj: Any) -> Any:
    """A MATLAB v7.3 (HDF5) object as Python values: structs as dicts, arrays transposed
    back to MATLAB's order, char arrays as str."""
    import h5py

    if isinstance(obj, h5py.Group):
        return {k: _mat73_value(obj[k]) for k in obj if not k.startswith("#")}
    cls = _attr_str(obj, "MATLAB_class")
    value = obj[()]
    if cls == "char":
        codes = np.asarray(value).T.reshape(-1)
        return "".join(chr(int(c)) for c in codes)
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":  # cell arrays / references: not needed here
            return None
        return value.T
    return value


def _load_mat(path: Path) -> tuple[dict[str, Any], str]:
    """Variables of a .mat file (v5 through scipy, v7.3 through h5py) and the version."""
    head = _head(path)
    if head.startswith(b"MATLAB 7.3") or _is_hdf5(head):
        with _open_h5(path) as f:
            return {k: _mat73_value(f[k]) for k in f if not k.startswith("#")}, "v7.3"
    import scipy.io

    try:
        variables = scipy.io.loadmat(path, simplify_cells=True)
    except (ValueError, TypeError, OSError, NotImplementedError) as error:
        raise ValueError(
            f"{path.name}: cannot read the MATLAB file ({error}); truncated or damaged"
        ) from None
    return {k: v for k, v in variables.items() if not k.startswith("__")}, "v5"


def _scalar(value: Any) -> float:
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def _read_mat(path: Path, *, geometry: Any, **options: Any) -> Scan:
    variables, version = _load_mat(path)
    where = path.name
    htc = next(
        (
            (k, v)
            for k, v in variables.items()
            if isinstance(v, dict) and "sinogram" in v and "parameters" in v
        ),
        None,
    )
    if htc is not None:
        return _htc_scan(path, version, *htc, geometry=geometry, **options)
    arrays = {
        k: np.asarray(v)
        for k, v in variables.items()
        if isinstance(v, np.ndarray) and v.ndim in (2, 3) and np.issubdtype(v.dtype, np.number)
    }
    name = next((k for k in ("sinogram", "sino", "projections", "data") if k in arrays), None)
    if name is None:
        if len(arrays) != 1:
            raise ValueError(
                f"{where}: no HTC2022-style struct (sinogram + parameters) and "
                f"{'no' if not arrays else 'several'} 2D/3D arrays ({sorted(variables)}); "
                "name the sinogram 'sinogram'"
            )
        name = next(iter(arrays))
    notes = [f"MATLAB {version}: variable '{name}' {arrays[name].dtype} {arrays[name].shape}"]
    return _array_scan(
        arrays[name], path, "mat", "a .mat sinogram", geometry=geometry, notes=notes, **options
    )


def _htc_scan(
    path: Path, version: str, name: str, struct: dict, *, geometry: Any, rows: Any, **_: Any
) -> Scan:
    """The HTC2022 ``CtData*`` struct: a fan-beam sinogram of line integrals."""
    where = path.name
    if rows is not None:
        raise ValueError(f"{where}: rows do not apply to a 2D (fan-beam) scan")
    params = struct["parameters"]
    sino = np.asarray(struct["sinogram"], dtype=np.float64)
    if sino.ndim != 2:
        raise ValueError(
            f"{where}: {name}.sinogram has shape {sino.shape}; expected (angles, cols)"
        )
    check_finite(sino, f"{where}: {name}.sinogram")
    notes = [
        f"MATLAB {version}: struct '{name}' (HTC2022 layout), sinogram {sino.shape} of line "
        "integrals, used as is"
    ]
    if geometry is not None:
        geom, note = _load_geometry(geometry, det_shape=sino.shape[1:])
        notes.append(note or "geometry given by the caller")
        return Scan(sino, geom, source_format="htc2022-mat", path=path, notes=notes)
    try:
        angles = np.asarray(params["angles"], dtype=np.float64).reshape(-1)
        dso = _scalar(params["distanceSourceOrigin"])
        dsd = _scalar(params["distanceSourceDetector"])
        pixel = _scalar(params.get("pixelSizePost", params.get("pixelSize")))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: {name}.parameters lacks {error}; {_GEOMETRY_HINT}") from None
    if angles.size != sino.shape[0]:
        raise ValueError(
            f"{where}: {name}.parameters.angles has {angles.size} angles for {sino.shape[0]} "
            "sinogram rows"
        )
    unit = str(params.get("distanceUnit", "mm")).strip() or "mm"
    scale = _LENGTH_TO_MM.get(unit.lower(), 1.0)
    geom = FanBeam(
        np.deg2rad(angles),
        (sino.shape[1],),
        pixel * scale,
        dso * scale,
        (dsd - dso) * scale,
    )
    effective = pixel * dso / dsd * scale
    notes.append(
        f"fan beam from parameters: angles in degrees, source-origin {dso:g} {unit}, "
        f"source-detector {dsd:g} {unit}, pixel {pixel:g} {unit} on the detector "
        f"({effective:.4g} mm at the rotation axis)"
    )
    notes.append(
        "image orientation: dip-uq's y axis grows with the row index, so images are upside "
        "down relative to ASTRA's 2D reconstructions in the HTC2022 examples"
    )
    metadata = {
        key: str(params[key]).strip()
        for key in ("projectName", "scanner", "date", "geometryType")
        if key in params
    }
    scan = Scan(
        sino,
        geom,
        source_format="htc2022-mat",
        path=path,
        angles_deg=angles,
        pixel_size=(pixel * scale,),
        distances={"source_origin": dso * scale, "origin_detector": (dsd - dso) * scale},
        units="mm",
        notes=notes,
        metadata=metadata,
    )
    return scan
