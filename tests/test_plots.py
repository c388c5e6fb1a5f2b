"""Tests of dip_uq.plots: the calibration and reliability plots draw what the metrics say."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from helpers import calibrated
from matplotlib.figure import Figure

from dip_uq.directions import DirectionalPower, bin_centres, sector_of
from dip_uq.metrics import calibration_curve, reliability
from dip_uq.plots import calibration_plot, directions_plot, reliability_plot


def test_calibration_plot_draws_and_saves(tmp_path):
    backend = matplotlib.get_backend()
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    mean, std, truth = calibrated((16, 16))
    expected, observed = calibration_curve(mean, std, truth)
    line = calibration_plot(ax, expected, observed, label="calibrated")
    calibration_plot(ax, expected, calibration_curve(mean, 0.5 * std, truth)[1], label="0.5 std")
    lines = ax.get_lines()
    assert len(lines) == 3  # one diagonal, two curves
    assert lines[0].get_xydata()[1].tolist() == [1.0, 1.0]  # the diagonal through (1, 1)
    assert np.array_equal(line.get_xdata(), expected)
    assert np.array_equal(line.get_ydata(), observed)
    assert ax.get_xlabel() == "expected coverage (nominal level)"
    assert ax.get_ylabel() == "observed coverage"
    assert ax.get_xlim() == ax.get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ideal", "calibrated", "0.5 std"]
    path = tmp_path / "calibration.png"
    fig.savefig(path, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend  # no global state changed
    with pytest.raises(ValueError, match="1D of one length"):
        calibration_plot(ax, [0.5, 0.9], [0.5])


def test_reliability_plot_draws_and_saves(tmp_path):
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    mean, std, truth = calibrated((32, 32))
    line = reliability_plot(ax, std, mean - truth, bins=8, label="calibrated")
    reliability_plot(ax, std, 2 * (mean - truth), bins=8)
    assert len(ax.get_lines()) == 3
    mean_std, rmse, _ = reliability(std, mean - truth, bins=8)
    assert np.allclose(line.get_xdata(), mean_std) and np.allclose(line.get_ydata(), rmse)
    assert ax.get_xlabel() == "mean predicted std (image units)"
    assert ax.get_ylabel() == "RMSE of the error (image units)"
    top = 1.05 * max(mean_std.max(), 2 * rmse.max())
    assert ax.get_xlim() == ax.get_ylim() == pytest.approx((0.0, top))
    path = tmp_path / "reliability.png"
    fig.savefig(path, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_directions_plot_draws_the_samples_and_the_error_against_the_shaded_wedge():
    ax = Figure().add_subplot()
    angles = bin_centres()
    wedge = (90.0, 60.0)
    spread = DirectionalPower(angles, np.where(sector_of(angles, wedge), 4.0, 1.0), wedge)
    error = np.random.default_rng(0).normal(size=(32, 32))
    samples, err = directions_plot(ax, spread, error)
    assert np.array_equal(samples.get_ydata(), spread.power)
    assert np.all(np.isfinite(err.get_ydata())) and np.all(err.get_ydata() > 0)
    assert len(ax.patches) == int(spread.missing.sum()) == 12  # one 5° span per missing bin
    assert sorted(label.get_text() for label in ax.get_legend().get_texts()) == [
        "error",
        "not measured",
        "posterior samples",
    ]
    assert ax.get_xlim() == (0.0, 180.0)
