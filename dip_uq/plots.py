"""Calibration plots of a per-voxel uncertainty, and its spread over the Fourier directions
against a scan's missing wedge, drawn on a matplotlib ``Axes`` the caller owns.

The functions draw on the ``ax`` they are given and touch no global state: no ``pyplot``, no
backend choice, no rcParams. They work on a bare ``matplotlib.figure.Figure`` (which saves
PNGs through Agg without a display), with ``plt.subplots`` and in notebooks alike. Calling a
function again on the same axes adds a curve (compare methods on one plot) and draws the
reference diagonal only once.

>>> from matplotlib.figure import Figure
>>> ax = Figure().add_subplot()
>>> line = calibration_plot(ax, [0.5, 0.9], [0.45, 0.8], label="Laplace")
>>> ax.get_xlabel()
'expected coverage (nominal level)'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .directions import DirectionalPower, sector_of
from .metrics import reliability

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.lines import Line2D

__all__ = ["calibration_plot", "directions_plot", "reliability_plot"]

_IDEAL_GID = "dip_uq-ideal"  # marks the y = x reference line, so it is drawn once per axes


def _ideal_line(ax: Axes, label: str) -> None:
    """The dashed ``y = x`` line (infinite, so it spans any later data), once per axes."""
    if not any(line.get_gid() == _IDEAL_GID for line in ax.get_lines()):
        ax.axline((0, 0), slope=1, color="0.5", linestyle="--", linewidth=1, label=label)
        ax.get_lines()[-1].set_gid(_IDEAL_GID)


def calibration_plot(
    ax: Axes,
    expected: Sequence[float] | np.ndarray,
    observed: Sequence[float] | np.ndarray,
    label: str | None = None,
) -> Line2D:
    """Observed against expected coverage, with the diagonal of perfect calibration.

    Args:
        ax: the matplotlib axes to draw on.
        expected: nominal levels in ``[0, 1]`` (from :func:`dip_uq.metrics.calibration_curve`).
        observed: fractions of voxels covered at those levels, same length.
        label: legend entry of the curve; with one, the legend is (re)drawn.

    Returns:
        The curve's ``Line2D``. Points above the diagonal: the std is too large (conservative),
        below: too small (overconfident). Both axes run from 0 to 1.
    """
    expected = np.asarray(expected, dtype=float)
    observed = np.asarray(observed, dtype=float)
    if expected.ndim != 1 or expected.shape != observed.shape:
        raise ValueError(
            f"expected and observed must be 1D of one length, got shapes {expected.shape} "
            f"and {observed.shape}"
        )
    _ideal_line(ax, "ideal")
    (line,) = ax.plot(expected, observed, marker="o", markersize=3, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("expected coverage (nominal level)")
    ax.set_ylabel("observed coverage")
    if label is not None:
        ax.legend(loc="upper left")
    return line


def reliability_plot(
    ax: Axes,
    std: torch.Tensor | np.ndarray,
    error: torch.Tensor | np.ndarray,
    bins: int = 10,
    label: str | None = None,
) -> Line2D:
    """Binned RMSE of the error against the binned mean predicted std, with ``y = x``.

    The voxels are grouped by std quantiles (:func:`dip_uq.metrics.reliability`).

    Args:
        ax: the matplotlib axes to draw on.
        std: the per-voxel posterior std, ``(Y, X)`` or ``(Z, Y, X)``, in image units.
        error: the error ``mean - truth``, same shape and units.
        bins: number of std quantile groups.
        label: legend entry of the curve; with one, the legend is (re)drawn.

    Returns:
        The curve's ``Line2D``. Points above the diagonal: the error is larger than the std
        predicts (overconfident), below: smaller (conservative). Both axes run from 0 to just
        above the largest value of any curve on ``ax``.
    """
    mean_std, rmse, _ = reliability(std, error, bins)
    _ideal_line(ax, "y = x")
    (line,) = ax.plot(mean_std, rmse, marker="o", markersize=3, label=label)
    # one square range for both axes over every curve drawn so far, so y = x sits at 45°
    top = max(
        max(np.max(curve.get_xdata()), np.max(curve.get_ydata()))
        for curve in ax.get_lines()
        if curve.get_gid() != _IDEAL_GID
    )
    top = 1.05 * top if top > 0 else 1.0
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("mean predicted std (image units)")
    ax.set_ylabel("RMSE of the error (image units)")
    if label is not None:
        ax.legend(loc="upper left")
    return line


def directions_plot(
    ax: Axes, directions: DirectionalPower, error: np.ndarray | torch.Tensor | None = None
) -> list[Line2D]:
    """The posterior samples' Fourier power per direction, with the scan's missing wedge
    shaded; with ``error`` (``mean - truth``, shaped like the image) also the error's.

    Calibrated samples follow the error's curve in every direction: below it inside the
    wedge, the std misses the errors the scan cannot see.

    Args:
        ax: the matplotlib axes to draw on.
        directions: the samples' power per direction (:class:`dip_uq.directions.DirectionalPower`).
        error: optional error image ``(Y, X)`` or volume ``(Z, Y, X)``, image units.

    Returns:
        The curves' ``Line2D`` (samples, then error).
    """
    angles = directions.angles_deg
    lines = ax.semilogy(angles, directions.power, "o-", markersize=3, label="posterior samples")
    if error is not None:
        power = DirectionalPower.of(torch.as_tensor(np.asarray(error))[None], directions.wedge)
        lines += ax.semilogy(angles, power.power, "s-", markersize=3, label="error")
    width = angles[1] - angles[0]
    for k, angle in enumerate(angles[sector_of(angles, directions.wedge)]):
        label = "not measured" if k == 0 else None
        ax.axvspan(angle - width / 2, angle + width / 2, color="grey", alpha=0.2, lw=0, label=label)
    ax.set_xlim(0, 180)
    ax.set_xlabel("Fourier direction (°)")
    ax.set_ylabel("power per frequency")
    ax.legend(fontsize=7)
    return lines
