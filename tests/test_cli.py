"""The dip-uq command line: the demo's outputs and its refusal to overwrite."""

import json

import h5py
import numpy as np
import pytest

from dip_uq.cli import main


def test_demo_writes_outputs_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "32", "--angles", "20"]) == 0
    assert "FBP PSNR" in capsys.readouterr().out
    with h5py.File(out / "reconstruction.h5") as f:
        fbp, truth = f["fbp"][()], f["truth"][()]
        assert fbp.shape == truth.shape == (32, 32) and fbp.dtype == np.float32
        assert json.loads(f.attrs["geometry"])["type"] == "parallel"
    run = json.loads((out / "run.json").read_text())
    assert run["scores"]["psnr_fbp_db"] > 15
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.part"))  # no temporary files left behind

    before = (out / "run.json").read_bytes()
    assert main(["demo", "--out", str(out), "--size", "32", "--angles", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dip-uq: error:") and "--overwrite" in err and err.count("\n") == 1
    assert (out / "run.json").read_bytes() == before


def test_missing_cuda_is_a_one_line_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["demo", "--out", str(tmp_path), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_info_describes_a_real_scan_and_reports_a_missing_file(capsys):
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data"
    assert main(["info", str(data / "aps_tooth.h5")]) == 0
    out = capsys.readouterr().out
    assert "181" in out and "640" in out
    assert main(["info", str(data / "no-such-scan.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dip-uq: error:") and err.count("\n") == 1


def test_reconstruct_with_dip_and_laplace_writes_mean_std_and_report(tmp_path, capsys):
    import tifffile
    import torch

    import dip_uq as du
    from dip_uq import io

    volume = du.Volume((32, 32))
    geometry = du.ParallelBeam(np.linspace(0, np.pi, 20, endpoint=False), (48,))
    truth = du.phantoms.shepp_logan(volume.shape)
    y = du.simulate(du.RayTransform(volume, geometry, "torch"), truth, noise=0.03)
    path = tmp_path / "scan.nxs"
    io.write_nxtomo(path, io.Scan(y.numpy(), geometry), truth=truth.numpy(), volume=volume)
    out = tmp_path / "out"
    args = ["reconstruct", str(path), "--out", str(out), "--iterations", "30", "--samples", "4"]
    args += ["--em-steps", "1", "--cg-iterations", "10", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    with h5py.File(out / "reconstruction.h5") as f:
        mean, std = f["mean"][()], f["std"][()]
    assert mean.shape == std.shape == (32, 32)
    assert np.isfinite(std).all() and (std > 0).all()
    np.testing.assert_array_equal(tifffile.imread(out / "std.tif"), std)
    run = json.loads((out / "run.json").read_text())
    assert run["hyperparameters"]["noise_variance"] > 0 and "dip_s" in run["timings"]
    assert (out / "report.png").stat().st_size > 10_000
    assert torch.isfinite(torch.as_tensor(mean)).all()
