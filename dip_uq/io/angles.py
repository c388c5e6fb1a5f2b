"""Projection angles given by the caller or beside a scan file.

An angle source is one of:

* a range ``"START:STOP:COUNT"`` with an optional unit suffix, e.g. ``"0:180:360deg"`` or
  ``"0:3.14159:90rad"``: ``COUNT`` angles from ``START`` up to, not including, ``STOP``
  (step ``(STOP - START) / COUNT``, the usual tomography sampling; a tilt series from -60° to
  60° in 2° steps is ``"-60:62:61deg"``);
* a file: text with angles separated by spaces or line breaks (lines starting with ``#`` are
  comments; IMOD's ``.rawtlt`` / ``.tlt`` tilt files are such files), or a ``.npy`` array;
* an array of numbers.

Files, ranges without a suffix and arrays are in ``unit`` (degrees by default: tilt files and
scanner logs are written in degrees). Everything is returned in radians, with the degrees for
display and a note saying where the angles came from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .numpy_files import npy_array

__all__ = ["AngleSource", "read_angles", "tilt_file_beside"]

# what angles may be given as
AngleSource = str | Path | np.ndarray | Sequence[float]

_UNITS = {name: name[:3] for name in ("deg", "degree", "degrees", "rad", "radian", "radians")}
_RANGE = re.compile(
    r"^\s*(?P<start>[-+0-9.eE]+):(?P<stop>[-+0-9.eE]+):(?P<count>\d+)\s*(?P<unit>[a-z]*)\s*$"
)
# tilt files IMOD writes beside a stack: refined angles (.tlt) and those of the microscope
TILT_SUFFIXES = (".tlt", ".rawtlt")


def _unit(unit: str, where: str) -> str:
    key = _UNITS.get(unit.strip().lower())
    if key is None:
        raise ValueError(f"{where}: unknown angle unit {unit!r}; use deg or rad")
    return key


def read_angles(
    source: AngleSource, unit: str = "deg", n_expected: int | None = None, what: str = "data"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Angles from a range string, a file or an array (see the module docstring).

    Args:
        source: the angles.
        unit: ``"deg"`` or ``"rad"``: the unit of files, arrays and ranges without a suffix.
        n_expected: the number of projections they must match (None: any number).
        what: the projections, for the message when the counts differ (e.g. the file name).

    Returns:
        ``(radians, degrees, note)``: float64 arrays ``(n_angles,)`` and where they came from.

    Raises:
        FileNotFoundError: a file that does not exist.
        ValueError: an unreadable file, a bad range, NaN/Inf, an unknown unit, or a count other
            than ``n_expected``.
    """
    label = "the angles"
    match = _RANGE.match(source) if isinstance(source, str) else None
    if match is not None:
        try:
            start, stop = float(match["start"]), float(match["stop"])
        except ValueError:
            start = stop = float("nan")
        count = int(match["count"])
        if count < 1 or not (np.isfinite(start) and np.isfinite(stop)):
            raise ValueError(
                f"angle range {source!r}: START and STOP must be numbers and COUNT at least 1, "
                "e.g. 0:180:360deg"
            )
        if match["unit"]:
            unit = match["unit"]
        values = start + (stop - start) / count * np.arange(count)
        label = f"the range {match.string.strip()}"
        how = f"{count} angles from {label} ({start:g} up to {stop:g}, not included)"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such angle file; pass a text file with one angle per line, a .npy "
                "file or START:STOP:COUNT (e.g. 0:180:360deg)"
            )
        label = path.name
        if path.suffix.lower() == ".npy":
            values = npy_array(path)
        else:
            lines = path.read_text(errors="replace").splitlines()
            words = [w for line in lines if not line.startswith("#") for w in line.split()]
            try:
                values = np.array([float(w) for w in words])
            except ValueError as error:
                raise ValueError(
                    f"{path.name}: not a list of angles ({error}); write one number per line"
                ) from None
        how = f"angles from {path.name}"
    else:
        values = source
        how = "angles given as an array"
    unit = _unit(unit, label)
    try:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{label}: angles must be numbers") from None
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(
            f"{label}: holds no angles or NaN/Inf values; one finite angle per projection"
        )
    if n_expected is not None and values.size != n_expected:
        raise ValueError(
            f"{label} gives {values.size} angles but {what} holds {n_expected} projections; pass "
            "one angle per projection (--angles FILE or START:STOP:COUNT)"
        )
    if unit == "rad":
        radians, degrees = values, np.rad2deg(values)
    else:
        radians, degrees = np.deg2rad(values), values
    note = f"{how}, in {'radians' if unit == 'rad' else 'degrees'}"
    return radians, degrees, note


def tilt_file_beside(path: Path) -> Path | None:
    """IMOD's tilt-angle file next to a stack: ``<stem>.tlt`` or ``<stem>.rawtlt`` (the refined
    ``.tlt`` first for an aligned ``.ali`` stack, the microscope's ``.rawtlt`` first otherwise);
    None when there is neither."""
    order = TILT_SUFFIXES if path.suffix.lower() == ".ali" else TILT_SUFFIXES[::-1]
    for suffix in order:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None
