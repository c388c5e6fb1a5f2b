"""dip-uq's own NXtomo (NeXus HDF5) files: the layout, :func:`write_nxtomo`, and the reader
of the files it writes (:func:`~dip_uq.io.read_scan` comes here when the entry has a
``dip_uq`` group).

Layout (NXtomo application definition, plus a ``dip_uq`` group)::

    /entry                          NXentry, definition = "NXtomo"
      instrument/                   NXinstrument
        source/                     NXsource (probe x-ray; distance = -source_origin for fan/cone)
        detector/                   NXdetector
          data                      float32 (n_angles, rows, cols): LINE INTEGRALS, attribute
                                    quantity = "line_integrals" (a 2D scan has rows = 1)
          image_key                 int32 zeros (every frame is a projection; no flats/darks)
          x_pixel_size, y_pixel_size   column/row pitch (mm) of parametric geometries
          distance                  origin-detector distance (mm) of fan/cone geometries
      sample/                       NXsample
        rotation_angle              (n_angles,) degrees
      data/                         NXdata, signal = data (hard links to the above)
      dip_uq/                       NXcollection; attributes named after the Scan fields they
                                    hold: units, distances, pixel_size, metadata (JSON),
                                    source_format
        geometry                    JSON string: geometry.to_dict() (the exact geometry)
        notes                       the scan's notes
        truth                       optional ground truth, attribute volume = Volume JSON

The paths below (relative to the entry) are that layout; the writer and the reader both use
them. Frames are stored as line integrals, not intensities, so the round trip is exact (a
float32 copy); NXtomo itself cannot express fan/cone or vector geometries, so the full geometry
is the JSON string, stored as a dataset because HDF5 attributes are limited to 64 KiB and a
geometry with thousands of angles exceeds that. Other NXtomo readers see the usual fields but
must be told that the frames are already line integrals (attribute ``quantity``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write
from ..geometry import Volume, geometry_from_dict
from ..scan import Scan, check_matches_geometry
from .geometry_files import GeometrySource, geometry_from_description, read_geometry
from .hdf5 import as_str, attr_str, safe_get
from .preprocess import select_rows

__all__ = ["write_nxtomo"]

ENTRY = "entry"
DETECTOR = "instrument/detector"
FRAMES = f"{DETECTOR}/data"
IMAGE_KEY = f"{DETECTOR}/image_key"
ROTATION_ANGLE = "sample/rotation_angle"
OWN = "dip_uq"
GEOMETRY = f"{OWN}/geometry"
NOTES = f"{OWN}/notes"
TRUTH = f"{OWN}/truth"
LINE_INTEGRALS = "line_integrals"  # the frames' ``quantity`` attribute

# the groups of the layout (parents first) and their NeXus classes
_GROUPS = {
    "instrument": "NXinstrument",
    "instrument/source": "NXsource",
    DETECTOR: "NXdetector",
    "sample": "NXsample",
    "data": "NXdata",
    OWN: "NXcollection",
}


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def write_nxtomo(
    path: str | os.PathLike,
    scan: Scan,
    truth: Any = None,
    volume: Volume | None = None,
) -> None:
    """Write ``scan`` (and a ground truth) as an NXtomo file, atomically.

    Args:
        path: the file to write (replaced if it exists).
        scan: the scan; its sinogram (line integrals) becomes the frames.
        truth: optional ground-truth image/volume (numpy array or torch tensor), e.g. the
            phantom a simulated scan was made from; ``scan.truth`` when None.
        volume: the grid of ``truth``; ``scan.volume`` when None.

    :func:`~dip_uq.io.read_scan` returns the same sinogram, geometry (``==``), angles, notes,
    truth and volume.
    """
    import h5py

    truth = scan.truth if truth is None else _to_numpy(truth)
    volume = scan.volume if volume is None else volume
    if truth is not None and volume is not None and tuple(truth.shape) != volume.shape:
        raise ValueError(f"truth has shape {truth.shape} but the volume is {volume.shape}")
    geometry = scan.geometry
    frames = scan.sinogram if scan.ndim == 3 else scan.sinogram[:, None, :]
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["default"] = ENTRY
        f.attrs["creator"] = "dip-uq"
        entry = f.create_group(ENTRY)
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        entry["definition"] = "NXtomo"
        entry["title"] = scan.metadata.get("title", f"dip-uq scan ({scan.source_format})")
        for name, nx_class in _GROUPS.items():
            entry.create_group(name).attrs["NX_class"] = nx_class
        source = entry["instrument/source"]
        source["probe"] = "x-ray"
        source["name"] = "dip-uq"
        detector = entry[DETECTOR]
        data = entry.create_dataset(
            FRAMES, data=frames.astype(np.float32), chunks=True, compression="gzip"
        )
        data.attrs["quantity"] = LINE_INTEGRALS
        data.attrs["units"] = "dimensionless (attenuation x length)"
        entry[IMAGE_KEY] = np.zeros(scan.n_angles, dtype=np.int32)
        spacing = getattr(geometry, "det_spacing", None)
        if spacing is not None:
            detector["x_pixel_size"] = float(spacing[-1])
            detector["x_pixel_size"].attrs["units"] = scan.units
            detector["y_pixel_size"] = float(spacing[0])
            detector["y_pixel_size"].attrs["units"] = scan.units
        if hasattr(geometry, "src_origin"):
            detector["distance"] = float(geometry.origin_det)
            detector["distance"].attrs["units"] = scan.units
            source["distance"] = -float(geometry.src_origin)
            source["distance"].attrs["units"] = scan.units
        entry[ROTATION_ANGLE] = np.asarray(scan.angles_deg, dtype=np.float64)
        entry[ROTATION_ANGLE].attrs["units"] = "degree"
        nxdata = entry["data"]
        nxdata.attrs["signal"] = "data"
        nxdata["data"] = data
        nxdata["rotation_angle"] = entry[ROTATION_ANGLE]
        nxdata["image_key"] = entry[IMAGE_KEY]
        entry[GEOMETRY] = json.dumps(geometry.to_dict())
        if scan.notes:
            entry.create_dataset(NOTES, data=np.array(scan.notes, dtype=h5py.string_dtype()))
        own = entry[OWN]
        own.attrs["units"] = scan.units
        own.attrs["distances"] = json.dumps(scan.distances)
        own.attrs["pixel_size"] = json.dumps(
            list(scan.pixel_size) if scan.pixel_size is not None else None
        )
        own.attrs["metadata"] = json.dumps({k: str(v) for k, v in scan.metadata.items()})
        own.attrs["source_format"] = scan.source_format
        if truth is not None:
            ds = entry.create_dataset(TRUTH, data=np.asarray(truth), compression="gzip")
            if volume is not None:
                ds.attrs["volume"] = json.dumps(volume.to_dict())


def is_own_nxtomo(entry: Any) -> bool:
    """Whether an open NXentry was written by :func:`write_nxtomo`."""
    return safe_get(entry, OWN)[0] is not None and GEOMETRY in entry


def read_nxtomo(
    path: Path,
    entry: Any,
    *,
    geometry: GeometrySource | None,
    rows: int | slice | tuple[int, int] | None,
) -> Scan:
    """The scan in an open NXentry written by :func:`write_nxtomo` (``path`` names it).

    ``geometry`` replaces the stored one (the stored angles are then not used); ``rows`` keeps
    those detector rows (:func:`~dip_uq.io.preprocess.select_rows`).
    """
    where = path.name
    description = json.loads(as_str(entry[GEOMETRY][()]))
    geom = (
        read_geometry(geometry)[0]
        if geometry is not None
        else geometry_from_description(description, f"{where} {entry.name}/{GEOMETRY}")
    )
    frames = entry[FRAMES]
    quantity = attr_str(frames, "quantity") or "intensity"
    data = np.asarray(frames[()], dtype=np.float32)
    notes = [as_str(n) for n in entry[NOTES][()]] if NOTES in entry else []
    notes.append(f"dip-uq NXtomo file: frames from {frames.name} ({quantity}), geometry from JSON")
    if quantity != LINE_INTEGRALS:
        raise ValueError(f"{where}: unexpected frame quantity {quantity!r} in a dip-uq file")
    if geom.ndim == 2 and data.ndim == 3 and data.shape[1] == 1:
        data = data[:, 0, :]
    check_matches_geometry(data.shape, geom, f"{where}: the frames")
    truth = volume = None
    if TRUTH in entry:
        truth = np.asarray(entry[TRUTH][()])
        volume_json = attr_str(entry[TRUTH], "volume")
        volume = geometry_from_dict(json.loads(volume_json)) if volume_json else None
    own = entry[OWN]
    units = attr_str(own, "units") or "mm"
    distances = json.loads(attr_str(own, "distances") or "{}")
    pixel = json.loads(attr_str(own, "pixel_size") or "null")
    metadata = json.loads(attr_str(own, "metadata") or "{}")
    angles = np.asarray(entry[ROTATION_ANGLE][()], dtype=np.float64)
    scan = Scan(
        data,
        geom,
        source_format="nxtomo",
        path=path,
        angles_deg=angles if geometry is None else None,
        pixel_size=tuple(pixel) if pixel is not None else None,
        distances=distances,
        units=units,
        notes=notes,
        truth=truth,
        volume=volume,
        metadata=metadata,
    )
    if rows is not None:
        scan = select_rows(scan, rows=rows)
    return scan
