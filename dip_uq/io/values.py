"""What the stored values are, and how they become line integrals ``y = ∫ μ dl``.

Every reader hands its frames ``(n, rows, cols)`` (any numeric dtype) to
:func:`to_line_integrals` with the file's own flat and dark fields, if any, and what the
values are when nobody says otherwise (its ``default``). The caller's :class:`Conversion`
(``--flat``, ``--dark``, ``--normalised``, ``--log``, ``--scale``) applies to every format, in
this order:

1. flats from the caller (``--flat FILE``, ``--dark FILE``):
   ``-log((p - dark) / (flat - dark))``; they replace the file's own.
2. the file's own flats and darks, the same formula.
3. ``--normalised``: the values (times ``--scale`` when given) are transmissions ``I / I0``
   already divided by a flat field: ``-log(p)``.
4. ``--log``: intensities without a flat field (bright-field images, normalised intensities
   stored as integers): ``-log(I / I0)`` with ``I0`` the 99.9th percentile of the data, the
   brightest values, where the beam misses the object.
5. ``--scale S``: the values times ``S`` are the line integrals (integers that store line
   integrals times a factor).
6. the reader's default: ``"frames"`` (detector frames: float transmissions in (0, 1.5] become
   ``-log(p)``, raw intensities are refused), ``"line integrals"`` (used as stored, e.g.
   HAADF-STEM signals) or ``"arrays"`` (float arrays as stored, integer arrays refused).

A refusal is a :class:`NeedsConversion` error of one line that names the options that fit.
For ``dip-uq info`` (``Conversion.describe``) the values are kept as they are instead and the
result says what is missing, so that every readable file can be described.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..scan import check_finite
from .flat_field import flat_dark_correct

__all__ = ["Conversion", "Converted", "NeedsConversion", "to_line_integrals"]

I0_PERCENTILE = 99.9  # --log: I0 is this percentile of the data
_MAX_TRANSMISSION = 1.5  # normalised transmissions lie in (0, this]
DEFAULTS = ("frames", "line integrals", "arrays")
# what each option says, for the messages
FLAT_HINT = "--flat FILE (a flat field from another file)"
NORMALISED_HINT = "--normalised (the values are already divided by a flat field)"
LOG_HINT = "--log (-log(I / I0), I0 the brightest values)"
SCALE_HINT = "--scale S (the values times S are the line integrals; S = 1 keeps them)"


class NeedsConversion(ValueError):
    """The stored values cannot become line integrals without an option; the message (one
    line) names the options that fit."""


@dataclass(frozen=True)
class Conversion:
    """What the caller says about the stored values (see the module docstring).

    Attributes:
        flats: flat-field frames ``(n, rows, cols)`` or one ``(rows, cols)``, already read;
            they replace the file's own.
        darks: dark frames, likewise (only with ``flats``).
        normalised: the values are transmissions ``I / I0`` (``-log(p)`` is taken).
        log: take ``-log(I / I0)`` with ``I0`` the 99.9th percentile of the data.
        scale: multiply the stored values by this before anything else (not with ``log``).
        describe: keep values that cannot become line integrals instead of refusing them
            (``dip-uq info``); the scan then says what is missing.
    """

    flats: np.ndarray | None = None
    darks: np.ndarray | None = None
    normalised: bool = False
    log: bool = False
    scale: float | None = None
    describe: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.scale is not None:
            scale = float(self.scale)
            if not (np.isfinite(scale) and scale > 0):
                raise ValueError(f"--scale must be a positive number, got {self.scale!r}")
            object.__setattr__(self, "scale", scale)
        if self.darks is not None and self.flats is None:
            raise ValueError("--dark needs --flat: dark frames alone cannot normalise the data")
        if self.log and self.normalised:
            raise ValueError(
                "--log and --normalised exclude each other: --normalised for values already "
                "divided by a flat field, --log for intensities without one"
            )
        if self.log and self.scale is not None:
            raise ValueError("--scale does not change -log(I / I0) (--log); leave it out")
        if self.flats is not None and (self.log or self.normalised):
            given = "--log" if self.log else "--normalised"
            raise ValueError(f"--flat and {given} exclude each other; pass one of them")

    def flags(self) -> list[str]:
        """The command-line options the caller gave."""
        given = {
            "--flat": self.flats is not None,
            "--dark": self.darks is not None,
            "--normalised": self.normalised,
            "--log": self.log,
            "--scale": self.scale is not None,
        }
        return [flag for flag, on in given.items() if on]


@dataclass
class Converted:
    """The result of :func:`to_line_integrals`.

    Attributes:
        values: float32 ``(n, rows, cols)``: line integrals, or the stored values when
            ``missing`` says why they could not be converted (``Conversion.describe``).
        notes: what was done, one sentence each.
        n_flats, n_darks: the flat and dark frames that went in.
        missing: None, or (describe only) the refusal :func:`to_line_integrals` would raise.
    """

    values: np.ndarray
    notes: list[str]
    n_flats: int = 0
    n_darks: int = 0
    missing: str | None = None

    def fields(self) -> dict[str, Any]:
        """The :class:`~dip_uq.scan.Scan` fields that record this (``n_flats``, ``n_darks``,
        and ``metadata["values"]`` when the values are not line integrals)."""
        out: dict[str, Any] = {"n_flats": self.n_flats, "n_darks": self.n_darks}
        if self.missing is not None:
            out["metadata"] = {"values": self.missing}
        return out


def _frames(array: np.ndarray, frame: tuple[int, ...], window: Any, what: str, where: str):
    """``array`` as frames ``(n, *frame)``; a caller's frames of the whole detector are cut to
    the rows read (``window = (start, stop, n_rows)``)."""
    a = np.asarray(array)
    if window is not None and a.ndim >= 2 and a.shape[-2] == window[2] != frame[0]:
        a = a[..., window[0] : window[1], :]
    wanted = [n for n in frame if n != 1]
    have = [n for n in a.shape if n != 1]
    if a.size and a.size % int(np.prod(frame)) == 0 and have[len(have) - len(wanted) :] == wanted:
        return a.reshape(-1, *frame)
    raise ValueError(
        f"{where}: the {what} have shape {a.shape} but the projections are frames of {frame}; "
        "they do not belong to the same detector region"
    )


def _looks_like(values: np.ndarray) -> str:
    """Which option fits integer data, from where they are bright: intensities are brightest
    at the detector's edges (the beam misses the object there), line integrals darkest."""
    cols = values.shape[-1]
    edge = max(1, cols // 20)
    profile = values.reshape(-1, cols).astype(np.float64).mean(axis=0)
    edges = float(np.concatenate([profile[:edge], profile[-edge:]]).mean())
    inner = float(profile[edge:-edge].mean()) if cols > 2 * edge else edges
    if edges > inner:
        return f"they look like intensities (brightest at the detector edges): pass {LOG_HINT}"
    return f"they look like scaled line integrals (lowest at the detector edges): pass {SCALE_HINT}"


def to_line_integrals(
    data: np.ndarray,
    conversion: Conversion,
    where: str,
    *,
    default: str,
    flats: np.ndarray | None = None,
    darks: np.ndarray | None = None,
    flats_source: str = "",
    missing_flats: str = "no flat fields",
    window: tuple[int, int, int] | None = None,
) -> Converted:
    """Line integrals float32 ``(n, rows, cols)`` from stored frames (see the module doc).

    Args:
        data: the stored values ``(n, rows, cols)``, any numeric dtype.
        conversion: what the caller says.
        where: the file's name, for the messages.
        default: what the values are when nobody says: ``"frames"``, ``"line integrals"`` or
            ``"arrays"``.
        flats, darks: the file's own flat and dark frames ``(n, rows, cols)`` (None: none).
        flats_source: where the file's flats are, for the note (e.g. ``"ReferenceData/Image"``).
        missing_flats: what the file lacks, for the refusal (e.g. ``"no reference image"``).
        window: ``(start, stop, n_rows)``: the detector rows read, to cut a caller's flats.

    Raises:
        NeedsConversion: the values cannot become line integrals without an option (unless
            ``conversion.describe``).
        ValueError: unusable flats, NaN/Inf, transmissions out of range with --normalised.
    """
    if default not in DEFAULTS:
        raise ValueError(f"unknown default {default!r}; known: {', '.join(DEFAULTS)}")
    frame = data.shape[1:]
    c = conversion
    if c.flats is not None:
        own = _frames(c.flats, frame, window, "flats (--flat)", where)
        dark = None if c.darks is None else _frames(c.darks, frame, window, "darks", where)
        line, notes = flat_dark_correct(data, own, dark, where)
        notes[0] += " (--flat, --dark)" if dark is not None else " (--flat)"
        if flats is not None:
            notes.append(f"the file's own flat fields ({flats_source or len(flats)}) not used")
        return Converted(line, notes, len(own), 0 if dark is None else len(dark))
    if flats is not None and len(flats):
        if c.flags():
            raise ValueError(
                f"{where}: the file has its own flat fields ({flats_source or 'flats'}); leave "
                f"out {', '.join(c.flags())} (or pass --flat FILE to replace them)"
            )
        line, notes = flat_dark_correct(data, flats, darks, where)
        if flats_source:
            notes[0] += f" ({flats_source})"
        return Converted(line, notes, len(flats), 0 if darks is None else len(darks))
    check_finite(np.asarray(data), f"{where}: the data")
    values = np.asarray(data, dtype=np.float32)
    if c.scale is not None:
        values = values * np.float32(c.scale)
    scaled = f" times {c.scale:g} (--scale)" if c.scale is not None else ""
    if c.normalised:
        top = float(values.max()) if values.size else 0.0
        if not 0 < top <= _MAX_TRANSMISSION:
            hint = (
                f"pass --scale {1 / top:.3g} or the factor they were stored with"
                if top > _MAX_TRANSMISSION
                else "check the file"
            )
            raise ValueError(
                f"{where}: --normalised, but the values{scaled} reach {top:.4g}, not "
                f"transmissions in (0, {_MAX_TRANSMISSION}]; {hint}, or pass {LOG_HINT}"
            )
        return _transmissions(values, where, f"the values{scaled}, normalised (--normalised)")
    if c.log:
        i0 = float(np.percentile(values, I0_PERCENTILE))
        line, notes = flat_dark_correct(values, np.full((1, *frame), i0, np.float32), None, where)
        notes[0] = (
            f"line integrals -log(I / I0), I0 = {i0:.4g} (the {I0_PERCENTILE}th percentile of "
            "the data, --log)"
        )
        return Converted(line, notes)
    if c.scale is not None:
        return Converted(values, [f"line integrals: the stored values{scaled}"])
    integer = not np.issubdtype(np.asarray(data).dtype, np.floating)
    if default == "line integrals" or (default == "arrays" and not integer):
        return Converted(values, [f"values used as line integrals, as stored ({data.dtype})"])
    top = float(values.max()) if values.size else 0.0
    if default == "frames" and not integer and 0 < top <= _MAX_TRANSMISSION:
        return _transmissions(values, where, "frames that are already normalised transmissions")
    if default == "frames":
        message = (
            f"{where}: the frames hold raw intensities ({data.dtype}, max {top:.4g}) and the "
            f"file has {missing_flats}, so they cannot become line integrals; pass {FLAT_HINT}, "
            f"{NORMALISED_HINT} or {LOG_HINT}"
        )
    else:
        message = (
            f"{where}: holds integer values ({data.dtype}, {float(values.min()):.4g} to "
            f"{top:.4g}), not line integrals, and no flat fields; {_looks_like(values)}, or "
            f"{FLAT_HINT}"
        )
    if not c.describe:
        raise NeedsConversion(message)
    return Converted(values, [], missing=message.split(": ", 1)[1])


def _transmissions(values: np.ndarray, where: str, what: str) -> Converted:
    """``-log(p)`` of normalised transmissions ``p``."""
    ones = np.ones((1, *values.shape[1:]), dtype=np.float32)
    line, notes = flat_dark_correct(values, ones, None, where)
    notes[0] = f"line integrals -log(p) of {what}"
    return Converted(line, notes)
