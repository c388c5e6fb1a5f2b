"""Zeiss Xradia ``.txrm`` / ``.txm`` projection files, read with ``olefile``.

They are OLE2 compound files (Microsoft's Compound File Binary format) whose streams hold
little-endian values. The layout below is the one the public readers use (dxchange's
``read_txrm``, CIL's ``ZEISSDataReader``, mbirjax's Zeiss reader); a stream marked *needed*
that is missing is an error that names it:

=============================================  =================================================
stream                                         content
=============================================  =================================================
``ImageInfo/ImagesTaken`` (or ``NoOfImages``)  *needed*: number of projections, uint32
``ImageInfo/ImageWidth``, ``ImageHeight``      *needed*: detector columns and rows, uint32
``ImageInfo/DataType``                         *needed*: 5 = uint16, 10 = float32
``ImageData{k}/Image{i}``                      *needed*: projection ``i`` = 1, 2, ... as
                                               ``(height, width)``, ``k = ceil(i / 100)``
``ImageInfo/Angles``                           *needed*: rotation angle per projection, float32,
                                               degrees
``ImageInfo/PixelSize``                        *needed*: pixel size at the rotation axis, float32,
                                               µm
``ImageInfo/StoRADistance``, ``DtoRADistance``  source–axis and detector–axis distance per
                                               projection, float32, mm (absolute values of the
                                               first are used)
``ReferenceData/Image``, ``ReferenceData/       the reference (flat field) ``(height, width)`` and
DataType``                                     its type
``ImageInfo/AcquisitionMode``                  0 for projections; others (a reconstructed
                                               ``.txm`` volume) are refused
``Alignment/X-Shifts``, ``Y-Shifts``           per-projection shifts: reported, not applied
=============================================  =================================================

The scan is cone beam (flat detector, pixel pitch = pixel size at the axis × magnification)
when both distances are set (non-zero), parallel beam otherwise; lengths in mm. Projections
become line integrals with the reference as flat field (no dark frames: dark level 0). Without
a reference, float projections in (0, 1.5] are taken as normalised transmissions; others need
a flat field from elsewhere (``--flat FILE``: a TIFF/.npy image, or another Xradia file, whose
reference image or else the mean of its images is used), ``--normalised`` or ``--log``
(:mod:`dip_uq.io.values`); ``dip-uq info`` describes such a file all the same. Angles are used
as the geometry's ``θ`` (a scanner turning the other way mirrors the reconstruction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import ConeBeam, ParallelBeam
from ..scan import Scan
from .geometry_files import GeometrySource, read_geometry
from .rows import read_rows, scan_from_rows
from .units import LENGTH_TO_MM
from .values import Conversion, to_line_integrals

__all__ = ["read_txrm", "xradia_frames"]

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_DATA_TYPES = {5: np.dtype("<u2"), 10: np.dtype("<f4")}


class _Streams:
    """The streams of an open OLE file, read as little-endian arrays with one-line errors."""

    def __init__(self, ole: Any, where: str) -> None:
        self.ole, self.where = ole, where

    def has(self, name: str) -> bool:
        return bool(self.ole.exists(name))

    def read(self, name: str, dtype: str | np.dtype, count: int = 1) -> np.ndarray:
        """``count`` values of ``dtype`` from the start of stream ``name`` (needed)."""
        if not self.has(name):
            raise ValueError(
                f"{self.where}: no {name} stream; the file is not a complete Xradia projection "
                "file (export the scan again as .txrm)"
            )
        try:
            raw = self.ole.openstream(name).read()
        except OSError as error:
            raise ValueError(
                f"{self.where}: cannot read the stream {name} ({error}); the file is truncated"
            ) from None
        dtype = np.dtype(dtype)
        if len(raw) < count * dtype.itemsize:
            raise ValueError(
                f"{self.where}: the stream {name} holds {len(raw)} bytes, fewer than the "
                f"{count} values of {dtype.itemsize} bytes it needs; the file is truncated"
            )
        return np.frombuffer(raw, dtype=dtype, count=count)

    def scalar(self, name: str, dtype: str) -> float:
        return float(self.read(name, dtype)[0])

    def data_type(self, name: str) -> np.dtype:
        code = int(self.scalar(name, "<u4"))
        if code not in _DATA_TYPES:
            raise ValueError(
                f"{self.where}: {name} is {code}; dip-uq reads Xradia images of type 5 (uint16) "
                "and 10 (float32)"
            )
        return _DATA_TYPES[code]


def read_txrm(
    path: Path,
    *,
    geometry: GeometrySource | None,
    rows: int | slice | tuple[int, int] | None,
    conversion: Conversion | None = None,
) -> Scan:
    """A TXRM/TXM projection file (see the module docstring); ``geometry`` replaces the one
    built from the file, ``rows`` keeps those detector rows, ``conversion`` says what to do
    without a reference image (:mod:`dip_uq.io.values`).

    Raises:
        ValueError: not an OLE2 file, no image streams, a needed stream missing or short, a
            truncated file, a reconstruction instead of projections.
    """
    import olefile

    where = path.name
    try:
        ole = olefile.OleFileIO(str(path))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{where}: cannot open the OLE2 (Xradia) file ({error}); it is truncated or damaged"
        ) from None
    with ole:
        streams = _Streams(ole, where)
        if not streams.has("ImageData1/Image1"):
            raise ValueError(
                f"{where}: an OLE2 file without Xradia image streams (ImageData1/Image1): not a "
                "TXRM/TXM projection file; export the projections from the Xradia software"
            )
        if streams.has("ImageInfo/AcquisitionMode"):
            if int(streams.scalar("ImageInfo/AcquisitionMode", "<u4")) != 0:
                raise ValueError(
                    f"{where}: holds reconstructed slices (ImageInfo/AcquisitionMode != 0), not "
                    "projections; dip-uq reconstructs from the projection file (.txrm)"
                )
        count = "ImageInfo/ImagesTaken"
        if not streams.has(count):
            count = "ImageInfo/NoOfImages"
        n = int(streams.scalar(count, "<u4"))
        width = int(streams.scalar("ImageInfo/ImageWidth", "<u4"))
        height = int(streams.scalar("ImageInfo/ImageHeight", "<u4"))
        dtype = streams.data_type("ImageInfo/DataType")
        angles_deg = streams.read("ImageInfo/Angles", "<f4", n).astype(np.float64)
        pixel_um = streams.scalar("ImageInfo/PixelSize", "<f4")
        start, stop, single = read_rows(rows, height, where)
        data = np.empty((n, stop - start, width), dtype=dtype)
        for i in range(n):
            name = f"ImageData{i // 100 + 1}/Image{i + 1}"
            data[i] = streams.read(name, dtype, height * width).reshape(height, width)[start:stop]
        reference = None
        if streams.has("ReferenceData/Image"):
            ref_type = streams.data_type("ReferenceData/DataType")
            image = streams.read("ReferenceData/Image", ref_type, height * width)
            reference = image.reshape(1, height, width)[:, start:stop]
        distances = [
            abs(float(streams.read(f"ImageInfo/{name}", "<f4", 1)[0]))
            if streams.has(f"ImageInfo/{name}")
            else 0.0
            for name in ("StoRADistance", "DtoRADistance")
        ]
        shifted = [
            name
            for name in ("Alignment/X-Shifts", "Alignment/Y-Shifts")
            if streams.has(name) and np.any(streams.read(name, "<f4", n) != 0)
        ]
    notes = [f"Xradia OLE file: {n} projections {height} x {width} {dtype.name} ({count})"]
    if reference is None:
        notes.append("no reference image (ReferenceData/Image): the file holds no flat field")
    converted = to_line_integrals(
        data,
        conversion or Conversion(),
        where,
        default="frames",
        flats=reference,
        flats_source="the flat is ReferenceData/Image",
        missing_flats="no reference image (ReferenceData/Image, the flat field)",
        window=(start, stop, height),
    )
    line = converted.values
    notes.extend(converted.notes)
    if shifted:
        notes.append(f"the file records alignment shifts ({', '.join(shifted)}): not applied")
    pixel = pixel_um * LENGTH_TO_MM["um"]
    source_axis, axis_detector = distances
    fields: dict[str, Any] = {"units": "mm"}
    if geometry is not None:
        geom, note = read_geometry(geometry, det_shape=(height, width))
        notes.append(note or "geometry given by the caller")
    elif pixel <= 0:
        raise ValueError(
            f"{where}: ImageInfo/PixelSize is {pixel_um:g} µm; pass --geometry to give the scan "
            "geometry"
        )
    elif source_axis > 0 and axis_detector > 0:
        magnification = (source_axis + axis_detector) / source_axis
        geom = ConeBeam(
            np.deg2rad(angles_deg),
            (height, width),
            pixel * magnification,
            source_axis,
            axis_detector,
        )
        fields["distances"] = {"source_origin": source_axis, "origin_detector": axis_detector}
        fields["pixel_size"] = (pixel * magnification,) * 2
        notes.append(
            f"cone beam: source-axis {source_axis:g} mm, axis-detector {axis_detector:g} mm "
            f"(ImageInfo/StoRADistance, DtoRADistance), pixel {pixel_um:g} µm at the axis "
            f"(ImageInfo/PixelSize) x magnification {magnification:.4g} on the detector"
        )
    else:
        geom = ParallelBeam(np.deg2rad(angles_deg), (height, width), pixel)
        fields["pixel_size"] = (pixel, pixel)
        notes.append(
            f"parallel beam (no source/detector distances in the file), pixel {pixel_um:g} µm "
            "(ImageInfo/PixelSize)"
        )
    notes.append("angles from ImageInfo/Angles in degrees")
    return scan_from_rows(
        line,
        geom,
        start,
        stop,
        single,
        source_format="xradia",
        path=path,
        angles_deg=angles_deg if geometry is None else None,
        notes=notes,
        **converted.fields(),
        **fields,
    )


def xradia_frames(path: Path) -> np.ndarray:
    """Flat-field frames ``(n, height, width)`` from an Xradia file: its reference image
    (``ReferenceData/Image``) when it has one, else all its images (a separately acquired
    reference series)."""
    import olefile

    where = path.name
    try:
        ole = olefile.OleFileIO(str(path))
    except (OSError, ValueError) as error:
        raise ValueError(f"{where}: cannot open the OLE2 (Xradia) file ({error})") from None
    with ole:
        streams = _Streams(ole, where)
        width = int(streams.scalar("ImageInfo/ImageWidth", "<u4"))
        height = int(streams.scalar("ImageInfo/ImageHeight", "<u4"))
        if streams.has("ReferenceData/Image"):
            ref_type = streams.data_type("ReferenceData/DataType")
            image = streams.read("ReferenceData/Image", ref_type, height * width)
            return image.reshape(1, height, width)
        count = "ImageInfo/ImagesTaken"
        if not streams.has(count):
            count = "ImageInfo/NoOfImages"
        n = int(streams.scalar(count, "<u4")) if streams.has(count) else 1
        dtype = streams.data_type("ImageInfo/DataType")
        return np.stack(
            [
                streams.read(f"ImageData{i // 100 + 1}/Image{i + 1}", dtype, height * width)
                for i in range(n)
            ]
        ).reshape(n, height, width)
