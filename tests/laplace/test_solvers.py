"""The batched solvers: their settings, products of a fixed number of rows, and SGD against
the exact samples."""

import pytest
import torch

from dip_uq.laplace import LinearisedLaplace, SolverConfig
from dip_uq.laplace.solvers import fixed_rows, solve


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


@pytest.mark.parametrize(("noise_factor", "rank"), [(1e4, 0), (1.0, 200)])
def test_sgd_sampler_reaches_the_exact_samples(laplace_problem, noise_factor, rank):
    """SGD (Nesterov, iterate averaging) in CG's preconditioned measurement-space
    coordinates reaches the exact samples: without a preconditioner where the data term's
    curvature is mild (10⁴ x the noise variance), and with the Nyström preconditioner (full
    rank here) at the tiny problem's own noise level, where plain gradient steps would need
    orders of magnitude more iterations."""
    parts, noise_variance = laplace_problem
    lap = LinearisedLaplace(**parts, noise_variance=noise_factor * noise_variance)
    exact = lap.images(lap.sample_weights(8, method="exact")[0])
    lap.solver = SolverConfig(
        method="sgd", iterations=300, tolerance=1e-6, preconditioner_rank=rank
    )
    assert float((lap.sample(8) - exact).norm() / exact.norm()) < 1e-3


def test_cg_restarts_a_row_whose_step_breaks_down():
    """A spurious non-positive curvature (round-off in float32 products) restarts that row
    from its true residual instead of stopping it where it is; the other row goes on."""
    g = torch.Generator().manual_seed(0)
    m = 30
    q = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64)).Q
    system = q * torch.logspace(0, 3, m, dtype=torch.float64) @ q.T
    b = torch.randn(2, m, generator=g, dtype=torch.float64)
    calls = 0

    def normal(v: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        out = v @ system
        if calls == 6:  # the fifth step's product comes back with the wrong sign for row 0
            out[0] = -out[0]
        return out

    x, info = solve(normal, b, x0=0 * b, config=SolverConfig(iterations=200, tolerance=1e-8))
    assert calls > 7 and float(info["residual"].max()) < 1e-8
    torch.testing.assert_close(x, torch.linalg.solve(system, b.T).T, rtol=1e-6, atol=1e-9)


def test_cg_tells_a_row_stalled_by_round_off_from_one_stopped_at_the_cap():
    """Products off by 1e-4 relative (float32 round-off, exaggerated) keep the true residual
    far above a 1e-8 tolerance: CG stops the rows once their restarts are used up, well before
    a 500-iteration cap, and says that more iterations will not help; rows stopped by a
    3-iteration cap are not stalled, and the remedy is to raise the iterations."""
    g = torch.Generator().manual_seed(1)
    m = 30
    q = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64)).Q
    system = q * torch.logspace(0, 2, m, dtype=torch.float64) @ q.T
    b = torch.randn(2, m, generator=g, dtype=torch.float64)

    def noisy(v: torch.Tensor) -> torch.Tensor:
        out = v @ system
        noise = torch.randn(out.shape, generator=g, dtype=out.dtype)
        return out + 1e-4 * out.norm(dim=1, keepdim=True) / m**0.5 * noise

    stalled_config = SolverConfig(iterations=500, tolerance=1e-8)
    _, info = solve(noisy, b, x0=0 * b, config=stalled_config)
    assert info["iterations"] < 500 and bool(info["stalled"].all())
    assert float(info["residual"].min()) > 1e-6
    assert stalled_config.remedy(info) is None  # more iterations will not help

    capped_config = SolverConfig(iterations=3, tolerance=1e-8)
    _, info = solve(noisy, b, x0=0 * b, config=capped_config)
    assert info["iterations"] == 3 and not bool(info["stalled"].any())
    assert capped_config.remedy(info) == "cg_iterations"
