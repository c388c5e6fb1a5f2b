"""Tests of dip_uq.io.flat_field through Data Exchange files: flats no brighter than the darks,
dead regions and single dead pixels of the flats, counts below the dark level, Inf values."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from io_helpers import one_line

from dip_uq.io import read_scan


def _dxchange(path: Path, data, white, dark, theta=None) -> None:
    with h5py.File(path, "w") as f:
        f["exchange/data"] = data
        f["exchange/data_white"] = white
        f["exchange/data_dark"] = dark
        f["exchange/theta"] = (
            np.linspace(0, 180, len(data), endpoint=False) if theta is None else theta
        )


def test_flat_field_problems(tmp_path):
    rng = np.random.default_rng(1)
    data = 100 + 900 * rng.random((10, 2, 32))
    white = np.full((3, 2, 32), 1000.0)
    dark = np.full((2, 2, 32), 100.0)
    _dxchange(tmp_path / "zero.h5", data, dark, dark)  # flats no brighter than the darks
    with pytest.raises(ValueError, match="flat minus dark is <= 0 at every detector pixel") as e:
        read_scan(tmp_path / "zero.h5")
    one_line(e)
    region = white.copy()
    region[:, :, 5:15] = 100.0  # a dead region of the flats
    _dxchange(tmp_path / "region.h5", data, region, dark)
    with pytest.raises(ValueError, match=r"at 20 of 64 detector pixels \(rows 0-1, columns 5-14\)"):
        read_scan(tmp_path / "region.h5")

    big = 100 + 900 * rng.random((10, 4, 64))
    dead = np.full((3, 4, 64), 1000.0)
    dead[:, 1, 7] = 100.0  # one dead pixel (0.4%): filled in from its row neighbours, reported
    _dxchange(tmp_path / "dead.h5", big, dead, np.full((2, 4, 64), 100.0))
    scan = read_scan(tmp_path / "dead.h5")
    assert any(n.startswith("1 detector pixels with flat - dark <= 0") for n in scan.notes)
    neighbours = scan.sinogram[:, 1, [6, 8]].mean(1)
    np.testing.assert_allclose(scan.sinogram[:, 1, 7], neighbours, rtol=1e-5)
    with h5py.File(tmp_path / "dead.h5", "a") as f:
        del f["exchange/data_white"]
    with pytest.raises(ValueError, match=r"raw intensities .* no flat fields"):
        read_scan(tmp_path / "dead.h5")

    low = data.copy()
    low[2, 0, :12] = 90.0  # below the dark level: clipped, reported
    _dxchange(tmp_path / "low.h5", low, white, dark)
    scan = read_scan(tmp_path / "low.h5")
    assert np.isfinite(scan.sinogram).all()
    assert any(n.startswith("clipped 12 non-positive transmissions") for n in scan.notes)
    _dxchange(tmp_path / "dark.h5", np.full_like(data, 50.0), white, dark)
    with pytest.raises(ValueError, match="every projection value is at or below the dark"):
        read_scan(tmp_path / "dark.h5")
    bad = data.copy()
    bad[4, 1, 3] = np.inf
    _dxchange(tmp_path / "inf.h5", bad, white, dark)
    with pytest.raises(ValueError, match="0 NaN and 1 Inf"):
        read_scan(tmp_path / "inf.h5")
