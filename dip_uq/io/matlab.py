"""MATLAB ``.mat`` files: v5 through scipy, v7.3 (HDF5 after a 512-byte header, arrays stored
transposed) through h5py.

A struct with ``sinogram`` and ``parameters`` fields (the HTC2022 ``CtData*`` layout: a 2D
fan-beam sinogram ``(angles, cols)`` of line integrals, angles in degrees, distances and pixel
size in ``distanceUnit``) becomes a :class:`~dip_uq.geometry.FanBeam` scan; any other file is
read as a bare array that needs the caller's geometry or angles (:mod:`dip_uq.io.arrays`).

The sinogram is the variable ``dataset`` (``--dataset NAME``), else one named ``sinogram``,
``sino``, ``projections`` or ``data``, else the only 2D/3D array with an axis as long as the
angles, else the only 2D/3D array (:func:`~dip_uq.io.arrays.pick_array`). Without angles from
the caller, a vector whose name says angle/theta/tilt (e.g. ``anglesRad``) gives them: in
radians when its name says ``rad``, in degrees when it says ``deg``, otherwise radians when
every value lies within ±2π and degrees when not (the note says which). The notes list the
variables found, which one was taken and why, and whether it was transposed.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import FanBeam
from ..scan import Scan, check_finite
from .acquisition import Acquisition
from .arrays import array_scan, pick_array
from .detect import file_head
from .geometry_files import GEOMETRY_HINT, GeometrySource, read_geometry
from .hdf5 import attr_str, is_hdf5, open_h5
from .units import LENGTH_TO_MM


def _mat73_value(obj: Any) -> Any:
    """A MATLAB v7.3 (HDF5) object as Python values: structs as dicts, arrays transposed
    back to MATLAB's order, char arrays as str."""
    import h5py

    if isinstance(obj, h5py.Group):
        return {k: _mat73_value(obj[k]) for k in obj if not k.startswith("#")}
    cls = attr_str(obj, "MATLAB_class")
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
    head = file_head(path)
    if head.startswith(b"MATLAB 7.3") or is_hdf5(head):
        with open_h5(path) as f:
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


def _angle_vector(variables: dict[str, Any]) -> tuple[str, np.ndarray, str, str] | None:
    """``(name, values, unit, why)`` of a vector variable whose name says angle/theta/tilt."""
    for name, value in variables.items():
        numeric = isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.number)
        if not (numeric and re.search("angle|theta|tilt", name, re.IGNORECASE)):
            continue
        if value.size < 2 or value.size != max(value.shape):
            continue
        values = np.asarray(value, dtype=np.float64).reshape(-1)
        for unit in ("rad", "deg"):
            if unit in name.lower():
                return name, values, unit, "the name says so"
        inside = bool(np.all(np.abs(values) <= 2 * np.pi + 1e-6))
        why = f"guessed: the values {'lie' if inside else 'do not lie'} within ±2π"
        return name, values, "rad" if inside else "deg", why
    return None


def read_mat(
    path: Path,
    *,
    geometry: GeometrySource | None,
    acquisition: Acquisition,
    dataset: str | None,
    **options: Any,
) -> Scan:
    """A ``.mat`` file: the HTC2022 struct, else a bare array (see the module docstring);
    ``options`` as for :func:`~dip_uq.io.arrays.array_scan`."""
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
        conversion = options.get("conversion")
        given = acquisition.flags() + (conversion.flags() if conversion is not None else [])
        if given or dataset is not None:
            raise ValueError(
                f"{where}: the HTC2022 struct '{htc[0]}' records its geometry and line "
                "integrals; leave out "
                f"{', '.join(given or ['--dataset'])} (or pass --geometry to replace it)"
            )
        return _htc_scan(path, version, *htc, geometry=geometry, **options)
    arrays = {k: v for k, v in variables.items() if isinstance(v, np.ndarray)}
    listing = ", ".join(f"{k} {v.dtype} {v.shape}" for k, v in arrays.items())
    notes = [f"MATLAB {version} variables: {listing or 'none'}"]
    found = _angle_vector(arrays) if geometry is None and acquisition.angles is None else None
    if found is not None:
        angle_name, values, unit, why = found
        acquisition = replace(acquisition, angles=values, angle_unit=unit)
        notes.append(f"angles from the variable '{angle_name}' ({values.size}), {unit} ({why})")
        arrays.pop(angle_name)
    n_angles = None
    if acquisition.angles is not None:
        n_angles = acquisition.read_angles(None, where)[0].size
    name, how = pick_array(arrays, dataset, where, "variable", n_angles)
    sino = arrays[name]
    notes.append(f"took '{name}' {sino.dtype} {sino.shape} as the sinogram ({how})")
    return array_scan(
        sino,
        path,
        "mat",
        "a .mat sinogram",
        geometry=geometry,
        acquisition=acquisition,
        notes=notes,
        **options,
    )


def _htc_scan(
    path: Path,
    version: str,
    name: str,
    struct: dict,
    *,
    geometry: GeometrySource | None,
    rows: Any,
    **_: Any,
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
        geom, note = read_geometry(geometry, det_shape=sino.shape[1:])
        notes.append(note or "geometry given by the caller")
        return Scan(sino, geom, source_format="htc2022-mat", path=path, notes=notes)
    try:
        angles = np.asarray(params["angles"], dtype=np.float64).reshape(-1)
        dso = _scalar(params["distanceSourceOrigin"])
        dsd = _scalar(params["distanceSourceDetector"])
        pixel = _scalar(params.get("pixelSizePost", params.get("pixelSize")))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: {name}.parameters lacks {error}; {GEOMETRY_HINT}") from None
    if angles.size != sino.shape[0]:
        raise ValueError(
            f"{where}: {name}.parameters.angles has {angles.size} angles for {sino.shape[0]} "
            "sinogram rows"
        )
    unit = str(params.get("distanceUnit", "mm")).strip() or "mm"
    scale = LENGTH_TO_MM.get(unit.lower(), 1.0)
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
