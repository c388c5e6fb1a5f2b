"""Electron-tomography tilt series as 3D parallel-beam scans, whatever file they came from
(:mod:`dip_uq.io.mrc`, :mod:`dip_uq.io.hyperspy`).

The images ``(n_tilts, ny, nx)`` are taken as aligned (shifts and in-plane rotation removed),
with the tilt axis through the image centre along one image axis. That axis is the geometry's
rotation axis ``z``: along the image's ``y``, the sinogram ``(angles, rows, cols)`` is the stack
as it is (rows = image ``y``, columns = image ``x``); along ``x``, each image is transposed
(rows = image ``x``, columns = image ``y``). At tilt 0 the beam runs along the geometry's ``y``
axis (the reconstruction's depth). Values become line integrals by :mod:`dip_uq.io.values`
with the default ``"line integrals"`` (HAADF/ADF-STEM signals, proportional to the projected
mass-thickness); ``--log`` for bright-field images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import ParallelBeam
from ..scan import Scan
from .geometry_files import GeometrySource, read_geometry
from .preprocess import select_rows, window_geometry
from .values import Conversion, to_line_integrals

__all__ = ["tilt_series_scan"]


def tilt_series_scan(
    data: np.ndarray,
    radians: np.ndarray,
    degrees: np.ndarray,
    pixel_nm: tuple[float, float] | None,
    *,
    path: Path,
    source_format: str,
    geometry: GeometrySource | None,
    rows: int | slice | tuple[int, int] | None,
    tilt_axis: str | None,
    default_axis: tuple[str, str],
    tilt_axis_offset: float | None,
    conversion: Conversion | None,
    notes: list[str],
    metadata: dict[str, Any],
) -> Scan:
    """A tilt series as a 3D parallel-beam scan (see the module docstring).

    Args:
        data: the images ``(n_tilts, ny, nx)``, any numeric dtype.
        radians, degrees: the tilt angles ``(n_tilts,)``.
        pixel_nm: the pixel size ``(y, x)`` of the images in nm (None: lengths in pixels).
        path, source_format, metadata: what the scan records it was read from.
        geometry: replaces the parallel beam built from the angles and the pixel size.
        rows: detector rows to keep (after the tilt axis has set what a row is).
        tilt_axis: ``"x"`` or ``"y"``, the image axis the tilt axis runs along (None: the
            format's default).
        default_axis: the format's default axis and why, e.g. ``("y", "IMOD's convention")``.
        tilt_axis_offset: pixels by which the tilt axis projects to the right of the image
            centre (towards larger columns).
        conversion: what the values are (:mod:`dip_uq.io.values`).
        notes: what the reader found so far (extended here).

    Raises:
        ValueError: a bad ``tilt_axis``, values that cannot become line integrals.
    """
    if tilt_axis not in (None, "x", "y"):
        raise ValueError(f"tilt_axis must be 'x' or 'y' (an image axis), got {tilt_axis!r}")
    axis = tilt_axis or default_axis[0]
    other = "x" if axis == "y" else "y"
    if axis == "y":
        stack, pitch = data, pixel_nm
        text = "tilt axis along the image's y: rows = image y, columns = image x"
    else:
        stack = data.transpose(0, 2, 1)
        pitch = None if pixel_nm is None else (pixel_nm[1], pixel_nm[0])
        text = "tilt axis along the image's x: rows = image x, columns = image y"
    if tilt_axis:
        text += " (given)"
    else:
        text += f" (the default, {default_axis[1]}); pass --tilt-axis {other} if it runs "
        text += f"along {other}"
    notes.append(text)
    conversion = conversion or Conversion()
    converted = to_line_integrals(stack, conversion, path.name, default="line integrals")
    line = converted.values
    notes.extend(converted.notes)
    if not conversion.flags():
        notes[-1] = (
            "values used as line integrals, without -log (HAADF/ADF-STEM signals are "
            "proportional to the projected mass-thickness); pass --log for bright-field images"
        )
    if geometry is not None:
        geom, note = read_geometry(geometry, det_shape=line.shape[1:])
        notes.append(note or "geometry given by the caller")
    else:
        geom = ParallelBeam(radians, line.shape[1:], pitch or (1.0, 1.0))
        notes.append(
            "parallel beam, tilt angle = rotation angle, beam along the reconstruction's y at "
            "tilt 0; alignment is the user's: the images are taken as aligned (shifts and "
            "in-plane rotation removed, as in IMOD's .ali) with the axis at the image centre"
        )
    if tilt_axis_offset:
        geom = window_geometry(geom, col_shift=-float(tilt_axis_offset))
        notes.append(f"tilt axis moved by {float(tilt_axis_offset):+.2f} px (given)")
    scan = Scan(
        line,
        geom,
        source_format=source_format,
        path=path,
        angles_deg=degrees if geometry is None else None,
        pixel_size=pitch,
        units="nm" if pitch is not None else "px",
        notes=notes,
        n_flats=converted.n_flats,
        metadata={**metadata, **converted.fields().get("metadata", {})},
    )
    return select_rows(scan, rows) if rows is not None else scan
