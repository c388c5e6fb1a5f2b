"""The randomised Nyström preconditioner on operators with known spectra."""

import pytest
import torch

from dip_uq.laplace import NystromPreconditioner, SolverConfig
from dip_uq.laplace.solvers import solve


def test_nystrom_preconditioner_recovers_a_low_rank_spectrum():
    g = torch.Generator().manual_seed(0)
    m, rank, shift = 60, 8, 0.1  # λ_1 / μ = 1e4: above the floor of the shrink factors
    basis = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64)).Q
    eigenvalues = 10.0 ** torch.arange(3, 3 - rank, -1, dtype=torch.float64)  # 1e3 ... 1e-4
    gram = basis * eigenvalues @ basis.T
    pre = NystromPreconditioner.build(lambda v: v @ gram, m, 20, shift, like=gram, batch=7)
    assert pre.rank == 20
    # an exactly rank-8 operator: the sketch finds its eigenvalues, the rest are 0
    torch.testing.assert_close(pre.eigenvalues[:rank], eigenvalues, rtol=1e-6, atol=1e-9)
    assert float(pre.eigenvalues[rank:].abs().max()) < 1e-9
    # the rank covers the whole spectrum: P⁻¹ (G + μ I) is a multiple of the identity
    system = gram + shift * torch.eye(m, dtype=torch.float64)
    spectrum = torch.linalg.eigvals(pre(system.T).T).real
    assert float(spectrum.max() / spectrum.min()) < 1 + 1e-6
    # a float32 sketch, a rank above the operator's rank (λ_r = 0) and μ / λ_1 = 1e-10: the
    # shrink factors (down to 1e-10) are applied in float64, where P⁻¹ stays positive
    # definite down to the floor (in float32 they drowned in round-off: least eigenvalue
    # -1e-8), and float32 rows come back as float32
    g32 = gram.float()
    pre = NystromPreconditioner.build(lambda v: v @ g32, m, 20, 1e-7, like=g32)
    assert pre.basis.dtype == torch.float64 and pre(torch.eye(m)).dtype == torch.float32
    inverse = pre(torch.eye(m, dtype=torch.float64))
    least = torch.linalg.eigvalsh((inverse + inverse.T) / 2).min()
    assert float(least) == pytest.approx(pre.FLOOR, rel=1e-3)
    with pytest.raises(ValueError, match="rank must be at least 1"):
        NystromPreconditioner.build(lambda v: v, m, 0, shift, like=gram)
    with pytest.raises(ValueError, match="subspace iterations must be 0 or more, got -1"):
        NystromPreconditioner.build(lambda v: v, m, 4, shift, like=gram, power=-1)


def test_a_subspace_iteration_finds_the_top_of_a_slowly_decaying_spectrum():
    """λ_i = 1e6 / i² (DIP Jacobians decay slowly too): a plain rank-40 sketch misses the top
    ten eigenvalues by up to 14 %, one subspace iteration (the default) finds them to 5e-4,
    and PCG converges in fewer iterations (on DIPs: 64 instead of 223, see the docstring of
    ``NystromPreconditioner.build``)."""
    g = torch.Generator().manual_seed(0)
    m, rank, shift = 400, 40, 1.0
    basis = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64)).Q
    eigenvalues = 1e6 / torch.arange(1, m + 1, dtype=torch.float64) ** 2
    gram = basis * eigenvalues @ basis.T
    b = torch.randn(2, m, generator=g, dtype=torch.float64)
    config = SolverConfig(iterations=500, tolerance=1e-8)
    iterations, errors = {}, {}
    for power in (0, 1):
        pre = NystromPreconditioner.build(
            lambda v: v @ gram, m, rank, shift, like=gram, power=power
        )
        errors[power] = float(
            ((pre.eigenvalues[:10] - eigenvalues[:10]) / eigenvalues[:10]).abs().max()
        )
        _, info = solve(
            lambda a: a @ gram + shift * a, b, x0=0 * b, config=config, preconditioner=pre
        )
        iterations[power] = info["iterations"]
    assert errors[1] < 1e-3 < errors[0], errors
    assert iterations[1] < iterations[0], iterations  # measured 88 vs 104
