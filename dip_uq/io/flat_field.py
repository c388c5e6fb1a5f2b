"""Raw frames to line integrals: flat-field and dark correction
``-log((p - dark) / (flat - dark))``, with the problems real detectors have (dead flat pixels,
counts below the dark level) handled or reported in one line.

Frames are ``(n_angles, rows, cols)`` arrays of intensities (any numeric dtype); flats and darks
``(n, rows, cols)``. The results are float32 line integrals (attenuation x length).
"""

from __future__ import annotations

import numpy as np

from ..scan import check_finite

__all__ = ["flat_dark_correct"]

# Bad flat-field pixels (flat - dark <= 0) up to this fraction of the detector are filled in
# from their neighbours along the row; more than that is an error.
_MAX_BAD_FLAT_FRACTION = 0.01


def flat_dark_correct(
    projections: np.ndarray,
    flats: np.ndarray | None,
    darks: np.ndarray | None,
    where: str,
) -> tuple[np.ndarray, list[str]]:
    """Line integrals ``-log((p - dark) / (flat - dark))`` from raw frames.

    Args:
        projections: raw intensities ``(n_angles, rows, cols)`` (any numeric dtype).
        flats: flat fields (beam, no sample) ``(n_flats, rows, cols)``; their mean is used.
        darks: dark frames (no beam) ``(n_darks, rows, cols)``; their mean is used; None or
            empty: a dark level of 0.
        where: a name for the messages (file and dataset).

    Returns:
        ``(line_integrals, notes)``: float32 ``(n_angles, rows, cols)`` and what was done.

    Transmissions ``(p - dark) / (flat - dark) <= 0`` (noise at the dark level) are clipped to
    the smallest positive transmission in the data before the log, so they become the largest
    finite line integral; a note gives how many. Detector pixels whose flat does not exceed the
    dark (``flat - dark <= 0``: dead pixels, empty flats) are filled in along each row from the
    nearest good columns when they are at most 1% of the detector; more is an error.

    Raises:
        ValueError: NaN/Inf in the frames, flats/darks of another frame shape, flat - dark <= 0
            on more than 1% of the detector, or no positive transmission at all.
    """
    notes: list[str] = []
    for array, what in ((projections, "projections"), (flats, "flats"), (darks, "darks")):
        if array is not None:
            check_finite(np.asarray(array), f"{where}: the {what}")
    if flats is None or len(flats) == 0:
        raise ValueError(f"{where}: no flat fields, so intensities cannot become line integrals")
    frame = projections.shape[1:]
    for array, what in ((flats, "flats"), (darks, "darks")):
        if array is not None and len(array) and array.shape[1:] != frame:
            raise ValueError(
                f"{where}: the {what} have frames of shape {array.shape[1:]} but the projections "
                f"{frame}; they do not belong to the same detector region"
            )
    flat = np.mean(flats, axis=0, dtype=np.float64)
    dark = np.mean(darks, axis=0, dtype=np.float64) if darks is not None and len(darks) else 0.0
    gain = flat - dark
    bad = ~(gain > 0)
    if bad.all():
        raise ValueError(
            f"{where}: flat minus dark is <= 0 at every detector pixel (mean flat "
            f"{float(np.mean(flat)):.4g}, mean dark {float(np.mean(dark)):.4g}); the flat fields "
            "are empty or flats and darks are swapped: check image_key / data_white"
        )
    if bad.mean() > _MAX_BAD_FLAT_FRACTION:
        rows, cols = np.nonzero(bad.reshape(-1, bad.shape[-1]))
        raise ValueError(
            f"{where}: flat minus dark is <= 0 at {int(bad.sum())} of {bad.size} detector pixels "
            f"(rows {rows.min()}-{rows.max()}, columns {cols.min()}-{cols.max()}); the flat "
            "fields are unusable there: use other flats or cut that region out of the files"
        )
    gain = np.where(bad, 1.0, gain).astype(np.float32)
    trans = (np.asarray(projections, dtype=np.float32) - np.float32(dark)) / gain
    trans[:, bad] = 1.0  # filled in below
    nonpositive = trans <= 0
    n_clip = int(nonpositive.sum())
    if n_clip == trans.size - int(bad.sum()) * len(trans):
        raise ValueError(
            f"{where}: every projection value is at or below the dark level, so no line "
            "integral can be formed; the projections are empty or the darks are wrong"
        )
    if n_clip:
        floor = float(trans[~nonpositive].min())
        trans[nonpositive] = floor
        notes.append(
            f"clipped {n_clip} non-positive transmissions ({100 * n_clip / trans.size:.3g}% of "
            f"the data, p <= dark) to the smallest positive one ({floor:.3g}) before -log"
        )
    line = -np.log(trans)
    if bad.any():
        _fill_bad_pixels(line, bad)
        notes.append(
            f"{int(bad.sum())} detector pixels with flat - dark <= 0 were filled in from the "
            "neighbouring columns"
        )
    n_flats = len(flats)
    n_darks = 0 if darks is None else len(darks)
    notes.insert(
        0,
        f"line integrals -log((p - dark) / (flat - dark)) with the mean of {n_flats} flats and "
        f"{n_darks} darks" + ("" if n_darks else " (no darks: dark level 0)"),
    )
    return line.astype(np.float32, copy=False), notes


def _fill_bad_pixels(line: np.ndarray, bad: np.ndarray) -> None:
    """Replace ``line[:, r, c]`` at ``bad[r, c]`` by linear interpolation along the row."""
    bad2 = bad.reshape(-1, bad.shape[-1])
    view = line.reshape(line.shape[0], -1, bad.shape[-1])
    cols = np.arange(bad.shape[-1])
    for r in np.nonzero(bad2.any(axis=1))[0]:
        good = np.nonzero(~bad2[r])[0]
        if good.size == 0:
            view[:, r, :] = 0.0
            continue
        for c in np.nonzero(bad2[r])[0]:
            right = np.searchsorted(good, c)
            lo = good[max(right - 1, 0)]
            hi = good[min(right, good.size - 1)]
            w = 0.0 if hi == lo else (cols[c] - lo) / (hi - lo)
            view[:, r, c] = (1 - w) * view[:, r, lo] + w * view[:, r, hi]
