"""Reading a scan file: :func:`read_scan` detects the format and calls its reader.

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
:func:`~dip_uq.io.flat_field.flat_dark_correct`; data already stored as line integrals
(HTC2022, NumPy, dip-uq's own NXtomo files) pass through. Every reader returns a
:class:`~dip_uq.scan.Scan` whose ``notes`` say which datasets were used and what was done to
them.

Angles in files are taken as the geometry's ``θ`` directly (degrees converted to radians): a
scanner that turns the other way gives a mirror-image reconstruction, nothing worse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..scan import Scan
from .arrays import read_npy, read_npz, read_tiff
from .detect import FORMATS, detect_format, detect_hdf5
from .dxchange import read_dxchange
from .geometry_files import GeometrySource
from .matlab import read_mat
from .nexus import read_nexus

__all__ = ["read_scan"]

# other names for the formats; None: an HDF5 file whose layout decides
_ALIASES = {"nexus": "nxtomo", "nx": "nxtomo", "h5": None, "hdf5": None, "tif": "tiff"}
_READERS = {
    "nxtomo": read_nexus,
    "dxchange": read_dxchange,
    "mat": read_mat,
    "tiff": read_tiff,
    "npy": read_npy,
    "npz": read_npz,
}


def read_scan(
    path: str | Path,
    *,
    geometry: GeometrySource | None = None,
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
            file's own for the others. A :class:`~dip_uq.geometry.Geometry`, a ``to_dict``
            dictionary, a JSON file of one, or an ASTRA vector text file (12 columns in 3D, 6
            in 2D, one line per projection, ASTRA's conventions; see
            :func:`~dip_uq.io.load_geometry`).
        format: one of :data:`~dip_uq.io.FORMATS` to skip detection (``"nexus"`` is an alias of
            ``"nxtomo"``).
        rows: detector rows to keep (an index, a ``slice`` or ``(start, stop)``); HDF5 frames
            are read only there. One index of a parallel-beam scan gives a 2D scan.
        flats, darks: flat-field and dark frames for raw TIFF/NumPy projections (an array
            ``(n, rows, cols)`` or a file/folder readable as one); the projections are then
            converted with ``-log((p - dark) / (flat - dark))``.
        geometry_kind: ``"parallel"`` or ``"cone"`` for an ASTRA vector file (inferred from
            the vectors when not given).

    Returns:
        A :class:`~dip_uq.scan.Scan` (sinogram float32 ``(angles, cols)`` or
        ``(angles, rows, cols)``).

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
            key = detect_hdf5(path)
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
    reader = _READERS[key]
    try:
        return reader(path, **options)
    except FileNotFoundError:
        raise
    except (OSError, KeyError, EOFError) as error:  # h5py/tifffile on truncated content
        raise ValueError(
            f"{path.name}: cannot read the file ({str(error).splitlines()[0]}); it is truncated "
            "or damaged"
        ) from None
