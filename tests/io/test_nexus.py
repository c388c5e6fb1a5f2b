"""Tests of dip_uq.io.nexus: the Diamond k11 file in data/ (external links, NXdata angle axes)
and a third-party NXtomo file of raw counts with flats and darks by image_key."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
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
