"""The evaluation suite: the tiny suite end to end, and the acceptance test of the uncertainty
(issue 6) on its one case."""

import csv
import math

import numpy as np
import pytest
import torch

from dip_uq.evaluate import SUITE_METHODS, SUITES, Case, Suite, markdown_table, run_suite
from dip_uq.metrics import summary
from dip_uq.pipeline import Settings
from dip_uq.simulation import SCAN_ATTENUATION, simulate_scan

# the small suite's 2D sparse-view cases at 5 % and 1 % noise, about 1 and 2 minutes on one core
TINY = Suite("tiny", (SUITES["small"].cases[1], SUITES["small"].cases[0]), SUITES["small"].settings)


@pytest.fixture(scope="module")
def run_at_5_percent_noise(tmp_path_factory):
    """The ``tiny`` suite's first case (32² Shepp-Logan, 30 parallel-beam angles over 180°,
    5 % noise, 16-channel U-Net, the DIP's default 2000 steps, 3 EM cycles), every method,
    run once for the tests."""
    out = tmp_path_factory.mktemp("tiny")
    rows = run_suite(TINY, out, device="cpu", cases=[TINY.cases[0].name])
    return out, {row["method"]: row for row in rows}


@pytest.fixture(scope="module")
def rows_at_1_percent_noise(tmp_path_factory):
    """The ``tiny`` suite's second case: the first at 1 % noise (the DIP's default 5200
    steps), the Laplace before and after EM and MC dropout."""
    out = tmp_path_factory.mktemp("tiny-low-noise")
    case = TINY.cases[1]
    assert case.noise == 0.01
    rows = run_suite(
        TINY,
        out,
        device="cpu",
        cases=[case.name],
        methods=["laplace", "laplace-em", "mc-dropout"],
    )
    return {row["method"]: row for row in rows}


@pytest.mark.slow
def test_tiny_suite_writes_finite_results(run_at_5_percent_noise):
    out, rows = run_at_5_percent_noise
    assert list(rows) == list(SUITE_METHODS)
    with open(out / "results.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [r["method"] for r in written] == list(SUITE_METHODS)
    text = (out / "results.md").read_text()
    assert "| laplace-em |" in text and "cov 90%" in text
    assert list(out.glob("calibration_*.png"))
    for method, row in rows.items():
        assert math.isfinite(row["psnr"]) and math.isfinite(row["seconds"])
        keys = ["coverage_0.5", "coverage_0.9", "coverage_0.95", "tll_1", "tll_patch", "spearman"]
        if method == "fbp":
            assert all(math.isnan(row[k]) for k in keys)
        else:
            assert all(math.isfinite(row[k]) for k in keys), row
            assert row["coverage_0.5"] <= row["coverage_0.9"] <= row["coverage_0.95"]


@pytest.mark.slow
def test_laplace_after_em_has_a_higher_test_log_likelihood_than_mc_dropout(run_at_5_percent_noise):
    """Issue 6's acceptance test, first half, on the tiny suite's case (32² Shepp-Logan,
    30 angles over 180°, 5 % noise)."""
    _, rows = run_at_5_percent_noise
    laplace, dropout = rows["laplace-em"], rows["mc-dropout"]
    assert laplace["tll_1"] > dropout["tll_1"], (laplace, dropout)


@pytest.mark.slow
def test_laplace_before_em_covers_its_90_percent_interval(run_at_5_percent_noise):
    """The Laplace std at its initial hyperparameters (σ_y² from the DIP's noise estimate,
    the g-prior at the scale of the fitted weights) is calibrated on the tiny case: measured
    0.97 (0.94 with the plain prior)."""
    _, rows = run_at_5_percent_noise
    assert 0.8 <= rows["laplace"]["coverage_0.9"] <= 0.98, rows["laplace"]


@pytest.mark.slow
def test_laplace_after_em_covers_its_90_percent_interval(run_at_5_percent_noise):
    """Issue 6's acceptance test, second half (90 % coverage within [0.8, 0.98]), at 5 %
    noise: EM of the prior and the noise (the suite sets ``fit_prior``) from the g-prior
    covers 0.83 (0.97 before EM). It was a known failure (0.76) with the plain prior, the
    noise held at the DIP's estimate and the per-block bounds on the effective dimensions."""
    _, rows = run_at_5_percent_noise
    assert 0.8 <= rows["laplace-em"]["coverage_0.9"] <= 0.98, rows["laplace-em"]


@pytest.mark.slow
def test_laplace_after_em_passes_the_acceptance_test_where_the_prior_starts_too_wide(
    rows_at_1_percent_noise,
):
    """Issue 6's acceptance test at 1 % noise, where EM has something to correct: at the
    initial hyperparameters the 90 % interval covers nearly every voxel (measured 0.999), EM
    tightens it into [0.8, 0.98] (0.93) and its test log-likelihood beats MC dropout's
    (7.1 against 4.0 nats per voxel)."""
    rows = rows_at_1_percent_noise
    before, after, dropout = rows["laplace"], rows["laplace-em"], rows["mc-dropout"]
    assert 0.8 <= after["coverage_0.9"] <= 0.98, after
    assert after["coverage_0.9"] < before["coverage_0.9"], (before, after)
    assert after["tll_1"] > dropout["tll_1"], (after, dropout)


def test_table_without_uncertainty():
    truth = torch.zeros(16, 16)
    truth[4:12, 4:12] = 1.0
    row = {"case": "c", "method": "fbp", **summary(truth + 0.1, truth), "seconds": 1.0}
    table = markdown_table([row])
    assert "| c | fbp | 20.00 |" in table and "–" in table and "| 0.1 | 1 |" in table


def test_case_scan_is_simulate_scan():
    case = TINY.cases[0]
    assert case.name == "2d32-shepp-logan-sparse30-5%" and case.shape == (32, 32)
    scan = case.scan()
    reference = simulate_scan(
        "shepp-logan", dim=2, size=32, geometry="parallel", angles=30, arc=np.pi, noise=0.05
    )
    np.testing.assert_array_equal(scan.sinogram, reference.sinogram)
    np.testing.assert_array_equal(scan.truth, reference.truth)
    assert scan.sinogram.shape == (30, 48) and scan.volume.shape == (32, 32)
    assert scan.truth.max() == pytest.approx(SCAN_ATTENUATION)


def test_cases_are_validated_and_suites_are_fixed():
    with pytest.raises(ValueError, match="a 2D case takes geometry parallel or fan, got 'cone'"):
        Case("bad", 2, 32, 10, 180, 0.01, geometry="cone")
    with pytest.raises(ValueError, match="size must be an integer >= 16, got 8"):
        Case("bad", 2, 8, 10, 180, 0.01)
    with pytest.raises(ValueError, match="dim must be 2 or 3, got 4"):
        Case("bad", 4, 32, 10, 180, 0.01)
    with pytest.raises(ValueError, match="unknown suite 'huge'"):
        run_suite("huge", "unused")
    small = SUITES["small"].cases
    assert [c.name for c in small] == [
        "2d32-shepp-logan-sparse30-1%",
        "2d32-shepp-logan-sparse30-5%",
        "2d32-shepp-logan-limited30-1%",
        "2d32-shepp-logan-limited30-5%",
        "2d48-ellipses-sparse40-5%",
        "2d48-ellipses-limited40-5%",
        "3d16-shepp-logan-sparse16-5%",
        "3d16-shepp-logan-limited16-5%",
    ]
    assert {c.dim for c in small} == {2, 3}
    assert {c.geometry for c in small if c.dim == 3} == {"cone"}
    assert {c.noise for c in small} == {0.01, 0.05}
    assert {c.arc for c in small} >= {90, 180}


def test_defaults_suite_runs_the_command_defaults_and_each_case_its_width(monkeypatch):
    import dip_uq.evaluate as evaluate

    suite = SUITES["defaults"]
    assert suite.settings == Settings()
    cases = suite.cases
    assert {c.geometry for c in cases} == {"parallel", "fan", "cone"}
    assert {c.dim for c in cases} == {2, 3} and {c.channels for c in cases} == {16, None, 64}
    assert {c.noise for c in cases} == {0.01, 0.02, 0.03, 0.05}
    assert {c.arc for c in cases} == {60, 90, 100, 120, 150, 180, 360}
    # limited arcs in 2D and 3D, the tilt series (parallel beam about one axis) among them
    assert {(c.dim, c.geometry) for c in cases if c.arc < 180} == {
        (2, "parallel"),
        (2, "fan"),
        (3, "parallel"),
        (3, "cone"),
    }
    assert {c.size for c in cases if c.dim == 2} == {32, 48, 64, 96, 128}
    tuned = {c.seed for name in ("small", "full") for c in SUITES[name].cases}
    assert not {c.seed for c in cases} & tuned

    class Stop(Exception):
        pass

    def fit_dip(A, y, settings, *args, **kwargs):
        raise Stop(settings)

    monkeypatch.setattr(evaluate.pipeline.stages, "fit_dip", fit_dip)
    for channels, expected in ((8, 8), (None, Settings().channels)):
        case = Case("w", 2, 16, 8, 180, 0.05, seed=3, channels=channels)
        with pytest.raises(Stop) as stopped:
            evaluate.evaluate_case(case, Settings(), methods=["laplace"])
        assert stopped.value.args[0].channels == expected and stopped.value.args[0].seed == 3


def test_resume_keeps_the_finished_cases_and_runs_the_rest(tmp_path, monkeypatch):
    import dip_uq.evaluate as evaluate

    cases = tuple(Case(f"c{i}", 2, 16, 8, 180, 0.05, seed=i) for i in range(2))
    suite = Suite("two", cases, TINY.settings)
    first = run_suite(suite, tmp_path, methods=["fbp"], cases=["c0"])
    ran = []
    real = evaluate.evaluate_case

    def record(case, *args, **kwargs):
        ran.append(case.name)
        return real(case, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_case", record)
    rows = run_suite(suite, tmp_path, methods=["fbp"], resume=True)
    assert ran == ["c1"]  # c0 came from results.csv
    assert [r["case"] for r in rows] == ["c0", "c1"]
    assert rows[0]["psnr"] == pytest.approx(first[0]["psnr"], rel=1e-12)
    assert math.isnan(rows[0]["tll_1"])
    with open(tmp_path / "results.csv") as handle:
        assert [r["case"] for r in csv.DictReader(handle)] == ["c0", "c1"]

    def stop(case, *args, **kwargs):
        raise RuntimeError(f"ran {case.name}")

    monkeypatch.setattr(evaluate, "evaluate_case", stop)
    with pytest.raises(RuntimeError, match="ran c0"):  # its laplace row is missing: run again
        run_suite(suite, tmp_path, methods=["fbp", "laplace"], resume=True)


def test_held_out_projections_are_scored_for_every_method_with_samples(tmp_path):
    from dataclasses import replace

    case = Case("c", 2, 16, 12, 180, 0.05, seed=1)
    settings = replace(
        TINY.settings, channels=4, iterations=40, samples=4, em_steps=1, em_samples=4, holdout=3
    )
    methods = [*SUITE_METHODS, "laplace-holdout"]
    rows = run_suite(Suite("held", (case,), settings), tmp_path, methods=methods)
    by_method = {row["method"]: row for row in rows}
    assert math.isnan(by_method["fbp"]["holdout_tll"])
    for method in ("laplace", "laplace-em", "laplace-holdout", "mc-dropout", "sgld"):
        row = by_method[method]
        assert 0 <= row["holdout_coverage_0.5"] <= row["holdout_coverage_0.9"] <= 1, row
        assert math.isfinite(row["holdout_tll"]) and row["noise_variance"] > 0
    assert "held-out cov 90%" in (tmp_path / "results.md").read_text()
