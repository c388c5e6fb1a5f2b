"""Tests of dip_uq.tv (anisotropic TV, gradient/divergence, PDHG baseline) and metrics.ssim."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import dip_uq as du
from dip_uq.metrics import psnr, ssim
from dip_uq.tv import divergence, gradient, operator_norm, tv, tv_reconstruct


def test_tv_hand_values_2d_and_3d():
    image = torch.tensor([[0.0, 1.0, 1.0], [0.0, 3.0, 1.0]])
    # x-differences |1| + |0| + |3| + |-2|, y-differences |0| + |2| + |0|
    assert float(tv(image)) == 8.0
    volume = torch.zeros(3, 4, 5)
    volume[1:, :, :] = 2.0  # one face of 4 x 5 voxel pairs with a jump of 2
    assert float(tv(volume)) == 40.0


def test_tv_batch_axes_and_gradient_consistency():
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(2, 3, 9, 7, generator=gen, dtype=torch.float64)
    values = tv(batch, ndim=2)
    assert values.shape == (2, 3)
    assert torch.allclose(values[1, 2], tv(batch[1, 2]))
    assert torch.allclose(values, gradient(batch, 2).abs().sum(dim=(-2, -1)).sum(0))


@pytest.mark.parametrize("shape", [(7, 9), (2, 7, 9), (5, 6, 7)])
def test_divergence_is_minus_adjoint_of_gradient(shape):
    ndim = 3 if shape == (5, 6, 7) else 2
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    p = torch.randn((ndim, *shape), generator=gen, dtype=torch.float64)
    lhs = float((gradient(x, ndim) * p).sum())
    rhs = -float((x * divergence(p, ndim)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_gradient_norm_bound():
    norm = operator_norm(
        lambda x: gradient(x, 2), lambda p: -divergence(p, 2), (16, 16), iterations=100
    )
    assert 2.5 < norm <= np.sqrt(8)


def _scan(n: int = 64, n_angles: int = 30):
    A = du.RayTransform(
        du.Volume((n, n)),
        du.ParallelBeam(np.linspace(0, np.pi, n_angles, endpoint=False), (n,)),
        "torch",
    )
    x = du.phantoms.shepp_logan((n, n))
    y, sigma = du.simulate(A, x, noise=0.02, seed=0, return_sigma=True)
    return A, x, y, float(sigma)


def test_tv_reconstruct_beats_fbp_and_lowers_the_objective():
    A, x, y, _ = _scan()
    gamma = 1e-4
    objective = []

    def record(k, image):
        if k % 50 == 0 or k == 299:
            objective.append(float((A(image) - y).square().mean() + gamma * tv(image)))

    rec = tv_reconstruct(A, y, gamma, iterations=300, callback=record)
    assert rec.shape == (64, 64) and float(rec.min()) >= 0
    # measured: FBP (ram-lak) 19.1 dB, PDHG 300 iterations 33.3 dB
    assert psnr(rec, x) > psnr(A.fbp(y), x) + 10
    assert objective[-1] < objective[0]
    assert all(b <= a * 1.05 for a, b in itertools.pairwise(objective))


def test_tv_reconstruct_zero_weight_fits_the_data():
    A, _, y, sigma = _scan(32, 40)
    rec = tv_reconstruct(A, y, 0.0, iterations=300, nonnegative=False)
    assert float((A(rec) - y).square().mean()) < sigma**2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tv_weight": -1.0}, "tv_weight"),
        ({"tv_weight": float("nan")}, "tv_weight"),
        ({"iterations": 0}, "iterations"),
        ({"step_ratio": 0.0}, "step_ratio"),
    ],
)
def test_tv_reconstruct_bad_arguments(kwargs, message):
    A, _, y, _ = _scan(16, 8)
    args = {"tv_weight": 1e-3, "iterations": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        tv_reconstruct(A, y, **args)


def test_tv_reconstruct_bad_sinogram():
    A, _, y, _ = _scan(16, 8)
    with pytest.raises(ValueError, match="does not match the geometry"):
        tv_reconstruct(A, y[:-1], 1e-3)
    bad = y.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        tv_reconstruct(A, bad, 1e-3)


# ------------------------------------------------------------------------------------------
# SSIM
# ------------------------------------------------------------------------------------------
def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """scikit-image's algorithm (gaussian_weights=True, use_sample_covariance=False) with
    scipy: Gaussian σ = 1.5 truncated at 3.5σ, reflect padding, borders of 5 cropped."""
    blur = lambda v: gaussian_filter(v, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    crop = tuple(slice(5, -5) for _ in a.shape)
    return float(s[crop].mean())


@pytest.mark.parametrize("shape", [(40, 33), (16, 20, 18)])
def test_ssim_matches_reference(shape):
    truth = du.phantoms.shepp_logan(shape)
    gen = torch.Generator().manual_seed(2)
    noisy = truth + 0.1 * torch.randn(shape, generator=gen)
    expected = _ssim_reference(noisy.double().numpy(), truth.double().numpy(), 1.0)
    assert abs(ssim(noisy, truth) - expected) < 1e-10
    assert ssim(truth, truth) == pytest.approx(1.0)
    assert ssim(noisy, truth, data_range=2.0) > ssim(noisy, truth)


def test_ssim_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(torch.zeros(12, 12), torch.zeros(12, 13))
    with pytest.raises(ValueError, match="2D"):
        ssim(torch.zeros(12), torch.zeros(12))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(12, 8), torch.zeros(12, 8))
