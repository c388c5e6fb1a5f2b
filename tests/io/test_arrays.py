"""Tests of dip_uq.io.arrays: TIFF folders and stacks, .npy and .npz files with the caller's
geometry (JSON or object), raw counts with flats and darks, and data that do not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from io_helpers import ball_sinogram, one_line, parallel_2d

from dip_uq.io import detect_format, read_scan


def test_tiff_folder_and_multipage_with_geometry_json(tmp_path, cone_scan):
    g, sino = cone_scan
    (tmp_path / "geom.json").write_text(json.dumps(g.to_dict()))
    folder = tmp_path / "proj"
    folder.mkdir()
    for k, image in enumerate(sino):  # names sort naturally: p_2 before p_10
        tifffile.imwrite(folder / f"p_{k}.tif", image)
    tifffile.imwrite(tmp_path / "stack.tiff", sino)
    for path in (folder, tmp_path / "stack.tiff"):
        assert detect_format(path) == "tiff"
        with pytest.raises(ValueError, match=r"needs a geometry; pass --geometry geom\.json"):
            read_scan(path)
        scan = read_scan(path, geometry=tmp_path / "geom.json")
        assert scan.geometry == g and scan.source_format == "tiff"
        np.testing.assert_array_equal(scan.sinogram, sino)


def test_tiff_intensities_with_flats_and_darks(tmp_path, cone_scan):
    g, sino = cone_scan
    rng = np.random.default_rng(0)
    gain = 1000 + 200 * rng.random((5, 6, 40))  # per-pixel flats, 5 frames
    dark = 50 + rng.random((3, 6, 40))
    counts = dark.mean(0) + gain.mean(0) * np.exp(-sino)  # flat - dark = gain
    tifffile.imwrite(tmp_path / "raw.tif", counts.astype(np.float32))
    tifffile.imwrite(tmp_path / "flats.tif", (gain + dark.mean(0)).astype(np.float32))
    tifffile.imwrite(tmp_path / "darks.tif", dark.astype(np.float32), photometric="minisblack")
    scan = read_scan(
        tmp_path / "raw.tif", geometry=g, flats=tmp_path / "flats.tif", darks=tmp_path / "darks.tif"
    )
    assert scan.n_flats == 5 and scan.n_darks == 3
    np.testing.assert_allclose(scan.sinogram, sino, atol=2e-4)
    tifffile.imwrite(tmp_path / "raw16.tif", counts.astype(np.uint16))
    with pytest.raises(ValueError, match=r"integer values \(uint16.* like intensities .*--log"):
        read_scan(tmp_path / "raw16.tif", geometry=g)


def test_npz_carries_its_geometry(tmp_path):
    g = parallel_2d()
    sino = ball_sinogram(g)
    np.savez(tmp_path / "s.npz", sinogram=sino, geometry=json.dumps(g.to_dict()))
    scan = read_scan(tmp_path / "s.npz")
    assert scan.geometry == g and scan.source_format == "npz"


def test_data_that_do_not_match_the_geometry(tmp_path):
    g = parallel_2d()
    np.save(tmp_path / "s.npy", np.zeros((59, 64), np.float32))
    with pytest.raises(ValueError, match=r"shape \(59, 64\) do not match the geometry") as error:
        read_scan(tmp_path / "s.npy", geometry=g)
    one_line(error)


def test_nan_in_the_data(tmp_path):
    sino = ball_sinogram(parallel_2d())
    sino[3, 7] = np.nan
    np.save(tmp_path / "s.npy", sino)
    with pytest.raises(ValueError, match=r"1 NaN and 0 Inf values \(first at index \(3, 7\)\)"):
        read_scan(tmp_path / "s.npy", geometry=parallel_2d())
