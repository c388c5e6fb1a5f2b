"""Electron-tomography tilt series in MRC (``.mrc``, ``.st``, ``.ali``, ``.mrcs``), read with
``mrcfile``, as 3D parallel-beam scans.

* **Images**: the stack ``(n_tilts, ny, nx)`` in MRC mode 0 (int8), 1 (int16), 2 (float32),
  6 (uint16) or 12 (float16). Complex modes (3, 4: Fourier transforms) and unknown modes are
  refused.
* **Tilt angles** (degrees), the first of: the caller's (``--angles``); IMOD's tilt file beside
  the stack (``stem.tlt`` or ``stem.rawtlt``, one angle per line; the refined ``.tlt`` first for
  an aligned ``.ali``); the extended header, FEI's ``FEI1``/``FEI2`` (``Alpha tilt`` of each
  image) or SerialEM/IMOD's ``SERI`` (flag 1 of ``nreal``: tilt × 100 as the first int16 of
  each image's ``nint`` bytes). Their number must equal the number of images.
* **Tilt axis** along the image's ``y`` (the default: IMOD's convention, whose ``tilt`` needs
  the axis parallel to ``Y`` in the aligned stack) or ``x`` (``tilt_axis="x"``). The axis is
  the geometry's rotation axis ``z``: with ``y`` the sinogram ``(angles, rows, cols)`` is the
  stack as it is (rows = image ``y``, columns = image ``x``); with ``x`` each image is
  transposed (rows = image ``x``, columns = image ``y``). A tilt-axis angle in the header
  (SerialEM's label, FEI's ``Tilt axis angle``) is that of the raw images and is only reported.
  At tilt 0 the beam runs along the geometry's ``y`` axis (the reconstruction's depth).
* **Pixel size**: the header's voxel size in Å, converted to nm (lengths in nm, the usual unit
  of the field; reconstructions in 1/nm); a size of 0 means none (lengths in pixels).
* **Values**: HAADF/ADF-STEM signals are proportional to the projected mass–thickness, i.e.
  already line integrals: they are used as they are, without ``-log``. ``--log`` (for
  bright-field images) takes ``-log(I / I0)`` with ``I0`` the 99.9th percentile of the stack
  (the brightest, empty areas); ``--scale``, ``--normalised`` and ``--flat`` work as for every
  format (:mod:`dip_uq.io.values`).
* **Alignment is the user's**: the images are taken as aligned (shifts and in-plane rotation
  removed, e.g. IMOD's ``.ali``), with the tilt axis through the image centre;
  ``tilt_axis_offset`` (pixels, like ``center_offset`` of :func:`~dip_uq.io.preprocess`) moves
  it.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..scan import Scan
from .acquisition import Acquisition
from .angles import read_angles, tilt_file_beside
from .geometry_files import GeometrySource
from .tilt_series import tilt_series_scan
from .values import Conversion

__all__ = ["MRC_SUFFIXES", "read_mrc"]

MRC_SUFFIXES = (".mrc", ".mrcs", ".st", ".ali", ".preali")
MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_ANGSTROM_TO_NM = 0.1
_LITTLE = sys.byteorder == "little"


def _open(path: Path) -> dict[str, Any]:
    """What the reader needs of an MRC file: mode, images, voxel size, extended header."""
    import mrcfile

    where = path.name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.open(path, permissive=True)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(
                f"{where}: cannot read the MRC header ({error}); the file is truncated or not MRC"
            ) from None
        with mrc:
            mode = int(mrc.header.mode)
            if mode not in MODES:
                kind = "complex (Fourier) data" if mode in (3, 4) else "an unknown mode"
                raise ValueError(
                    f"{where}: MRC mode {mode} is {kind}; a tilt series must be in mode "
                    f"{', '.join(map(str, MODES))} (convert it, e.g. IMOD's newstack -mode 2)"
                )
            if mrc.data is None:
                reason = str(caught[-1].message) if caught else "no data block"
                raise ValueError(
                    f"{where}: the MRC file is truncated ({reason}); copy it again in full"
                )
            header = mrc.header
            info = {
                "mode": mode,
                "data": np.array(mrc.data),
                "voxel": (float(mrc.voxel_size.x), float(mrc.voxel_size.y)),
                "ispg": int(header.ispg),
                "raw": header.tobytes(),
                "labels": [
                    " ".join(bytes(label).decode("ascii", "replace").split())
                    for label in header.label[: int(header.nlabl)]
                ],
                "tilts": None,
                "axis_angle": None,
            }
            exttyp = bytes(header.exttyp)
            extended = np.asarray(mrc.extended_header).tobytes()
            if exttyp in (b"FEI1", b"FEI2"):
                indexed = mrc.indexed_extended_header
                if indexed is not None:
                    info["tilts"] = (np.asarray(indexed["Alpha tilt"], np.float64), "FEI")
                    info["axis_angle"] = float(indexed["Tilt axis angle"][0])
            elif exttyp == b"SERI":
                order = header.mode.dtype.byteorder.replace("=", "<" if _LITTLE else ">")
                info["tilts"] = _seri_tilts(info["raw"], extended, len(info["data"]), order)
    return info


def _seri_tilts(raw: bytes, extended: bytes, n: int, order: str) -> tuple[np.ndarray, str] | None:
    """Tilt angles of a SerialEM/IMOD ``SERI`` extended header: ``nint`` (bytes per image,
    int16 at byte 128) and ``nreal`` (flags, int16 at 130); flag 1: the tilt × 100 (int16)
    comes first in each image's bytes. ``order``: the file's byte order (``"<"``/``">"``)."""
    nint, nreal = np.frombuffer(raw[128:132], dtype=f"{order}i2")
    if not (int(nreal) & 1) or nint < 2 or len(extended) < n * int(nint):
        return None
    first = np.frombuffer(extended, dtype=np.uint8)[: n * int(nint)].reshape(n, int(nint))
    tilts = np.ascontiguousarray(first[:, :2]).view(f"{order}i2")[:, 0] / 100.0
    return tilts.astype(np.float64), "SerialEM/IMOD (SERI)"


def _angles(
    path: Path, info: dict[str, Any], acquisition: Acquisition, n: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Tilt angles in radians and degrees, and where they came from (see the module doc)."""
    where = path.name
    if acquisition.angles is not None:
        return acquisition.read_angles(n, where)
    tilt_file = tilt_file_beside(path)
    if tilt_file is not None:
        return read_angles(tilt_file, "deg", n, where)
    if info["tilts"] is not None:
        values, source = info["tilts"]
        radians, degrees, _ = read_angles(values, "deg", n, f"{where} (its {source} header)")
        return radians, degrees, f"tilt angles from the {source} extended header, in degrees"
    raise ValueError(
        f"{where}: no tilt angles (no {path.stem}.tlt or {path.stem}.rawtlt beside it and none "
        "in the extended header); pass --angles FILE (one angle in degrees per line) or "
        "START:STOP:COUNT"
    )


def _axis_angle_note(info: dict[str, Any]) -> str | None:
    """The raw images' tilt-axis angle the header records (FEI field or SerialEM label)."""
    angle = info["axis_angle"]
    if angle is None:
        for label in info["labels"]:
            match = re.search(r"tilt axis angle\s*=\s*([-+0-9.]+)", label, re.IGNORECASE)
            if match:
                angle = float(match[1])
                break
    if angle is None:
        return None
    return (
        f"the header records a tilt-axis angle of {angle:g}° for the raw images; rotate "
        "them so that the axis lies along an image axis before reconstructing (alignment)"
    )


def read_mrc(
    path: Path,
    *,
    geometry: GeometrySource | None,
    rows: int | slice | tuple[int, int] | None,
    acquisition: Acquisition,
    tilt_axis: str | None,
    tilt_axis_offset: float | None,
    conversion: Conversion | None = None,
) -> Scan:
    """An MRC tilt series (see the module docstring).

    Args:
        path: the stack.
        geometry: replaces the parallel beam built from the angles and the pixel size.
        rows: detector rows to keep (after the tilt axis has set what a row is).
        acquisition: only its angles apply (the header gives the pixel size).
        tilt_axis: ``"x"`` or ``"y"``, the image axis the tilt axis runs along (None: ``y``).
        tilt_axis_offset: pixels by which the tilt axis projects to the right of the image
            centre (towards larger columns).
        conversion: what the values are (:mod:`dip_uq.io.values`; ``log=True`` for bright
            field); by default they are used as they are.

    Raises:
        ValueError: unknown or complex mode, a truncated file, a single image, no or the
            wrong number of tilt angles, a bad ``tilt_axis``, other acquisition options.
    """
    where = path.name
    other = [n for n in acquisition.given() if n != "angles"]
    if other:
        flags = ", ".join(acquisition.flags(*other))
        raise ValueError(
            f"{where}: {flags} do not apply to an MRC tilt series (parallel beam, pixel size "
            "from the header); leave them out"
        )
    if tilt_axis not in (None, "x", "y"):
        raise ValueError(f"tilt_axis must be 'x' or 'y' (an image axis), got {tilt_axis!r}")
    info = _open(path)
    data = info["data"]
    if data.ndim != 3 or data.shape[0] < 2:
        raise ValueError(
            f"{where}: holds one image {data.shape}; a tilt series is a stack of images"
        )
    n, ny, nx = data.shape
    vx, vy = info["voxel"]
    notes = [f"MRC mode {info['mode']} ({MODES[info['mode']]}): {n} images of {ny} x {nx}"]
    if info["ispg"] not in (0, 401):
        notes.append(
            f"the header calls it a volume (space group {info['ispg']}); read as a tilt "
            "series of its sections all the same"
        )
    radians, degrees, note = _angles(path, info, acquisition, n)
    notes.append(note)
    axis_note = _axis_angle_note(info)
    if axis_note:
        notes.append(axis_note)
    if min(vx, vy) > 0:
        pixel: tuple[float, float] | None = (vy * _ANGSTROM_TO_NM, vx * _ANGSTROM_TO_NM)
        notes.append(
            f"pixel size {vx:g} x {vy:g} Å from the header: lengths in nm (reconstructions in 1/nm)"
        )
    else:
        pixel = None
        notes.append("no pixel size in the header (0): lengths are in detector pixels")
    return tilt_series_scan(
        data,
        radians,
        degrees,
        pixel,
        path=path,
        source_format="mrc",
        geometry=geometry,
        rows=rows,
        tilt_axis=tilt_axis,
        default_axis=("y", "IMOD's convention"),
        tilt_axis_offset=tilt_axis_offset,
        conversion=conversion,
        notes=notes,
        metadata={"label": info["labels"][0]} if info["labels"] else {},
    )
