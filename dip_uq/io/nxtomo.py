"""Writing scans as NXtomo (NeXus HDF5) files that :func:`~dip_uq.io.read_scan` reads back.

Layout written (NXtomo application definition, plus a ``dip_uq`` group)::

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
      dip_uq/                       NXcollection
        geometry                    JSON string: geometry.to_dict() (the exact geometry)
        notes                       the scan's notes
        truth                       optional ground truth, attribute volume = Volume JSON

Frames are stored as line integrals, not intensities, so the round trip is exact (a float32
copy); NXtomo itself cannot express fan/cone or vector geometries, so the full geometry is the
JSON string, stored as a dataset because HDF5 attributes are limited to 64 KiB and a geometry
with thousands of angles exceeds that. Other NXtomo readers see the usual fields but must be
told that the frames are already line integrals (attribute ``quantity``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..geometry import Volume
from ..outputs import atomic_write
from .scan import Scan

__all__ = ["write_nxtomo"]


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
        f.attrs["default"] = "entry"
        f.attrs["creator"] = "dip-uq"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        entry["definition"] = "NXtomo"
        entry["title"] = scan.metadata.get("title", f"dip-uq scan ({scan.source_format})")
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        source = instrument.create_group("source")
        source.attrs["NX_class"] = "NXsource"
        source["probe"] = "x-ray"
        source["name"] = "dip-uq"
        detector = instrument.create_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        data = detector.create_dataset(
            "data", data=frames.astype(np.float32), chunks=True, compression="gzip"
        )
        data.attrs["quantity"] = "line_integrals"
        data.attrs["units"] = "dimensionless (attenuation x length)"
        detector["image_key"] = np.zeros(scan.n_angles, dtype=np.int32)
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
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample["rotation_angle"] = np.asarray(scan.angles_deg, dtype=np.float64)
        sample["rotation_angle"].attrs["units"] = "degree"
        nxdata = entry.create_group("data")
        nxdata.attrs["NX_class"] = "NXdata"
        nxdata.attrs["signal"] = "data"
        nxdata["data"] = data
        nxdata["rotation_angle"] = sample["rotation_angle"]
        nxdata["image_key"] = detector["image_key"]
        own = entry.create_group("dip_uq")
        own.attrs["NX_class"] = "NXcollection"
        own["geometry"] = json.dumps(geometry.to_dict())
        if scan.notes:
            own.create_dataset("notes", data=np.array(scan.notes, dtype=h5py.string_dtype()))
        own.attrs["units"] = scan.units
        own.attrs["distances"] = json.dumps(scan.distances)
        own.attrs["pixel_size"] = json.dumps(
            list(scan.pixel_size) if scan.pixel_size is not None else None
        )
        own.attrs["metadata"] = json.dumps({k: str(v) for k, v in scan.metadata.items()})
        own.attrs["source_format"] = scan.source_format
        if truth is not None:
            ds = own.create_dataset("truth", data=np.asarray(truth), compression="gzip")
            if volume is not None:
                ds.attrs["volume"] = json.dumps(volume.to_dict())
