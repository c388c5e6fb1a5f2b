"""APS Data Exchange HDF5 files: ``/exchange/data`` (raw frames ``(angles, rows, cols)``),
``data_white`` / ``data_dark`` (flats and darks), ``theta`` (degrees unless its ``units``
attribute says radians), and the sample name and title when present.

Data Exchange records no pixel size, so the scan is parallel beam with lengths in detector
pixels (``units = "px"``) unless the caller gives a geometry. Frames without ``data_white``
follow :mod:`dip_uq.io.values` (``--flat``, ``--normalised``, ``--log``, ``--scale``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import ParallelBeam
from ..scan import Scan
from .geometry_files import GEOMETRY_HINT, GeometrySource, read_geometry
from .hdf5 import as_str, attr_str, open_h5
from .rows import read_rows, scan_from_rows
from .units import angles_to_rad
from .values import Conversion, to_line_integrals


def read_dxchange(
    path: Path,
    *,
    geometry: GeometrySource | None,
    rows: int | slice | tuple[int, int] | None,
    conversion: Conversion | None = None,
    **_: Any,
) -> Scan:
    """A Data Exchange file; ``geometry`` replaces the parallel beam built from ``theta``,
    ``rows`` keeps those detector rows (only they are read), ``conversion`` says what the
    values are without flats (:mod:`dip_uq.io.values`)."""
    where = path.name
    with open_h5(path) as f:
        exchange = f["exchange"]
        data_ds = exchange["data"]
        if data_ds.ndim != 3:
            raise ValueError(
                f"{where}: /exchange/data has shape {data_ds.shape}; expected (angles, rows, cols)"
            )
        n_angles, n_rows_total, n_cols = data_ds.shape
        start, stop, single = read_rows(rows, n_rows_total, where)
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
                attr_str(exchange["theta"], "units"),
            )
        metadata = {}
        for key, label in (("measurement/sample/name", "sample"), ("exchange/title", "title")):
            if key in f:
                metadata[label] = as_str(f[key][()])
    notes = [f"frames from /exchange/data {(n_angles, n_rows_total, n_cols)} {data.dtype}"]
    converted = to_line_integrals(
        data,
        conversion or Conversion(),
        where,
        default="frames",
        flats=white,
        darks=dark,
        flats_source="/exchange/data_white, /exchange/data_dark",
        missing_flats="no flat fields (/exchange/data_white)",
        window=(start, stop, n_rows_total),
    )
    line = converted.values
    notes.extend(converted.notes)
    metadata.update(converted.fields().pop("metadata", {}))
    if geometry is not None:
        geom, note = read_geometry(geometry, det_shape=(n_rows_total, n_cols))
        notes.append(note or "geometry given by the caller")
        angles_deg = None
    else:
        if theta is None:
            raise ValueError(f"{where}: no /exchange/theta (rotation angles); {GEOMETRY_HINT}")
        if theta[0].size != n_angles:
            raise ValueError(
                f"{where}: /exchange/theta has {theta[0].size} angles for {n_angles} projections"
            )
        units = theta[1] or "degrees"
        radians, angles_deg, unit_note = angles_to_rad(theta[0], units)
        notes.append(f"angles from /exchange/theta in {unit_note}")
        geom = ParallelBeam(radians, (n_rows_total, n_cols), 1.0)
        notes.append("parallel beam; no pixel size in the file: lengths are in detector pixels")
    return scan_from_rows(
        line,
        geom,
        start,
        stop,
        single,
        source_format="aps-dxchange",
        path=path,
        angles_deg=angles_deg,
        units="px" if geometry is None else "mm",
        n_flats=converted.n_flats,
        n_darks=converted.n_darks,
        notes=notes,
        metadata=metadata,
    )
