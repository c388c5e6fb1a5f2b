"""Length and angle units as scan files record them, converted to dip-uq's mm and radians."""

from __future__ import annotations

import numpy as np

# file unit -> mm; unknown units are taken as mm (with a note) rather than refused
LENGTH_TO_MM = {
    "m": 1e3,
    "cm": 10.0,
    "mm": 1.0,
    "um": 1e-3,
    "µm": 1e-3,
    "μm": 1e-3,
    "micron": 1e-3,
    "microns": 1e-3,
    "nm": 1e-6,
}


def to_mm(value: float, units: str | None) -> tuple[float, str]:
    """A length in mm (or unchanged when the unit is unknown), with a note on the unit."""
    if units is None:
        return value, "mm (no units attribute; mm assumed)"
    key = units.strip().lower()
    if key in LENGTH_TO_MM:
        return value * LENGTH_TO_MM[key], "mm"
    return value, f"mm (unknown unit {units!r}; mm assumed)"


def angles_to_rad(values: np.ndarray, units: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(radians, degrees, note)`` from angles ``(n_angles,)`` in the given unit (degrees
    when None)."""
    if units is not None and units.strip().lower() in ("rad", "radian", "radians"):
        return values, np.rad2deg(values), "radians"
    note = "degrees" if units is not None else "degrees (no units attribute; degrees assumed)"
    return np.deg2rad(values), values, note
