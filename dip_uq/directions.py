"""The Fourier directions a scan measures, its missing wedge, and images' power per direction.

By the Fourier slice theorem a parallel projection whose detector runs along the unit vector
``u`` samples the image's Fourier transform on the line through the origin along ``u``; a
fan- or cone-beam projection samples the lines perpendicular to each of its rays, so the
directions within the fan's half-angle either side of its central one. A limited arc leaves
a wedge of directions unmeasured: there the scan says nothing and only the prior constrains
the image, so a posterior that knows what it does not know spreads its samples there
(``docs/missing-wedge-study.md``).

Directions are angles ``φ`` in ``[0°, 180°)`` (a direction and its opposite are the same
line) of the in-plane frequency ``(k_x, k_y)``, ``φ = atan2(k_y, k_x)``, with ``x`` along the
image's columns and ``y`` along its rows, in the plane perpendicular to the rotation axis
``z`` (:mod:`dip_uq.geometry`'s conventions). A volume ``(Z, Y, X)`` is analysed slice by
slice in ``(Y, X)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .geometry import Geometry

__all__ = [
    "BINS",
    "LIMITED_GAP_MIN_DEG",
    "LIMITED_GAP_STEPS",
    "DirectionalPower",
    "bin_centres",
    "direction_power",
    "frequency_directions",
    "is_limited_gap",
    "missing_wedge",
    "sector_of",
    "wedge_frequencies",
]

# direction bins of direction_power: 36 of 5° over the half circle
BINS = 36
# resolution of missing_wedge's sweep over the half circle (degrees)
_STEP_DEG = 0.05
# a gap between directions is a limited arc's when it is this many times 180° / n_angles (the
# step of n angles spread evenly over the half circle) and at least LIMITED_GAP_MIN_DEG: full
# scans stay below, uneven (golden-angle: 1.4) or doubled on the half circle (360°: 2)
LIMITED_GAP_STEPS = 4.0
LIMITED_GAP_MIN_DEG = 10.0


def is_limited_gap(gap_deg: float, n_angles: int) -> bool:
    """Whether a gap of ``gap_deg`` degrees between the directions of a scan of ``n_angles``
    projections makes it a limited arc (:data:`LIMITED_GAP_STEPS`, :data:`LIMITED_GAP_MIN_DEG`):
    the one rule of :func:`missing_wedge` and of :mod:`dip_uq.holdout`'s limited arcs."""
    return gap_deg >= max(LIMITED_GAP_STEPS * 180.0 / n_angles, LIMITED_GAP_MIN_DEG)


def _measured_intervals(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(centre, half)``: per projection, the central Fourier direction it measures and the
    half-width of the fan of directions about it (degrees; 0 for parallel beams). A ray of
    in-plane direction ``α`` measures the Fourier direction ``α - 90°``."""
    frames = geometry.frames_3d()
    if geometry.kind == "parallel":
        ray = frames["ray"][:, :2]
        centre = np.degrees(np.arctan2(ray[:, 1], ray[:, 0])) - 90.0
        return np.mod(centre, 180.0), np.zeros(len(centre))
    # the rays from the source to the detector's two end columns, in the plane
    source, middle, u = (frames[k][:, :2] for k in ("source", "center", "u"))
    reach = 0.5 * geometry.det_shape[-1] * u
    first, last = middle - reach - source, middle + reach - source
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    last /= np.linalg.norm(last, axis=1, keepdims=True)
    between = np.arctan2(
        np.abs(first[:, 0] * last[:, 1] - first[:, 1] * last[:, 0]), np.sum(first * last, axis=1)
    )
    middle_ray = first + last
    centre = np.degrees(np.arctan2(middle_ray[:, 1], middle_ray[:, 0])) - 90.0
    return np.mod(centre, 180.0), 0.5 * np.degrees(between)


def missing_wedge(geometry: Geometry) -> tuple[float, float] | None:
    """``(start, width)`` in degrees: the widest wedge of Fourier directions no projection of
    ``geometry`` measures, counterclockwise from ``start`` (in ``[0, 180)``); ``None`` when the
    scan has none that :func:`is_limited_gap` counts (a full or sparse-view scan).

    A fan or cone beam measures the directions within its fan's half-angle either side of
    each projection's central one, so its wedge is narrower than its arc's gap by the fan.
    """
    centre, half = _measured_intervals(geometry)
    grid = np.arange(0.0, 180.0, _STEP_DEG)
    measured = np.zeros(grid.shape, dtype=bool)
    for c, h in zip(centre, half, strict=True):
        distance = np.abs(np.mod(grid - c + 90.0, 180.0) - 90.0)
        measured |= distance <= h + 0.5 * _STEP_DEG
    if measured.all():
        return None
    # the longest circular run of unmeasured directions
    start_at = int(np.argmax(measured))  # a measured direction: runs do not wrap past it
    order = np.roll(~measured, -start_at)
    best, best_start, run = 0, 0, 0
    for k, free in enumerate(order):
        run = run + 1 if free else 0
        if run > best:
            best, best_start = run, k - run + 1
    width = best * _STEP_DEG
    if not is_limited_gap(width, geometry.n_angles):
        return None
    return float(grid[(best_start + start_at) % len(grid)]), float(width)


def sector_of(angles_deg: np.ndarray, wedge: tuple[float, float]) -> np.ndarray:
    """Whether each direction (degrees) lies in ``wedge = (start, width)``, modulo 180°."""
    start, width = wedge
    return np.mod(np.asarray(angles_deg, dtype=float) - start, 180.0) < width


@dataclass
class DirectionalPower:
    """Images' Fourier power per direction, against a scan's missing wedge.

    Attributes:
        angles_deg: the bins' centres ``(BINS,)``, degrees in ``[0, 180)``.
        power: per bin, the mean over the images and over the bin's frequencies of
            ``|FFT|²`` (image units squared times voxels; DC left out); NaN for a bin that
            no frequency of a small grid falls into.
        wedge: the missing wedge ``(start, width)`` in degrees (:func:`missing_wedge`).
    """

    angles_deg: np.ndarray
    power: np.ndarray
    wedge: tuple[float, float]

    @classmethod
    def of(
        cls,
        images: torch.Tensor,
        wedge: tuple[float, float],
        all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> DirectionalPower:
        """The power per direction of ``images`` ``(n, Y, X)`` or ``(n, Z, Y, X)``
        (:func:`direction_power`), against ``wedge``. ``all_reduce`` (a sum over processes,
        each holding its share of the images) makes every process's result that of all
        images together."""
        sums, counts = direction_power(images)
        if all_reduce is not None:
            both = all_reduce(torch.stack([sums, counts]))
            sums, counts = both[0], both[1]
        return cls(bin_centres(), (sums / counts).numpy(), wedge)

    @property
    def missing(self) -> np.ndarray:
        """Whether each bin's centre lies in the missing wedge."""
        return sector_of(self.angles_deg, self.wedge)

    @property
    def ratio(self) -> float:
        """Mean power per bin in the missing wedge over that in the measured directions:
        above 1, the images vary more where the scan does not look."""
        missing, known = self.missing, np.isfinite(self.power)
        if not (missing & known).any() or not (~missing & known).any():
            return float("nan")
        return float(np.nanmean(self.power[missing]) / np.nanmean(self.power[~missing]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the bins, their power, the wedge and :attr:`ratio`."""
        return {
            "angles_deg": self.angles_deg.tolist(),
            "power": [float(p) if np.isfinite(p) else None for p in self.power],
            "missing_wedge_deg": list(self.wedge),
            "ratio_missing_to_measured": self.ratio,
        }


def frequency_directions(shape: tuple[int, int]) -> torch.Tensor:
    """The direction (degrees in ``[0, 180)``, float64) of every frequency of a ``(Y, X)``
    FFT (``torch.fft.fft2``'s layout); 0 for the DC term."""
    ky = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(shape[1], dtype=torch.float64)[None, :]
    return torch.remainder(torch.rad2deg(torch.atan2(ky, kx)), 180.0)


def wedge_frequencies(shape: tuple[int, int], wedge: tuple[float, float]) -> torch.Tensor:
    """Whether each frequency of a ``(Y, X)`` FFT (``torch.fft.fft2``'s layout) has its
    direction in ``wedge = (start, width)`` degrees (:func:`sector_of`); ``False`` for the DC
    term, which has no direction."""
    inside = torch.as_tensor(sector_of(frequency_directions(shape).numpy(), wedge))
    inside[0, 0] = False
    return inside


def _bins(shape: tuple[int, int]) -> torch.Tensor:
    """Each frequency's direction bin of a ``(Y, X)`` FFT; ``-1`` for the DC term."""
    phi = frequency_directions(shape)
    index = torch.clamp((phi / (180.0 / BINS)).long(), max=BINS - 1)
    index[0, 0] = -1
    return index


def direction_power(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums, counts)``: per direction bin (:data:`BINS` over ``[0°, 180°)``), the sum of
    ``|FFT_{y,x}|²`` over ``images`` ``(n, Y, X)`` or ``(n, Z, Y, X)`` (slice by slice) and
    their frequencies, and the number of terms summed (float64, on the CPU). Sums and counts
    of several calls (or processes) add; ``sums / counts`` is the mean power per bin."""
    x = images.detach().to("cpu", torch.float64)
    power = torch.fft.fft2(x).abs().square()
    power = power.reshape(-1, *x.shape[-2:]).sum(0)
    index = _bins(tuple(x.shape[-2:]))
    keep = index >= 0
    sums = torch.zeros(BINS, dtype=torch.float64).index_add_(0, index[keep], power[keep])
    per_bin = torch.bincount(index[keep], minlength=BINS).double()
    return sums, per_bin * (x.numel() // (x.shape[-2] * x.shape[-1]))


def bin_centres() -> np.ndarray:
    """The centres (degrees) of :func:`direction_power`'s bins."""
    return (np.arange(BINS) + 0.5) * (180.0 / BINS)
