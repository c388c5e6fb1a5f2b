"""The randomised Nyström preconditioner on operators with known spectra."""

import pytest
import torch

from dip_uq.laplace import NystromPreconditioner, SolverConfig
from dip_uq.laplace.preconditioner import NystromSketch
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


def _spectrum(m: int, eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A dense PSD ``m × m`` operator with the given eigenvalues (the rest 0)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64)).Q
    basis = basis[:, : eigenvalues.numel()]
    return basis * eigenvalues @ basis.T


def test_a_sketch_grown_in_blocks_is_the_sketch_of_its_rank_whatever_was_grown_before():
    """The first r columns of a grown sketch are those of a sketch of rank r, bit for bit: a
    resumed run, which sketches only what it needs, builds the preconditioner an
    uninterrupted one used."""
    m = 500
    gram = _spectrum(m, 1e4 / torch.arange(1, m + 1, dtype=torch.float64) ** 2)
    apply = lambda v: v @ gram  # noqa: E731
    grown = NystromSketch(apply, m, like=gram, seed=3)
    grown.grow(400)
    assert grown.widths == [100, 100, 200]
    fresh = NystromSketch(apply, m, like=gram, seed=3)
    fresh.grow(200)
    assert torch.equal(grown.q[:, :200], fresh.q) and torch.equal(grown.y[:, :200], fresh.y)
    for rank in (100, 200):
        assert torch.equal(grown.eigenvalues(rank), fresh.eigenvalues(rank))
    a, b = grown.preconditioner(2.0, 0.5, 200), fresh.preconditioner(2.0, 0.5, 200)
    assert torch.equal(a.basis, b.basis) and torch.equal(a.eigenvalues, b.eigenvalues)
    # the columns are orthonormal across the blocks (orthogonalised against the ones before)
    q = grown.q.double()
    torch.testing.assert_close(q.T @ q, torch.eye(400, dtype=torch.float64), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not the end of a block"):
        grown.eigenvalues(150)
    cut = NystromSketch(apply, m, like=gram)
    cut.grow(150)  # blocks of 100 and 50
    with pytest.raises(ValueError, match="cut to rank 150 cannot grow to 400"):
        cut.grow(400)


def test_the_rank_follows_the_eigenvalues_above_the_shift_and_the_iteration_cap():
    """A spectrum with 30 eigenvalues far above μ gets the first block only; one with
    hundreds above μ grows while a block saves more CG products than it costs, and further
    where CG would pass its cap; columns sketched already are used. PCG with the chosen rank
    converges."""
    m = 1000
    few = torch.cat([torch.full((30,), 1e4), torch.full((m - 30,), 1e-3)]).double()
    many = (1e6 / torch.arange(1, m + 1, dtype=torch.float64) ** 2).clamp_min(1e-3)
    ranks = {}
    for name, spectrum in (("few", few), ("many", many)):
        gram = _spectrum(m, spectrum)

        def rank(g: torch.Tensor = gram, **options: int) -> int:
            return NystromSketch(lambda v: v @ g, m, like=g).choose_rank(1.0, 1.0, **options)

        ranks[name] = rank(rows=16)
        ranks[name + " capped"] = rank(iterations=20)
        ranks[name + " costless"] = rank()  # no rows to save, far from the cap
        sketch = NystromSketch(lambda v, g=gram: v @ g, m, like=gram)
        pre = sketch.preconditioner(1.0, 1.0, sketch.choose_rank(1.0, 1.0, rows=16))
        b = torch.randn(2, m, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        _, info = solve(
            lambda a, g=gram: a @ g + a,
            b,
            x0=0 * b,
            config=SolverConfig(iterations=300, tolerance=1e-6),
            preconditioner=pre,
        )
        assert float(info["residual"].max()) < 1e-6, name
    assert ranks["few"] == ranks["few costless"] == ranks["few capped"] == 100, ranks
    # λ_i = 1e6 / i² passes μ = 1 at i = 1000: rank 200 leaves κ ≈ 26
    assert ranks["many"] == 200, ranks
    assert ranks["many costless"] == 100 and ranks["many capped"] > ranks["many"], ranks
    assert sketch.rank == 200 and sketch.choose_rank(1.0, 1.0) == 200  # sketched: used
    with pytest.raises(ValueError, match="shift must be positive"):
        NystromSketch(lambda v: v, m, like=few).choose_rank(1.0, 0.0)
