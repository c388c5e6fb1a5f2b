"""Sample-based EM on a linear-Gaussian model with known hyperparameters, resumed EM, and
EM with truncated solves."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dip_uq as du
from dip_uq.diagnostics import NotConvergedWarning
from dip_uq.laplace import LinearisedLaplace, MaternPrior, SolverConfig, em
from dip_uq.laplace.posterior import MODE_ITERATION_FACTOR
from dip_uq.networks import ConvWeight


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
        em_steps=10, em_samples=16, per_block=per_block, fit_noise=True, fit_prior=True
    )
    assert len(history["noise_variance"]) == 11
    # 108 weights per block: the variance of one draw is known to ~±14% (1σ)
    for block, value in true_variances.items():
        assert lap.prior.variances[block] == pytest.approx(value, rel=0.45)
    # 960 measurements, 744 degrees of freedom left: ±5% (1σ); measured 0.572 vs 0.611, steady
    # from the fourth step on
    assert lap.noise_variance == pytest.approx(true_noise, rel=0.2)
    assert history["noise_variance"][-2] == pytest.approx(lap.noise_variance, rel=0.02)


def _saved(state):
    """``state`` written by ``torch.save`` to memory, ready to load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_em_resumed_from_a_state_dict_repeats_the_uninterrupted_run(laplace_problem):
    parts, noise_variance = laplace_problem
    config = SolverConfig(iterations=40, tolerance=1e-3)
    make = lambda: LinearisedLaplace(**parts, noise_variance=100 * noise_variance, solver=config)  # noqa: E731
    straight = make()
    for _ in range(2):  # one step per call, as a resumable run does
        straight.fit_hyperparameters(1, em_samples=2, fit_noise=False, fit_prior=True)
    first = make()
    first.fit_hyperparameters(1, em_samples=2, fit_noise=False, fit_prior=True)
    resumed = make()
    resumed.load_state_dict(torch.load(_saved(first.state_dict()), weights_only=True))
    resumed.fit_hyperparameters(1, em_samples=2, fit_noise=False, fit_prior=True)
    assert resumed.history == straight.history
    with pytest.raises(ValueError, match="saved prior has blocks"):
        resumed.load_state_dict({**first.state_dict(), "prior_variances": {"x": 1.0}})


def test_em_one_step_per_call_warm_starts_like_one_call_of_all_steps(laplace_problem, monkeypatch):
    """The pipeline's one step per call keeps each sample's previous solution as its start:
    the same EM as one call, and a warm step needs fewer CG iterations than a cold one."""
    parts, noise_variance = laplace_problem
    config = SolverConfig(iterations=1000, tolerance=1e-3, preconditioner_rank=8)
    make = lambda: LinearisedLaplace(**parts, noise_variance=3 * noise_variance, solver=config)  # noqa: E731
    together = make()
    together.fit_hyperparameters(2, em_samples=4, batch=2, fit_noise=True, fit_prior=True)
    iterations = []
    solve = LinearisedLaplace._solve_dual

    def counted(self, rhs, x0, **kwargs):
        out = solve(self, rhs, x0, **kwargs)
        if kwargs.get("padded", True):  # the samples' solves, not the mode's
            iterations.append((x0 is not None, int(torch.as_tensor(out[2]["iterations"]).max())))
        return out

    monkeypatch.setattr(LinearisedLaplace, "_solve_dual", counted)
    apart = make()
    for _ in range(2):
        apart.fit_hyperparameters(1, em_samples=4, batch=2, fit_noise=True, fit_prior=True)
    assert apart.history == together.history
    cold = [n for warm, n in iterations if not warm]
    warm = [n for warm, n in iterations if warm]
    assert len(cold) == len(warm) == 2 and max(warm) < min(cold)


def test_the_mode_may_take_more_iterations_than_a_sample(laplace_problem):
    """Plain CG on the tiny system needs more than 3 iterations: the samples stop at the cap,
    the mode (one row, whose misfit sets σ_y²) at MODE_ITERATION_FACTOR times it."""
    parts, noise_variance = laplace_problem
    config = SolverConfig(iterations=3, tolerance=1e-9, preconditioner_rank=0)
    lap = LinearisedLaplace(**parts, noise_variance=noise_variance, solver=config)
    lap.sample(2, warn=False)
    lap.mode()
    assert lap.last_solve["iterations"] == 3
    assert lap.last_mode_solve["iterations"] == 3 * MODE_ITERATION_FACTOR > 3


def test_em_keeps_prior_variances_within_bounds_when_the_solves_are_truncated(
    laplace_problem, caplog
):
    """Two CG iterations leave the samples near their prior draws: EM must neither blow the
    prior variances up beyond 100x their start nor produce non-finite values."""
    parts, _ = laplace_problem
    lap = LinearisedLaplace(**parts, solver=SolverConfig(iterations=2))
    start = dict(lap.prior.variances)
    lap.fit_hyperparameters(em_steps=6, em_samples=4, fit_noise=False, fit_prior=True)
    for block, value in lap.prior.variances.items():
        assert math.isfinite(value) and 0 < value <= 100 * start[block] * (1 + 1e-12), block


@pytest.mark.parametrize("rank, warned", [(0, True), (None, False)])
def test_em_warns_when_the_mode_it_rests_on_stopped_unconverged(
    laplace_problem, recwarn, rank, warned
):
    """Twice two plain CG iterations (the mode's share of a 2-iteration cap) leave the mode far
    from converged; the default preconditioner solves this tiny system within them."""
    parts, _ = laplace_problem
    lap = LinearisedLaplace(**parts, solver=SolverConfig(iterations=2, preconditioner_rank=rank))
    lap.fit_hyperparameters(em_steps=1, em_samples=4, fit_noise=True, fit_prior=True)
    assert lap.last_mode_solve["iterations"] <= 2 * MODE_ITERATION_FACTOR
    modes = [w.message for w in recwarn if "the linear model's mode stopped" in str(w.message)]
    assert bool(modes) == warned
    if warned:
        assert isinstance(modes[0], NotConvergedWarning) and modes[0].setting == "cg_iterations"


def test_em_caps_a_runaway_prior_variance_and_names_the_setting_to_raise(laplace_problem):
    """An M-step whose statistics would raise the variances a billionfold stops them at
    100x their start and warns, naming the Python setting (the CLI translates it)."""
    parts, _ = laplace_problem
    lap = LinearisedLaplace(**parts)
    n_samples, blocks = 4, lap.prior.blocks
    # every sample estimates the same γ_b = n_b / 2 (no spread: significant), and the mode's
    # whitened norm is huge
    d = torch.tensor([0.5 * lap.prior.block_sizes[b] for b in blocks], dtype=torch.float64)
    tail = torch.tensor([n_samples * float(d.sum()) ** 2, 1.0], dtype=torch.float64)
    stats = torch.cat([n_samples * d, n_samples * d**2, torch.full_like(d, 1e12), tail])
    start = dict(lap.prior.variances)
    with pytest.warns(NotConvergedWarning) as warned:
        em._update(lap, stats, n_samples, [], per_block=False, fit_noise=False, fit_prior=True)
    assert lap.prior.variances == {b: em.MAX_VARIANCE_GROWTH * v for b, v in start.items()}
    (warning,) = warned
    assert warning.message.setting == "cg_iterations" and "--" not in str(warning.message)


def _dense_noise_update(lap: LinearisedLaplace) -> float:
    """The exact M-step ``||r - M û||² / (m - γ)``, ``γ = Σ λ / (λ + σ_y²)`` over the
    eigenvalues of ``M Mᵀ``, at ``lap``'s current hyperparameters (dense)."""
    M = lap._dense_m().double()  # (m, P)
    r = lap.linear_data.reshape(-1).double()
    s2 = lap.noise_variance
    u_hat = torch.linalg.solve(M.T @ M + s2 * torch.eye(M.shape[1], dtype=torch.float64), M.T @ r)
    eigenvalues = torch.linalg.eigvalsh(M @ M.T)
    gamma = float((eigenvalues / (eigenvalues + s2)).sum())
    return float((r - M @ u_hat).square().sum()) / (r.numel() - gamma)


def test_em_noise_update_matches_the_dense_formula_after_the_held_first_step(laplace_problem):
    """σ_y² ← ||r - M û||² / (m - γ) with the exact mode and γ = Σ λ / (λ + σ_y²); held at
    the first step (em.NOISE_HOLD_STEPS)."""
    parts, noise_variance = laplace_problem
    lap = LinearisedLaplace(
        **parts,
        noise_variance=4 * noise_variance,
        solver=SolverConfig(iterations=300, tolerance=1e-5),
    )
    lap.fit_hyperparameters(
        em_steps=em.NOISE_HOLD_STEPS, em_samples=64, fit_noise=True, fit_prior=True
    )
    assert lap.history["noise_variance"] == [4 * noise_variance] * (em.NOISE_HOLD_STEPS + 1)
    expected = _dense_noise_update(lap)  # at the variances after the held step(s)
    lap.fit_hyperparameters(em_steps=1, em_samples=64, fit_noise=True, fit_prior=True)
    # γ comes from 64 samples (control variates): a few percent of m - γ
    assert lap.noise_variance == pytest.approx(expected, rel=0.05)
    assert lap.noise_variance != pytest.approx(4 * noise_variance, rel=0.05)


def test_last_change_reports_the_relative_step_of_every_hyperparameter():
    history = {"noise_variance": [1.0, 2.0, 2.1], "prior_variance/a": [1.0, 0.5], "gamma/a": [3]}
    change = em.last_change(history)
    assert change == pytest.approx({"noise_variance": 0.05, "prior_variance/a": 0.5})
    assert em.last_change({"noise_variance": [1.0]}) == {}


def test_em_fits_the_noise_alone_from_the_first_step_when_the_prior_is_held(laplace_problem):
    parts, noise_variance = laplace_problem
    lap = LinearisedLaplace(
        **parts,
        noise_variance=4 * noise_variance,
        solver=SolverConfig(iterations=300, tolerance=1e-5),
    )
    variances = dict(lap.prior.variances)
    expected = _dense_noise_update(lap)
    lap.fit_hyperparameters(em_steps=1, em_samples=64, fit_noise=True, fit_prior=False)
    assert lap.prior.variances == variances
    assert lap.noise_variance == pytest.approx(expected, rel=0.05)
