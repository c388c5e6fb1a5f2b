"""The human summary of a scan that ``dip-uq info`` prints: data, angles, flats, geometry,
detector, rotation axis, distances, units, the default grid and the reader's notes.

:func:`describe_file` describes every readable file, also those that ``reconstruct`` cannot
take as they are: values that are not line integrals (no flat field: the summary names the
options that convert them) and bare arrays without a geometry (the summary names the options
that give one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..scan import Scan, default_volume
from .arrays import MissingGeometry
from .detect import detect_format
from .preprocess import axis_column
from .read import read_scan

__all__ = ["describe", "describe_file"]


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def describe(scan: Scan) -> str:
    """A multi-line human summary of a scan (what ``dip-uq info`` prints)."""
    g = scan.geometry
    sino = scan.sinogram
    layout = "(angles, cols)" if g.ndim == 2 else "(angles, rows, cols)"
    lines = [f"{scan.path if scan.path is not None else 'scan'}: {scan.source_format}"]
    metadata = dict(scan.metadata)
    missing = metadata.pop("values", None)  # the values are not line integrals (describe=True)
    quantity = "stored values (not line integrals)" if missing else "line integrals"
    lines.append(
        f"  sinogram   {sino.dtype} {sino.shape} {layout}, {quantity} in "
        f"[{_fmt(float(sino.min()))}, {_fmt(float(sino.max()))}], mean {_fmt(float(sino.mean()))}"
    )
    a = scan.angles_deg
    step = np.diff(a)
    step_text = (
        f", step {_fmt(float(np.median(step)))}°"
        if step.size and np.allclose(step, np.median(step), rtol=0.05, atol=1e-6)
        else (", irregular steps" if step.size else "")
    )
    lines.append(
        f"  angles     {a.size} from {_fmt(float(a[0]))}° to {_fmt(float(a[-1]))}° (span "
        f"{_fmt(float(a.max() - a.min()))}°{step_text})"
    )
    if scan.n_flats or scan.n_darks:
        lines.append(
            f"  flats      {scan.n_flats} flat fields, {scan.n_darks} dark frames (means used)"
        )
    elif missing:
        lines.append(f"  missing    {missing}")
    else:
        lines.append("  flats      none (the values are taken as line integrals)")
    lines.append(f"  geometry   {g!r}")
    det = " x ".join(str(n) for n in g.det_shape)
    frames = g.frames()
    pitch = [float(np.median(np.linalg.norm(frames["u"], axis=1)))]
    if "v" in frames:
        pitch.insert(0, float(np.median(np.linalg.norm(frames["v"], axis=1))))
    pixel = " x ".join(_fmt(p) for p in pitch) + f" {scan.units}"
    if scan.units == "px":
        pixel += " (the file gives no pixel size: lengths are in detector pixels)"
    lines.append(f"  detector   {det} pixels, pitch {pixel}")
    column = axis_column(g)
    if column is not None:
        centre = (g.det_shape[-1] - 1) / 2
        lines.append(
            f"  rotation   axis at detector column {column:.2f} (detector centre {centre:.1f}, "
            f"offset {column - centre:+.2f} px)"
        )
    if scan.distances:
        parts = [f"{k.replace('_', '-')} {_fmt(v)} {scan.units}" for k, v in scan.distances.items()]
        if hasattr(g, "magnification"):
            parts.append(f"magnification {_fmt(g.magnification)}")
        lines.append("  distances  " + ", ".join(parts))
    lines.append(
        f"  units      lengths in {scan.units}, angles in radians inside the geometry; "
        f"reconstructions in 1/{scan.units}"
    )
    volume = default_volume(scan)
    lines.append(f"  grid       default reconstruction grid {volume!r}")
    if scan.truth is not None:
        lines.append(f"  truth      ground truth {scan.truth.dtype} {scan.truth.shape}")
    for key, value in metadata.items():
        lines.append(f"  {key:<10} {value}")
    if scan.notes:
        lines.append("  notes")
        lines.extend(f"    - {note}" for note in scan.notes)
    return "\n".join(lines)


def describe_file(path: str | Path, **options: Any) -> str:
    """What ``dip-uq info`` prints for a file: :func:`describe` of
    :func:`~dip_uq.io.read_scan` ``(path, describe=True, **options)``, or, for bare arrays
    without a geometry or angles, the arrays found and the options that give the geometry.

    Raises:
        FileNotFoundError, ValueError: as :func:`~dip_uq.io.read_scan`, for files that cannot
            be read at all (unknown format, damaged, options that do not apply).
    """
    try:
        return describe(read_scan(path, describe=True, **options))
    except MissingGeometry as error:
        fmt = options.get("format") or detect_format(path)
        lines = [f"{path}: {fmt}"]
        lines.extend(f"  found      {line}" for line in error.summary)
        lines.append(f"  missing    {str(error).split(': ', 1)[1]}")
        return "\n".join(lines)
