"""Sinograms without a geometry JSON: angles given as a range or a file (dip_uq.io.angles), the
beam kind and distances as options (dip_uq.io.acquisition), .mat files with transposed
sinograms under other names, single-page TIFF and NumPy sinograms, and what ``info`` says."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
import torch
from io_helpers import BALLS, TOOTH, ball_sinogram, one_line

from dip_uq.cli import main
from dip_uq.geometry import FanBeam, ParallelBeam
from dip_uq.io import read_scan
from dip_uq.io.angles import read_angles
from dip_uq.projector import RayTransform
from dip_uq.scan import default_volume

DISC = [((7.0, -5.0, 0.0), 5.0, 0.04)]  # an off-centre disc (x, y in mm)


def full_scan(n: int = 90, cols: int = 64) -> tuple[ParallelBeam, np.ndarray]:
    """A 360° parallel scan of the disc, 0.75 mm pixels."""
    g = ParallelBeam(np.linspace(0, 2 * np.pi, n, endpoint=False), (cols,), 0.75)
    return g, ball_sinogram(g, DISC)


def disc_centre(scan) -> tuple[float, float]:
    """(x, y) of the reconstructed disc: the mean position of the voxels above half the max."""
    volume = default_volume(scan)
    image = RayTransform(volume, scan.geometry, backend="torch").fbp(
        torch.as_tensor(scan.sinogram), filter="hann"
    )
    image = image.numpy()
    y, x = np.meshgrid(*volume.coordinates(), indexing="ij")
    disc = image > image.max() / 2
    return float(x[disc].mean()), float(y[disc].mean())


def test_angle_ranges_files_and_units(tmp_path):
    radians, degrees, note = read_angles("0:180:360deg")
    assert degrees.size == 360 and degrees[1] == 0.5 and degrees[-1] == 179.5
    np.testing.assert_allclose(radians, np.deg2rad(degrees))
    assert "0 up to 180, not included" in note
    radians, _, _ = read_angles("0:3.14159:4rad", unit="deg")  # the suffix wins
    assert radians[1] == pytest.approx(3.14159 / 4)
    (tmp_path / "a.txt").write_text("-60\n-58.5\n0 2\n")
    assert read_angles(tmp_path / "a.txt")[1].tolist() == [-60, -58.5, 0, 2]
    np.save(tmp_path / "a.npy", np.array([0.0, 0.5]))
    assert read_angles(str(tmp_path / "a.npy"), unit="rad")[0].tolist() == [0.0, 0.5]
    for bad, match in (
        ("0:180", "no such angle file"),
        ("0:180:0deg", "COUNT at least 1"),
        ("0:180:10grad", "unknown angle unit 'grad'"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=match) as error:
            read_angles(bad)
        one_line(error)
    (tmp_path / "b.txt").write_text("1\nnan\n")
    with pytest.raises(ValueError, match="NaN/Inf"):
        read_angles(tmp_path / "b.txt")
    with pytest.raises(ValueError, match=r"gives 2 angles but scan\.tif holds 3 projections"):
        read_angles(tmp_path / "a.npy", n_expected=3, what="scan.tif")


def test_mat_sinogram_under_another_name_transposed_with_its_angle_vector(tmp_path):
    g, sino = full_scan()
    scipy.io.savemat(
        tmp_path / "scan.mat",
        {"sinoRD": sino.T.astype(np.float64), "anglesRad": g.angles[None], "note": "lab scan"},
    )
    scan = read_scan(tmp_path / "scan.mat", pixel_size=0.75)
    assert scan.geometry == g and scan.units == "mm"
    np.testing.assert_allclose(scan.sinogram, sino, rtol=1e-6)
    text = " | ".join(scan.notes)
    assert "variables: sinoRD float64 (64, 90), anglesRad float64 (90,)" in text
    assert "angles from the variable 'anglesRad' (90), rad (the name says so)" in text
    assert "took 'sinoRD' float64 (64, 90) as the sinogram" in text
    assert "moved to the front, (angles, cols) = (90, 64)" in text
    assert disc_centre(scan) == pytest.approx((7.0, -5.0), abs=0.4)  # half a pixel


def test_mat_choice_by_shape_by_dataset_and_its_errors(tmp_path):
    g, sino = full_scan()
    other = np.zeros((5, 7))
    scipy.io.savemat(tmp_path / "two.mat", {"flat": other, "measured": sino.T})
    # the angles decide: only 'measured' has an axis of 90
    scan = read_scan(tmp_path / "two.mat", angles="0:360:90deg", pixel_size=0.75)
    assert scan.geometry == g
    assert "the only 2D/3D array with an axis of 90 angles" in " ".join(scan.notes)
    scipy.io.savemat(tmp_path / "three.mat", {"a": sino.T, "b": sino.T * 2})
    ambiguous = r"among a \(64, 90\), b \(64, 90\); choose one with --dataset"
    with pytest.raises(ValueError, match=ambiguous) as error:
        read_scan(tmp_path / "three.mat", angles="0:360:90deg")
    one_line(error)
    scan = read_scan(tmp_path / "three.mat", angles="0:360:90deg", dataset="b")
    np.testing.assert_allclose(scan.sinogram, 2 * sino, rtol=1e-6)
    assert scan.units == "px" and "(--dataset)" in " ".join(scan.notes)
    with pytest.raises(ValueError, match=r"no variable 'c'; the file holds a \(64, 90\), b"):
        read_scan(tmp_path / "three.mat", angles="0:360:90deg", dataset="c")
    with pytest.raises(ValueError, match=r"no axis of the \(64, 90\) array has the 45 projections"):
        read_scan(tmp_path / "three.mat", angles="0:360:45deg", dataset="a")


def test_mat_v73_angles_in_degrees_guessed_from_their_range(tmp_path):
    g, sino = full_scan()
    with h5py.File(tmp_path / "scan.mat", "w", userblock_size=512) as f:
        f["projs"] = sino  # HDF5 holds MATLAB's transpose: MATLAB sees (cols, angles)
        f["projs"].attrs["MATLAB_class"] = np.bytes_("double")
        f["theta"] = np.rad2deg(g.angles)[:, None]
        f["theta"].attrs["MATLAB_class"] = np.bytes_("double")
    with open(tmp_path / "scan.mat", "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file")
    scan = read_scan(tmp_path / "scan.mat", pixel_size=0.75)
    assert scan.geometry == g
    assert "deg (guessed: the values do not lie within ±2π)" in " ".join(scan.notes)


def test_a_single_page_tiff_sinogram_of_a_360_degree_scan(tmp_path):
    g, sino = full_scan()
    tifffile.imwrite(tmp_path / "sino.tif", sino)
    scan = read_scan(tmp_path / "sino.tif", angles="0:360:90deg", pixel_size=0.75)
    assert scan.geometry == g and scan.ndim == 2
    np.testing.assert_array_equal(scan.sinogram, sino)
    assert "one TIFF image read as a sinogram" in scan.notes[0]
    assert disc_centre(scan) == pytest.approx((7.0, -5.0), abs=0.4)
    tifffile.imwrite(tmp_path / "sinoT.tif", sino.T)  # detector x angles
    scan = read_scan(tmp_path / "sinoT.tif", angles="0:360:90deg", pixel_size=0.75)
    np.testing.assert_array_equal(scan.sinogram, sino)
    assert "moved to the front" in " ".join(scan.notes)
    with pytest.raises(ValueError, match=r"no axis of the \(90, 64\) array has the 180") as error:
        read_scan(tmp_path / "sino.tif", angles="0:360:180deg")
    one_line(error)


def test_a_npy_fan_beam_sinogram_with_an_angle_file(tmp_path):
    g = FanBeam(np.linspace(0, 2 * np.pi, 60, endpoint=False), (96,), 0.5, 80.0, 40.0)
    sino = ball_sinogram(g, BALLS)
    np.save(tmp_path / "fan.npy", sino)
    np.savetxt(tmp_path / "angles.txt", np.rad2deg(g.angles))
    options = {"angles": tmp_path / "angles.txt", "geometry_kind": "fan", "pixel_size": 0.5}
    scan = read_scan(tmp_path / "fan.npy", source_origin=80, origin_detector=40, **options)
    assert scan.geometry == g and scan.distances == {"source_origin": 80.0, "origin_detector": 40.0}
    with pytest.raises(ValueError, match=r"fan beam needs .*; pass --source-origin") as error:
        read_scan(tmp_path / "fan.npy", origin_detector=40, **options)
    one_line(error)
    with pytest.raises(ValueError, match=r"distances apply to fan and cone beam"):
        read_scan(tmp_path / "fan.npy", angles=tmp_path / "angles.txt", origin_detector=40)
    with pytest.raises(ValueError, match=r"both a geometry and angles"):
        read_scan(tmp_path / "fan.npy", geometry=g.to_dict(), angles=tmp_path / "angles.txt")
    with pytest.raises(ValueError, match=r"geometry kind must be one of parallel, fan, cone"):
        read_scan(tmp_path / "fan.npy", angles=tmp_path / "angles.txt", geometry_kind="helix")


def test_info_reports_each_choice_and_refuses_options_that_do_not_apply(tmp_path, capsys):
    g, sino = full_scan()
    scipy.io.savemat(tmp_path / "scan.mat", {"sinoRD": sino.T, "anglesRad": g.angles})
    assert main(["info", str(tmp_path / "scan.mat"), "--pixel-size", "0.75"]) == 0
    out = capsys.readouterr().out
    assert "took 'sinoRD'" in out and "moved to the front" in out and "anglesRad" in out
    assert "90 from 0° to 356°" in out
    args = [
        "info",
        str(tmp_path / "scan.mat"),
        "--geometry-kind",
        "cone",
        "--angles",
        "0:360:90deg",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cone beam needs the pixel pitch" in err and err.count("\n") == 1
    assert main(["info", str(TOOTH), "--angles", "0:180:181deg"]) == 2
    err = capsys.readouterr().err
    assert "--angles do not apply to dxchange files" in err and err.count("\n") == 1
