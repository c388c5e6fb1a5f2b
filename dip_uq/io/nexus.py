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

An NXdata group whose signal is 2D, ``(angles, detector)`` (or ``(detector, angles)``, as its
``axes`` attribute or ``AXIS_indices`` say), is a single sinogram: a 2D parallel-beam scan,
with the pitch from the detector axis's values (in its ``units``) when there is no
``x_pixel_size``. Angles that are not in ascending order are sorted, the projections with them
(a note says so). Frames without flat fields follow :mod:`dip_uq.io.values` (``--flat``,
``--normalised``, ``--log``, ``--scale``).

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
from .geometry_files import GEOMETRY_HINT, GeometrySource, read_geometry
from .hdf5 import attr_str, nx_class, open_h5, read_scalar, safe_get
from .nxtomo import FRAMES, is_own_nxtomo, read_nxtomo
from .rows import read_rows, scan_from_rows
from .units import angles_to_rad, to_mm
from .values import Conversion, to_line_integrals


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
    """The frames dataset (3D frames, else a 2D sinogram that is an NXdata signal), its group,
    its path in this file, and notes on skipped candidates."""
    skipped: list[str] = []
    sinogram = None
    for group, name in _frame_candidates(entry):
        if name not in group:
            continue
        ds, reason = safe_get(group, name)
        label = f"{group.name}/{name}"
        if ds is None:
            if reason:
                skipped.append(f"skipped {label}: {reason}")
            continue
        if not hasattr(ds, "shape") or not np.issubdtype(ds.dtype, np.number):
            continue
        if ds.ndim == 3:
            return ds, group, label, skipped
        if ds.ndim == 2 and sinogram is None and attr_str(group, "signal") == name:
            sinogram = (ds, group, label)
    if sinogram is not None:
        return (*sinogram, skipped)
    raise ValueError(
        f"{where}: no 3D frames or 2D sinogram found (looked at /entry/instrument/detector/data, "
        "NXdetector groups and NXdata signals"
        + (f"; {'; '.join(skipped)}" if skipped else "")
        + ")"
    )


def _axis_indices(group: Any) -> dict[str, int]:
    """The axis fields of an NXdata group and the signal dimension each labels, from its
    ``AXIS_indices`` attributes and its ``axes`` attribute (a list, or one string split at
    ``:``; ``.`` marks a dimension without one)."""
    out: dict[str, int] = {}
    axes = group.attrs.get("axes")
    if axes is not None:
        names = np.asarray(axes).reshape(-1).tolist()
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if len(names) == 1:
            names = names[0].split(":")
        out.update({n: k for k, n in enumerate(names) if n and n != "."})
    for attr, value in group.attrs.items():
        if attr.endswith("_indices"):
            out[attr[: -len("_indices")]] = int(np.asarray(value).reshape(-1)[0])
    return out


def _sinogram_axes(group: Any, shape: tuple[int, int]) -> tuple[int, str | None, Any]:
    """For a 2D NXdata signal: which dimension runs over the angles (0 or 1, from an axis
    whose name says angle/theta/rot; 0 without one), that axis's name, and the detector
    axis's dataset (or None)."""
    indices = _axis_indices(group)
    name, angle = next(
        ((n, k) for n, k in indices.items() if re.search("angle|theta|rot", n, re.IGNORECASE)),
        (None, 0),
    )
    angle = angle if angle in (0, 1) else 0
    detector = next((n for n, k in indices.items() if k == 1 - angle), None)
    ds = safe_get(group, detector)[0] if detector else None
    ok = ds is not None and hasattr(ds, "shape") and ds.shape == (shape[1 - angle],)
    return angle, name, ds if ok else None


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
        for name, index in _axis_indices(group).items():
            if index == 0 and re.search("angle|theta|rot", name, re.IGNORECASE):
                out.append((group, name, own))
    out.sort(key=lambda item: (not item[2], item[1].endswith("_set")))
    return [(group, name) for group, name, _ in out]


def read_nexus(
    path: Path,
    *,
    geometry: GeometrySource | None,
    rows: int | slice | tuple[int, int] | None,
    conversion: Conversion | None = None,
    **_: Any,
) -> Scan:
    """A NeXus file (see the module docstring); ``geometry`` replaces the parallel beam built
    from the file, ``rows`` keeps those detector rows (only they are read), ``conversion``
    says what the values are when the file has no flat fields (:mod:`dip_uq.io.values`)."""
    where = path.name
    with open_h5(path) as f:
        entry = _find_entry(f)
        if is_own_nxtomo(entry):
            if conversion is not None and conversion.flags():
                raise ValueError(
                    f"{where}: a dip-uq NXtomo file holds line integrals; leave out "
                    f"{', '.join(conversion.flags())}"
                )
            return read_nxtomo(path, entry, geometry=geometry, rows=rows)
        frames, group, frames_name, notes = _find_frames(entry, where)
        notes.insert(0, f"frames from {frames_name} {frames.shape} {frames.dtype}")
        detector_axis = None
        two_d = frames.ndim == 2
        axes = _nxdata_axes(entry, frames)
        if two_d:
            if rows is not None:
                raise ValueError(f"{where}: {frames_name} is a 2D sinogram; it has no rows")
            angle_dim, angle_name, detector_axis = _sinogram_axes(group, frames.shape)
            if angle_name is not None:
                axes.insert(0, (group, angle_name))
            data = np.asarray(frames[()])
            if angle_dim == 1:
                data = data.T
                notes.append(f"{frames_name} is (detector, angles): transposed")
            notes.append("a 2D sinogram (angles, detector): a 2D parallel-beam scan")
            data = data[:, None, :]
            if detector_axis is not None:
                detector_axis = (np.asarray(detector_axis[()], np.float64), detector_axis)
        n_frames, n_rows_total, n_cols = (data if two_d else frames).shape

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
        if not two_d:
            data = np.asarray(frames[:, start:stop, :])
        diamond = "diamond_scan" in entry

        pixel_size = None
        units = "px"
        x = read_scalar(group, "x_pixel_size")
        y = read_scalar(group, "y_pixel_size")
        if x is not None:
            col_mm, unit_note = to_mm(*x)
            row_mm = to_mm(*y)[0] if y is not None else col_mm
            pixel_size, units = ((col_mm,) if two_d else (row_mm, col_mm)), "mm"
            notes.append(f"pixel size from {group.name}/x_pixel_size in {unit_note}")
        elif detector_axis is not None and len(detector_axis[0]) > 1:
            step = abs(float(np.median(np.diff(detector_axis[0]))))
            col_mm, unit_note = to_mm(step, attr_str(detector_axis[1], "units"))
            pixel_size, units = (col_mm,), "mm"
            notes.append(f"pixel size from the steps of {detector_axis[1].name} in {unit_note}")
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
    converted = to_line_integrals(
        data[is_proj],
        conversion or Conversion(),
        where,
        default="frames",
        flats=data[is_flat] if is_flat.any() else None,
        darks=data[is_dark],
        missing_flats="no flat fields (image_key 1)",
        window=(start, stop, n_rows_total),
    )
    line = converted.values
    notes.extend(converted.notes)
    metadata.update(converted.fields().pop("metadata", {}))

    if geometry is not None:
        det_shape = (n_cols,) if two_d else (n_rows_total, n_cols)
        geom, note = read_geometry(geometry, det_shape=det_shape)
        notes.append(note or "geometry given by the caller")
        angles_deg = None
        units = "mm" if pixel_size is None else units
    else:
        values, source, angle_units = angle_found
        radians, degrees, unit_note = angles_to_rad(
            np.asarray(values, dtype=np.float64)[is_proj], angle_units
        )
        notes.append(f"angles from {source} in {unit_note}")
        if np.any(np.diff(degrees) < 0):
            order = np.argsort(degrees, kind="stable")
            line, radians, degrees = line[order], radians[order], degrees[order]
            notes.append(f"the angles were not in ascending order: {len(order)} projections sorted")
        spacing = pixel_size if pixel_size is not None else (1.0,) * 2
        if two_d:
            geom = ParallelBeam(radians, (n_cols,), spacing[-1])
        else:
            geom = ParallelBeam(radians, (n_rows_total, n_cols), spacing)
            notes.append("parallel beam (NeXus tomography frames)")
        angles_deg = degrees
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
        n_flats=converted.n_flats,
        n_darks=converted.n_darks,
        notes=notes,
        metadata=metadata,
    )
