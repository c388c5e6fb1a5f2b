"""Tests of dip_uq.io.nxtomo: write_nxtomo and read_scan round-trip dip-uq's own files exactly
(2D with truth, cone beam, vector geometry), with the NXtomo fields other readers look for."""

from __future__ import annotations

import h5py
import numpy as np
import torch
from io_helpers import ball_image, ball_sinogram, parallel_2d

from dip_uq.geometry import Volume
from dip_uq.io import read_scan, write_nxtomo
from dip_uq.scan import Scan, default_volume


def test_write_nxtomo_round_trip_2d_with_truth(tmp_path):
    g = parallel_2d(offset=1.5)
    volume = Volume((48, 48), 1.0)
    truth = ball_image(volume)
    scan = Scan(ball_sinogram(g), g, notes=["simulated"])
    write_nxtomo(tmp_path / "sim.nx", scan, truth=torch.from_numpy(truth), volume=volume)
    back = read_scan(tmp_path / "sim.nx")
    assert back.source_format == "nxtomo" and back.geometry == g
    np.testing.assert_array_equal(back.sinogram, scan.sinogram)
    np.testing.assert_array_equal(back.truth, truth)
    assert back.volume == volume and default_volume(back) == volume
    np.testing.assert_allclose(back.angles_deg, scan.angles_deg)
    assert back.notes[0] == "simulated"
    with h5py.File(tmp_path / "sim.nx") as f:  # the NXtomo fields other readers look for
        assert f["entry/definition"][()] == b"NXtomo"
        assert f["entry/instrument/detector/data"].shape == (60, 1, 64)
        assert f["entry/instrument/detector/image_key"][()].tolist() == [0] * 60
        assert f["entry/sample/rotation_angle"].attrs["units"] == "degree"


def test_write_nxtomo_round_trip_cone_and_vector(tmp_path, cone_scan):
    g, sino = cone_scan
    for geometry in (g, g.to_vector_geometry()):
        scan = Scan(sino, geometry, distances={"source_origin": 60.0, "origin_detector": 30.0})
        write_nxtomo(tmp_path / "c.nx", scan)
        back = read_scan(tmp_path / "c.nx")
        assert type(back.geometry) is type(geometry) and back.geometry == geometry
        np.testing.assert_array_equal(back.sinogram, sino)
        assert back.distances == scan.distances and back.truth is None
        assert read_scan(tmp_path / "c.nx", rows=(1, 3)).sinogram.shape == (24, 2, 40)
