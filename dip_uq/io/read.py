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
                   multi-page TIFF, or one image holding a sinogram; needs a geometry or angles
``npy`` / ``npz``  NumPy arrays; need a geometry or angles (an ``.npz`` may carry one as JSON)
``mrc``            an electron-tomography tilt series (:mod:`~dip_uq.io.mrc`): tilt angles from
                   ``.tlt``/``.rawtlt``, the extended header or the caller, pixel size in nm
``txrm``           Zeiss Xradia TXRM/TXM (:mod:`~dip_uq.io.xradia`): projections, angles,
                   pixel size, distances (cone beam) and the reference image
``hspy``           a HyperSpy/etspy tilt series (:mod:`~dip_uq.io.hyperspy`): the image stack,
                   tilts from etspy's metadata or the navigation axis, pixel size in nm
=================  ===========================================================================

Files without a geometry (TIFF, NumPy, generic .mat arrays) take either a geometry file or
the angles with the beam kind, pixel size and distances
(:class:`~dip_uq.io.acquisition.Acquisition`); the array is then turned so that the axis with
one entry per angle comes first.

Stored values become line integrals by :func:`~dip_uq.io.values.to_line_integrals`: with the
file's flat fields (:func:`~dip_uq.io.flat_field.flat_dark_correct`) or what the caller says
(``flats``/``darks`` from other files, ``normalised``, ``log``, ``scale``: every format takes
them); data already stored as line integrals (HTC2022, float NumPy arrays, dip-uq's own NXtomo
files) pass through. ``describe=True`` (``dip-uq info``) keeps values that cannot be converted
and says what is missing instead of refusing them. Every reader returns a
:class:`~dip_uq.scan.Scan` whose ``notes`` say which datasets were used and what was done to
them.

Angles in files are taken as the geometry's ``θ`` directly (degrees converted to radians): a
scanner that turns the other way gives a mirror-image reconstruction, nothing worse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..scan import Scan
from .acquisition import Acquisition
from .angles import AngleSource
from .arrays import load_frames, read_npy, read_npz, read_tiff
from .detect import FORMATS, detect_format, detect_hdf5
from .dxchange import read_dxchange
from .geometry_files import GeometrySource
from .hyperspy import read_hspy
from .matlab import read_mat
from .mrc import read_mrc
from .nexus import read_nexus
from .values import Conversion
from .xradia import read_txrm

__all__ = ["read_scan"]

# other names for the formats; None: an HDF5 file whose layout decides
_ALIASES = {
    "nexus": "nxtomo",
    "nx": "nxtomo",
    "h5": None,
    "hdf5": None,
    "tif": "tiff",
    "txm": "txrm",
    "xradia": "txrm",
    "st": "mrc",
    "ali": "mrc",
    "hyperspy": "hspy",
}
_READERS = {
    "nxtomo": read_nexus,
    "dxchange": read_dxchange,
    "mat": read_mat,
    "tiff": read_tiff,
    "npy": read_npy,
    "npz": read_npz,
    "mrc": read_mrc,
    "txrm": read_txrm,
    "hspy": read_hspy,
}
# the options each reader takes besides geometry, rows and the conversion, which every reader
# takes (the others are refused when given)
_TILT_SERIES = ("acquisition", "tilt_axis", "tilt_axis_offset")
_OPTIONS = {
    "nxtomo": (),
    "dxchange": (),
    "txrm": (),
    "mat": ("acquisition", "dataset"),
    "npz": ("acquisition", "dataset"),
    "tiff": ("acquisition",),
    "npy": ("acquisition",),
    "mrc": _TILT_SERIES,
    "hspy": _TILT_SERIES,
}
# the command-line options that set them, for the message
_FLAGS = {
    "dataset": "--dataset",
    "tilt_axis": "--tilt-axis",
    "tilt_axis_offset": "--tilt-axis-offset",
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
    angles: AngleSource | None = None,
    angle_unit: str = "deg",
    pixel_size: float | None = None,
    source_origin: float | None = None,
    origin_detector: float | None = None,
    dataset: str | None = None,
    tilt_axis: str | None = None,
    tilt_axis_offset: float | None = None,
    log: bool | None = None,
    normalised: bool | None = None,
    scale: float | None = None,
    describe: bool = False,
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
        flats, darks: flat-field and dark frames from elsewhere, for any format (an array
            ``(n, rows, cols)`` or one frame, or a TIFF file/folder, ``.npy`` or Xradia file
            holding them); the projections are then converted with
            ``-log((p - dark) / (flat - dark))``, replacing the file's own flats.
        geometry_kind: ``"parallel"``, ``"fan"`` or ``"cone"``: the beam of a scan given by
            ``angles`` (parallel when not given), or of an ASTRA vector file (inferred from the
            vectors when not given).
        angles: instead of a geometry, for TIFF, NumPy and generic .mat data (and MRC tilt
            series): a file, ``"START:STOP:COUNT"`` with an optional unit (``"0:180:360deg"``)
            or an array (see :mod:`dip_uq.io.angles`), in ``angle_unit`` (``"deg"`` or
            ``"rad"``) unless the range says.
        pixel_size: detector pixel pitch in mm with ``angles`` (None: lengths in pixels).
        source_origin, origin_detector: source–axis and axis–detector distances in mm, for
            ``geometry_kind`` fan or cone.
        dataset: the variable (.mat) or array (.npz) that holds the sinogram.
        tilt_axis, tilt_axis_offset: for tilt series (MRC, HyperSpy), the image axis (``"x"``
            or ``"y"``) the tilt axis runs along and its offset in pixels from the image
            centre; see :mod:`dip_uq.io.tilt_series`.
        log: take ``-log(I / I0)``, ``I0`` the 99.9th percentile of the data (intensities
            without flat fields, bright-field tilt series); any format.
        normalised: the values are transmissions already divided by a flat field (``-log``).
        scale: multiply the stored values by this (line integrals stored scaled, or with
            ``normalised`` transmissions stored scaled).
        describe: keep values that cannot become line integrals instead of refusing them;
            the scan's ``metadata["values"]`` then says what is missing (``dip-uq info``).

    Returns:
        A :class:`~dip_uq.scan.Scan` (sinogram float32 ``(angles, cols)`` or
        ``(angles, rows, cols)``).

    Raises:
        FileNotFoundError: the path (or the geometry file) does not exist.
        ValueError: unknown, truncated or damaged file; missing datasets; a geometry that does
            not fit the data; NaN/Inf in the data; unusable flats; values that cannot become
            line integrals without an option (:class:`~dip_uq.io.values.NeedsConversion`).
            Messages are one line and say what to do.
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
    acquisition = Acquisition(
        angles=angles,
        angle_unit=angle_unit,
        kind=geometry_kind,
        pixel_size=pixel_size,
        source_origin=source_origin,
        origin_detector=origin_detector,
    )
    given = {
        "dataset": dataset,
        "tilt_axis": tilt_axis,
        "tilt_axis_offset": tilt_axis_offset,
    }
    refused = [_FLAGS[k] for k, v in given.items() if v is not None and k not in _OPTIONS[key]]
    if acquisition.given() and "acquisition" not in _OPTIONS[key]:
        refused += acquisition.flags()
    if refused:
        raise ValueError(
            f"{path.name}: {', '.join(refused)} do not apply to {key} files, which record "
            "their own geometry; leave them out (or pass --geometry to replace it)"
        )
    options = {k: v for k, v in {**given, "acquisition": acquisition}.items() if k in _OPTIONS[key]}
    conversion = Conversion(
        flats=None if flats is None else load_frames(flats, "flats"),
        darks=None if darks is None else load_frames(darks, "darks"),
        normalised=bool(normalised),
        log=bool(log),
        scale=scale,
        describe=describe,
    )
    reader = _READERS[key]
    try:
        return reader(path, geometry=geometry, rows=rows, conversion=conversion, **options)
    except FileNotFoundError:
        raise
    except (OSError, KeyError, EOFError) as error:  # h5py/tifffile on truncated content
        raise ValueError(
            f"{path.name}: cannot read the file ({str(error).splitlines()[0]}); it is truncated "
            "or damaged"
        ) from None
