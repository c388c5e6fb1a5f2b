"""dip_uq.pipeline: its settings, its stages, and the checkpointed EM they resume from."""

from __future__ import annotations

import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from dip_uq import RayTransform, pipeline, stages
from dip_uq.laplace import LinearisedLaplace, SolverConfig
from dip_uq.pipeline import Settings
from dip_uq.settings import CROSS_VALIDATION_EVERY
from dip_uq.simulation import simulate_scan

FAST = {"channels": 8, "iterations": 60, "samples": 4, "cg_iterations": 10}


@pytest.fixture(scope="module")
def fitted():
    """A 16² scan, its ray transform and a DIP fitted to it (seconds)."""
    scan = simulate_scan(size=16, angles=12, noise=0.02)
    A = RayTransform(scan.volume, scan.geometry, backend="torch")
    y = torch.as_tensor(scan.sinogram)
    settings = Settings(**FAST, em_steps=2)
    rec = stages.fit_dip(A, y, settings)
    return rec, y, settings


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "tv"}, "unknown method 'tv'"),
        ({"uq": "ensemble"}, "unknown uq 'ensemble'"),
        ({"samples": 1}, "samples must be at least 2, got 1"),
        ({"em_samples": 1}, "em_samples must be at least 2, got 1"),
        ({"em_steps": -1}, "em_steps must be 0 or more"),
        ({"cg_iterations": 0}, "SolverConfig.iterations must be at least 1"),
        ({"preconditioner_rank": -1}, "preconditioner_rank must be 0"),
        ({"fit_noise": False}, "EM has nothing to fit"),
        ({"mean": "median"}, "unknown mean 'median'; use one of linear, network"),
        ({"mean": "linear", "uq": "sgld"}, "mean='linear' is the Laplace posterior's mean"),
        ({"mean": "linear", "method": "fbp"}, "it needs uq='laplace'"),
    ],
)
def test_bad_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Settings(**options)


def test_the_solver_defaults_have_one_source():
    settings = Settings(cg_iterations=42, preconditioner_rank=7)
    assert settings.solver_config() == SolverConfig(iterations=42, preconditioner_rank=7)
    default = Settings().solver_config()
    assert (default.iterations, default.preconditioner_rank) == (
        SolverConfig().iterations,
        SolverConfig().preconditioner_rank,
    )


def test_a_runs_notes_are_printed_above_its_progress_bars_not_inside_them(capsys):
    from tqdm import tqdm

    with tqdm(total=10, desc="DIP", file=sys.stderr, mininterval=0) as bar:
        bar.update(3)
        capsys.readouterr()
        pipeline.print_above_bars("estimate: about 1 min")
        printed = capsys.readouterr()
    assert printed.out == "estimate: about 1 min\n"  # a line of its own
    # the bar was cleared before the note and drawn again below it
    cleared, _, redrawn = printed.err.rpartition("\r")
    assert cleared.startswith("\r ") and redrawn.startswith("DIP:  30%")


def test_run_refuses_the_checkpoints_of_an_unfinished_run(tmp_path):
    (tmp_path / "em-checkpoint.pt").write_bytes(b"")
    scan = simulate_scan(size=16, angles=8, noise=0.02)
    with pytest.raises(ValueError, match=r"unfinished run \(em-checkpoint.pt\); pass resume=True"):
        pipeline.reconstruct(scan, Settings(method="fbp"), work_dir=tmp_path)


def test_em_samples_set_the_samples_of_every_em_step(fitted, monkeypatch):
    rec, y, settings = fitted
    seen = []
    original = LinearisedLaplace.fit_hyperparameters

    def spy(self, em_steps, n_samples, **kwargs):
        seen.append((em_steps, n_samples))
        return original(self, em_steps, n_samples, **kwargs)

    monkeypatch.setattr(LinearisedLaplace, "fit_hyperparameters", spy)
    lap = stages.linearise(rec, y, settings)
    stages.fit_em(lap, Settings(**{**FAST, "em_samples": 2}, em_steps=2))
    assert seen == [(1, 2), (1, 2)]  # one checkpointable step per call
    stages.fit_em(lap, Settings(**FAST, em_samples=None, em_steps=2))
    assert seen[2:] == [(1, 4), (1, 4)]  # without em_samples: the samples of the std map


def test_em_interrupted_and_resumed_from_its_checkpoint_repeats_the_uninterrupted_run(
    fitted, tmp_path, monkeypatch
):
    rec, y, settings = fitted
    fingerprint = {"case": "tiny", "em_steps": settings.em_steps}
    reference = stages.linearise(rec, y, settings)
    stages.fit_em(reference, settings)

    original = LinearisedLaplace.fit_hyperparameters
    calls = []

    def interrupt_second_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    ctx = stages.RunContext(work_dir=tmp_path)  # em-checkpoint.pt
    with monkeypatch.context() as m:
        m.setattr(LinearisedLaplace, "fit_hyperparameters", interrupt_second_step)
        with pytest.raises(KeyboardInterrupt):
            stages.fit_em(
                stages.linearise(rec, y, settings),
                settings,
                ctx,
                fingerprint=fingerprint,
            )
    resumed = stages.linearise(rec, y, settings)
    stages.fit_em(resumed, settings, ctx, fingerprint=fingerprint)
    assert resumed.history == reference.history
    assert resumed.prior.variances == reference.prior.variances
    with pytest.raises(ValueError, match="belongs to another run"):
        stages.fit_em(
            stages.linearise(rec, y, settings),
            settings,
            ctx,
            fingerprint={**fingerprint, "case": "other"},
        )


def test_hyperparameters_report_em_curves_only_after_em(fitted):
    rec, y, settings = fitted
    lap = stages.linearise(rec, y, settings)
    hyper, curves = stages.hyperparameters(lap, Settings(**FAST, em_steps=0))
    assert curves == {} and hyper["noise_variance"] == lap.noise_variance
    stages.fit_em(lap, settings)
    hyper, curves = stages.hyperparameters(lap, settings)
    assert len(curves["EM noise variance σ_y²"]["σ_y²"]) == settings.em_steps + 1
    assert set(curves) == {"EM noise variance σ_y²"}  # the prior's variances were not fitted
    fitting_the_prior = replace(settings, fit_prior=True, prior_scale="weights")
    hyper, curves = stages.hyperparameters(lap, fitting_the_prior)
    assert set(curves["EM prior variances σ_b²"]) == {
        b.split("/", 1)[1] for b in hyper["history"] if b.startswith("prior_variance/")
    }


def test_em_that_has_not_settled_is_reported_with_its_largest_change(fitted, recwarn):
    rec, y, settings = fitted
    lap = stages.linearise(rec, y, settings)
    # a prior 1000 times too wide: the first EM step shrinks it by more than 10 %
    lap.prior.variances = {b: 1e3 * v for b, v in lap.prior.variances.items()}
    lap.history = {
        k: [v[0] * (1e3 if k.startswith("prior") else 1)] for k, v in lap.history.items()
    }
    stages.fit_em(lap, Settings(**FAST, em_steps=1, fit_prior=True, prior_scale="weights"))
    [warning] = [w.message for w in recwarn if "EM has not settled" in str(w.message)]
    message = str(warning)
    assert "prior_variance/" in message and warning.setting == "em_steps"
    change = max(stages.em.last_change(lap.history).values())
    assert f"by {100 * change:.0f}%" in message and change > stages.em.SETTLED_CHANGE
    recwarn.clear()
    stages.fit_em(stages.linearise(rec, y, settings), Settings(**FAST, em_steps=0))
    assert not [w for w in recwarn if "EM has not settled" in str(w.message)]


def test_gprior_setting_reaches_the_posterior(fitted):
    rec, y, settings = fitted
    assert stages.linearise(rec, y, Settings(**FAST, gprior=False)).prior.scale is None
    lap = stages.linearise(rec, y, settings)  # the default
    assert lap.prior.scale is not None and lap.prior.scale.shape == (lap.model.n_params,)


def test_the_mean_setting_picks_the_network_or_the_linear_models_posterior_mean():
    scan = simulate_scan(size=16, angles=12, noise=0.02)
    network = pipeline.reconstruct(scan, Settings(**FAST, em_steps=1, prior_scale="weights"))
    linear = pipeline.reconstruct(
        scan, Settings(**FAST, em_steps=1, mean="linear", prior_scale="weights")
    )
    np.testing.assert_array_equal(network.std, linear.std)  # the same posterior
    A = RayTransform(scan.volume, scan.geometry, backend="auto")
    y = torch.as_tensor(scan.sinogram)
    rec = stages.fit_dip(A, y, Settings(**FAST))
    np.testing.assert_array_equal(network.mean, rec.predict().numpy())
    lap = stages.linearise(rec, y, Settings(**FAST, em_steps=1))
    stages.fit_em(lap, Settings(**FAST, em_steps=1))
    np.testing.assert_allclose(linear.mean, lap.mean().numpy(), rtol=0, atol=1e-6)
    assert np.abs(linear.mean - network.mean).max() > 1e-3


def test_the_cross_validated_scale_is_the_second_fits_choice_applied_to_the_fit_to_all(
    tmp_path, monkeypatch
):
    scan = simulate_scan(size=16, angles=15, noise=0.02)
    settings = Settings(**FAST, em_steps=1, em_samples=2, prior_scale="cross-validated")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the stages one after another
    weights = pipeline.reconstruct(scan, replace(settings, prior_scale="weights"))
    validated = pipeline.reconstruct(scan, settings)
    np.testing.assert_array_equal(validated.mean, weights.mean)  # the same DIP fit
    search = validated.hyperparameters["prior_scale_search"]
    A = RayTransform(scan.volume, scan.geometry, backend="auto")
    y = torch.as_tensor(scan.sinogram)
    work = tmp_path / "run"  # the search alone, kept as a resumed run finds it
    noise = validated.hyperparameters["noise_variance"]  # after EM, which precedes the search
    assert noise == weights.hyperparameters["noise_variance"]
    found = stages.cross_validate_prior_scale(
        A, y, settings, stages.RunContext(work_dir=work), noise_variance=noise
    )
    assert found == search
    assert (search["every"], search["projections"], search["held_out"]) == (
        CROSS_VALIDATION_EVERY,
        3,
        "interleaved",
    )
    best = search["factors"][int(np.argmax(search["tll_per_pixel"]))]
    assert abs(np.log10(search["chosen_factor"] / best)) <= 0.5
    # every solve is on record: the search's per candidate, EM's and the std map's per solve
    assert len(search["cg_iterations"]) == len(search["factors"])
    assert all(1 <= n <= settings.cg_iterations for n in search["cg_iterations"])
    solves = validated.run_info["solves"]
    assert [s["rows"] for s in solves["em"]] == [2, 1]  # the samples, then the mode
    assert sum(s["rows"] for s in solves["std_map"]) == settings.samples
    for record in solves["em"] + solves["std_map"]:
        assert record["iterations"] >= 1 and record["preconditioner_rank"] >= 1
    for block, variance in validated.hyperparameters["prior_variances"].items():
        start = weights.hyperparameters["prior_variances"][block]
        assert variance == pytest.approx(search["chosen_factor"] * start, rel=1e-6)

    # a run resumed after the search reads it instead of fitting the second DIP again
    with pytest.raises(ValueError, match=r"unfinished run \(cross-validation\)"):
        pipeline.reconstruct(scan, settings, work_dir=work)
    fits = []
    fit_dip = stages.fit_dip
    monkeypatch.setattr(stages, "fit_dip", lambda *a, **k: fits.append(1) or fit_dip(*a, **k))
    resumed = pipeline.reconstruct(scan, settings, work_dir=work, resume=True)
    assert len(fits) == 1
    np.testing.assert_array_equal(resumed.std, validated.std)
    assert not (work / stages.CROSS_VALIDATION).exists()  # finished: checkpoints removed


def test_the_second_fit_beside_the_first_gives_the_result_of_one_after_the_other(monkeypatch):
    """With two threads the cross-validation's DIP is fitted in the background, each fit on
    one thread, and EM follows on both: the same fit to all projections as on one thread;
    EM, search and samples agree to the round-off of the thread count (measured: 4e-5 in
    σ_y², which the search's factor at its range end, 100, spreads to 0.4 % in single voxels
    of this 4-sample std)."""
    scan = simulate_scan(size=16, angles=15, noise=0.02)
    settings = Settings(**FAST, em_steps=1, em_samples=2, prior_scale="cross-validated")
    threads, where, em_threads = torch.get_num_threads(), [], []
    fit, fit_em = stages.fit_cross_validation, stages.fit_em
    monkeypatch.setattr(
        stages,
        "fit_cross_validation",
        lambda *a, **k: where.append(threading.current_thread().name) or fit(*a, **k),
    )
    monkeypatch.setattr(
        stages,
        "fit_em",
        lambda *a, **k: em_threads.append(torch.get_num_threads()) or fit_em(*a, **k),
    )
    try:
        torch.set_num_threads(1)
        after = pipeline.reconstruct(scan, settings)
        torch.set_num_threads(2)
        beside = pipeline.reconstruct(scan, settings)
    finally:
        torch.set_num_threads(threads)
    assert where == ["MainThread", "dip-uq background"]
    assert em_threads == [1, 2]  # EM waits for the background fit and gets its thread back
    np.testing.assert_array_equal(beside.mean, after.mean)
    for name in ("noise_variance", "prior_scale_search"):
        a, b = (r.hyperparameters[name] for r in (after, beside))
        a, b = (a, b) if name == "noise_variance" else (a["chosen_factor"], b["chosen_factor"])
        assert b == pytest.approx(a, rel=1e-3)
    np.testing.assert_allclose(beside.std, after.std, rtol=1e-2)


def test_a_saved_prior_scale_search_is_reused_only_for_the_same_settings_and_noise(
    tmp_path, monkeypatch
):
    scan = simulate_scan(size=16, angles=15, noise=0.02)
    A = RayTransform(scan.volume, scan.geometry, backend="torch")
    y = torch.as_tensor(scan.sinogram)
    settings = Settings(**FAST, em_steps=1, em_samples=2)
    cpu = torch.device("cpu")
    fits = []
    fit_dip = stages.fit_dip
    monkeypatch.setattr(stages, "fit_dip", lambda *a, **k: fits.append(1) or fit_dip(*a, **k))
    first = stages.cross_validate_prior_scale(
        A, y, settings, stages.RunContext(cpu, tmp_path), noise_variance=1e-4
    )
    again = stages.cross_validate_prior_scale(
        A, y, settings, stages.RunContext(cpu, tmp_path), noise_variance=1e-4
    )
    assert again == first
    assert len(fits) == 1  # the second call read the saved search, it fitted no DIP
    with pytest.raises(ValueError, match=r"belongs to another run .*noise_variance"):
        stages.cross_validate_prior_scale(
            A, y, settings, stages.RunContext(cpu, tmp_path), noise_variance=2e-4
        )
    with pytest.raises(ValueError, match=r"belongs to another run .*settings"):
        stages.cross_validate_prior_scale(
            A,
            y,
            replace(settings, samples=6),
            stages.RunContext(cpu, tmp_path),
            noise_variance=1e-4,
        )


def test_a_run_says_its_grid_and_how_long_it_will_take():
    """Without a grid the run says which it chose; after the DIP's first iterations, how long
    the run will take (also in run_info). A long estimate names the options that shorten it."""
    scan = simulate_scan(size=16, angles=12, noise=0.02)
    scan = scan.replace(volume=None, truth=None)
    told = []
    result = pipeline.reconstruct(scan, Settings(**FAST, em_steps=0), notify=told.append)
    grid, estimate, *stages_told = told
    assert stages_told[-1] == f"std map: {FAST['samples']} posterior samples"
    assert grid.startswith("grid: ") and "detector's resolution" in grid
    assert estimate.startswith(f"estimate: the DIP's {FAST['iterations']} iterations take")
    assert "uncertainty stage" in estimate and "--size" not in estimate
    assert result.run_info["plan"] == told
    long = stages.run_estimate(0.2, 5000, "cpu")  # 17 min of DIP, up to 4 times that after it
    assert "17 min" in long and all(flag in long for flag in ("--size", "--bin", "--device cuda"))
    assert "--size" not in stages.run_estimate(0.2, 5000, "cpu", uncertainty=False)
