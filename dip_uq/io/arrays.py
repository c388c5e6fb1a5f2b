"""Scans stored as bare arrays, whose geometry the caller gives: TIFF stacks, ``.npy`` and
``.npz`` files, and generic MATLAB variables (:mod:`dip_uq.io.matlab`).

The geometry is a geometry file (or object), or the angles with the beam kind, pixel size and
distances (:class:`~dip_uq.io.acquisition.Acquisition`, no JSON needed). With a geometry the
arrays are ``(angles, cols)`` or ``(angles, rows, cols)``, a unit row axis may be missing or
extra; with angles, the axis with as many entries as angles is taken as the angle axis and
moved to the front (so a single 2D image with one row per angle is a 2D sinogram, and a
MATLAB ``(cols, angles)`` sinogram is transposed), with a note. Float arrays are taken as
line integrals; integer arrays (raw counts, or line integrals stored scaled) need to be told
what they are (:mod:`dip_uq.io.values`: ``--flat FILE`` and ``--dark FILE``, ``--log``,
``--normalised`` or ``--scale S``), and the refusal says which fits. An ``.npz`` archive may
carry its own geometry (a ``to_dict`` JSON string), flats, darks and ground truth.

Without a geometry or angles :class:`MissingGeometry` is raised; ``dip-uq info`` catches it to
describe the array all the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Geometry
from ..scan import Scan, check_finite
from .acquisition import Acquisition, orient
from .detect import detect_format
from .geometry_files import GEOMETRY_HINT, GeometrySource, geometry_from_description, read_geometry
from .numpy_files import npy_array, npz_arrays
from .preprocess import select_rows
from .tiff import tiff_array, tiff_files
from .values import Conversion, to_line_integrals
from .xradia import xradia_frames

# flats or darks: an array (n, rows, cols) or a TIFF file/folder, .npy or Xradia file holding one
FrameSource = np.ndarray | str | Path


class MissingGeometry(ValueError):
    """Bare arrays without a geometry or angles; ``summary`` describes what the file holds
    (one line per array) for ``dip-uq info``."""

    def __init__(self, message: str, summary: list[str]) -> None:
        super().__init__(message)
        self.summary = summary


def array_scan(
    data: np.ndarray,
    path: Path,
    source_format: str,
    what: str,
    *,
    geometry: GeometrySource | None,
    acquisition: Acquisition,
    rows: int | slice | tuple[int, int] | None,
    conversion: Conversion | None = None,
    flats: FrameSource | None = None,
    darks: FrameSource | None = None,
    notes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Scan:
    """A scan from an array of projections/sinograms and a geometry given by the caller.

    Args:
        data: ``(angles, cols)`` or ``(angles, rows, cols)`` (with angles: the angle axis may
            be any), line integrals (float) or, with ``flats``, intensities.
        path, source_format: what the scan records it was read from.
        what: the kind of data for messages, e.g. ``"a .npy sinogram"``.
        geometry: see :func:`~dip_uq.io.load_geometry`; acquisition: the angles, beam kind,
            pixel size and distances instead (its ``kind`` also serves ASTRA vector files).
        rows: see :func:`~dip_uq.io.read_scan`.
        conversion: what the values are (:mod:`dip_uq.io.values`); its flats replace the
            file's own ``flats`` and ``darks`` (an ``.npz`` archive's).
        notes: what the reader found so far; extra: more :class:`Scan` fields.

    Raises:
        MissingGeometry: neither a geometry nor angles.
    """
    where = path.name
    notes = list(notes or [])
    extra = dict(extra or {})
    if data.ndim not in (2, 3) or not np.issubdtype(data.dtype, np.number):
        raise ValueError(
            f"{where}: expected a numeric array (angles, cols) or (angles, rows, cols), got "
            f"{data.dtype} {data.shape}"
        )
    if acquisition.angles is not None:
        if geometry is not None:
            raise ValueError(
                f"{where}: both a geometry and angles were given; pass one of --geometry and "
                "--angles"
            )
        radians, degrees, note = acquisition.read_angles(None, where)
        data, moved = orient(data, radians.size, where)
        notes.extend([note, *([moved] if moved else [])])
        geom, scan_fields, note = acquisition.geometry(radians, data.shape[1:], where)
        notes.append(note)
        extra.update(scan_fields, angles_deg=degrees)
    else:
        if geometry is None:
            raise MissingGeometry(
                f"{where}: {what} needs a geometry; {GEOMETRY_HINT}, or --angles (with "
                "--geometry-kind and the distances fan/cone beam need)",
                [*notes, _array_summary(data)],
            )
        extras = acquisition.flags(*(n for n in acquisition.given() if n != "kind"))
        if extras:
            raise ValueError(
                f"{where}: {', '.join(extras)} apply with --angles; the geometry file already "
                "gives them"
            )
        geom, note = read_geometry(geometry, kind=acquisition.kind, det_shape=data.shape[1:])
        if note:
            notes.append(note)
    data = fit_layout(data, geom, where)
    if darks is not None and flats is None:
        raise ValueError(f"{where}: darks were given without flats; pass both")
    if conversion is None:  # a Python caller's flats and darks (files or arrays)
        conversion = Conversion(
            flats=None if flats is None else load_frames(flats, "flats"),
            darks=None if darks is None else load_frames(darks, "darks"),
        )
        flats = darks = None
    check_finite(data, f"{where}: the data")  # indices as the file has them
    frames = data if data.ndim == 3 else data[:, None, :]
    converted = to_line_integrals(
        frames,
        conversion,
        where,
        default="arrays",
        flats=None if flats is None else load_frames(flats, "flats"),
        darks=None if darks is None else load_frames(darks, "darks"),
        flats_source="the file's flats and darks",
    )
    notes.extend(converted.notes)
    fields = converted.fields()
    extra["metadata"] = {**extra.get("metadata", {}), **fields.pop("metadata", {})}
    scan = Scan(
        converted.values.reshape(data.shape),
        geom,
        source_format=source_format,
        path=path,
        notes=notes,
        **fields,
        **extra,
    )
    if rows is not None:
        scan = select_rows(scan, rows)
    return scan


# names a sinogram is looked for under, in this order
SINOGRAM_NAMES = ("sinogram", "sino", "projections", "data")


def pick_array(
    arrays: dict[str, Any], dataset: str | None, where: str, kind: str, n_angles: int | None = None
) -> tuple[str, str]:
    """The name of the sinogram among ``arrays`` (a file's variables) and why it was taken.

    In this order: ``dataset`` (the caller's choice), a name of :data:`SINOGRAM_NAMES`, the
    only 2D/3D numeric array with an axis of ``n_angles`` entries (when the angles are known),
    the only 2D/3D numeric array. ``kind`` names the entries in messages (``"variable"``).

    Raises:
        ValueError: ``dataset`` is not there, or the choice is ambiguous (the message lists the
            candidates and asks for ``--dataset``).
    """
    listing = ", ".join(
        f"{k} {np.shape(v)}" for k, v in arrays.items() if isinstance(v, np.ndarray)
    )
    if dataset is not None:
        if dataset not in arrays or not isinstance(arrays[dataset], np.ndarray):
            raise ValueError(
                f"{where}: no {kind} {dataset!r}; the file holds {listing or 'no arrays'}"
            )
        return dataset, "--dataset"
    name = next((k for k in SINOGRAM_NAMES if k in arrays), None)
    if name is not None:
        return name, "by its name"
    candidates = [  # numeric, 2D/3D, and more than a row or column vector
        k
        for k, v in arrays.items()
        if isinstance(v, np.ndarray)
        and v.ndim in (2, 3)
        and np.issubdtype(v.dtype, np.number)
        and sum(n > 1 for n in v.shape) >= 2
    ]
    if n_angles is not None:
        fitting = [k for k in candidates if n_angles in arrays[k].shape]
        if len(fitting) == 1:
            return fitting[0], f"the only 2D/3D array with an axis of {n_angles} angles"
        candidates = fitting or candidates
    if len(candidates) == 1:
        return candidates[0], "the only 2D/3D array"
    raise ValueError(
        f"{where}: cannot tell which {kind} is the sinogram among {listing or 'no arrays'}; "
        "choose one with --dataset NAME"
    )


def fit_layout(data: np.ndarray, geom: Geometry, where: str, frames: bool = False) -> np.ndarray:
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


def _array_summary(data: np.ndarray) -> str:
    """One line on an array: dtype, shape and the range of its values."""
    numeric = data.size and np.issubdtype(data.dtype, np.number)
    values = f", values {data.min():.6g} to {data.max():.6g}" if numeric else ""
    return f"array {data.dtype} {data.shape}{values}"


def load_frames(source: FrameSource, what: str) -> np.ndarray:
    """Flat or dark frames from an array or a file/folder: TIFF, .npy, or an Xradia file (its
    reference image, else its images; :func:`~dip_uq.io.xradia.xradia_frames`)."""
    if isinstance(source, np.ndarray):
        return source
    path = Path(source)
    fmt = detect_format(path)
    if fmt == "tiff":
        return tiff_array(path)
    if fmt == "npy":
        return npy_array(path)
    if fmt == "txrm":
        return xradia_frames(path)
    raise ValueError(
        f"{path.name}: {what} must be a TIFF file/folder, a .npy file or an Xradia file, not {fmt}"
    )


def read_tiff(path: Path, **options: Any) -> Scan:
    """A folder of TIFFs or a multi-page TIFF; ``options`` as for :func:`array_scan`."""
    data = tiff_array(path)
    kind = "a folder of TIFFs" if path.is_dir() else "a TIFF stack"
    if path.is_dir():
        note = f"{len(tiff_files(path))} TIFF files read in name order as projections"
    elif data.ndim == 2:
        note = "one TIFF image read as a sinogram (angles, cols)"
    else:
        note = f"{data.shape[0]} TIFF pages read as projections"
    return array_scan(data, path, "tiff", kind, notes=[note], **options)


def read_npy(path: Path, **options: Any) -> Scan:
    """A ``.npy`` sinogram; ``options`` as for :func:`array_scan`."""
    data = npy_array(path)
    return array_scan(
        data, path, "npy", "a .npy sinogram", notes=[f"array {data.dtype} {data.shape}"], **options
    )


def read_npz(
    path: Path, *, geometry: GeometrySource | None, dataset: str | None, **options: Any
) -> Scan:
    """A ``.npz`` archive: the array ``dataset``, else the one named ``sinogram`` (or ``sino``,
    ``projections``, ``data``, or the only 2D/3D one), with the archive's ``geometry``,
    ``flats``, ``darks`` and ``truth`` where the caller gives none; ``options`` as for
    :func:`array_scan`."""
    arrays = npz_arrays(path)
    name, how = pick_array(arrays, dataset, path.name, "array")
    notes = [f"array '{name}' {arrays[name].dtype} {arrays[name].shape} ({how})"]
    if geometry is None and "geometry" in arrays and options["acquisition"].angles is None:
        geometry = geometry_from_description(json.loads(str(arrays["geometry"])), path.name)
        notes.append("geometry from the archive's 'geometry' entry (JSON)")
    for key in ("flats", "darks"):  # the archive's own; a caller's --flat replaces them
        if options.get(key) is None and key in arrays:
            options[key] = arrays[key]
    extra = {"truth": arrays["truth"]} if "truth" in arrays else None
    return array_scan(
        arrays[name],
        path,
        "npz",
        "a .npz sinogram",
        geometry=geometry,
        notes=notes,
        extra=extra,
        **options,
    )
