"""dip_uq.holdout: held-out projections scored under the posterior predictive, against the
dense exact predictive of a tiny problem; they never enter the fit; bad input."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from helpers import SHAPE, small_linearised_unet

import dip_uq as du
from dip_uq import holdout, pipeline
from dip_uq.cli import main
from dip_uq.diagnostics import NotConvergedWarning
from dip_uq.laplace import LinearisedLaplace, SolverConfig, prior_scale
from dip_uq.laplace.predictive import predictive


def test_every_kth_projection_is_held_out():
    kept, held = holdout.holdout_indices(10, 3)
    assert held.tolist() == [2, 5, 8] and kept.tolist() == [0, 1, 3, 4, 6, 7, 9]
    kept, held = holdout.holdout_indices(5, 5)
    assert held.tolist() == [4]
    for bad in (1, 0, -2, 2.5, True):
        with pytest.raises(ValueError, match="holdout must be an integer K >= 2"):
            holdout.holdout_indices(10, bad)
    with pytest.raises(ValueError, match=r"larger than the 10 projections .* at most 10"):
        holdout.holdout_indices(10, 11)


def test_cross_validation_holds_out_a_limited_arcs_ends_and_inside():
    # 45 angles over 120°: of the 9 held out, the first 3 and the last 2 along the arc and 4
    # spread inside, in any order of the angles and wherever the arc starts on the circle
    angles = np.deg2rad(150 + np.linspace(0, 120, 45, endpoint=False))
    order = np.random.default_rng(0).permutation(45)
    geometry = du.ParallelBeam(angles[order], (16,))
    kept, held, where = holdout.cross_validation_indices(geometry, 5)
    assert where == "ends and inside"
    assert sorted(order[held].tolist()) == [0, 1, 2, 11, 19, 27, 35, 43, 44]
    assert sorted([*kept, *held]) == list(range(45))
    gap, start = holdout.largest_angular_gap(geometry)
    assert gap == pytest.approx(np.deg2rad(60 + 120 / 45)) and order[start] == 0
    # a fan beam over 90° is limited as well: 2 + 1 at the ends of 30, 3 inside
    fan = du.FanBeam(np.deg2rad(np.linspace(0, 90, 30)), (24,), 1.0, 50.0, 25.0)
    _, held, where = holdout.cross_validation_indices(fan, 5)
    assert (held.tolist(), where) == ([0, 1, 9, 16, 22, 29], "ends and inside")


@pytest.mark.parametrize(
    "angles_deg",
    [
        np.linspace(0, 180, 30, endpoint=False),  # parallel, half circle
        np.linspace(0, 360, 36, endpoint=False),  # every direction twice
        np.rad2deg(np.arange(40) * np.pi * (np.sqrt(5) - 1) / 2),  # golden angle
        np.linspace(0, 165, 30),  # 15° short of the half circle: not a wedge worth the name
    ],
)
def test_cross_validation_interleaves_on_a_full_scan(angles_deg):
    geometry = du.ParallelBeam(np.deg2rad(angles_deg), (16,))
    kept, held, where = holdout.cross_validation_indices(geometry, 5)
    expected = holdout.holdout_indices(len(angles_deg), 5)
    assert where == "interleaved"
    assert (kept.tolist(), held.tolist()) == (expected[0].tolist(), expected[1].tolist())


@pytest.fixture(scope="module")
def held_out_problem():
    """A 12² linearised DIP fitted to 6 of 8 parallel-beam angles; the other 2 held out."""
    angles = np.linspace(0, np.pi, 8, endpoint=False)
    geometry = du.ParallelBeam(angles, (16,))
    full = du.RayTransform(du.Volume(SHAPE), geometry, "torch")
    y, sigma = du.simulate(
        full, du.phantoms.shepp_logan(SHAPE), noise=0.05, seed=0, return_sigma=True
    )
    kept, held = holdout.holdout_indices(8, 4)
    A = du.RayTransform(du.Volume(SHAPE), geometry[kept], "torch")
    A_held = du.RayTransform(du.Volume(SHAPE), geometry[held], "torch")
    lap = LinearisedLaplace(
        **small_linearised_unet(),
        operator=A,
        y=y[torch.as_tensor(kept)],
        noise_variance=float(sigma) ** 2,
        solver=SolverConfig(iterations=300, tolerance=1e-5),
    )
    return lap, A_held, y[torch.as_tensor(held)]


def _exact_predictive(lap, A_held):
    """The dense exact predictive std of every held-out pixel, float64."""
    cov = lap.exact_covariance()
    eye = torch.eye(cov.shape[0], dtype=torch.float32).reshape(-1, *SHAPE)
    Ah = A_held(eye).reshape(cov.shape[0], -1).T.double()  # (m_held, n)
    return ((Ah @ cov @ Ah.T).diagonal() + lap.noise_variance).sqrt().reshape(A_held.range_shape)


def test_the_predictive_of_exact_deviations_is_the_exact_predictive(held_out_problem):
    lap, A_held, _ = held_out_problem
    cov = lap.exact_covariance()
    # deviations D with Dᵀ D / n = cov exactly: the predictive's only error is round-off
    root = torch.linalg.cholesky(cov + 1e-12 * torch.eye(cov.shape[0], dtype=cov.dtype))
    deviations = (math.sqrt(cov.shape[0]) * root.T).float().reshape(-1, *SHAPE)
    mean = lap.model.image_star
    predicted, std, sample_std = predictive(A_held, mean, deviations, lap.noise_variance)
    exact = _exact_predictive(lap, A_held)
    torch.testing.assert_close(std.double(), exact, rtol=1e-4, atol=0)
    torch.testing.assert_close(predicted, A_held(mean))
    assert bool((sample_std < std).all())


def test_sampled_scores_match_the_exact_gaussian(held_out_problem):
    """Coverage and TLL of held-out pixels from 400 exact posterior samples agree with the
    exact Gaussian predictive: TLL to 0.05 nats per pixel, coverage to 0.07 (32 pixels: two
    pixels either way at most). The held-out data are drawn from that predictive (the
    untrained network of the fixture fits no data), so the exact scores are calibrated."""
    lap, A_held, _ = held_out_problem
    mean = lap.model.image_star
    exact_std = _exact_predictive(lap, A_held).float()
    noise = torch.randn(exact_std.shape, generator=torch.Generator().manual_seed(5))
    y_held = A_held(mean) + exact_std * noise
    samples = lap.sample(400, method="exact")
    scores = holdout.check(A_held, y_held, mean, samples, lap.noise_variance, every=4)
    exact = holdout.score(y_held, A_held(mean), exact_std, every=4, noise_std=1.0)
    assert scores.n_projections == 2 and scores.every == 4
    assert scores.tll == pytest.approx(exact.tll, abs=0.05)
    for level in holdout.LEVELS:
        assert scores.coverage[level] == pytest.approx(exact.coverage[level], abs=0.07)
    assert np.all(np.diff(scores.observed) >= 0) and scores.expected[0] < scores.expected[-1]
    record = scores.to_dict()
    assert set(record) >= {"coverage_50", "coverage_90", "tll_per_pixel", "calibration_curve"}


FAST = {"channels": 4, "iterations": 40, "samples": 4, "cg_iterations": 10}


def test_held_out_projections_never_enter_the_fit():
    """Not the DIP's, not EM's, and not the cross-validation's of the prior scale."""
    scan = du.simulate_scan(size=16, angles=12, noise=0.02)
    settings = pipeline.Settings(**FAST, holdout=3, em_steps=1, prior_scale="cross-validated")
    first = pipeline.reconstruct(scan, settings)
    _, held = holdout.holdout_indices(12, 3)
    changed = scan.sinogram.copy()
    changed[held] += 10.0  # nothing fitted to the other projections can notice
    second = pipeline.reconstruct(scan.replace(sinogram=changed), settings)
    np.testing.assert_array_equal(first.mean, second.mean)
    np.testing.assert_array_equal(first.std, second.std)
    assert "prior_scale_search" in first.hyperparameters
    assert first.hyperparameters == second.hyperparameters
    assert second.holdout["tll_per_pixel"] < first.holdout["tll_per_pixel"] - 100
    assert second.holdout["coverage_90"] < first.holdout["coverage_90"]


@pytest.mark.parametrize("peak", [-2.7, -1.5, -0.2, 0.5, 1.6])
def test_the_decade_walk_finds_the_peak_of_a_parabola(peak):
    calls = []
    best, seen = prior_scale.best_decade(lambda e: calls.append(e) or -((e - peak) ** 2), -3, 2)
    assert best == pytest.approx(peak, abs=1e-9)  # the vertex of three points: exact
    assert len(calls) == len(seen) <= 6  # no factor is scored twice
    assert min(seen) <= peak <= max(seen)


def test_the_decade_walk_refines_a_lopsided_peak_by_half_a_decade():
    """Steeper below the peak than above it (as the held-out likelihood falls faster for a
    prior too narrow than too wide): the parabola through decades 0, 1, 2 puts the top at
    0.92, the half decade 0.5 scored beside the best moves it to 0.71 (the truth: 0.6)."""
    lopsided = lambda e: -((e - 0.6) ** 2) * (4.0 if e < 0.6 else 1.0)  # noqa: E731
    best, seen = prior_scale.best_decade(lopsided, -3, 2)
    assert sorted(seen) == [-1, 0, 0.5, 1, 2]
    assert abs(best - 0.6) < 0.12


def test_the_decade_walk_stops_at_the_ends_of_its_range():
    assert prior_scale.best_decade(lambda e: -e, -3, 2)[0] == -3  # rising beyond the smallest
    assert prior_scale.best_decade(lambda e: e, -3, 2)[0] == 2
    assert prior_scale.best_decade(lambda e: 0.0, -3, 2)[0] == 0  # flat: the starting scale


def test_the_prior_scale_is_chosen_by_the_held_out_likelihood(held_out_problem):
    lap, A_held, y_held = held_out_problem
    start = dict(lap.prior.variances)
    mean = lap.model.image_star
    told = []
    search = prior_scale.choose_prior_scale(
        lap, A_held, y_held, mean, samples=8, on_candidate=lambda *scored: told.append(scored)
    )
    factors, tlls = search["factors"], search["tll_per_pixel"]
    # every candidate was told as it was scored, once, in the walk's order (0.1, then 1, ...)
    assert [f for f, _ in told][:2] == [pytest.approx(0.1), pytest.approx(1.0)]
    assert sorted(told) == [(f, t) for f, t in zip(factors, tlls, strict=True)]
    best = int(np.argmax(tlls))
    assert 3 <= len(factors) <= 7 and factors == sorted(factors)
    # the walk stopped where the likelihood fell, or at an end of the range
    ends = [10.0**e for e in prior_scale.PRIOR_SCALE_DECADES]
    assert 0 < best < len(factors) - 1 or factors[best] in ends
    assert abs(np.log10(search["chosen_factor"] / factors[best])) <= 0.5
    # each candidate is the samples' held-out likelihood at that factor
    lap.prior.variances = start
    lap.prior.scale_variances(factors[best])
    deviations = lap.moments(8, keep_samples=True).samples
    scores = holdout.check(A_held, y_held, mean, deviations, lap.noise_variance, every=0)
    assert scores.tll == pytest.approx(tlls[best], rel=1e-6)
    lap.prior.variances = start
    lap.prior.scale_variances(search["chosen_factor"])
    for block, variance in lap.prior.variances.items():
        assert variance == pytest.approx(search["chosen_factor"] * start[block])
    lap.prior.variances = start  # the fixture is shared
    with pytest.raises(ValueError, match="needs held-out projections"):
        pipeline.Settings(prior_scale="holdout")
    with pytest.raises(ValueError, match="chooses the scale EM would fit"):
        pipeline.Settings(prior_scale="holdout", holdout=4, em_steps=2, fit_prior=True)


def test_the_search_reports_unconverged_candidates_itself(held_out_problem, caplog):
    """Capped at 2 CG iterations with a rank-4 preconditioner (an adaptive rank would grow
    until 2 iterations suffice), candidates stop unconverged: the search says so once, in its own
    words and with every candidate's residual in its result, instead of the sampler's
    warning per candidate (which told the user to raise the cap for samples of a factor
    the std map never uses)."""
    lap, A_held, y_held = held_out_problem
    start, solver = dict(lap.prior.variances), lap.solver
    lap.solver = SolverConfig(**{**vars(solver), "iterations": 2, "preconditioner_rank": 4})
    try:
        with pytest.warns(NotConvergedWarning) as warned:
            search = prior_scale.choose_prior_scale(
                lap, A_held, y_held, lap.model.image_star, samples=8
            )
    finally:
        lap.solver, lap.prior.variances = solver, start  # the fixture is shared
    assert len(search["worst_residual"]) == len(search["factors"])
    assert max(search["worst_residual"]) > 10 * solver.tolerance
    messages = [w.message for w in warned if isinstance(w.message, NotConvergedWarning)]
    assert not [m for m in messages if str(m).startswith("posterior samples")]
    reports = [m for m in messages if str(m).startswith("prior-scale search")]
    assert len(reports) == 1
    assert reports[0].setting == "cg_iterations"  # the CLI names its flag


@pytest.mark.parametrize("off, warned", [(0.5, True), (2.0, False)])
def test_an_unconverged_candidate_is_a_warning_only_where_the_choice_rests_on_it(
    off, warned, caplog, recwarn
):
    seen = {-1.0: 1.0, 0.0: 3.0, 0.5: 2.5, 1.0: 2.0, 2.0: 0.0}  # the top, 0, and 0.5 beside
    capped = torch.tensor([False])  # not stalled: stopped by the iteration cap
    solves = {
        e: {"residual": torch.tensor([5e-2 if e == off else 1e-4]), "stalled": capped} for e in seen
    }
    with caplog.at_level(logging.INFO, logger="dip_uq"):
        prior_scale._report_unconverged(seen, solves, 0.1, SolverConfig())
    warnings = [str(w.message) for w in recwarn if w.category is NotConvergedWarning]
    infos = [r.getMessage() for r in caplog.records]
    (message,) = warnings if warned else infos
    assert f"factor {10.0**off:.3g} stopped" in message
    assert not (infos if warned else warnings)


def test_the_search_does_not_ask_for_more_iterations_where_round_off_stalled_the_samples():
    """Every candidate has a sample that CG stopped above the tolerance on float32 round-off
    (its restarts used up) before the cap: the warning says so instead of asking for more."""
    seen = {-1.0: 1.0, 0.0: 3.0, 1.0: 2.0}
    solves = {
        e: {"residual": torch.tensor([1e-4, 5e-2]), "stalled": torch.tensor([False, True])}
        for e in seen
    }
    with pytest.warns(NotConvergedWarning) as warned:
        prior_scale._report_unconverged(seen, solves, 0.0, SolverConfig())
    (warning,) = warned
    assert "more iterations will not help" in str(warning.message)
    assert warning.message.setting is None


def test_the_command_line_reports_the_check_and_refuses_bad_k(tmp_path, capsys):
    scan = tmp_path / "scan.h5"
    assert main(["simulate", "--size", "16", "--angles", "12", "--out", str(scan)]) == 0
    common = ["reconstruct", str(scan), "--iterations", "40", "--channels", "4"]
    common += ["--samples", "4", "--cg-iterations", "10", "--device", "cpu", "--quiet"]
    capsys.readouterr()
    for k, message in (("1", "holdout must be an integer K >= 2"), ("13", "larger than the 12")):
        out = tmp_path / f"bad{k}"
        assert main([*common, "--holdout", k, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not out.exists()  # nothing written
    out = tmp_path / "run"
    assert main([*common, "--holdout", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out projections (4, one in 3): 90% interval covers" in printed
    record = json.loads((out / "run.json").read_text())
    assert record["holdout"]["projections"] == 4 and record["settings"]["holdout"] == 3
    assert 0 <= record["holdout"]["coverage_90"] <= 1
