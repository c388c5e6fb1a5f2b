"""LinearisedLaplace: samplers against the exact posterior, the preconditioner cache, the
unconverged-sample warning, building it from a fitted DIP, and DIP → EM → std end to end."""

import math

import numpy as np
import pytest
import torch
from helpers import SHAPE

import dip_uq as du
from dip_uq.diagnostics import NotConvergedWarning
from dip_uq.laplace import LinearisedLaplace, NystromPreconditioner, SolverConfig


def test_cg_samples_equal_exact_samples_and_reproduce_the_posterior_variance(laplace_problem):
    parts, noise_variance = laplace_problem
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


def test_mean_is_the_linear_models_exact_posterior_mean(laplace_problem):
    """The Gaussian conditional mean in image space, ``μ₀ + C Aᵀ (A C Aᵀ + σ_y² I)⁻¹
    (y - A μ₀)`` with the prior mean ``μ₀ = f(θ*) - J θ*`` and covariance ``C = J Σ Jᵀ``,
    formed densely in float64: another formula than the solver's weight-space mode."""
    parts, noise_variance = laplace_problem
    lap = LinearisedLaplace(
        **parts,
        noise_variance=100 * noise_variance,
        solver=SolverConfig(iterations=300, tolerance=1e-6),
    )
    n, P = math.prod(SHAPE), lap.model.n_params
    with torch.no_grad():
        JS = lap.images(torch.eye(P)).reshape(P, n).T.double()
        A = lap.A(torch.eye(n).reshape(n, *SHAPE)).reshape(n, -1).T.double()
        prior_mean = lap.model.image_star - lap.model.jvp(lap.model.theta_star[None])[0]
    mu0, C, y = prior_mean.reshape(-1).double(), JS @ JS.T, lap.y.reshape(-1).double()
    inner = A @ C @ A.T + lap.noise_variance * torch.eye(A.shape[0], dtype=torch.float64)
    exact = mu0 + C @ A.T @ torch.linalg.solve(inner, y - A @ mu0)
    mean = lap.mean()
    assert mean.shape == SHAPE and mean.dtype == lap.model.image_star.dtype
    assert float((mean.reshape(-1).double() - exact).norm() / exact.norm()) < 1e-4
    # the step fits the data the network left: a smaller misfit than f(θ*)'s
    misfit = [float((lap.A(image) - lap.y).norm()) for image in (mean, lap.model.image_star)]
    assert misfit[0] < misfit[1]


def test_cg_converges_towards_the_exact_samples_at_the_true_noise_level(laplace_problem):
    """At the true noise level the system is ill-conditioned (κ ≈ 2e6 here); plain CG still
    approaches the exact samples steadily in float32, and the Nyström preconditioner gets
    there in a fraction of the iterations."""
    parts, noise_variance = laplace_problem
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
    # full rank: the preconditioned system is about the identity
    assert error(30, rank=96) < 1e-3


def test_preconditioner_follows_a_common_prior_scale_and_the_noise_without_a_rebuild(
    laplace_problem,
):
    parts, noise_variance = laplace_problem
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


def test_samples_std_and_em_do_not_depend_on_the_batch(laplace_problem):
    """Sample k depends on (seed, k) and the hyperparameters only: in batches of 1, 3 or all
    at once, EM makes the same steps and the std map is made of the same samples, bit for
    bit. (Before every product of a sample solve had the same number of rows, the float32
    round-off of another batch shape, amplified by CG, moved EM's prior variances by up to
    3e-4 and this std by 2e-5, relative; on a 32² DIP the std by up to 53 %.) The std
    differs by the round-off of merging float64 moments in other groups only."""
    parts, noise_variance = laplace_problem
    config = SolverConfig(iterations=100, tolerance=1e-3, preconditioner_rank=24, product_rows=4)
    runs = {}
    for batch in (1, 3, None):
        lap = LinearisedLaplace(**parts, noise_variance=100 * noise_variance, solver=config)
        history = lap.fit_hyperparameters(
            2, em_samples=4, batch=batch, fit_noise=False, fit_prior=True
        )
        runs[batch] = history, lap.moments(6, batch=batch, keep_samples=True)
    history, whole = runs[None]
    assert history["prior_variance/down_0"][2] != history["prior_variance/down_0"][0]
    assert lap.last_solve["iterations"] < 100  # converged
    for batch in (1, 3):
        assert runs[batch][0] == history
        assert torch.equal(runs[batch][1].samples, whole.samples)
        torch.testing.assert_close(runs[batch][1].std, whole.std, rtol=1e-12, atol=0)
    # and with SGD: a sample alone is the same as in the middle of a batch
    lap.solver = SolverConfig(method="sgd", iterations=50, product_rows=4)
    assert torch.equal(lap.sample(3, start=4)[1], lap.sample(1, start=5)[0])


def test_unconverged_samples_are_reported(laplace_problem, recwarn):
    parts, _ = laplace_problem
    # without the preconditioner (full rank here: exact after one iteration)
    lap = LinearisedLaplace(**parts, solver=SolverConfig(iterations=2, preconditioner_rank=0))
    with pytest.warns(NotConvergedWarning) as warned:
        lap.sample(2)
    (warning,) = warned
    assert "posterior samples 0-1: the solver stopped after 2 iterations" in str(warning.message)
    # the keyword of dip_uq.reconstruct, which the CLI spells as its flag
    assert warning.message.setting == "cg_iterations"
    recwarn.clear()
    lap.solver = SolverConfig(iterations=200)  # preconditioned
    lap.sample(2)
    assert lap.last_solve["residual"].max() < 1e-3 and not len(recwarn)


def test_a_fitted_dip_supplies_the_sinogram_it_was_fitted_to(laplace_problem):
    parts, _ = laplace_problem
    network = du.UNet(dim=2, scales=2, channels=4, skip_channels=2, seed=0)
    rec = du.DIP(parts["operator"], network=network, iterations=3, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"not been fitted; call rec\.fit"):
        LinearisedLaplace(rec)
    rec.fit(parts["y"])
    lap = LinearisedLaplace(rec)
    assert torch.equal(lap.y, rec.y) and lap.noise_variance == float(rec.noise_sigma) ** 2
    torch.testing.assert_close(lap.model.image_star, rec.predict())
    # an explicit y wins over rec.y
    other = 2 * parts["y"]
    assert torch.equal(LinearisedLaplace(rec, y=other).y, other)
    rec.y = None  # as on the ranks that received the fit by share_fit
    with pytest.raises(ValueError, match=r"pass y= for a DIP without rec\.y"):
        LinearisedLaplace(rec)


@pytest.mark.slow
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
    history = lap.fit_hyperparameters(em_steps=3, em_samples=8, fit_noise=True, fit_prior=True)
    assert all(math.isfinite(v) and v > 0 for v in history["noise_variance"])
    std = lap.std(16)
    assert std.shape == shape and bool(torch.isfinite(std).all()) and bool((std > 0).all())
    rho = spearmanr(std.flatten().numpy(), (mean - truth).abs().flatten().numpy()).statistic
    assert rho > 0.1, rho
