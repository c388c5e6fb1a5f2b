"""Data shared by the io tests: the real files in data/, exact sinograms of balls, and the
one-line check of error messages.

Synthetic sinograms are exact line integrals of balls (discs in 2D) computed here from the
geometry's vectors, independently of any projector, so a geometry that a reader or
``preprocess`` gets wrong (a sign, a shift, a pitch) shows up as a mismatch with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dip_uq.geometry import Geometry, ParallelBeam, Volume

DATA = Path(__file__).resolve().parents[2] / "data"
TOOTH = DATA / "aps_tooth.h5"
HTC = DATA / "htc2022_ta_30deg.mat"
K11 = DATA / "diamond_k11" / "k11-18014.nxs"

# balls: (centre (x, y, z), radius, attenuation)
BALLS = [((6.0, -4.0, 0.5), 9.0, 0.02), ((-9.0, 7.0, -1.0), 4.0, 0.05)]


def ball_sinogram(geometry: Geometry, balls=BALLS) -> np.ndarray:
    """Exact line integrals through balls (2D: discs in z = 0) for every detector pixel."""
    f = geometry.frames_3d()
    rows = geometry.det_shape[0] if geometry.ndim == 3 else 1
    cols = geometry.det_shape[-1]
    i = np.arange(cols) - (cols - 1) / 2
    j = np.arange(rows) - (rows - 1) / 2
    pix = (
        f["center"][:, None, None]
        + i[None, None, :, None] * f["u"][:, None, None]
        + j[None, :, None, None] * f["v"][:, None, None]
    )  # (angles, rows, cols, 3)
    if geometry.kind == "parallel":
        start = pix
        direction = np.broadcast_to(f["ray"][:, None, None], pix.shape)
    else:
        start = np.broadcast_to(f["source"][:, None, None], pix.shape)
        direction = pix - start
    direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    sino = np.zeros(pix.shape[:3])
    for centre, radius, mu in balls:
        c = np.array(centre) if geometry.ndim == 3 else np.array([*centre[:2], 0.0])
        rel = c - start
        along = np.sum(rel * direction, -1)
        dist2 = np.sum(rel * rel, -1) - along**2
        sino += mu * 2 * np.sqrt(np.clip(radius**2 - dist2, 0, None))
    return sino.astype(np.float32) if geometry.ndim == 3 else sino[:, 0].astype(np.float32)


def ball_image(volume: Volume, balls=BALLS) -> np.ndarray:
    axes = volume.coordinates()
    if volume.ndim == 2:
        y, x = np.meshgrid(*axes, indexing="ij")
        z = np.zeros_like(x)
    else:
        z, y, x = np.meshgrid(*axes, indexing="ij")
    image = np.zeros(volume.shape)
    for (cx, cy, cz), radius, mu in balls:
        cz = cz if volume.ndim == 3 else 0.0
        image += mu * (((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) <= radius**2)
    return image


def parallel_2d(n_angles=60, cols=64, offset=0.0, full=False) -> ParallelBeam:
    angles = np.linspace(0, 2 * np.pi if full else np.pi, n_angles, endpoint=False)
    return ParallelBeam(angles, (cols,), 0.75, offset)


def one_line(error: pytest.ExceptionInfo) -> str:
    """The error's message, asserted to be one line."""
    text = str(error.value)
    assert "\n" not in text
    return text
