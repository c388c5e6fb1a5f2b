"""Scans stored as bare arrays, whose geometry the caller gives: TIFF stacks, ``.npy`` and
``.npz`` files, and generic MATLAB variables (:mod:`dip_uq.io.matlab`).

The arrays are ``(angles, cols)`` or ``(angles, rows, cols)``; a unit row axis may be missing
or extra. Float arrays are taken as line integrals; raw counts need flat fields (and darks),
given as arrays ``(n, rows, cols)`` or TIFF / ``.npy`` files. An ``.npz`` archive may carry its
own geometry (a ``to_dict`` JSON string), flats, darks and ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Geometry
from ..scan import Scan, check_finite
from .detect import detect_format
from .flat_field import flat_dark_correct
from .geometry_files import GEOMETRY_HINT, GeometrySource, geometry_from_description, read_geometry
from .numpy_files import npy_array, npz_arrays
from .preprocess import select_rows
from .tiff import tiff_array, tiff_files

# flats or darks: an array (n, rows, cols) or a TIFF file/folder or .npy file holding one
FrameSource = np.ndarray | str | Path


def array_scan(
    data: np.ndarray,
    path: Path,
    source_format: str,
    what: str,
    *,
    geometry: GeometrySource | None,
    rows: int | slice | tuple[int, int] | None,
    flats: FrameSource | None,
    darks: FrameSource | None,
    geometry_kind: str | None,
    notes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Scan:
    """A scan from an array of projections/sinograms and a geometry given by the caller.

    Args:
        data: ``(angles, cols)`` or ``(angles, rows, cols)``, line integrals (float) or, with
            ``flats``, intensities.
        path, source_format: what the scan records it was read from.
        what: the kind of data for messages, e.g. ``"a .npy sinogram"``.
        geometry, geometry_kind: see :func:`~dip_uq.io.load_geometry`.
        rows, flats, darks: see :func:`~dip_uq.io.read_scan`.
        notes: what the reader found so far; extra: more :class:`Scan` fields.
    """
    where = path.name
    notes = list(notes or [])
    if geometry is None:
        raise ValueError(f"{where}: {what} needs a geometry; {GEOMETRY_HINT}")
    if data.ndim not in (2, 3) or not np.issubdtype(data.dtype, np.number):
        raise ValueError(
            f"{where}: expected a numeric array (angles, cols) or (angles, rows, cols), got "
            f"{data.dtype} {data.shape}"
        )
    det_shape = data.shape[1:]
    geom, note = read_geometry(geometry, kind=geometry_kind, det_shape=det_shape)
    if note:
        notes.append(note)
    data = fit_layout(data, geom, where)
    n_flats = n_darks = 0
    if flats is not None:
        flat_frames = fit_layout(load_frames(flats, "flats"), geom, "the flats", frames=True)
        dark_frames = (
            fit_layout(load_frames(darks, "darks"), geom, "the darks", frames=True)
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


def load_frames(source: FrameSource, what: str) -> np.ndarray:
    """Flat or dark frames from an array or a file/folder (TIFF, .npy)."""
    if isinstance(source, np.ndarray):
        return source
    path = Path(source)
    fmt = detect_format(path)
    if fmt == "tiff":
        return tiff_array(path)
    if fmt == "npy":
        return npy_array(path)
    raise ValueError(f"{path.name}: {what} must be a TIFF file/folder or a .npy file")


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


def read_npz(path: Path, *, geometry: GeometrySource | None, **options: Any) -> Scan:
    """A ``.npz`` archive: the array named ``sinogram`` (or ``sino``, ``projections``,
    ``data``, or the only 2D/3D one), with the archive's ``geometry``, ``flats``, ``darks`` and
    ``truth`` where the caller gives none; ``options`` as for :func:`array_scan`."""
    arrays = npz_arrays(path)
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
        geometry = geometry_from_description(json.loads(str(arrays["geometry"])), path.name)
        notes.append("geometry from the archive's 'geometry' entry (JSON)")
    for key in ("flats", "darks"):
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
