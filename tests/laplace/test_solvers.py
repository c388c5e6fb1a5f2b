"""The batched solvers: their settings, products of a fixed number of rows, and SGD against
the exact samples."""

import pytest
import torch

from dip_uq.laplace import LinearisedLaplace, SolverConfig
from dip_uq.laplace.solvers import fixed_rows


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "lbfgs"}, "unknown method 'lbfgs'; known methods"),
        ({"iterations": 0}, "SolverConfig.iterations must be at least 1, got 0"),
        ({"preconditioner_rank": -1}, "SolverConfig.preconditioner_rank must be 0"),
        ({"tolerance": 0.0}, "SolverConfig.tolerance must be positive"),
        ({"product_rows": 0}, "SolverConfig.product_rows must be at least 1, got 0"),
    ],
)
def test_bad_solver_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SolverConfig(**kwargs)


def test_fixed_rows_calls_the_map_on_blocks_of_one_size_and_drops_the_padding():
    shapes = []

    def row_map(x):
        shapes.append(tuple(x.shape))
        return x.sum(-1) + torch.arange(1.0, x.shape[0] + 1)[:, None]  # its place in the call

    x = torch.arange(30.0).reshape(5, 2, 3)
    out = fixed_rows(row_map, 4)(x)
    assert shapes == [(4, 2, 3), (4, 2, 3)]  # the 5 rows and 3 zero rows
    torch.testing.assert_close(out, x.sum(-1) + torch.tensor([1.0, 2, 3, 4, 1])[:, None])


def test_sgd_sampler_converges_on_a_well_conditioned_problem(tiny):
    """SGD (Nesterov, iterate averaging) reaches the exact samples where the data term's
    curvature is mild (10⁴ x the noise variance: κ ≈ 250; measured error 1e-5 after 300
    steps, 0.4% after 1000 steps at κ ≈ 2500). On real, ill-conditioned problems it needs far
    more steps than CG, the default."""
    parts, noise_variance = tiny
    lap = LinearisedLaplace(**parts, noise_variance=1e4 * noise_variance)
    exact = lap.images(lap.sample_weights(8, method="exact")[0])
    lap.solver = SolverConfig(method="sgd", iterations=300, tolerance=1e-7)
    assert float((lap.sample(8) - exact).norm() / exact.norm()) < 1e-3
