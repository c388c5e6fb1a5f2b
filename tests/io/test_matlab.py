"""Tests of dip_uq.io.matlab: the HTC2022 struct in data/ (v5), the same struct written as
MATLAB v7.3 (HDF5, transposed), and a generic .mat array that needs a geometry."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from io_helpers import HTC, ball_sinogram, parallel_2d

from dip_uq.geometry import FanBeam
from dip_uq.io import detect_format, read_scan
from dip_uq.scan import default_volume


def test_htc2022_mat_v5_fan_beam():
    scan = read_scan(HTC)
    assert detect_format(HTC) == "mat" and scan.source_format == "htc2022-mat"
    assert scan.sinogram.shape == (61, 560) and scan.n_flats == scan.n_darks == 0
    g = scan.geometry
    assert isinstance(g, FanBeam) and g.det_shape == (560,) and g.det_spacing == (0.2,)
    assert g.src_origin == pytest.approx(410.66) and g.origin_det == pytest.approx(143.08)
    assert g.magnification == pytest.approx(1.348415, rel=1e-5)
    assert scan.angles_deg[0] == 269 and scan.angles_deg[-1] == 299
    assert np.allclose(np.diff(scan.angles_deg), 0.5)
    assert np.isfinite(scan.sinogram).all()
    assert (scan.sinogram > 0).mean() > 0.95 and scan.sinogram.mean() > 1.0  # the disc
    # field of view: the detector width over the magnification, in 0.1483 mm pixels
    volume = default_volume(scan)
    assert volume.voxel_size[0] == pytest.approx(0.148322, rel=1e-4)
    assert 550 <= volume.shape[0] <= 562


def _write_mat73(path: Path, variables: dict) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: a 512-byte text header, HDF5 after it, arrays
    stored transposed, structs as groups, strings as uint16 char arrays."""

    def put(group, name, value):
        if isinstance(value, dict):
            sub = group.create_group(name)
            sub.attrs["MATLAB_class"] = np.bytes_("struct")
            for k, v in value.items():
                put(sub, k, v)
        elif isinstance(value, str):
            ds = group.create_dataset(name, data=np.array([[ord(c) for c in value]], np.uint16).T)
            ds.attrs["MATLAB_class"] = np.bytes_("char")
        else:
            ds = group.create_dataset(name, data=np.atleast_2d(np.asarray(value, np.float64)).T)
            ds.attrs["MATLAB_class"] = np.bytes_("double")

    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in variables.items():
            put(f, k, v)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


def test_mat_v73_htc_struct_matches_v5(tmp_path):
    v5 = read_scan(HTC)
    raw = scipy.io.loadmat(HTC, simplify_cells=True)["CtDataLimited"]
    params = {
        k: v
        for k, v in raw["parameters"].items()
        if not isinstance(v, np.ndarray) or v.dtype.kind in "fiu"
    }
    params["angles"] = np.atleast_2d(raw["parameters"]["angles"])  # a 1 x 61 row vector
    params["distanceUnit"] = "mm"
    path = tmp_path / "htc_v73.mat"
    _write_mat73(
        path, {"CtDataLimited": {"type": "ta", "sinogram": raw["sinogram"], "parameters": params}}
    )
    with h5py.File(path) as f:  # really transposed on disk
        assert f["CtDataLimited/sinogram"].shape == (560, 61)
    v73 = read_scan(path)
    assert "v7.3" in v73.notes[0] and v73.source_format == "htc2022-mat"
    np.testing.assert_array_equal(v73.sinogram, v5.sinogram)
    assert v73.geometry == v5.geometry
    np.testing.assert_array_equal(v73.angles_deg, v5.angles_deg)


def test_mat_generic_array_needs_geometry(tmp_path):
    g = parallel_2d()
    sino = ball_sinogram(g)
    scipy.io.savemat(tmp_path / "s.mat", {"sinogram": sino.astype(np.float64)})
    with pytest.raises(ValueError, match="needs a geometry; pass --geometry"):
        read_scan(tmp_path / "s.mat")
    (tmp_path / "g.json").write_text(json.dumps(g.to_dict()))
    scan = read_scan(tmp_path / "s.mat", geometry=tmp_path / "g.json")
    np.testing.assert_allclose(scan.sinogram, sino)
    assert scan.geometry == g
