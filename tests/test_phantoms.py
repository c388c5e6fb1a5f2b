"""Tests of dip_uq.phantoms: Shepp-Logan values and orientation, random ellipse phantoms."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from dip_uq.geometry import Volume
from dip_uq.phantoms import random_ellipses, shepp_logan

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def value_at(img: torch.Tensor, x: float, y_up: float) -> float:
    """Pixel value at table coordinates (x right, y *up*, both in [-1, 1]) of a 2D image."""
    ny, nx = img.shape
    col = round(x * nx / 2 + (nx - 1) / 2)
    row = round(-y_up * ny / 2 + (ny - 1) / 2)
    return float(img[row, col])


# --------------------------------------------------------------------------------------------
# Shepp-Logan
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sl256() -> torch.Tensor:
    return shepp_logan((256, 256))


def test_shepp_logan_shapes_dtype_range() -> None:
    img = shepp_logan((48, 40))
    assert img.shape == (48, 40) and img.dtype == torch.float32 and img.device.type == "cpu"
    vol = shepp_logan((9, 16, 12), dtype=torch.float64)
    assert vol.shape == (9, 16, 12) and vol.dtype == torch.float64
    for p in (img, vol, shepp_logan((64, 64), supersample=3)):
        assert float(p.min()) == 0.0
        assert float(p.max()) == pytest.approx(1.0, abs=1e-6)
    # a Volume stands for its shape
    assert torch.equal(shepp_logan(Volume((20, 24), voxel_size=0.1)), shepp_logan((20, 24)))


def test_shepp_logan_known_values(sl256: torch.Tensor) -> None:
    img = sl256
    assert value_at(img, 0.0, 0.0) == pytest.approx(0.2, abs=1e-6)  # brain: 1 - 0.8
    assert value_at(img, 0.0, 0.35) == pytest.approx(0.3, abs=1e-6)  # large round feature
    assert value_at(img, 0.0, -0.35) == pytest.approx(0.2, abs=1e-6)
    assert value_at(img, 0.0, 0.12) == pytest.approx(0.4, abs=1e-6)  # disc overlapping it
    assert value_at(img, 0.0, -0.1) == pytest.approx(0.3, abs=1e-6)  # its twin below
    assert value_at(img, 0.0, 0.89) == pytest.approx(1.0, abs=1e-6)  # skull, top
    assert value_at(img, 0.675, 0.0) == pytest.approx(1.0, abs=1e-6)  # skull, right
    assert value_at(img, 0.22, 0.0) == pytest.approx(0.0, abs=1e-6)  # ventricles: 0.2 - 0.2
    assert value_at(img, -0.22, 0.0) == pytest.approx(0.0, abs=1e-6)
    # background: outside the outer ellipse (semi-axes 0.69 wide, 0.92 tall)
    for x, y in [(0.0, 0.96), (0.0, -0.96), (0.75, 0.0), (-0.75, 0.0), (0.9, 0.9)]:
        assert value_at(img, x, y) == 0.0
    assert float(img[0].abs().max()) == 0.0 and float(img[:, 0].abs().max()) == 0.0


def test_shepp_logan_orientation(sl256: torch.Tensor) -> None:
    img = sl256
    rows = torch.nonzero(img.sum(1)).flatten()
    cols = torch.nonzero(img.sum(0)).flatten()
    height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert height == pytest.approx(0.92 * 256, abs=2)  # taller than wide, along y (rows)
    assert width == pytest.approx(0.69 * 256, abs=2)
    # the round feature (y_up = +0.35) lies in the upper half of the array (small rows)
    assert value_at(img, 0.0, 0.35) > value_at(img, 0.0, -0.35)
    # left/right structure: the larger ventricle (-0.22, tilted) is on the left
    assert value_at(img, -0.22, 0.3) == pytest.approx(0.0, abs=1e-6)
    assert value_at(img, 0.22, 0.3) == pytest.approx(0.2, abs=1e-6)
    assert float((img[:, :128] == 0).sum()) > float((img[:, 128:] == 0).sum())
    # the outer ring is mirror symmetric, the inside is not
    assert not torch.equal(img, img.flip(-1))
    ring = (img > 0.9) | (img.flip(-1) > 0.9)
    assert float((img - img.flip(-1))[ring & (img > 0.9) & (img.flip(-1) > 0.9)].abs().max()) == 0


def test_shepp_logan_original_intensities() -> None:
    img = shepp_logan((128, 128), modified=False)
    assert float(img.min()) == 0.0
    assert float(img.max()) == pytest.approx(2.0, abs=1e-6)
    assert value_at(img, 0.0, 0.0) == pytest.approx(1.02, abs=1e-5)
    assert value_at(img, 0.22, 0.0) == pytest.approx(1.0, abs=1e-5)
    assert value_at(img, 0.0, 0.35) == pytest.approx(1.03, abs=1e-5)


def test_shepp_logan_3d_central_slice_is_2d() -> None:
    vol = shepp_logan((33, 64, 64))  # odd nz: slice 16 is z = 0
    flat = shepp_logan((64, 64))
    torch.testing.assert_close(vol[16], flat, atol=1e-6, rtol=0)
    # ellipsoid extents: 0.81 along z, 0.92 along y, 0.69 along x
    assert float(vol[0].abs().max()) == 0.0 and float(vol[-1].abs().max()) == 0.0
    z_extent = int((vol[:, 32, 32] > 0).sum())
    assert z_extent == pytest.approx(0.81 * 33, abs=2)
    # off-centre slices shrink and differ from the central one
    assert float((vol[8] > 0).sum()) < float((vol[16] > 0).sum())
    assert float(vol.max()) == pytest.approx(1.0, abs=1e-6) and float(vol.min()) == 0.0


def test_supersample_averages_a_finer_rasterisation() -> None:
    coarse = shepp_logan((32, 32), supersample=4)
    fine = shepp_logan((128, 128))
    pooled = torch.nn.functional.avg_pool2d(fine[None, None], 4)[0, 0]
    torch.testing.assert_close(coarse, pooled, atol=1e-6, rtol=0)
    # anti-aliased edges: many intermediate values that point sampling does not have
    assert len(torch.unique(coarse)) > 3 * len(torch.unique(shepp_logan((32, 32))))
    vol = shepp_logan((8, 8, 8), supersample=2)
    pooled3 = torch.nn.functional.avg_pool3d(shepp_logan((16, 16, 16))[None, None], 2)[0, 0]
    torch.testing.assert_close(vol, pooled3, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (0, 8)}, "shape"),
        ({"shape": (8,)}, "shape"),
        ({"shape": (2, 2, 2, 2)}, "shape"),
        ({"shape": (8.5, 8)}, "shape"),
        ({"shape": "abc"}, "shape"),
        ({"shape": (8, 8), "supersample": 0}, "supersample"),
        ({"shape": (8, 8), "supersample": 1.5}, "supersample"),
        ({"shape": (8, 8), "dtype": torch.int32}, "dtype"),
    ],
)
def test_shepp_logan_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        shepp_logan(**kwargs)


# --------------------------------------------------------------------------------------------
# random ellipses
# --------------------------------------------------------------------------------------------
def test_random_ellipses_shapes_and_range() -> None:
    for shape in [(64, 48), (16, 20, 24)]:
        img = random_ellipses(shape, seed=3)
        assert img.shape == shape and img.dtype == torch.float32
        assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    img = random_ellipses((32, 32), n=6, dtype=torch.float64, supersample=2)
    assert img.dtype == torch.float64 and 0.0 <= float(img.min()) and float(img.max()) == 1.0
    assert float(random_ellipses((16, 16), n=0).abs().max()) == 0.0


def test_random_ellipses_reproducible_and_seed_dependent() -> None:
    a = random_ellipses((64, 64), seed=7)
    assert torch.equal(a, random_ellipses((64, 64), seed=7))
    assert not torch.equal(a, random_ellipses((64, 64), seed=8))
    v = random_ellipses((16, 16, 16), seed=7)
    assert torch.equal(v, random_ellipses((16, 16, 16), seed=7))
    assert not torch.equal(v, random_ellipses((16, 16, 16), seed=8))
    # a Generator draws a stream of different phantoms, reproducibly
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    first, second = random_ellipses((32, 32), seed=rng1), random_ellipses((32, 32), seed=rng1)
    assert not torch.equal(first, second)
    assert torch.equal(first, random_ellipses((32, 32), seed=rng2))
    assert torch.equal(second, random_ellipses((32, 32), seed=rng2))


def test_random_ellipses_leave_global_rng_alone() -> None:
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 (checking it is untouched)
    random_ellipses((32, 32), seed=1)
    random_ellipses((8, 8, 8), seed=1)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])  # noqa: NPY002


def test_random_ellipses_look_like_objects_in_the_field_of_view() -> None:
    n = 64
    t = (torch.arange(n) - (n - 1) / 2) * (2 / n)
    radius = torch.sqrt(t[:, None] ** 2 + t[None, :] ** 2)
    fills, levels = [], []
    for seed in range(10):
        img = random_ellipses((n, n), seed=seed)
        support = img > 0
        assert float(radius[support].max()) <= 1.0 + 1e-6  # inside the unit disc
        fills.append(float(support.float().mean()))
        levels.append(len(torch.unique(img)))
    # a sizeable object with several grey levels, not empty and not a filled square
    assert 0.1 < np.mean(fills) < 0.7 and min(fills) > 0.02
    assert min(levels) >= 5
    m = 24
    s = (torch.arange(m) - (m - 1) / 2) * (2 / m)
    r3 = torch.sqrt(s[:, None, None] ** 2 + s[None, :, None] ** 2 + s[None, None, :] ** 2)
    for seed in range(3):
        vol = random_ellipses((m, m, m), seed=seed)
        assert float(r3[vol > 0].max()) <= 1.0 + 1e-6  # inside the unit ball
        assert 0.05 < float((vol > 0).float().mean()) < 0.5
        assert len(torch.unique(vol)) >= 5


def test_random_ellipses_negative_intensities_become_holes() -> None:
    img = random_ellipses((48, 48), n=12, seed=2, intensity_range=(-1.0, -0.2))
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    # background stays 0 at the corners
    assert float(img[0, 0]) == float(img[-1, -1]) == 0.0


def test_random_ellipses_fast_enough() -> None:
    random_ellipses((128, 128), seed=0)  # warm-up
    best2, best3 = float("inf"), float("inf")
    for seed in range(3):
        start = time.perf_counter()
        random_ellipses((128, 128), n=20, seed=seed)
        best2 = min(best2, time.perf_counter() - start)
        start = time.perf_counter()
        random_ellipses((64, 64, 64), seed=seed)
        best3 = min(best3, time.perf_counter() - start)
    assert best2 < 0.1  # a few ms on an idle 2-core CPU; generous against load
    assert best3 < 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": -1}, "n must"),
        ({"n": 2.5}, "n must"),
        ({"seed": -3}, "seed"),
        ({"seed": "a"}, "seed"),
        ({"intensity_range": (1.0, 0.0)}, "intensity_range"),
        ({"intensity_range": 3}, "intensity_range"),
        ({"axis_scale": 0.0}, "axis_scale"),
        ({"max_axis": 1.0}, "max_axis"),
        ({"supersample": 0}, "supersample"),
    ],
)
def test_random_ellipses_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        random_ellipses((16, 16), **kwargs)


@pytest.mark.gpu
@cuda
def test_phantoms_on_cuda_match_cpu() -> None:
    for make in (shepp_logan, random_ellipses):
        for shape in [(64, 64), (32, 32, 32)]:
            gpu = make(shape, device="cuda")
            assert gpu.device.type == "cuda"
            cpu = make(shape)
            # identical up to voxels whose centre lies on an edge within rounding
            assert float((gpu.cpu() - cpu).abs().gt(1e-5).float().mean()) < 1e-3
