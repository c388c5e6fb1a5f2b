"""Tests of dip_uq.noise: the sinogram checks, the noise estimates and the default rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import parallel_scan

import dip_uq as du
from dip_uq.noise import (
    TV_KAPPA,
    _positive_float,
    _positive_int,
    check_sinogram,
    default_iterations,
    default_tv_weight,
    estimate_noise_sigma,
    image_scale,
    ray_transform_gain,
)


# ------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------
def test_check_sinogram_accepts_one_finite_sinogram_and_names_the_problem():
    A, _, y, _ = parallel_scan(16, 8)
    assert check_sinogram(A, y) is y
    wrapped = check_sinogram(A, y.numpy())
    assert isinstance(wrapped, torch.Tensor) and torch.equal(wrapped, y)
    with pytest.raises(
        ValueError, match=r"sinogram shape \(8, 15\) does not match .* \(angles, cols\)"
    ):
        check_sinogram(A, y[:, 1:])
    with pytest.raises(ValueError, match=r"must be a torch\.Tensor sinogram, got list"):
        check_sinogram(A, y.tolist())
    with pytest.raises(ValueError, match="floating point"):
        check_sinogram(A, y.long())
    bad = y.clone()
    bad[0, :2] = float("nan")
    with pytest.raises(ValueError, match="2 NaN/Inf values"):
        check_sinogram(A, bad)


def test_positive_number_checks():
    assert _positive_int("n", 3) == 3 and _positive_int("n", None, allow_none=True) is None
    for value in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            _positive_int("n", value)
    assert _positive_float("lr", 1) == 1.0 and _positive_float("lr", None) is None
    assert _positive_float("gamma", 0, allow_zero=True) == 0.0
    for value in (0.0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match=r"lr must be a finite number > 0"):
            _positive_float("lr", value)
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0"):
        _positive_float("gamma", -1.0, allow_zero=True)


def test_image_scale_is_the_999th_percentile_and_never_zero():
    signs = torch.tensor([1.0, -1.0]).repeat(501)[:1001]
    image = (torch.arange(1001.0) * signs).reshape(7, 143)  # |image| = 0, 1, ..., 1000
    assert image_scale(image) == pytest.approx(999.0)
    assert image_scale(torch.zeros(4, 4)) == 1.0


# ------------------------------------------------------------------------------------------
# defaults derived from the data
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("noise", "n_angles", "span"), [(0.01, 30, np.pi), (0.05, 45, np.pi / 2)])
def test_noise_estimate_parallel_beam(noise, n_angles, span):
    A, _, y, sigma = parallel_scan(64, n_angles, noise=noise, span=span)
    assert estimate_noise_sigma(y, A.geometry) == pytest.approx(sigma, rel=0.1)


@pytest.mark.parametrize(
    ("dim", "geometry", "noise", "phantom", "seed"),
    [
        (2, "fan", 0.01, "ellipses", 5),
        (3, "cone", 0.05, "shepp-logan", 0),
        (3, "cone", 0.02, "ellipses", 3),
    ],
)
def test_noise_estimate_fan_and_cone_beam_reads_the_air(dim, geometry, noise, phantom, seed):
    """The second differences alone read edges as noise (1.6-3.6x here); over the air they
    are noise only."""
    size = 48 if dim == 2 else 20
    scan = du.simulate_scan(
        phantom, dim=dim, size=size, geometry=geometry, angles=24, noise=noise, seed=seed
    )
    y = torch.as_tensor(scan.sinogram)
    A = du.RayTransform(scan.volume, scan.geometry, "torch")
    sigma = float((y - A(torch.as_tensor(scan.truth))).square().mean().sqrt())
    assert estimate_noise_sigma(y, scan.geometry) == pytest.approx(sigma, rel=0.1)
    assert estimate_noise_sigma(y) > 1.4 * sigma  # without a geometry: second differences only


def test_noise_estimate_without_air_falls_back_to_the_second_differences():
    """An object that fills every detector pixel (no air at y = 0): the estimate stays an
    upper bound from the second differences."""
    n = 64
    A = du.RayTransform(
        du.Volume((n, n)),
        du.FanBeam(np.linspace(0, 2 * np.pi, 60, endpoint=False), (96,), 1.5, 4.0 * n, 2.0 * n),
        "torch",
    )
    y, sigma = du.simulate(A, du.phantoms.shepp_logan((n, n)), noise=0.05, return_sigma=True)
    offset = y + 10 * float(sigma)  # e.g. a flat field that leaves the air at 10 σ
    estimate = estimate_noise_sigma(offset, A.geometry)
    assert estimate == estimate_noise_sigma(offset)
    assert 0.9 * float(sigma) < estimate < 2.0 * float(sigma)
    assert estimate_noise_sigma(y, A.geometry) == pytest.approx(float(sigma), rel=0.1)


def test_default_tv_weight_rule_and_gain():
    assert default_tv_weight(0.2, 4.0, 1920) == pytest.approx(TV_KAPPA * 0.2 * 4 / 1920)
    A, _, _, _ = parallel_scan(64, 30)
    # ‖A‖_F² / N by Hutchinson against the exact value from the columns of A (unit images)
    gain = ray_transform_gain(A)
    basis = torch.eye(64 * 64)[::37].reshape(-1, 64, 64)  # every 37th voxel
    exact = float(A(basis).square().sum() / basis.shape[0]) ** 0.5
    assert gain == pytest.approx(exact, rel=0.05)


def test_default_iterations_rule():
    # 2000 (0.05 / ν)^0.7, rounded to 100, x 0.7 after pretraining
    assert [default_iterations(v) for v in (0.01, 0.02, 0.05, 0.1)] == [6200, 3800, 2000, 1200]
    assert default_iterations(0.02, pretrained=True) == 2700
    assert default_iterations(1.0) == 500 and default_iterations(1e-9) == 20000
