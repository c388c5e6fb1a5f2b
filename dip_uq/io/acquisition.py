"""Scans whose file holds only the data: the geometry from the caller's angles, beam kind,
pixel size and distances (no geometry JSON needed), and the array turned so that its first
axis runs over the angles.

``kind`` is ``"parallel"`` (the default), ``"fan"`` (2D, flat detector) or ``"cone"`` (3D
circular, flat detector; a 2D cone is a fan). Fan and cone beam need the detector pixel pitch
and the source–axis and axis–detector distances, all in mm; parallel beam takes the pitch when
given (else lengths are in detector pixels, ``units = "px"``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..geometry import ConeBeam, FanBeam, Geometry, ParallelBeam
from .angles import AngleSource, read_angles

__all__ = ["KINDS", "Acquisition", "orient"]

KINDS = ("parallel", "fan", "cone")


def _positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive length in mm, got {value!r}")
    return number


@dataclass(frozen=True)
class Acquisition:
    """What the caller says about a scan that its file does not record.

    Attributes:
        angles: the projection angles (see :mod:`dip_uq.io.angles`), or None.
        angle_unit: ``"deg"`` or ``"rad"``: the unit of angle files, arrays and ranges without
            a suffix.
        kind: ``"parallel"``, ``"fan"`` or ``"cone"`` (None: parallel; for an ASTRA vector
            file, inferred from the vectors).
        pixel_size: detector pixel pitch in mm (None: lengths in detector pixels).
        source_origin: source to rotation-axis distance in mm (fan/cone beam).
        origin_detector: rotation-axis to detector distance in mm (fan/cone beam).
    """

    angles: AngleSource | None = None
    angle_unit: str = "deg"
    kind: str | None = None
    pixel_size: float | None = None
    source_origin: float | None = None
    origin_detector: float | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"geometry kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("pixel_size", "source_origin", "origin_detector"):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))

    def given(self) -> list[str]:
        """The names of the attributes the caller set (``angle_unit`` counts with ``angles``)."""
        return [
            f.name
            for f in fields(self)
            if f.name != "angle_unit" and getattr(self, f.name) is not None
        ]

    def flags(self, *names: str) -> list[str]:
        """The command-line options of ``names`` (default: of every attribute set)."""
        return [
            "--geometry-kind" if n == "kind" else "--" + n.replace("_", "-")
            for n in names or self.given()
        ]

    def geometry(
        self, radians: np.ndarray, det_shape: tuple[int, ...], where: str
    ) -> tuple[Geometry, dict[str, Any], str]:
        """The geometry of a scan with these angles (radians) and detector ``(cols,)`` or
        ``(rows, cols)``, the :class:`~dip_uq.scan.Scan` fields it implies (``pixel_size``,
        ``distances``, ``units``) and a note."""
        kind = self.kind or "parallel"
        distances = {"source_origin": self.source_origin, "origin_detector": self.origin_detector}
        pitch = self.pixel_size
        if kind == "parallel":
            if any(v is not None for v in distances.values()):
                raise ValueError(
                    f"{where}: source/detector distances apply to fan and cone beam; pass "
                    "--geometry-kind fan (2D) or cone (3D), or leave the distances out"
                )
            geometry: Geometry = ParallelBeam(radians, det_shape, pitch or 1.0)
            scan_fields: dict[str, Any] = {}
        else:
            missing = [n for n, v in {"pixel_size": pitch, **distances}.items() if v is None]
            if missing:
                flags = ", ".join("--" + n.replace("_", "-") for n in missing)
                raise ValueError(
                    f"{where}: {kind} beam needs the pixel pitch and both distances in mm; "
                    f"pass {flags}"
                )
            if kind == "fan" and len(det_shape) == 2 and det_shape[0] > 1:
                raise ValueError(
                    f"{where}: fan beam is 2D, but the data have {det_shape[0]} detector rows; "
                    "pass --geometry-kind cone for a 3D scan"
                )
            beam = ConeBeam if len(det_shape) == 2 and det_shape[0] > 1 else FanBeam
            det = det_shape[-1:] if beam is FanBeam else det_shape
            so, od = self.source_origin, self.origin_detector
            geometry = beam(radians, det, pitch, so, od)
            scan_fields = {"distances": {"source_origin": so, "origin_detector": od}}
        units = "mm" if pitch is not None else "px"
        scan_fields["units"] = units
        if pitch is not None:
            scan_fields["pixel_size"] = (pitch,) * len(geometry.det_shape)
        pitch_text = f"pixel pitch {pitch:g} mm" if pitch else "no pixel size: lengths in pixels"
        note = f"{type(geometry).__name__} from the given angles and {pitch_text}"
        if kind != "parallel":
            note += f", source-axis {so:g} mm, axis-detector {od:g} mm"
        return geometry, scan_fields, note

    def read_angles(self, n_expected: int | None, what: str) -> tuple[np.ndarray, np.ndarray, str]:
        """:func:`~dip_uq.io.angles.read_angles` of :attr:`angles` in :attr:`angle_unit`."""
        if self.angles is None:
            raise ValueError(f"{what}: no angles given")
        return read_angles(self.angles, self.angle_unit, n_expected, what)


def orient(data: np.ndarray, n_angles: int, where: str) -> tuple[np.ndarray, str | None]:
    """``data`` with the axis of length ``n_angles`` moved to the front, the other axes kept in
    their order as ``(cols,)`` or ``(rows, cols)``.

    A MATLAB sinogram ``(cols, angles)`` becomes ``(angles, cols)``; ``(rows, angles, cols)``
    (ASTRA's order) and ``(rows, cols, angles)`` become ``(angles, rows, cols)``. When the
    first axis has that length it is taken as the angles. Returns the array and a note when it
    was moved.

    Raises:
        ValueError: no axis has ``n_angles`` entries.
    """
    axes = [k for k, n in enumerate(data.shape) if n == n_angles]
    if not axes:
        raise ValueError(
            f"{where}: no axis of the {data.shape} array has the {n_angles} projections the "
            "angles give; pass one angle per projection"
        )
    if axes[0] == 0:
        return data, None
    axis = axes[-1]
    out = np.moveaxis(data, axis, 0)
    layout = "(angles, cols)" if data.ndim == 2 else "(angles, rows, cols)"
    return out, (
        f"the angles run along axis {axis} of the {data.shape} array: moved to the front, "
        f"{layout} = {out.shape}"
    )
