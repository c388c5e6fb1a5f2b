"""Tests of the calibration metrics of dip_uq.metrics (coverage, calibration curve, Spearman,
reliability, patch_tll, summary) against hand-computed values."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from helpers import calibrated
from scipy.stats import spearmanr

from dip_uq.metrics import (
    DEFAULT_LEVELS,
    calibration_curve,
    coverage,
    patch_tll,
    reliability,
    spearman,
    ssim,
    summary,
)


# ------------------------------------------------------------------------------------------
# coverage and the calibration curve
# ------------------------------------------------------------------------------------------
def test_coverage_hand_computed():
    # z = 0.674, 1.645, 1.960 for 50, 90, 95 %; errors |truth - mean| with std 1:
    # inside 50 %: 0.5, -0.3, 0.0; inside 90 %: also 1.0, 1.5; inside 95 %: also -1.7
    truth = torch.tensor([[0.5, 1.0, 1.5, 2.0], [-0.3, -1.7, 0.0, 3.0]])
    result = coverage(torch.zeros(2, 4), torch.ones(2, 4), truth)
    assert result == {0.5: 3 / 8, 0.9: 5 / 8, 0.95: 6 / 8}
    assert list(result) == [0.5, 0.9, 0.95]
    # the interval scales with std: doubling std brings 2.0 and 3.0 within 95 % (2 · 1.96)
    assert coverage(torch.zeros(2, 4), 2 * torch.ones(2, 4), truth, [0.95]) == {0.95: 1.0}
    # a voxel with std 0 is covered only where the error is exactly 0; numpy arrays work
    std = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert coverage(np.zeros((2, 2)), std, np.array([[0.0, 0.1], [1e-6, 0.1]]), [0.5]) == {
        0.5: 0.75
    }


def test_calibrated_gaussian_coverage_matches_the_level_in_3d():
    mean, std, truth = calibrated((16, 32, 32))  # 16384 voxels: binomial std <= 0.004
    expected, observed = calibration_curve(mean, std, truth)
    assert expected.tolist() == list(DEFAULT_LEVELS)
    assert expected[0] == 0.05 and expected[-2] == 0.95 and expected[-1] == 0.99
    assert expected.dtype == observed.dtype == np.float64
    assert np.abs(observed - expected).max() < 0.015
    # a std half as large as the true spread is overconfident: P(|Z| <= z_l / 2) < l
    _, under = calibration_curve(mean, 0.5 * std, truth, levels=[0.5, 0.9])
    theory = [
        math.erf(0.5 * NormalDist().inv_cdf((1 + level) / 2) / math.sqrt(2)) for level in (0.5, 0.9)
    ]
    assert under == pytest.approx(theory, abs=0.015)  # 0.264 and 0.589
    assert calibration_curve(mean, std, truth, levels=0.9)[1].shape == (1,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": (0.5, 1.0)}, "levels must lie strictly between 0 and 1, got 1.0"),
        ({"levels": (0.0,)}, "levels must lie strictly between 0 and 1, got 0.0"),
        ({"levels": ()}, "levels is empty"),
        ({"levels": ("high",)}, "levels must be numbers in"),
        (
            {"truth": torch.zeros(3, 2)},
            r"shapes differ: mean \(2, 3\), std \(2, 3\), truth \(3, 2\)",
        ),
        ({"std": -torch.ones(2, 3)}, "std must be non-negative, got a minimum of -1"),
        ({"mean": torch.full((2, 3), math.nan)}, "mean contains 6 NaN/Inf values"),
        ({"mean": [[0.0] * 3] * 2}, "mean must be a torch.Tensor, got list"),
    ],
)
def test_coverage_rejects_bad_input(kwargs, message):
    args = {"mean": torch.zeros(2, 3), "std": torch.ones(2, 3), "truth": torch.zeros(2, 3)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        coverage(**args)
    with pytest.raises(ValueError, match=message):
        calibration_curve(**args)


# ------------------------------------------------------------------------------------------
# Spearman and reliability
# ------------------------------------------------------------------------------------------
def test_spearman_hand_computed_and_against_scipy():
    # no ties: ρ = 1 - 6 Σd² / (n (n² - 1)) = 1 - 6 · 2 / 24
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0])) == pytest.approx(
        0.5, abs=1e-12
    )
    # ties get the average rank: b ranks (1.5, 1.5, 3.5, 3.5); ρ = 4 / sqrt(5 · 4)
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 1.0, 2.0, 2.0])
    assert spearman(a, b) == pytest.approx(4 / math.sqrt(20), abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0, abs=1e-12)
    # 3D with many ties, against scipy
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (4, 6, 5), generator=g).float()
    y = x + torch.randint(0, 4, (4, 6, 5), generator=g).float()
    expected = spearmanr(x.flatten().numpy(), y.flatten().numpy()).statistic
    assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(spearman(torch.ones(3, 3), torch.rand(3, 3, generator=g)))
    with pytest.raises(ValueError, match="at least 2 values"):
        spearman(torch.ones(1, 1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="shapes differ: a"):
        spearman(torch.ones(2, 2), torch.ones(4))


def test_reliability_hand_computed():
    std = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    error = torch.tensor([[1.0, -1.0], [3.0, -3.0]])
    mean_std, rmse, counts = reliability(std, error, bins=2)
    assert mean_std.tolist() == [1.5, 3.5] and rmse.tolist() == [1.0, 3.0]
    assert counts.tolist() == [2, 2] and counts.dtype == np.int64
    # 5 voxels in 2 bins: the first gets the extra one; bins follow the std, not the layout
    std = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])
    error = torch.tensor([4.0, 1.0, 2.0, -1.0, 1.0])
    mean_std, rmse, counts = reliability(std, error, bins=2)
    assert counts.tolist() == [3, 2]
    assert mean_std == pytest.approx([2.0, 4.5])
    assert rmse == pytest.approx([1.0, math.sqrt(10)])
    # a calibrated std: binned RMSE ≈ binned std
    mean, std, truth = calibrated((8, 32, 32), seed=1)
    mean_std, rmse, counts = reliability(std, mean - truth)
    assert counts.sum() == 8 * 32 * 32 and len(counts) == 10
    assert np.abs(rmse / mean_std - 1).max() < 0.1
    for bins in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=f"bins must be an integer between 1 and 5 .*{bins}"):
            reliability(torch.ones(5), torch.ones(5), bins=bins)


# ------------------------------------------------------------------------------------------
# patch_tll in 3D and for every patch side
# ------------------------------------------------------------------------------------------
def test_patch_tll_3d_against_dense_gaussians():
    g = torch.Generator().manual_seed(0)
    mean, truth = torch.zeros(4, 4, 5), torch.randn(4, 4, 5, generator=g)
    samples = torch.randn(40, 4, 4, 5, generator=g)
    total = 0.0
    for i in (0, 2):
        for j in (0, 2):
            for k in (0, 2):  # the fifth slice along x is left out
                block = samples[:, i : i + 2, j : j + 2, k : k + 2].reshape(40, 8).double()
                cov = block.T @ block / 40
                cov += 1e-6 * cov.diagonal().mean() * torch.eye(8, dtype=torch.float64)
                mvn = torch.distributions.MultivariateNormal(torch.zeros(8).double(), cov)
                total += float(mvn.log_prob(truth[i : i + 2, j : j + 2, k : k + 2].reshape(8)))
    assert patch_tll(mean, samples, truth, patch=2) == pytest.approx(total / 64, rel=1e-6)
    curve = [patch_tll(mean, samples, truth, p) for p in range(1, 5)]
    assert all(math.isfinite(v) for v in curve)
    for patch in (0, 5, 1.5):
        with pytest.raises(
            ValueError, match=f"patch must be an integer between 1 and .* 4, got {patch}"
        ):
            patch_tll(mean, samples, truth, patch=patch)


# ------------------------------------------------------------------------------------------
# summary: every metric at once
# ------------------------------------------------------------------------------------------
# errors mean - truth of 0.5, -0.5, 1, 0 (mse 0.375, truth range 3) and stds 0.5, 1, 2, 0.25
SUMMARY_TRUTH = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
SUMMARY_MEAN = SUMMARY_TRUTH + torch.tensor([[0.5, -0.5], [1.0, 0.0]])
SUMMARY_STD = torch.tensor([[0.5, 1.0], [2.0, 0.25]])
# per voxel e²/s² = 1, 0.25, 0.25, 0 and s² = 1/4, 1, 4, 1/16 (product 1/16)
SUMMARY_TLL = -0.5 * (1.5 / 4 + math.log(2 * math.pi) - math.log(16) / 4)


def test_summary_hand_computed():
    row = summary(SUMMARY_MEAN, SUMMARY_TRUTH, SUMMARY_STD)
    assert list(row) == [
        "psnr",
        "ssim",
        "coverage_0.5",
        "coverage_0.9",
        "coverage_0.95",
        "tll_1",
        "tll_patch",
        "spearman",
        "mean_std",
        "rmse",
    ]
    assert row["psnr"] == pytest.approx(10 * math.log10(9 / 0.375))
    assert math.isnan(row["ssim"])  # 2 x 2: no 11-tap window fits
    # |e| <= z std: 0.5 > 0.674 · 0.5 is the one voxel outside the 50 % interval
    assert row["coverage_0.5"] == 0.75 and row["coverage_0.9"] == row["coverage_0.95"] == 1.0
    assert row["tll_1"] == pytest.approx(SUMMARY_TLL)
    assert math.isnan(row["tll_patch"])  # needs samples
    # ranks of std 2, 3, 4, 1 and of |e| 2.5, 2.5, 4, 1: ρ = 4.5 / sqrt(5 · 4.5)
    assert row["spearman"] == pytest.approx(math.sqrt(0.9))
    assert row["mean_std"] == pytest.approx(3.75 / 4)
    assert row["rmse"] == pytest.approx(math.sqrt(0.375))
    assert all(isinstance(v, float) for v in row.values())
    # numpy arrays and other levels
    arrays = summary(SUMMARY_MEAN.numpy(), SUMMARY_TRUTH.numpy(), SUMMARY_STD.numpy(), levels=[0.8])
    assert [k for k in arrays if k.startswith("coverage")] == ["coverage_0.8"]
    assert arrays["tll_1"] == pytest.approx(SUMMARY_TLL)


def test_summary_from_samples():
    """Samples ±2 s_i e_i (8 of them) have the diagonal covariance diag(s²): the per-voxel
    and the 2 x 2 patch TLL both equal the Gaussian TLL of the std (up to the jitter)."""
    plus = 2 * torch.diag(SUMMARY_STD.reshape(-1)).reshape(4, 2, 2)
    deviations = torch.cat([plus, -plus])
    row = summary(SUMMARY_MEAN, SUMMARY_TRUTH, SUMMARY_STD, deviations, tll_patch=5)
    assert row["tll_1"] == pytest.approx(SUMMARY_TLL, rel=1e-5)
    assert row["tll_patch"] == pytest.approx(SUMMARY_TLL, rel=1e-5)  # patch capped at 2
    assert row["coverage_0.5"] == 0.75 and row["rmse"] == pytest.approx(math.sqrt(0.375))


def test_summary_without_std_and_with_ssim():
    truth = torch.zeros(4, 16, 16)
    truth[:, 4:12, 4:12] = 1.0
    row = summary(truth + 0.1, truth)
    assert row["psnr"] == pytest.approx(20.0) and row["rmse"] == pytest.approx(0.1)
    assert math.isnan(row["ssim"])  # the first axis has 4 < 11 voxels
    uncertainty = ["coverage_0.5", "coverage_0.9", "coverage_0.95", "tll_1", "tll_patch"]
    assert all(math.isnan(row[k]) for k in [*uncertainty, "spearman", "mean_std"])
    mean = truth[0] + 0.1 * torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    assert summary(mean, truth[0])["ssim"] == ssim(mean, truth[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deviations": torch.zeros(2, 2, 2)}, "deviations were given without std"),
        ({"std": SUMMARY_STD, "deviations": torch.zeros(2, 4)}, r"expected \(n, 2, 2\)"),
        ({"std": -SUMMARY_STD}, "std must be non-negative"),
        ({"tll_patch": 0}, "tll_patch must be an integer >= 1, got 0"),
        ({"levels": [1.5]}, "strictly between 0 and 1"),
    ],
)
def test_summary_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        summary(SUMMARY_MEAN, SUMMARY_TRUTH, **kwargs)


def test_patch_tll_against_hand_computed_values():
    from dip_uq.metrics import patch_tll

    g = torch.Generator().manual_seed(0)
    mean, truth = torch.zeros(4, 4), torch.randn(4, 4, generator=g)
    samples = torch.randn(50, 4, 4, generator=g)
    var = samples.double().square().mean(0) * (1 + 1e-6)
    expected = (-0.5 * (truth.double() ** 2 / var + var.log() + math.log(2 * math.pi))).mean()
    assert patch_tll(mean, samples, truth, patch=1) == pytest.approx(float(expected), rel=1e-6)
    # a 2×2 patch: the full 4-dimensional Gaussian of each block
    total = 0.0
    for i in (0, 2):
        for j in (0, 2):
            block = samples[:, i : i + 2, j : j + 2].reshape(50, 4).double()
            cov = block.T @ block / 50
            cov += 1e-6 * cov.diagonal().mean() * torch.eye(4, dtype=torch.float64)
            mvn = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=torch.float64), cov)
            total += float(mvn.log_prob(truth[i : i + 2, j : j + 2].reshape(4).double()))
    assert patch_tll(mean, samples, truth, patch=2) == pytest.approx(total / 16, rel=1e-6)
    # a sharper (smaller) std around the right answer scores higher
    assert patch_tll(truth, 0.1 * samples, truth) > patch_tll(truth, samples, truth)
    with pytest.raises(ValueError, match="samples must be"):
        patch_tll(mean, samples[0], truth)
