"""The g-prior's per-weight scale against dense column norms."""

import pytest
import torch
from helpers import SHAPE

from dip_uq.laplace import LinearisedLaplace
from dip_uq.laplace.gprior import MIN_RELATIVE_DIAGONAL, gprior_scale


def _dense_scale(B: torch.Tensor) -> torch.Tensor:
    diagonal = B.double().square().sum(0)
    diagonal = diagonal.clamp_min(MIN_RELATIVE_DIAGONAL * diagonal.median())
    return (diagonal / diagonal.median()).rsqrt()


def test_gprior_scale_is_exact_with_unit_probes_and_close_with_rademacher_ones():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(40, 30, generator=g) * torch.linspace(0.1, 3.0, 30)  # (m, P) = A J
    vjp = lambda z: z.reshape(z.shape[0], -1) @ B  # noqa: E731  Jᵀ Aᵀ z
    exact = gprior_scale(vjp, (5, 8), probes=40, like=B)
    torch.testing.assert_close(exact.double(), _dense_scale(B), rtol=1e-5, atol=0)
    assert float((exact - 1).abs().min()) < 1e-6  # the weight with the median diagonal
    estimate = gprior_scale(vjp, (5, 8), probes=39, like=B, seed=1)  # Rademacher
    errors = (estimate.double() / _dense_scale(B) - 1).abs()
    # relative error of a diagonal entry ~ sqrt(2 / 39) = 0.23, of its inverse root half that
    assert float(errors.median()) < 0.15
    # the same seed gives the same probes, whatever the chunking
    again = gprior_scale(vjp, (5, 8), probes=39, like=B, seed=1, chunk=5)
    torch.testing.assert_close(again, estimate)


def test_linearised_laplace_with_gprior_scales_each_weight_by_its_column_of_AJ(laplace_problem):
    parts, noise_variance = laplace_problem
    plain = LinearisedLaplace(**parts, noise_variance=noise_variance, gprior=False)
    lap = LinearisedLaplace(**parts, noise_variance=noise_variance)  # the default
    eye = torch.eye(plain.model.n_params)
    with torch.no_grad():
        AJ = plain.A(plain.model.jvp(eye)).reshape(plain.model.n_params, -1).T  # (m, P)
    # 96 measurements, fewer than the default 128 probes: the diagonal is exact
    torch.testing.assert_close(lap.prior.scale.double(), _dense_scale(AJ), rtol=1e-4, atol=0)
    # the block variances are the scale of the fitted weights under the scaled prior:
    # the whitened fitted weights have unit mean square per block
    whitened = lap.prior.inv_sqrt(lap.model.theta_star[None])
    for block, value in lap.prior.block_sqnorms(whitened).items():
        assert float(value[0]) / lap.prior.block_sizes[block] == pytest.approx(1.0, rel=1e-4)
    # weights the data sees little get the wider prior
    sees = AJ.square().sum(0)
    assert float(torch.corrcoef(torch.stack([sees.log(), lap.prior.scale.log()]))[0, 1]) < -0.99
    assert lap.std(4).shape == SHAPE
