"""The block-wise Matérn-½ prior against dense matrices."""

import math

import pytest
import torch

import dip_uq as du
from dip_uq.laplace import MaternPrior, matern_half


def test_matern_prior_matches_dense_covariance():
    net = du.UNet(dim=2, scales=2, channels=2, skip_channels=1, seed=0)
    variances = {"down_0": 2.0, "down_1": 0.5, "skip_0": 1.0, "up_0": 3.0, "out": 0.1}
    prior = MaternPrior(net.conv_weights(), variances, lengthscale=0.7)
    eye = torch.eye(prior.n_params, dtype=torch.float64)
    root = prior.sqrt(eye).T  # column i = Σ^{1/2} e_i
    # build Σ independently: block diagonal of σ_b² K_ℓ per filter
    blocks = []
    for w in prior.weights:
        K = variances[w.block] * matern_half(w.kernel_size, 0.7)
        blocks += [K] * (w.numel // K.shape[0])
    dense = torch.block_diag(*blocks)
    torch.testing.assert_close(root @ root.T, dense)
    torch.testing.assert_close(prior.dense(), dense)
    u = torch.randn(3, prior.n_params, dtype=torch.float64)
    torch.testing.assert_close(prior.inv_sqrt(prior.sqrt(u)), u)
    torch.testing.assert_close(prior.sqrt_t(u), u @ root)
    # Matérn-½ itself: exp(-distance / ℓ) between taps, 1 on the diagonal
    K = matern_half((3, 3), 2.0)
    assert K[0, 8] == pytest.approx(math.exp(-math.sqrt(8) / 2.0))
    # samples Σ^{1/2} u with u ~ N(0, I) have covariance Σ
    g = torch.Generator().manual_seed(0)
    draws = prior.sqrt(torch.randn(40000, prior.n_params, generator=g, dtype=torch.float64))
    empirical = draws.T @ draws / draws.shape[0]
    assert (empirical - dense).abs().max() < 0.1 * dense.diagonal().max()


def test_prior_with_a_per_weight_scale_is_g_k_g():
    net = du.UNet(dim=2, scales=2, channels=2, skip_channels=1, seed=0)
    plain = MaternPrior(net.conv_weights(), 0.5, lengthscale=0.7)
    g = torch.rand(plain.n_params, generator=torch.Generator().manual_seed(0)) + 0.1
    scaled = MaternPrior(net.conv_weights(), 0.5, lengthscale=0.7, scale=g)
    G = torch.diag(g.double())
    torch.testing.assert_close(scaled.dense(), G @ plain.dense() @ G)
    u = torch.randn(3, scaled.n_params, dtype=torch.float64)
    torch.testing.assert_close(scaled.inv_sqrt(scaled.sqrt(u)), u)
    root = scaled.sqrt(torch.eye(scaled.n_params, dtype=torch.float64)).T
    torch.testing.assert_close(scaled.sqrt_t(u), u @ root)
    with pytest.raises(ValueError, match="scale must be positive"):
        MaternPrior(net.conv_weights(), scale=-g)


def test_bad_prior_settings():
    weights = du.UNet(dim=2, scales=2, channels=2, skip_channels=1).conv_weights()
    with pytest.raises(ValueError, match="variances must be positive"):
        MaternPrior(weights, variance=-1.0)


def test_scaling_the_variances_scales_the_covariance():
    net = du.UNet(dim=2, scales=2, channels=2, skip_channels=1, seed=0)
    variances = {"down_0": 2.0, "down_1": 0.5, "skip_0": 1.0, "up_0": 3.0, "out": 0.1}
    prior = MaternPrior(net.conv_weights(), variances, lengthscale=0.7)
    before = prior.dense()
    prior.scale_variances(0.25)
    torch.testing.assert_close(prior.dense(), 0.25 * before)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="factor on the prior variances must be positive"):
            prior.scale_variances(bad)
