"""HyperSpy ``.hspy`` files (HDF5) holding a tilt series, as HyperSpy and etspy (its
``TomoStack``) write them, read with ``h5py`` (HyperSpy itself is not needed).

Layout read::

    /                                 attrs file_format = "HyperSpy", file_format_version
    /Experiments/<title>/data         the signal: a Signal2D stack (n_tilts, ny, nx)
    /Experiments/<title>/axis-k       one group per array axis k = 0, 1, 2 (array order), attrs
                                      name, units, scale, offset, size, navigate; a dataset
                                      ``axis`` instead of scale/offset for non-uniform axes
    /Experiments/<title>/metadata/Tomography/tilts
                                      etspy: the tilt of each image in degrees

* **Tilt angles**, the first of: the caller's (``--angles``); etspy's
  ``metadata/Tomography/tilts`` when its values are not all equal (etspy writes zeros when it
  does not know them); the navigation axis (``navigate`` true, else axis 0): ``offset + scale *
  i`` (or its ``axis`` values) in its ``units`` (degrees unless they say radians; an axis
  without units is not calibrated).
* **Pixel size**: the two signal axes' ``scale`` in their ``units`` (nm, Å, pm, µm, mm, m),
  converted to nm as for MRC files; without a length unit lengths are in detector pixels.
* **Tilt axis** along the image's ``x`` (the array's last axis) by default, etspy's
  convention: it reconstructs the slices ``stack[:, :, i]``, whose sinograms run along ``y``;
  ``--tilt-axis y`` for stacks aligned the IMOD way. The rest is
  :func:`~dip_uq.io.tilt_series.tilt_series_scan` (values as line integrals, ``--log`` for
  bright field; alignment is the user's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..scan import Scan
from .acquisition import Acquisition
from .angles import read_angles
from .geometry_files import GeometrySource
from .hdf5 import attr_str, open_h5, safe_get
from .tilt_series import tilt_series_scan
from .values import Conversion

__all__ = ["is_hyperspy", "read_hspy"]

# length unit -> nm (HyperSpy writes "nm", "Å" or "A", "µm", ...); others: lengths in pixels
_TO_NM = {
    "pm": 1e-3,
    "å": 0.1,
    "a": 0.1,
    "angstrom": 0.1,
    "nm": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "mm": 1e6,
    "m": 1e9,
}
_TILTS = ("metadata/Tomography/tilts", "metadata/Tomography/_sig_tilts/data")


def is_hyperspy(f: Any) -> bool:
    """Whether an open HDF5 file is in HyperSpy's format (root attribute ``file_format`` or an
    ``Experiments`` group)."""
    return (attr_str(f, "file_format") or "").lower() == "hyperspy" or "Experiments" in f


def _experiment(f: Any, where: str) -> tuple[Any, str]:
    """The first group under ``/Experiments`` that holds ``data``, and its title."""
    experiments = safe_get(f, "Experiments")[0]
    for title in experiments if experiments is not None else ():
        group = safe_get(experiments, title)[0]
        if group is not None and hasattr(group, "keys") and "data" in group:
            return group, title
    raise ValueError(f"{where}: a HyperSpy file without /Experiments/<title>/data; nothing to read")


def _axis(group: Any, k: int, size: int) -> dict[str, Any]:
    """Axis ``k`` of an experiment: name, units, navigate and its values ``(size,)``."""
    axis = safe_get(group, f"axis-{k}")[0]
    if axis is None:
        return {"name": f"axis {k}", "units": None, "navigate": None, "values": None}
    if "axis" in axis:
        values = np.asarray(axis["axis"][()], np.float64).reshape(-1)
    else:
        scale = float(axis.attrs.get("scale", 1.0))
        offset = float(axis.attrs.get("offset", 0.0))
        values = offset + scale * np.arange(size)
    navigate = axis.attrs.get("navigate")
    units = attr_str(axis, "units")
    return {
        "name": attr_str(axis, "name") or f"axis {k}",
        "units": None if units in (None, "", "<undefined>") else units,
        "navigate": None if navigate is None else bool(navigate),
        "values": values if values.size == size else None,
    }


def _pixel_nm(axes: list[dict[str, Any]]) -> tuple[tuple[float, float] | None, str]:
    """The pixel size ``(y, x)`` in nm from the signal axes, and a note."""
    sizes = []
    for axis in axes:
        factor = _TO_NM.get((axis["units"] or "").strip().lower())
        values = axis["values"]
        if factor is None or values is None or values.size < 2:
            return None, (
                f"no length unit on the signal axes ({axes[0]['units']!r}, {axes[1]['units']!r}): "
                "lengths are in detector pixels"
            )
        sizes.append(abs(float(values[1] - values[0])) * factor)
    text = " x ".join(f"{a['values'][1] - a['values'][0]:g} {a['units']}" for a in axes[::-1])
    return (sizes[0], sizes[1]), f"pixel size {text} (x by y) from the signal axes: lengths in nm"


def read_hspy(
    path: Path,
    *,
    geometry: GeometrySource | None,
    rows: int | slice | tuple[int, int] | None,
    acquisition: Acquisition,
    tilt_axis: str | None,
    tilt_axis_offset: float | None,
    conversion: Conversion | None = None,
) -> Scan:
    """A HyperSpy tilt series (see the module docstring); the arguments as for
    :func:`~dip_uq.io.mrc.read_mrc`.

    Raises:
        ValueError: no experiment, not a stack of images, no or the wrong number of tilt
            angles, acquisition options other than the angles.
    """
    where = path.name
    other = [n for n in acquisition.given() if n != "angles"]
    if other:
        raise ValueError(
            f"{where}: {', '.join(acquisition.flags(*other))} do not apply to a HyperSpy tilt "
            "series (parallel beam, pixel size from its axes); leave them out"
        )
    with open_h5(path) as f:
        group, title = _experiment(f, where)
        ds = group["data"]
        if ds.ndim != 3 or ds.shape[0] < 2 or not np.issubdtype(ds.dtype, np.number):
            raise ValueError(
                f"{where}: /Experiments/{title}/data is {ds.dtype} {ds.shape}; a tilt series is a "
                "stack of images (n_tilts, ny, nx)"
            )
        data = np.asarray(ds[()])
        axes = [_axis(group, k, n) for k, n in enumerate(data.shape)]
        tilts = None
        for name in _TILTS:
            found = safe_get(group, name)[0]
            if found is not None and hasattr(found, "shape") and found.size == data.shape[0]:
                tilts = (np.asarray(found[()], np.float64).reshape(-1), f"{group.name}/{name}")
                break
        version = attr_str(f, "file_format_version") or "?"
    n = data.shape[0]
    nav = [k for k, a in enumerate(axes) if a["navigate"]]
    if nav and nav != [0]:
        raise ValueError(
            f"{where}: the navigation axes are {nav}, not the first: not a stack of images "
            "(tilts, y, x); transpose it in HyperSpy (s.T) and save it again"
        )
    notes = [
        f"HyperSpy {version} file: /Experiments/{title}/data {data.dtype} {data.shape}, axes "
        + ", ".join(f"{a['name']} ({a['units'] or 'no unit'})" for a in axes)
    ]
    tilt = axes[0]
    if acquisition.angles is not None:
        radians, degrees, note = acquisition.read_angles(n, where)
    elif tilts is not None and np.ptp(tilts[0]) > 0:
        radians, degrees, _ = read_angles(tilts[0], "deg", n, where)
        note = f"tilt angles from {tilts[1]} (etspy), degrees"
    elif tilt["units"] is not None and tilt["values"] is not None and np.ptp(tilt["values"]) > 0:
        unit = "rad" if (tilt["units"] or "").lower().startswith("rad") else "deg"
        radians, degrees, _ = read_angles(tilt["values"], unit, n, where)
        note = (
            f"tilt angles from the navigation axis '{tilt['name']}' (offset + scale * i), "
            f"{'radians' if unit == 'rad' else 'degrees'}"
        )
    else:
        raise ValueError(
            f"{where}: no tilt angles (no metadata/Tomography/tilts, and the axis "
            f"'{tilt['name']}' is not calibrated: no units or no steps); pass --angles FILE or "
            "START:STOP:COUNT"
        )
    notes.append(note)
    pixel, note = _pixel_nm(axes[1:])
    notes.append(note)
    return tilt_series_scan(
        data,
        radians,
        degrees,
        pixel,
        path=path,
        source_format="hspy",
        geometry=geometry,
        rows=rows,
        tilt_axis=tilt_axis,
        default_axis=("x", "etspy's convention"),
        tilt_axis_offset=tilt_axis_offset,
        conversion=conversion,
        notes=notes,
        metadata={"title": title},
    )
