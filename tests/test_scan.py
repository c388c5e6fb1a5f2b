"""Tests of dip_uq.scan: the Scan record's checks and copies, and the default grid that covers
a geometry's field of view."""

from __future__ import annotations

import numpy as np
import pytest

from dip_uq.geometry import ConeBeam, FanBeam, ParallelBeam, Volume
from dip_uq.scan import CPU_GRID_SIDE, Scan, default_volume, grid_for_device


def test_scan_checks_its_arrays():
    g = ParallelBeam(np.linspace(0, np.pi, 10, endpoint=False), (16,))
    scan = Scan(np.ones((10, 16)), g)
    assert scan.sinogram.dtype == np.float32 and scan.sinogram.flags.c_contiguous
    np.testing.assert_allclose(scan.angles_deg, np.rad2deg(g.angles))
    assert scan.ndim == 2 and scan.n_angles == 10 and scan.name == "scan"
    with pytest.raises(ValueError, match="floating-point line integrals"):
        Scan(np.ones((10, 16), dtype=np.int32), g)
    with pytest.raises(ValueError, match=r"shape \(10, 15\) but the geometry expects"):
        Scan(np.ones((10, 15)), g)
    bad = np.ones((10, 16))
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"0 NaN and 1 Inf values \(first at index \(2, 3\)\)"):
        Scan(bad, g)
    with pytest.raises(ValueError, match="angles_deg has 9 entries for 10 projections"):
        Scan(np.ones((10, 16)), g, angles_deg=np.zeros(9))
    with pytest.raises(ValueError, match="must be a dip_uq Geometry"):
        Scan(np.ones((10, 16)), "parallel")


def test_replace_copies_the_mutable_fields():
    g = ParallelBeam(np.zeros(2), (4,))
    scan = Scan(np.zeros((2, 4)), g, notes=["read"], distances={"origin_detector": 1.0})
    copy = scan.replace()
    copy.notes.append("changed")
    copy.distances["source_origin"] = 2.0
    copy.metadata["title"] = "t"
    assert scan.notes == ["read"] and scan.distances == {"origin_detector": 1.0}
    assert scan.metadata == {}


def test_projections_selects_sinogram_geometry_and_angles_alike():
    g = ParallelBeam(np.linspace(0, np.pi, 10, endpoint=False), (16,))
    scan = Scan(np.arange(160.0).reshape(10, 16), g, notes=["read"])
    for index in (slice(None, None, 3), np.array([1, 4, 8])):
        part = scan.projections(index, notes=["part"])
        np.testing.assert_array_equal(part.sinogram, scan.sinogram[index])
        np.testing.assert_array_equal(part.geometry.angles, g.angles[index])
        np.testing.assert_allclose(part.angles_deg, np.rad2deg(g.angles[index]))
        assert part.notes == ["part"] and scan.notes == ["read"]


def test_vector_geometry_angles():
    cone = ConeBeam(np.linspace(0, 2 * np.pi, 12, endpoint=False), (2, 8), 1.0, 40.0, 20.0)
    scan = Scan(np.zeros(cone.sino_shape), cone.to_vector_geometry())
    np.testing.assert_allclose(scan.angles_deg, np.rad2deg(cone.angles), atol=1e-9)


def test_default_volume_covers_the_field_of_view():
    g = ParallelBeam(np.zeros(2), (4, 100), (0.5, 0.5))
    assert default_volume(g) == Volume((4, 100, 100), 0.5)
    shifted = ParallelBeam(np.zeros(2), (100,), 0.5, 5.0)  # axis 10 px off the centre
    assert default_volume(shifted).shape == (120, 120)
    fan = FanBeam(np.zeros(2), (200,), 1.0, 100.0, 100.0)
    volume = default_volume(fan, size=64)
    r = 100 * np.sin(np.arctan(100 / 200))  # the fan's inscribed circle
    assert volume.shape == (64, 64) and volume.extent[0] == pytest.approx(2 * r)
    assert default_volume(fan, voxel_size=1.0).shape == (90, 90)


def test_default_volume_returns_the_stored_grid():
    g = ParallelBeam(np.zeros(2), (100,), 0.5)
    stored = Volume((8, 8), 1.0)
    scan = Scan(np.zeros((2, 100)), g, volume=stored)
    assert default_volume(scan) == stored
    assert default_volume(scan, size=10) == default_volume(g, size=10)
    with pytest.raises(ValueError, match="size must be a positive number"):
        default_volume(g, size=0)


def test_a_large_scan_gets_a_coarser_default_grid_on_a_cpu_and_says_why():
    """A 300-pixel detector would make a 300² grid; a DIP on a CPU gets CPU_GRID_SIDE voxels
    over the same field of view, a GPU or an FBP the detector's resolution."""
    geometry = ParallelBeam(np.linspace(0, np.pi, 20, endpoint=False), (300,))
    scan = Scan(np.zeros(geometry.sino_shape, np.float32), geometry)
    full = default_volume(scan)
    assert full.shape == (300, 300)
    volume, why = grid_for_device(scan, "cpu")
    side = CPU_GRID_SIDE[2]
    assert volume.shape == (side, side)
    assert np.allclose(volume.extent, full.extent)  # the same field of view, coarser voxels
    assert f"{side}×{side}" in why and "300×300" in why and "--size" in why
    assert grid_for_device(scan, "cuda")[0] == full  # no CUDA needed to plan for one
    assert grid_for_device(scan, "cpu", dip=False)[0] == full
    small = Scan(np.zeros((20, 64), np.float32), ParallelBeam(geometry.angles, (64,)))
    volume, why = grid_for_device(small, "cpu")
    assert volume == default_volume(small) and "detector's resolution" in why
