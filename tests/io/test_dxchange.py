"""Tests of dip_uq.io.dxchange: the APS Data Exchange reader on the tooth scan in data/."""

from __future__ import annotations

import numpy as np
from io_helpers import TOOTH

from dip_uq.geometry import ParallelBeam
from dip_uq.io import detect_format, preprocess, read_scan


def test_aps_tooth_data_exchange():
    scan = read_scan(TOOTH)
    assert detect_format(TOOTH) == "dxchange" and scan.source_format == "aps-dxchange"
    assert scan.sinogram.shape == (181, 2, 640) and scan.sinogram.dtype == np.float32
    assert isinstance(scan.geometry, ParallelBeam) and scan.geometry.det_shape == (2, 640)
    assert scan.n_flats == 10 and scan.n_darks == 10 and scan.units == "px"
    assert scan.angles_deg[0] == 0 and 178.9 < scan.angles_deg[-1] < 179.1
    assert np.allclose(np.rad2deg(scan.geometry.angles), scan.angles_deg)
    sino = scan.sinogram
    assert np.isfinite(sino).all()
    inside = sino[:, :, 270:330]  # the tooth crosses these columns in every projection
    assert (inside > 0).mean() > 0.99 and inside.mean() > 0.5
    assert abs(sino[:, :, :20].mean()) < 0.02 and abs(sino[:, :, -20:].mean()) < 0.02
    assert scan.metadata["sample"] == "Tooth"
    assert any("10 flats and 10 darks" in n for n in scan.notes)


def test_aps_tooth_one_row_is_a_2d_scan():
    full = read_scan(TOOTH)
    row = read_scan(TOOTH, rows=1)
    assert row.sinogram.shape == (181, 640) and row.geometry.ndim == 2
    np.testing.assert_allclose(row.sinogram, full.sinogram[:, 1], rtol=1e-6)
    assert row.geometry == preprocess(full, rows=1).geometry
