"""NeXus HDF5 tomography files from instruments: NXtomo and the Diamond layout.

* the frames: ``/entry/instrument/detector/data``, else the ``data`` of another
  ``NX_class=NXdetector`` group, else the ``signal`` of an NXdata group; external links are
  followed (relative to the file) and broken ones skipped with a note;
* ``image_key`` (0 projection, 1 flat, 2 dark, others ignored) of the frames' group, the
  entry's ``data`` or an NXdata group; without one every frame is a projection;
* the angles: ``/entry/sample/rotation_angle``, else an NXdata axis of the frames' length
  whose name says angle/theta/rot (measured values before set points), in degrees unless the
  ``units`` attribute says radians;
* ``x_pixel_size`` / ``y_pixel_size`` / ``distance`` of the detector group, converted to mm;
  without a pixel size lengths are in detector pixels.

The result is a parallel-beam scan (or the caller's geometry). Files written by
:func:`~dip_uq.io.write_nxtomo` are recognised and read by :mod:`dip_uq.io.nxtomo`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import ParallelBeam
from ..scan import Scan
from .flat_field import flat_dark_correct, line_integrals_without_flats
from .geometry_files import GEOMETRY_HINT, GeometrySource, read_geometry
from .hdf5 import attr_str, nx_class, open_h5, read_scalar, safe_get
from .nxtomo import FRAMES, is_own_nxtomo, read_nxtomo
from .rows import read_rows, scan_from_rows
from .units import angles_to_rad, to_mm


def _find_entry(f: Any) -> Any:
    entries = [f[k] for k in f if nx_class(f.get(k)) == "NXentry"]
    for entry in entries:
        definition, _ = safe_get(entry, "definition")
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
    instrument, _ = safe_get(entry, "instrument")
    if instrument is not None:
        detector, _ = safe_get(instrument, "detector")
        if detector is not None:
            out.append((detector, "data"))
        for key in instrument:
            group, _ = safe_get(instrument, key)
            if group is not None and nx_class(group) == "NXdetector" and key != "detector":
                out.append((group, "data"))
    data_group, _ = safe_get(entry, "data")
    if data_group is not None and hasattr(data_group, "keys"):
        out.append((data_group, attr_str(data_group, "signal") or "data"))
    for key in entry:
        group, _ = safe_get(entry, key)
        if group is not None and nx_class(group) == "NXdata" and key != "data":
            signal = attr_str(group, "signal")
            if signal:
                out.append((group, signal))
    return out


def _find_frames(entry: Any, where: str) -> tuple[Any, Any, str, list[str]]:
    """The frames dataset, its group, its path in this file, and notes on skipped candidates."""
    skipped: list[str] = []
    for group, name in _frame_candidates(entry):
        if name not in group:
            continue
        ds, reason = safe_get(group, name)
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
            ds, _ = safe_get(group, name)
            if ds is not None and hasattr(ds, "shape") and ds.shape == (n,):
                return np.asarray(ds[()]), f"{group.name}/{name}", attr_str(ds, "units")
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
        group, _ = safe_get(entry, key)
        if group is None or nx_class(group) != "NXdata":
            continue
        signal = attr_str(group, "signal")
        own = bool(signal) and _same_dataset(safe_get(group, signal)[0], frames)
        for attr, value in group.attrs.items():
            if not attr.endswith("_indices") or int(np.asarray(value).reshape(-1)[0]) != 0:
                continue
            name = attr[: -len("_indices")]
            if re.search("angle|theta|rot", name, re.IGNORECASE):
                out.append((group, name, own))
    out.sort(key=lambda item: (not item[2], item[1].endswith("_set")))
    return [(group, name) for group, name, _ in out]


def read_nexus(
    path: Path,
    *,
    geometry: GeometrySource | None,
    rows: int | slice | tuple[int, int] | None,
    **_: Any,
) -> Scan:
    """A NeXus file (see the module docstring); ``geometry`` replaces the parallel beam built
    from the file, ``rows`` keeps those detector rows (only they are read)."""
    where = path.name
    with open_h5(path) as f:
        entry = _find_entry(f)
        if is_own_nxtomo(entry):
            return read_nxtomo(path, entry, geometry=geometry, rows=rows)
        frames, group, frames_name, notes = _find_frames(entry, where)
        n_frames, n_rows_total, n_cols = frames.shape
        notes.insert(0, f"frames from {frames_name} {frames.shape} {frames.dtype}")
        axes = _nxdata_axes(entry, frames)

        key_found = _find_1d(
            [group, safe_get(entry, "data")[0], *(g for g, _ in axes)],
            ["image_key", "image_key_control"],
            n_frames,
        )
        if key_found is None:
            image_key = np.zeros(n_frames, dtype=np.int64)
            notes.append("no image_key: every frame taken as a projection")
        else:
            image_key = key_found[0].astype(np.int64)
            notes.append(f"image_key from {key_found[1]}")

        sample = safe_get(entry, "sample")[0]
        angle_found = _find_1d([sample, safe_get(entry, "data")[0]], ["rotation_angle"], n_frames)
        if angle_found is None:
            for axis_group, name in axes:
                angle_found = _find_1d([axis_group], [name], n_frames)
                if angle_found is not None:
                    break
        if angle_found is None and geometry is None:
            raise ValueError(
                f"{where}: no rotation angles (/entry/sample/rotation_angle or an NXdata angle "
                f"axis of length {n_frames}); {GEOMETRY_HINT}"
            )

        start, stop, single = read_rows(rows, n_rows_total, where)
        data = np.asarray(frames[:, start:stop, :])
        diamond = "diamond_scan" in entry

        pixel_size = None
        units = "px"
        x = read_scalar(group, "x_pixel_size")
        y = read_scalar(group, "y_pixel_size")
        if x is not None:
            col_mm, unit_note = to_mm(*x)
            row_mm = to_mm(*y)[0] if y is not None else col_mm
            pixel_size, units = (row_mm, col_mm), "mm"
            notes.append(f"pixel size from {group.name}/x_pixel_size in {unit_note}")
        else:
            notes.append("no pixel size in the file: lengths are in detector pixels")
        distances: dict[str, float] = {}
        distance = read_scalar(group, "distance")
        if distance is not None and units == "mm":
            distances["origin_detector"] = to_mm(*distance)[0]
        title = safe_get(entry, "title")[0]
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
        line, more = line_integrals_without_flats(projections, frames_name="frames", where=where)
    notes.extend(more)

    if geometry is not None:
        geom, note = read_geometry(geometry, det_shape=(n_rows_total, n_cols))
        notes.append(note or "geometry given by the caller")
        angles_deg = None
        units = "mm" if pixel_size is None else units
    else:
        values, source, angle_units = angle_found
        radians, degrees, unit_note = angles_to_rad(
            np.asarray(values, dtype=np.float64)[is_proj], angle_units
        )
        notes.append(f"angles from {source} in {unit_note}")
        spacing = pixel_size if pixel_size is not None else (1.0, 1.0)
        geom = ParallelBeam(radians, (n_rows_total, n_cols), spacing)
        angles_deg = degrees
        notes.append("parallel beam (NeXus tomography frames)")
    if frames_name.endswith(f"/{FRAMES}"):
        source_format = "nxtomo"
    else:
        source_format = "diamond-nexus" if diamond else "nexus"
    return scan_from_rows(
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
