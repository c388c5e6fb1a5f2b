"""Tests of dip_uq.io.geometry_files: ASTRA vector files (3D cone, 2D parallel mirrored in y)
round-trip dip-uq's geometries, and files that are not a usable geometry are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from io_helpers import ball_sinogram, parallel_2d

from dip_uq.geometry import VectorGeometry, Volume
from dip_uq.io import load_geometry, read_scan


def test_npy_with_astra_vector_files(tmp_path, cone_scan):
    g, sino = cone_scan
    np.save(tmp_path / "sino.npy", sino)
    np.savetxt(tmp_path / "cone.vec", g.vectors)  # ASTRA cone_vec, one line per projection
    scan = read_scan(tmp_path / "sino.npy", geometry=tmp_path / "cone.vec")
    assert isinstance(scan.geometry, VectorGeometry) and scan.geometry.kind == "cone"
    assert scan.geometry == g.to_vector_geometry()
    assert any("cone_vec, inferred" in n for n in scan.notes)
    np.testing.assert_array_equal(scan.sinogram, sino)
    np.testing.assert_allclose(scan.angles_deg, np.rad2deg(g.angles), atol=1e-9)

    # 2D: ASTRA's parallel_vec vectors are mirrored in y; the file round-trips our geometry
    g2 = parallel_2d(offset=2.0)
    np.save(tmp_path / "sino2.npy", ball_sinogram(g2))
    np.savetxt(tmp_path / "par.txt", g2.to_astra()["Vectors"], header="ray d u")
    scan2 = read_scan(tmp_path / "sino2.npy", geometry=tmp_path / "par.txt")
    assert scan2.geometry.kind == "parallel" and scan2.geometry == g2.to_vector_geometry()


def test_geometry_files_that_do_not_fit(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((59, 64), np.float32))
    np.savetxt(tmp_path / "bad.vec", np.zeros((60, 9)))
    with pytest.raises(ValueError, match="9 columns; an ASTRA vector file has 12"):
        read_scan(tmp_path / "s.npy", geometry=tmp_path / "bad.vec")
    (tmp_path / "vol.json").write_text(json.dumps(Volume((4, 4)).to_dict()))
    with pytest.raises(ValueError, match="describes a volume"):
        load_geometry(tmp_path / "vol.json")
