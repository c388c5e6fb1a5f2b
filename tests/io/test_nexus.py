"""Tests of dip_uq.io.nexus: the Diamond k11 file in data/ (external links, NXdata angle axes)
and a third-party NXtomo file of raw counts with flats and darks by image_key."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from io_helpers import DATA, K11, ball_sinogram

from dip_uq.geometry import ParallelBeam
from dip_uq.io import detect_format, read_scan


def test_diamond_k11_nexus_with_external_links():
    scan = read_scan(K11)
    assert detect_format(K11) == "nxtomo" and scan.source_format == "diamond-nexus"
    assert scan.sinogram.shape == (3001, 22, 26)
    assert scan.n_flats == 100 and scan.n_darks == 100
    assert isinstance(scan.geometry, ParallelBeam)
    assert 89.9 < scan.angles_deg[0] < 90.1 and 269.9 < scan.angles_deg[-1] < 270.1
    assert np.isfinite(scan.sinogram).all() and abs(scan.sinogram.mean()) < 0.5
    text = " ".join(scan.notes)
    assert "/entry/instrument/imaging/data" in text and "skipped /entry/instrument/EtherCAT" in text
    assert "gts_theta_value" in text


def test_diamond_external_links_work_from_a_copy(tmp_path, monkeypatch):
    shutil.copytree(DATA / "diamond_k11", tmp_path / "k11")
    monkeypatch.chdir(tmp_path.parent)  # links resolve next to the .nxs, not from the cwd
    scan = read_scan(tmp_path / "k11" / "k11-18014.nxs", rows=(3, 5))
    assert scan.sinogram.shape == (3001, 2, 26)
    np.testing.assert_allclose(scan.sinogram, read_scan(K11).sinogram[:, 3:5], rtol=1e-6)


def test_nxtomo_intensities_with_image_key(tmp_path):
    """A third-party NXtomo file: raw counts, flats/darks by image_key, angles in radians."""
    g = ParallelBeam(np.linspace(0, np.pi, 30, endpoint=False), (3, 64), (0.5, 0.75))
    sino = ball_sinogram(g)
    counts = 10 + 5000 * np.exp(-sino)
    frames = np.concatenate([np.full((4, 3, 64), 5010.0), np.full((2, 3, 64), 10.0), counts])
    keys = np.array([1] * 4 + [2] * 2 + [0] * 30)
    with h5py.File(tmp_path / "raw.nx", "w") as f:
        entry = f.create_group("entry0000")
        entry.attrs["NX_class"] = "NXentry"
        det = entry.create_group("instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        det["data"] = frames.astype(np.float32)
        det["image_key"] = keys
        det["x_pixel_size"] = 750.0
        det["x_pixel_size"].attrs["units"] = "um"
        det["y_pixel_size"] = 0.5e-3
        det["y_pixel_size"].attrs["units"] = "m"
        angles = np.concatenate([np.zeros(6), g.angles])
        entry["sample/rotation_angle"] = angles
        entry["sample/rotation_angle"].attrs["units"] = "rad"
    scan = read_scan(tmp_path / "raw.nx")
    assert scan.source_format == "nxtomo" and scan.n_flats == 4 and scan.n_darks == 2
    assert scan.geometry == g and scan.units == "mm" and scan.pixel_size == (0.5, 0.75)
    np.testing.assert_allclose(scan.sinogram, sino, atol=1e-4)


def test_a_2d_sinogram_with_an_unsorted_angle_axis(tmp_path, capsys):
    """A synchrotron NeXus file holding one sinogram: an NXdata whose signal is (angles,
    detector), with a shuffled rotation-angle axis and a detector axis in µm."""
    from io_helpers import one_line, parallel_2d

    from dip_uq.cli import main

    g = parallel_2d(90, 64)  # 0..178°, pitch 0.75 mm
    sino = ball_sinogram(g)
    order = np.random.default_rng(1).permutation(90)
    with h5py.File(tmp_path / "sino.nxs", "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("sinogram")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        data.attrs["axes"] = ["rotation_angle", "x"]
        data["data"] = np.exp(-sino[order]).astype(np.float32)  # normalised transmissions
        data["rotation_angle"] = np.rad2deg(g.angles[order])
        data["rotation_angle"].attrs["units"] = "degrees"
        data["x"] = 750.0 * (np.arange(64) - 31.5)
        data["x"].attrs["units"] = "um"
    scan = read_scan(tmp_path / "sino.nxs")
    assert scan.ndim == 2 and scan.sinogram.shape == (90, 64)
    assert scan.geometry == g and scan.units == "mm" and scan.pixel_size == (0.75,)
    np.testing.assert_allclose(scan.angles_deg, np.rad2deg(g.angles))
    np.testing.assert_allclose(scan.sinogram, sino, atol=1e-4)
    text = " ".join(scan.notes)
    assert "not in ascending order: 90 projections sorted" in text and "2D sinogram" in text
    assert main(["info", str(tmp_path / "sino.nxs")]) == 0
    assert "(90, 64) (angles, cols)" in capsys.readouterr().out

    with h5py.File(tmp_path / "sino.nxs", "a") as f:  # (detector, angles), raw counts
        group = f["entry/sinogram"]
        del group["data"]
        group["data"] = np.round(3e4 * np.exp(-sino[order])).T.astype(np.uint16)
        group.attrs["axes"] = ["x", "rotation_angle"]
    assert main(["info", str(tmp_path / "sino.nxs")]) == 0
    out = capsys.readouterr().out
    assert "(detector, angles): transposed" in out and "missing    the frames hold raw" in out
    with pytest.raises(ValueError, match=r"no flat fields \(image_key 1\).*--log") as error:
        read_scan(tmp_path / "sino.nxs")
    one_line(error)
    scan = read_scan(tmp_path / "sino.nxs", log=True)
    np.testing.assert_allclose(scan.sinogram, sino, atol=2e-3)
