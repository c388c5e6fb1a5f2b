"""Tests of dip_uq.io.detect: formats are told from content, not from file names."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from io_helpers import HTC, K11, TOOTH, one_line

from dip_uq.io import FORMATS, detect_format


def test_the_files_in_data(tmp_path):
    assert [detect_format(p) for p in (TOOTH, HTC, K11)] == ["dxchange", "mat", "nxtomo"]
    shutil.copy(TOOTH, tmp_path / "tooth.bin")  # the name does not matter
    assert detect_format(tmp_path / "tooth.bin") == "dxchange"
    np.save(tmp_path / "a.dat", np.zeros(3))
    assert (tmp_path / "a.dat.npy").exists() and detect_format(tmp_path / "a.dat.npy") == "npy"
    np.savez(tmp_path / "b.npz", x=np.zeros(3))
    assert detect_format(tmp_path / "b.npz") == "npz"
    known = {"nxtomo", "dxchange", "mat", "tiff", "npy", "npz", "mrc", "txrm", "hspy"}
    assert set(FORMATS) == known


def test_what_is_not_a_scan(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        detect_format(tmp_path / "missing")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="the file is empty") as error:
        detect_format(tmp_path / "empty.h5")
    one_line(error)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"the folder holds no \.tif/\.tiff files") as error:
        detect_format(tmp_path / "folder")
    one_line(error)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="neither a NeXus entry, /exchange/data nor") as error:
        detect_format(tmp_path / "other.h5")
    one_line(error)
