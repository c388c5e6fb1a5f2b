"""Detector rows chosen while reading: HDF5 frames are read only in the rows asked for, and
the scan gets the geometry of that window of the detector.

``rows`` is an index, a ``slice`` or ``(start, stop)`` (see
:func:`~dip_uq.io.preprocess.select_rows`); one row of a parallel-beam scan becomes a 2D scan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry import Geometry
from ..scan import Scan, check_matches_geometry
from .preprocess import index_range, slice_geometry, window_geometry


def read_rows(rows: Any, n_rows: int, where: str) -> tuple[int, int, bool]:
    """``rows`` (an index, a slice or ``(start, stop)``) as ``(start, stop, single)``."""
    if rows is None:
        return 0, n_rows, False
    try:
        return index_range(rows, n_rows, "rows")
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def scan_from_rows(
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
