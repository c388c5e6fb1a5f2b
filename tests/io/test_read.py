"""Tests of dip_uq.io.read: read_scan refuses missing, unknown and truncated files and unknown
format names with one-line messages."""

from __future__ import annotations

import pytest
from io_helpers import TOOTH, one_line, parallel_2d

from dip_uq.io import read_scan


def test_missing_unknown_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_scan(tmp_path / "nope.h5")
    (tmp_path / "junk.dat").write_bytes(b"\x00\x01 not a scan at all")
    with pytest.raises(ValueError, match="unknown scan format") as error:
        read_scan(tmp_path / "junk.dat")
    one_line(error)
    (tmp_path / "cut.h5").write_bytes(TOOTH.read_bytes()[:300_000])
    with pytest.raises(ValueError, match="truncated or damaged") as error:
        read_scan(tmp_path / "cut.h5")
    one_line(error)
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran")
    with pytest.raises(ValueError, match=r"cannot read the \.npy"):
        read_scan(tmp_path / "cut.npy", geometry=parallel_2d())
    with pytest.raises(ValueError, match="unknown format 'zip'"):
        read_scan(TOOTH, format="zip")
    with pytest.raises(FileNotFoundError, match="no such geometry file"):
        read_scan(TOOTH, geometry=tmp_path / "missing.json")
