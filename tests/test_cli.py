"""The dip-uq command line: the demo's outputs and its refusal to overwrite."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from dip_uq.cli import main
from dip_uq.projector.astra_backend import astra_importable

# tiny settings that run the whole pipeline in seconds
FAST = ["--iterations", "40", "--channels", "8", "--samples", "4", "--em-steps", "1"]
FAST += ["--cg-iterations", "10", "--device", "cpu", "--quiet"]


def test_demo_runs_the_pipeline_scores_it_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--size", "24", "--angles", "12", *FAST]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "FBP PSNR" in printed and "DIP PSNR" in printed and "90% interval covers" in printed
    assert "chosen by 2 projections (one in 5) a second fit left out" in printed
    with h5py.File(out / "reconstruction.h5") as f:
        mean, std, truth = f["mean"][()], f["std"][()], f["truth"][()]
        assert mean.shape == std.shape == truth.shape == (24, 24) and std.dtype == np.float32
        assert json.loads(f.attrs["geometry"])["type"] == "parallel"
    assert np.isfinite(std).all() and (std > 0).all()
    run = json.loads((out / "run.json").read_text())
    assert run["scores"]["psnr_fbp_db"] > 12 and 0 <= run["scores"]["coverage_90"] <= 1
    assert {"fbp_s", "dip_s", "uncertainty_s", "total_s"} <= set(run["timings"])
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.part"))  # no temporary files left behind
    assert not (out / "samples").exists() and not (out / "em-checkpoint.pt").exists()

    before = (out / "run.json").read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dip-uq: error:") and "--overwrite" in err and err.count("\n") == 1
    assert (out / "run.json").read_bytes() == before


def test_the_library_call_is_what_the_demo_runs(tmp_path):
    """du.reconstruct on the demo's scan with the demo's options gives its mean and std, and
    Result.save writes the files the command writes."""
    import dip_uq as du

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "16", "--angles", "10", *FAST]) == 0
    scan = du.simulate_scan("shepp-logan", dim=2, size=16, angles=10, noise=0.02, seed=0)
    options = {"iterations": 40, "channels": 8, "samples": 4, "em_steps": 1, "cg_iterations": 10}
    result = du.reconstruct(scan, **options)
    with h5py.File(out / "reconstruction.h5") as f:
        np.testing.assert_allclose(result.mean, f["mean"][()], rtol=1e-6, atol=0)
        np.testing.assert_allclose(result.std, f["std"][()], rtol=1e-6, atol=0)
    written = result.save(tmp_path / "python")
    assert sorted(p.name for p in written) == sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        result.save(tmp_path / "python")


def test_a_limited_arcs_cross_validation_holds_out_its_ends_too(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--size", "24", "--angles", "12", "--arc", "90"]
    assert main([*args, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "2 projections (half at the arc's ends, half inside) a second fit left out" in printed
    search = json.loads((out / "run.json").read_text())["hyperparameters"]["prior_scale_search"]
    assert (search["held_out"], search["projections"]) == ("ends and inside", 2)


def test_simulate_writes_a_scan_that_reconstruct_scores_against_its_truth(tmp_path, capsys):
    scan = tmp_path / "scan.h5"
    args = ["simulate", "--phantom", "ellipses", "--size", "24", "--geometry", "fan"]
    assert (
        main([*args, "--angles", "16", "--arc", "360", "--noise", "0.01", "--out", str(scan)]) == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert main(["simulate", "--out", str(scan)]) == 2  # exists: refused
    assert "--overwrite" in capsys.readouterr().err
    out = tmp_path / "fbp"
    assert main(["reconstruct", str(scan), "--method", "fbp", "--out", str(out), "--quiet"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["scores"]["psnr_fbp_db"] > 15 and "coverage_90" not in run["scores"]
    assert not (out / "std.tif").exists()


def test_config_file_sets_defaults_and_the_command_line_wins(tmp_path):
    from dip_uq.cli_parser import parse as _parse

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"em-steps": 7, "samples": 3, "channels": 16}))
    args = _parse(["reconstruct", "scan.h5", "--config", str(config), "--samples", "5"])
    assert (args.em_steps, args.samples, args.channels) == (7, 5, 16)
    toml = tmp_path / "run.toml"
    toml.write_text("cg-iterations = 12\n")
    assert _parse(["demo", "--config", str(toml)]).cg_iterations == 12


def test_solver_and_em_options_reach_the_settings():
    from dip_uq.cli import _settings
    from dip_uq.cli_parser import parse as _parse

    default = _settings(_parse(["reconstruct", "scan.h5"]))
    assert (default.preconditioner_rank, default.per_block) == (None, False)
    args = _parse(["reconstruct", "scan.h5", "--preconditioner-rank", "0", "--per-block"])
    assert (_settings(args).preconditioner_rank, _settings(args).per_block) == (0, True)


def test_bad_config_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"emsteps": 7}))
    assert main(["demo", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) emsteps" in err and err.count("\n") == 1
    assert main(["demo", "--config", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


class _Interrupt:
    """Wraps ``owner.name`` so that its ``after``-th call (counting from 1) returns and then
    raises KeyboardInterrupt, as a Ctrl-C right after a checkpoint was written would."""

    def __init__(self, monkeypatch, owner, name, after):
        self.calls, self.after = 0, after
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            self.calls += 1
            if self.calls == self.after:
                raise KeyboardInterrupt
            return result

        monkeypatch.setattr(owner, name, wrapped)


@pytest.mark.slow
def test_interrupted_runs_resume_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    from dip_uq import DIP
    from dip_uq.laplace import moments as laplace_moments

    scan = tmp_path / "scan.h5"
    assert main(["simulate", "--size", "16", "--angles", "12", "--out", str(scan)]) == 0
    common = ["reconstruct", str(scan), "--iterations", "250", "--channels", "8"]
    common += ["--samples", "4", "--batch", "2", "--em-steps", "2", "--cg-iterations", "10"]
    common += ["--device", "cpu", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "ref")]) == 0

    out = ["--out", str(tmp_path / "run")]
    # Ctrl-C during the second DIP (of the cross-validation), after the first's three saves
    with monkeypatch.context() as m:
        _Interrupt(m, DIP, "_save", after=4)
        assert main([*common, *out]) == 130
    assert (tmp_path / "run" / "cross-validation" / "dip-checkpoint.pt").exists()
    assert (tmp_path / "run" / "em-checkpoint.pt").exists()
    assert main([*common, *out]) == 2  # checkpoints: neither silently resumed nor replaced
    assert "--resume" in capsys.readouterr().err
    with monkeypatch.context() as m:  # resumed, then Ctrl-C after the first batch of samples
        _Interrupt(m, laplace_moments, "_save_batch", after=1)
        assert main([*common, *out, "--resume"]) == 130
    assert len(list((tmp_path / "run" / "samples").glob("*.pt"))) == 1
    assert main([*common, *out, "--resume"]) == 0

    with h5py.File(tmp_path / "ref" / "reconstruction.h5") as ref:
        with h5py.File(tmp_path / "run" / "reconstruction.h5") as run:
            for name in ("mean", "std"):
                np.testing.assert_allclose(run[name][()], ref[name][()], rtol=1e-6, atol=0)
    assert not (tmp_path / "run" / "dip-checkpoint.pt").exists()
    assert not (tmp_path / "run" / "cross-validation").exists()


def test_missing_cuda_is_a_one_line_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["demo", "--out", str(tmp_path), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_info_describes_a_real_scan_and_reports_a_missing_file(capsys):
    data = Path(__file__).resolve().parents[1] / "data"
    assert main(["info", str(data / "aps_tooth.h5")]) == 0
    out = capsys.readouterr().out
    assert "181" in out and "640" in out
    assert main(["info", str(data / "no-such-scan.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dip-uq: error:") and err.count("\n") == 1


def test_reconstruct_a_real_scan_with_dip_and_laplace(tmp_path):
    import tifffile

    data = Path(__file__).resolve().parents[1] / "data"
    out = tmp_path / "tooth"
    args = ["reconstruct", str(data / "aps_tooth.h5"), "--rows", "0", "--center-offset", "auto"]
    args += ["--bin", "8", "--size", "32", "--out", str(out), *FAST]
    assert main(args) == 0
    with h5py.File(out / "reconstruction.h5") as f:
        mean, std = f["mean"][()], f["std"][()]
        assert "truth" not in f
    assert mean.shape == std.shape == (32, 32)
    assert np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()
    np.testing.assert_array_equal(tifffile.imread(out / "std.tif"), std)
    run = json.loads((out / "run.json").read_text())
    assert run["hyperparameters"]["noise_variance"] > 0 and "dip_s" in run["timings"]
    assert run["versions"]["dip_uq"] and run["seeds"]["network_and_samples"] == 0
    # "auto" resolved: ASTRA's CPU pair for this 2D parallel-beam slice where it imports
    assert run["projector_backend"] == ("astra" if astra_importable() else "torch")
    assert (out / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize("uq", ["mcdropout", "sgld"])
def test_reconstruct_with_a_baseline_uncertainty(tmp_path, uq):
    """Also a U-Net with the scales given (``--scales``) instead of the default."""
    scan = tmp_path / "scan.h5"
    assert main(["simulate", "--size", "16", "--angles", "12", "--out", str(scan)]) == 0
    out = tmp_path / uq
    args = ["reconstruct", str(scan), "--uq", uq, "--scales", "2", "--out", str(out), *FAST]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["scores"]["coverage_90"] >= 0 and "dip_and_uncertainty_s" in run["timings"]
    assert run["settings"]["scales"] == 2
    with h5py.File(out / "reconstruction.h5") as f:
        assert (f["std"][()] > 0).all()


@pytest.mark.slow
def test_torchrun_with_two_processes_matches_one_process(tmp_path):
    """`torchrun -m dip_uq reconstruct`: the samples are shared out over 2 gloo processes,
    only rank 0 writes, and the std map is the single-process one without a `--batch` (each
    rank solves its 2 samples together, the single process all 4), within the solver's
    tolerance (1e-3; it used to differ by up to 40 % on a 32² scan). One thread each, as
    torchrun gives every process of several: another number of threads rounds the DIP fit
    and the products differently."""
    import os
    import subprocess
    import sys

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    scan = tmp_path / "scan.h5"
    assert main(["simulate", "--size", "16", "--angles", "12", "--out", str(scan)]) == 0
    common = [str(scan), *FAST, "--em-steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    for n, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        command = [*launch, f"--nproc-per-node={n}", "-m", "dip_uq", "reconstruct"]
        done = subprocess.run(
            [*command, *common, "--out", str(out)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("wrote") == 1  # rank 0 alone reports and writes
    runs = [json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two")]
    assert [r["processes"] for r in runs] == [1, 2]
    assert runs[1]["hyperparameters"]["history"] == runs[0]["hyperparameters"]["history"]
    with h5py.File(tmp_path / "one" / "reconstruction.h5") as one:
        with h5py.File(tmp_path / "two" / "reconstruction.h5") as two:
            np.testing.assert_array_equal(two["mean"][()], one["mean"][()])
            np.testing.assert_allclose(two["std"][()], one["std"][()], rtol=1e-3, atol=0)
    assert not list((tmp_path / "two").glob(".*"))  # no temporary or stray files


def test_evaluate_writes_the_table_refuses_to_overwrite_and_resumes(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--methods", "fbp", "--cases", "2d32-shepp-logan-sparse30-5%"]
    args += ["--out", str(out), "--quiet"]
    assert main(args) == 0
    # the scan is simulated with the "auto" backend: ASTRA's CPU pair where it imports
    psnr = "16.40" if astra_importable() else "16.35"
    assert f"| 2d32-shepp-logan-sparse30-5% | fbp | {psnr} |" in capsys.readouterr().out
    before = (out / "results.csv").read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert main([*args, "--resume"]) == 0
    assert f"| fbp | {psnr} |" in capsys.readouterr().out
    assert (out / "results.csv").read_bytes() == before
    assert main([*args, "--overwrite", "--cases", "nope"]) == 2  # a case the suite lacks
    assert "suite 'small' has no cases ['nope']" in capsys.readouterr().err


def test_a_warning_names_the_commands_option():
    """The library names the keyword of dip_uq.reconstruct; the command its own flag, in one
    line, and only while it runs."""
    import warnings

    from dip_uq.cli import _warning_line
    from dip_uq.diagnostics import NotConvergedWarning

    warning = NotConvergedWarning("samples did not converge", "cg_iterations")
    assert str(warning) == "samples did not converge: raise cg_iterations"
    assert _warning_line(warning) == "samples did not converge: raise --cg-iterations"
    assert _warning_line(NotConvergedWarning("round-off stopped it")) == "round-off stopped it"
    before = warnings.showwarning
    assert main(["info", "no-such-scan.h5"]) == 2
    assert warnings.showwarning is before


def test_em_options_reach_the_settings():
    from dip_uq.cli import _settings
    from dip_uq.cli_parser import parse as _parse

    default = _settings(_parse(["reconstruct", "scan.h5"]))
    assert (default.em_steps, default.em_samples, default.fit_noise, default.fit_prior) == (
        2,
        8,
        True,
        False,
    )
    assert default.gprior
    args = ["reconstruct", "scan.h5", "--no-fit-noise", "--fit-prior", "--em-samples", "4"]
    args += ["--prior-scale", "weights"]
    given = _settings(_parse([*args, "--no-gprior"]))
    assert (given.fit_noise, given.fit_prior, given.em_samples, given.gprior) == (
        False,
        True,
        4,
        False,
    )
