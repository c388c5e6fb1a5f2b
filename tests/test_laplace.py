"""Linearised Laplace: priors against dense matrices, samplers against the exact posterior,
EM on a linear-Gaussian model with known hyperparameters."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import dip_uq as du
from dip_uq.laplace import (
    LinearisedLaplace,
    MaternPrior,
    Moments,
    NystromPreconditioner,
    SolverConfig,
    matern_half,
)
from dip_uq.networks import ConvWeight

SHAPE = (12, 12)


def tiny_problem() -> tuple[dict, float]:
    """A small U-Net on a 12×12 image, 6 parallel-beam angles, 5% noise: the parts of a
    ``LinearisedLaplace`` and the true noise variance. float32, as in use (CPU convolutions
    with per-sample weights are ~30x slower in float64). Also used by test_distributed."""
    A = du.RayTransform(
        du.Volume(SHAPE), du.ParallelBeam(np.linspace(0, np.pi, 6, endpoint=False), (16,)), "torch"
    )
    net = du.UNet(dim=2, scales=2, channels=4, skip_channels=2, seed=0)
    z = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(1))
    params = {k: v.detach() for k, v in net.named_parameters()}
    y, sigma = du.simulate(A, du.phantoms.shepp_logan(SHAPE), noise=0.05, seed=0, return_sigma=True)
    parts = dict(
        image_fn=lambda p: functional_call(net, p, (z,))[0, 0],
        params=params,
        weights=net.conv_weights(),
        operator=A,
        y=y,
    )
    return parts, float(sigma) ** 2


@pytest.fixture(scope="module")
def tiny():
    return tiny_problem()


def test_jacobian_products_run_convolutions_without_tf32(tiny):
    """torch's default TF32 convolutions on GPUs (relative error ~1e-3) would stall the
    sampler's CG; the products switch them off and restore the setting afterwards."""
    from dip_uq.laplace.linearised import LinearisedNetwork

    parts, _ = tiny
    conv = torch.backends.cudnn.conv
    saved, conv.fp32_precision = conv.fp32_precision, "tf32"  # torch's default
    seen = []

    def image_fn(p):
        seen.append(conv.fp32_precision)
        return parts["image_fn"](p)

    try:
        net = LinearisedNetwork(image_fn, parts["params"], parts["weights"])
        seen.clear()
        image = net.jvp(torch.ones(2, net.n_params))
        net.vjp(image)
        assert seen and set(seen) == {"ieee"}
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = saved


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


def test_bad_prior_and_solver_settings():
    weights = du.UNet(dim=2, scales=2, channels=2, skip_channels=1).conv_weights()
    with pytest.raises(ValueError, match="variances must be positive"):
        MaternPrior(weights, variance=-1.0)
    with pytest.raises(ValueError, match="unknown method 'lbfgs'; known methods"):
        SolverConfig(method="lbfgs")


def test_cg_samples_equal_exact_samples_and_reproduce_the_posterior_variance(tiny):
    parts, noise_variance = tiny
    # 100x the true noise variance keeps the system's condition number near 1e4, so CG
    # converges to float32 round-off within the test's budget
    lap = LinearisedLaplace(
        **parts,
        noise_variance=100 * noise_variance,
        solver=SolverConfig(iterations=300, tolerance=1e-5),
    )
    exact_variance = lap.exact_covariance().diagonal().reshape(SHAPE)
    u_exact, _ = lap.sample_weights(8, method="exact")
    u_cg, info = lap.sample_weights(8, method="cg")
    assert float(info["residual"].max()) < 1e-4
    # same base noise, so the same samples: the image-space samples agree closely
    exact_images, cg_images = lap.images(u_exact), lap.images(u_cg)
    assert float((cg_images - exact_images).norm() / exact_images.norm()) < 1e-3
    # sampling with the exact solver reproduces the dense posterior variance
    many = lap.images(lap.sample_weights(800, method="exact")[0])
    median_error = float(((many.square().mean(0) - exact_variance).abs() / exact_variance).median())
    assert median_error < 0.1  # sqrt(2/800) = 5% per pixel
    # samples are reproducible per global index, whatever the batch
    torch.testing.assert_close(
        lap.sample_weights(3, method="exact", start=5)[0][1],
        lap.sample_weights(1, method="exact", start=6)[0][0],
    )


def test_cg_converges_towards_the_exact_samples_at_the_true_noise_level(tiny):
    """At the true noise level the system is ill-conditioned (κ ≈ 2e6 here); plain CG still
    approaches the exact samples steadily in float32, and the Nyström preconditioner gets
    there in a fraction of the iterations."""
    parts, noise_variance = tiny
    lap = LinearisedLaplace(**parts, noise_variance=noise_variance)
    exact = lap.images(lap.sample_weights(8, method="exact")[0])

    def error(iterations: int, rank: int) -> float:
        lap.solver = SolverConfig(iterations=iterations, tolerance=1e-7, preconditioner_rank=rank)
        return float((lap.sample(8) - exact).norm() / exact.norm())

    plain = [error(iterations, rank=0) for iterations in (20, 200)]
    assert plain[1] < 0.5 * plain[0] and plain[1] < 0.5
    # rank 24 of 96 measurements: measured 7e-4 after 200 iterations, plain CG 0.2; rank
    # 64 has 50 iterations reach 2e-4
    assert error(200, rank=24) < min(0.1 * plain[1], 1e-2)
    assert error(50, rank=64) < 1e-2
    # full rank: the preconditioned system's condition number is about FLOOR · λ_1 / μ = 25
    assert error(30, rank=96) < 1e-3


def test_preconditioner_follows_a_common_prior_scale_and_the_noise_without_a_rebuild(tiny):
    parts, noise_variance = tiny
    lap = LinearisedLaplace(**parts, noise_variance=noise_variance)
    lap.solver = SolverConfig(preconditioner_rank=32)
    first = lap.preconditioner()
    lap.prior.variances = {b: 3.0 * v for b, v in lap.prior.variances.items()}
    lap.noise_variance *= 2
    scaled = lap.preconditioner()
    assert scaled.basis is first.basis and scaled.shift == lap.noise_variance
    # a sketch of M Mᵀ at the new variances: the same eigenpairs up to round-off
    fresh = NystromPreconditioner.build(
        lap._gram, lap.y.numel(), 32, lap.noise_variance, like=lap.y, seed=lap.seed
    )
    torch.testing.assert_close(scaled.eigenvalues, fresh.eigenvalues, rtol=1e-3, atol=0)
    v = torch.randn(4, lap.y.numel(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scaled(v), fresh(v), rtol=1e-3, atol=1e-3 * float(v.abs().max()))
    # block variances changed relative to each other: rebuilt
    block = lap.prior.blocks[1]
    lap.prior.variances = {**lap.prior.variances, block: 10 * lap.prior.variances[block]}
    assert lap.preconditioner().basis is not first.basis


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
    # float32, a sketch rank above the operator's rank (λ_r = 0) and μ / λ_1 = 1e-10: the
    # plain shrink factors (down to 1e-10) drown in round-off and P⁻¹ turns indefinite
    # (measured: least eigenvalue -1e-8); the floor keeps it positive definite
    g32 = gram.float()
    pre = NystromPreconditioner.build(lambda v: v @ g32, m, 20, 1e-7, like=g32)
    inverse = pre(torch.eye(m))
    least = torch.linalg.eigvalsh((inverse + inverse.T).double() / 2).min()
    assert 0.5 * pre.FLOOR < float(least) <= pre.FLOOR
    with pytest.raises(ValueError, match="rank must be at least 1"):
        NystromPreconditioner.build(lambda v: v, m, 0, shift, like=gram)
    with pytest.raises(ValueError, match="subspace iterations must be 0 or more, got -1"):
        NystromPreconditioner.build(lambda v: v, m, 4, shift, like=gram, power=-1)


def test_a_subspace_iteration_finds_the_top_of_a_slowly_decaying_spectrum():
    """λ_i = 1e6 / i² (DIP Jacobians decay slowly too): a plain rank-40 sketch misses the top
    ten eigenvalues by up to 14 %, one subspace iteration (the default) finds them to 5e-4,
    and PCG converges in fewer iterations (on DIPs: 64 instead of 223, see the docstring of
    ``NystromPreconditioner.build``)."""
    from dip_uq.laplace.solvers import solve

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


def test_moments_merge_exactly():
    g = torch.Generator().manual_seed(0)
    samples = 0.1 + torch.randn(11, 3, 4, generator=g, dtype=torch.float64)
    merged = Moments.of(samples[:2]).merge(Moments.of(samples[2:7])).merge(Moments.of(samples[7:]))
    direct = Moments.of(samples)
    assert merged.count == 11
    torch.testing.assert_close(merged.mean, samples.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.m2, direct.m2, rtol=1e-12, atol=1e-12)
    # the variance is the second moment about 0, the samples' known mean
    torch.testing.assert_close(merged.variance, samples.square().mean(0), rtol=1e-12, atol=0)
    zeros = torch.zeros(3, 4, dtype=torch.float64)
    empty = Moments(0, zeros, zeros)
    assert empty.merge(direct) is direct and direct.merge(empty) is direct


def _counting(lap, fail_at=None):
    """Record the ``start`` of every ``lap.sample_weights`` call; raise once, on call number
    ``fail_at`` (a crash)."""
    calls = []
    original = lap.sample_weights

    def wrapped(*args, **kwargs):
        nonlocal fail_at
        calls.append(kwargs.get("start"))
        if len(calls) == fail_at:
            fail_at = None
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    lap.sample_weights = wrapped
    return calls


def test_moments_in_batches_resume_from_a_checkpoint(tiny, tmp_path):
    parts, noise_variance = tiny
    lap = LinearisedLaplace(
        **parts,
        noise_variance=100 * noise_variance,
        solver=SolverConfig(iterations=300, tolerance=1e-3),
    )
    folder = tmp_path / "batches"
    calls = _counting(lap, fail_at=2)
    with pytest.raises(KeyboardInterrupt):  # stopped while solving the second batch
        lap.moments(4, batch=2, checkpoint=folder, keep_samples=True)
    assert [p.name for p in folder.iterdir()] == ["moments-0000000-0000002.pt"]
    calls.clear()
    resumed = lap.moments(4, batch=2, checkpoint=folder, keep_samples=True)
    assert calls == [2]  # only the unfinished batch
    assert resumed.count == 4 and resumed.indices == range(4)
    # the same moments as a run without interruption, and the same as its own samples'
    uninterrupted = lap.moments(4, batch=2)
    torch.testing.assert_close(resumed.mean, uninterrupted.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(resumed.m2, uninterrupted.m2, rtol=1e-12, atol=0)
    torch.testing.assert_close(resumed.std, Moments.of(resumed.samples).std)
    # a finished run is read back, not solved again
    calls.clear()
    std = lap.std(4, batch=2, checkpoint=folder)
    assert not calls and torch.equal(std, resumed.std.float())
    # one batch of 4 gives the same samples within the solver's tolerance (module docstring)
    whole = lap.sample(4)
    assert float((resumed.samples - whole).norm() / whole.norm()) < 1e-2
    # checkpoints of other hyperparameters are refused, not mixed in
    lap.noise_variance *= 2
    with pytest.raises(ValueError, match="written with other noise_variance"):
        lap.moments(4, batch=2, checkpoint=folder)


class _LinearModel:
    """image = conv(z1, W1) + conv(z2, W2): a network that is exactly linear in its weights."""

    def __init__(self, channels, shape, seed):
        g = torch.Generator().manual_seed(seed)
        self.z = [torch.randn(1, channels, *shape, generator=g) for _ in "ab"]
        self.weights = [
            ConvWeight(name=n, block=n, shape=(1, channels, 3, 3), kernel_size=(3, 3)) for n in "ab"
        ]

    def __call__(self, p):
        return sum(
            F.conv2d(z, p[w.name], padding=1) for z, w in zip(self.z, self.weights, strict=True)
        )[0, 0]


@pytest.mark.parametrize("per_block", [True, False])
def test_em_recovers_known_prior_and_noise_variances(per_block):
    """Per block, from a start 3-25x off; shared, from the right ratio 25x too wide."""
    shape, channels = (16, 16), 12
    model = _LinearModel(channels, shape, seed=0)
    true_variances = {"a": 0.04, "b": 0.3}
    prior = MaternPrior(model.weights, true_variances, lengthscale=1.0)
    g = torch.Generator().manual_seed(1)
    theta = prior.sqrt(torch.randn(1, prior.n_params, generator=g))[0]
    weights = {
        "a": theta[:108].reshape(1, channels, 3, 3),
        "b": theta[108:].reshape(1, channels, 3, 3),
    }
    A = du.RayTransform(
        du.Volume(shape), du.ParallelBeam(np.linspace(0, np.pi, 40, endpoint=False), (24,)), "torch"
    )
    clean = A(model(weights))
    true_noise = float(0.05 * clean.abs().mean()) ** 2  # 5% relative noise, as in simulate
    y = clean + math.sqrt(true_noise) * torch.randn(clean.shape, generator=g)
    lap = LinearisedLaplace(
        image_fn=model,
        params={
            "a": torch.zeros(1, channels, 3, 3),
            "b": torch.zeros(1, channels, 3, 3),
        },
        weights=model.weights,
        operator=A,
        y=y,
        noise_variance=1.0,
        prior_variance=1.0 if per_block else {b: 25 * v for b, v in true_variances.items()},
        # 300 CG steps solve the mode: with 150 the σ_y² estimate jumped between 0.6 and 3.7
        # from step to step, and float32 round-off decided where it ended
        solver=SolverConfig(iterations=300, tolerance=1e-4),
    )
    history = lap.fit_hyperparameters(
        em_steps=10, n_samples=16, per_block=per_block, fit_noise=True
    )
    assert len(history["noise_variance"]) == 11
    # 108 weights per block: the variance of one draw is known to ~±14% (1σ)
    for block, value in true_variances.items():
        assert lap.prior.variances[block] == pytest.approx(value, rel=0.45)
    # 960 measurements, 744 degrees of freedom left: ±5% (1σ); measured 0.572 vs 0.611, steady
    # from the fourth step on
    assert lap.noise_variance == pytest.approx(true_noise, rel=0.2)
    assert history["noise_variance"][-2] == pytest.approx(lap.noise_variance, rel=0.02)


def test_em_resumed_from_a_state_dict_repeats_the_uninterrupted_run(tiny):
    parts, noise_variance = tiny
    config = SolverConfig(iterations=40, tolerance=1e-3)
    make = lambda: LinearisedLaplace(**parts, noise_variance=100 * noise_variance, solver=config)  # noqa: E731
    straight = make()
    for _ in range(2):  # one step per call, as a resumable run does
        straight.fit_hyperparameters(1, n_samples=2)
    first = make()
    first.fit_hyperparameters(1, n_samples=2)
    resumed = make()
    resumed.load_state_dict(torch.load(_saved(first.state_dict()), weights_only=True))
    resumed.fit_hyperparameters(1, n_samples=2)
    assert resumed.history == straight.history
    with pytest.raises(ValueError, match="saved prior has blocks"):
        resumed.load_state_dict({**first.state_dict(), "prior_variances": {"x": 1.0}})


def _saved(state):
    """``state`` written by ``torch.save`` to memory, ready to load."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_end_to_end_dip_em_std_tracks_the_error():
    """2D 32×32 Shepp-Logan, 20 angles, 3% noise: DIP, then EM, then the std map."""
    from scipy.stats import spearmanr

    shape = (32, 32)
    A = du.RayTransform(
        du.Volume(shape), du.ParallelBeam(np.linspace(0, np.pi, 20, endpoint=False), (48,)), "torch"
    )
    truth = du.phantoms.shepp_logan(shape)
    y = du.simulate(A, truth, noise=0.03, seed=0)
    network = du.UNet(dim=2, scales=3, channels=16, skip_channels=4, seed=0)
    rec = du.DIP(A, network=network, iterations=300, lr=1e-3, device="cpu", progress=False)
    mean = rec.fit(y)
    lap = LinearisedLaplace(rec, y=y, solver=SolverConfig(iterations=60))
    history = lap.fit_hyperparameters(em_steps=3, n_samples=8, fit_noise=True)
    assert all(math.isfinite(v) and v > 0 for v in history["noise_variance"])
    std = lap.std(16)
    assert std.shape == shape and bool(torch.isfinite(std).all()) and bool((std > 0).all())
    rho = spearmanr(std.flatten().numpy(), (mean - truth).abs().flatten().numpy()).statistic
    assert rho > 0.1, rho


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


def test_unconverged_samples_are_reported(tiny, caplog):
    parts, _ = tiny
    # without the preconditioner (full rank here: exact after one iteration)
    lap = LinearisedLaplace(**parts, solver=SolverConfig(iterations=2, preconditioner_rank=0))
    with caplog.at_level("WARNING", logger="dip_uq"):
        lap.sample(2)
    assert "posterior samples 0-1: the solver stopped after 2 iterations" in caplog.text
    assert "--cg-iterations" in caplog.text
    caplog.clear()
    lap.solver = SolverConfig(iterations=200)  # preconditioned
    with caplog.at_level("WARNING", logger="dip_uq"):
        lap.sample(2)
    assert lap.last_solve["residual"].max() < 1e-3 and not caplog.text


def test_em_keeps_prior_variances_within_bounds_when_the_solves_are_truncated(tiny, caplog):
    """Two CG iterations leave the samples near their prior draws: EM must neither blow the
    prior variances up beyond 100x their start nor produce non-finite values."""
    parts, _ = tiny
    lap = LinearisedLaplace(**parts, solver=SolverConfig(iterations=2))
    start = dict(lap.prior.variances)
    lap.fit_hyperparameters(em_steps=6, n_samples=4)
    for block, value in lap.prior.variances.items():
        assert math.isfinite(value) and 0 < value <= 100 * start[block] * (1 + 1e-12), block
