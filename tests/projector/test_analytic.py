"""Tests of dip_uq.projector.analytic: FBP (parallel beam) and FDK (fan/cone beam) in pure PyTorch.

Reference data are exact line integrals of uniform ellipses/ellipsoids computed here
analytically for every detector pixel of any geometry (through ``geometry.frames()``), so
each geometry is checked against the same truth, independently of any projector. The
reconstructions are compared with the phantom sampled at the voxel centres, in the interior
of its regions (``_EDGE`` voxels away from every boundary, where FBP's blur does not reach).

Numbers measured when the thresholds were set (float32, 1 thread) are quoted next to each
assertion; the thresholds leave a margin over them.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from dip_uq.geometry import (
    ConeBeam,
    FanBeam,
    Geometry,
    ParallelBeam,
    VectorGeometry,
    Volume,
)
from dip_uq.projector.analytic import FBPFilter, angular_weights, fbp

_EDGE = 2.5  # voxels: the interior mask keeps points this far from every phantom boundary

# an ellipse/ellipsoid: (centre (x, y, z), semi-axes (x, y, z), rotation about z, value)
Ellipsoid = tuple[tuple[float, float, float], tuple[float, float, float], float, float]

# the module, not the function the package may re-export under the same name
fbp_module = importlib.import_module("dip_uq.projector.analytic")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------------------------
# analytic phantoms
# --------------------------------------------------------------------------------------------
def _rotation(phi: float) -> np.ndarray:
    c, s = math.cos(phi), math.sin(phi)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _in_plane(phantom: list[Ellipsoid]) -> list[Ellipsoid]:
    """The 2D version of a phantom: ellipses in the z = 0 plane with the same (x, y) shape."""
    return [((c[0], c[1], 0.0), axes, phi, value) for c, axes, phi, value in phantom]


def project_analytic(phantom: list[Ellipsoid], geometry: Geometry) -> np.ndarray:
    """Exact line integrals through the centre of every detector pixel, ``sino_shape``.

    In 2D the phantom is taken in the z = 0 plane (:func:`_in_plane`).

    A line ``o + t w`` (``|w| = 1``) meets the ellipsoid ``|E⁻¹ Rᵀ (x - c)| ≤ 1`` for ``t``
    between the roots of ``A t² + 2 B t + C = 0``: the chord has length
    ``2 sqrt(B² - A C) / A`` (Kak & Slaney, eq. 3.8, for the 2D ellipse).
    """
    f = geometry.frames_3d()
    rows, cols = (1, *geometry.det_shape) if geometry.ndim == 2 else geometry.det_shape
    i = np.arange(cols) - (cols - 1) / 2
    j = np.arange(rows) - (rows - 1) / 2
    pixel = (
        f["center"][:, None, None]
        + i[None, None, :, None] * f["u"][:, None, None]
        + j[None, :, None, None] * f["v"][:, None, None]
    )
    if geometry.kind == "parallel":
        ray = f["ray"] / np.linalg.norm(f["ray"], axis=1, keepdims=True)
        origin, direction = pixel, np.broadcast_to(ray[:, None, None], pixel.shape)
    else:
        origin = np.broadcast_to(f["source"][:, None, None], pixel.shape)
        direction = pixel - origin
        direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    total = np.zeros(pixel.shape[:-1])
    for centre, axes, phi, value in phantom if geometry.ndim == 3 else _in_plane(phantom):
        rot = _rotation(phi)
        o = ((origin - np.asarray(centre)) @ rot) / np.asarray(axes)
        w = (direction @ rot) / np.asarray(axes)
        a = np.sum(w * w, -1)
        b = np.sum(o * w, -1)
        c = np.sum(o * o, -1) - 1
        total += value * 2 * np.sqrt(np.clip(b * b - a * c, 0, None)) / a
    return total[:, 0] if geometry.ndim == 2 else total


def rasterize(phantom: list[Ellipsoid], volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The phantom at the voxel centres and the interior mask (``_EDGE`` voxels from edges).

    The distance to a boundary is estimated from the ellipsoid's normalised radius ``ρ``:
    a point is within ``δ`` of the surface when ``|ρ - 1| < δ / (smallest semi-axis)``.
    """
    coords = volume.coordinates()
    if volume.ndim == 2:
        coords = [np.zeros(1), *coords]
    z, y, x = np.meshgrid(*coords, indexing="ij")
    points = np.stack([x, y, z], -1)
    image = np.zeros(points.shape[:-1])
    interior = np.ones(points.shape[:-1], dtype=bool)
    margin = _EDGE * max(volume.voxel_size)
    for centre, axes, phi, value in phantom if volume.ndim == 3 else _in_plane(phantom):
        q = ((points - np.asarray(centre)) @ _rotation(phi)) / np.asarray(axes)
        radius = np.sqrt(np.sum(q * q, -1))
        image += value * (radius <= 1)
        smallest = min(axes) if volume.ndim == 3 else min(axes[:2])
        interior &= np.abs(radius - 1) * smallest > margin
    if volume.ndim == 2:
        return image[0], interior[0]
    return image, interior


def reconstruct(phantom, volume, geometry, dtype=torch.float32, **kwargs) -> np.ndarray:
    sino = torch.as_tensor(project_analytic(phantom, geometry), dtype=dtype)
    return fbp(sino, volume, geometry, **kwargs).double().numpy()


def interior_error(rec: np.ndarray, truth: np.ndarray, interior: np.ndarray) -> float:
    """Relative L2 error on the interior mask."""
    return float(np.linalg.norm((rec - truth)[interior]) / np.linalg.norm(truth[interior]))


def box_centroid(image: np.ndarray, volume: Volume, centre, half_width: float) -> np.ndarray:
    """Intensity-weighted centre (array order, physical units) of ``image`` inside the box of
    the given half width around ``centre`` (array order)."""
    grids = np.meshgrid(*volume.coordinates(), indexing="ij")
    box = np.ones(image.shape, dtype=bool)
    for g, c in zip(grids, centre, strict=True):
        box &= np.abs(g - c) < half_width
    weights = image * box
    return np.array([np.sum(g * weights) / np.sum(weights) for g in grids])


DISC = [((0.0, 0.0, 0.0), (20.0, 20.0, 20.0), 0.0, 1.0)]
# two ellipses/ellipsoids away from the centre, one tilted: any flip, transposition or shift
# of the axes moves them onto background
OFF_CENTRE = [
    ((9.0, -6.0, 4.0), (7.0, 11.0, 6.0), 0.4, 2.0),
    ((-10.0, 8.0, -3.0), (5.0, 5.0, 5.0), 0.0, 1.0),
]


def _full(n: int, period: float = math.pi) -> np.ndarray:
    return np.linspace(0, period, n, endpoint=False)


# volumes with voxel_size != 1 (also anisotropic) and a centre off the rotation axis;
# geometries with detector offsets: the analytic data follow them exactly
VOLUME_2D = Volume((64, 64), voxel_size=0.75, center=(2.0, -3.0))
VOLUME_3D = Volume((40, 48, 48), voxel_size=0.8, center=(1.0, 2.0, -3.0))
PARALLEL_2D = ParallelBeam(_full(180), (96,), det_spacing=0.8, det_offset=1.7)
FAN_2D = FanBeam(_full(240, 2 * math.pi), (128,), 0.9, 90.0, 40.0, det_offset=-2.3)
PARALLEL_3D = ParallelBeam(_full(96), (48, 72), det_spacing=(0.9, 0.8), det_offset=(0.6, -1.1))
CONE_3D = ConeBeam(_full(128, 2 * math.pi), (64, 96), (1.2, 1.1), 150.0, 75.0, (0.6, -1.1))


# --------------------------------------------------------------------------------------------
# accuracy per geometry
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("volume", "geometry", "bound"),
    [
        # measured interior relative errors: 0.0035, 0.014, 0.0058, 0.029 (FDK's cone artefact)
        pytest.param(Volume((64, 64)), ParallelBeam(_full(180), (96,)), 0.008, id="parallel2d"),
        pytest.param(
            Volume((64, 64)),
            FanBeam(_full(240, 2 * math.pi), (128,), 1.0, 100, 50),
            0.025,
            id="fan",
        ),
        pytest.param(
            Volume((48, 48, 48)), ParallelBeam(_full(96), (48, 72)), 0.012, id="parallel3d"
        ),
        pytest.param(
            Volume((48, 48, 48)),
            ConeBeam(_full(128, 2 * math.pi), (64, 96), 1.5, 150, 75),
            0.045,
            id="cone",
        ),
    ],
)
def test_centred_disc_or_ball(volume, geometry, bound):
    rec = reconstruct(DISC, volume, geometry)
    truth, interior = rasterize(DISC, volume)
    inside = interior & (truth > 0)
    assert interior_error(rec, truth, interior) < bound
    # absolute scale: attenuation in 1/length; measured means 0.998, 0.999, 0.9995, 0.995
    assert rec[inside].mean() == pytest.approx(1.0, abs=0.01)
    assert np.abs(rec[interior & (truth == 0)]).max() < 0.1  # measured ≤ 0.066


@pytest.mark.parametrize(
    ("volume", "geometry", "bound"),
    [
        # measured interior relative errors 0.056, 0.054, 0.057, 0.062, 0.067: streaks from the
        # sharp, high-contrast edges sampled at points (the disc cases above are smoother)
        pytest.param(VOLUME_2D, PARALLEL_2D, 0.08, id="parallel2d"),
        pytest.param(VOLUME_2D, FAN_2D, 0.08, id="fan"),
        pytest.param(
            Volume((48, 80), voxel_size=(0.9, 0.6), center=(2.0, -3.0)),
            PARALLEL_2D,
            0.08,
            id="parallel2d-anisotropic",
        ),
        pytest.param(VOLUME_3D, PARALLEL_3D, 0.09, id="parallel3d"),
        pytest.param(VOLUME_3D, CONE_3D, 0.09, id="cone"),
    ],
)
def test_off_centre_phantom_position_and_value(volume, geometry, bound):
    """Off-centre objects, offset volume, detector offsets and voxel_size != 1: checks every
    geometry convention (a flipped, transposed or shifted axis fails by a wide margin)."""
    rec = reconstruct(OFF_CENTRE, volume, geometry)
    truth, interior = rasterize(OFF_CENTRE, volume)
    assert interior_error(rec, truth, interior) < bound
    for value in (1.0, 2.0):  # each object's mean attenuation, measured within 0.3%
        region = interior & (truth == value)
        assert region.sum() > 10
        assert rec[region].mean() == pytest.approx(value, rel=0.02)
    # the ball of radius 5 at (x, y, z) = (-10, 8, -3) is found where it is: measured
    # deviations ≤ 0.017 length units (0.022 voxels)
    where = (-3.0, 8.0, -10.0)[3 - volume.ndim :]
    found = box_centroid(rec, volume, where, half_width=8.0)
    assert np.abs(found - where).max() < 0.1 * min(volume.voxel_size)


@pytest.mark.parametrize(
    "geometry", [PARALLEL_2D, FAN_2D, PARALLEL_3D, CONE_3D], ids=["par2", "fan", "par3", "cone"]
)
def test_detector_offset_is_used(geometry):
    """The ball is found where it is with the detector offset, and away from it when the
    offset is dropped from the geometry (a fan/cone column offset mostly rotates the image:
    measured displacements 2.4, 0.30, 1.8 and 0.52 voxels; with the offset ≤ 0.022)."""
    volume = VOLUME_2D if geometry.ndim == 2 else VOLUME_3D
    sino = torch.as_tensor(project_analytic(OFF_CENTRE, geometry), dtype=torch.float32)
    frames = geometry.frames()
    vectors = geometry.vectors.copy()
    d = geometry.ndim
    for axis in ("u", "v")[: d - 1]:  # move the detector centre back onto the central ray
        step, centre = frames[axis], vectors[:, d : 2 * d]
        centre -= np.sum(centre * step, 1, keepdims=True) / np.sum(step**2, 1, keepdims=True) * step
    no_offset = VectorGeometry(vectors, geometry.det_shape, kind=geometry.kind)
    where = np.array((-3.0, 8.0, -10.0)[3 - volume.ndim :])
    voxel = min(volume.voxel_size)
    for g, lo, hi in ((geometry, 0.0, 0.1), (no_offset, 0.25, np.inf)):
        found = box_centroid(fbp(sino, volume, g).numpy(), volume, where, half_width=8.0)
        assert lo <= np.linalg.norm(found - where) / voxel < hi


@pytest.mark.parametrize(
    ("projector", "geometry"), [("linear", PARALLEL_2D), ("line_fanflat", FAN_2D)]
)
def test_astra_2d_data(projector, geometry):
    """Data from ASTRA's CPU projectors (through Geometry/Volume.to_astra) reconstruct the
    pixel image: measured interior relative errors 0.041 (parallel), 0.059 (fan)."""
    astra = pytest.importorskip("astra")
    # y centre 0: Volume.to_astra does not mirror a 2D y centre as Geometry.to_astra mirrors y
    volume = Volume((64, 64), voxel_size=0.75, center=(0.0, -3.0))
    truth, interior = rasterize(OFF_CENTRE, volume)
    proj_id = astra.create_projector(projector, geometry.to_astra(), volume.to_astra())
    try:
        sino_id, sino = astra.create_sino(truth.astype(np.float32), proj_id)
        astra.data2d.delete(sino_id)
    finally:
        astra.projector.delete(proj_id)
    rec = fbp(torch.from_numpy(sino), volume, geometry).numpy()
    assert interior_error(rec, truth, interior) < 0.09


# modified Shepp–Logan (Toft): value, semi-axes (a, b), centre (x, y), rotation (degrees), in
# units of the phantom radius
_SHEPP_LOGAN = [
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
]


def shepp_logan(radius: float) -> list[Ellipsoid]:
    return [
        ((x * radius, y * radius, 0.0), (a * radius, b * radius, b * radius), math.radians(p), v)
        for v, a, b, x, y, p in _SHEPP_LOGAN
    ]


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) with the truth's value range as the peak."""
    mse = np.mean((image - truth) ** 2)
    return float(10 * np.log10((truth.max() - truth.min()) ** 2 / mse))


@pytest.mark.parametrize(
    ("geometry", "bound"),
    [
        # measured PSNR 25.5 dB (parallel), 27.6 dB (fan) on the 128² pixel image
        pytest.param(ParallelBeam(_full(180), (192,), 0.5), 24.0, id="parallel"),
        pytest.param(FanBeam(_full(360, 2 * math.pi), (256,), 0.6, 100, 50), 25.5, id="fan"),
    ],
)
def test_fbp_of_ray_transform_shepp_logan(geometry, bound):
    projector = pytest.importorskip("dip_uq.projector")
    volume = Volume((128, 128), voxel_size=0.5)
    truth, _ = rasterize(shepp_logan(0.95 * 32), volume)
    ray_transform = projector.RayTransform(volume, geometry, backend="torch")
    sino = ray_transform(torch.as_tensor(truth, dtype=torch.float32))
    rec = fbp(sino, volume, geometry).numpy()
    assert psnr(rec, truth) > bound


def test_fdk_of_ray_transform_cone():
    """FDK of the torch projector's cone-beam data: measured interior relative error 0.041."""
    projector = pytest.importorskip("dip_uq.projector")
    volume = Volume((32, 32, 32))
    phantom = [((0, 0, 0), (12, 12, 12), 0.0, 1.0), ((4, -3, 2), (4, 5, 3), 0.3, 0.5)]
    truth, interior = rasterize(phantom, volume)
    geometry = ConeBeam(_full(64, 2 * math.pi), (40, 56), 1.5, 100, 50)
    ray_transform = projector.RayTransform(volume, geometry, backend="torch")
    rec = fbp(ray_transform(torch.as_tensor(truth, dtype=torch.float32)), volume, geometry)
    assert interior_error(rec.numpy(), truth, interior) < 0.06


# --------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------
def test_apodised_filters_lower_the_noise():
    volume = Volume((64, 64))
    geometry = ParallelBeam(_full(180), (96,))
    phantom = [((0.0, 0.0, 0.0), (28.0, 28.0, 28.0), 0.0, 1.0)]
    clean = torch.as_tensor(project_analytic(phantom, geometry), dtype=torch.float32)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    sino = clean + 1.0 * noise
    truth, interior = rasterize(phantom, volume)
    flat = interior & (truth > 0)
    stds = {}
    for name in FBPFilter:
        rec = fbp(sino, volume, geometry, filter=name).numpy()
        stds[name.value] = rec[flat].std()
        assert rec[flat].mean() == pytest.approx(1.0, abs=0.02)  # windows keep the DC gain
    # measured std: ram-lak 0.048, shepp-logan 0.039, cosine 0.024, hamming 0.019, hann 0.017
    assert stds["shepp-logan"] < 0.9 * stds["ram-lak"]
    assert stds["cosine"] < 0.65 * stds["ram-lak"]
    assert stds["hann"] < 0.5 * stds["ram-lak"]
    assert stds["hamming"] < 0.5 * stds["ram-lak"]
    assert stds["hann"] < stds["cosine"] < stds["shepp-logan"]
    half = fbp(sino, volume, geometry, frequency_scaling=0.5).numpy()
    assert half[flat].std() < 0.75 * stds["ram-lak"]  # measured 0.028
    assert half[flat].mean() == pytest.approx(1.0, abs=0.02)


def test_filter_names():
    assert FBPFilter.parse("Hann") is FBPFilter.HANN
    assert FBPFilter.parse(FBPFilter.COSINE) is FBPFilter.COSINE
    geometry = ParallelBeam(_full(8), (16,))
    sino = torch.rand(geometry.sino_shape)
    by_name = fbp(sino, Volume((16, 16)), geometry, filter="hamming")
    by_member = fbp(sino, Volume((16, 16)), geometry, filter=FBPFilter.HAMMING)
    assert torch.equal(by_name, by_member)
    with pytest.raises(ValueError, match=r"unknown filter 'ramp'.*'ram-lak'.*'hann'"):
        fbp(sino, Volume((16, 16)), geometry, filter="ramp")


# --------------------------------------------------------------------------------------------
# angular weights
# --------------------------------------------------------------------------------------------
def test_angular_weights_full_scans():
    np.testing.assert_allclose(angular_weights(ParallelBeam(_full(90), (8,))), math.pi / 90)
    # a parallel scan over 360° measures every line twice: the weights halve
    np.testing.assert_allclose(
        angular_weights(ParallelBeam(_full(90, 2 * math.pi), (8,))), math.pi / 90
    )
    fan = FanBeam(_full(60, 2 * math.pi), (8,), 1.0, 50, 50)
    np.testing.assert_allclose(angular_weights(fan), 2 * math.pi / 60)
    # order does not matter
    angles = np.random.default_rng(0).permutation(_full(45) + 0.01)
    np.testing.assert_allclose(angular_weights(ParallelBeam(angles, (8,))), math.pi / 45)


def test_angular_weights_limited_and_irregular():
    # limited angle: interior projections get their gap, the two ends their single gap
    angles = np.linspace(0, math.pi / 2, 31)
    w = angular_weights(ParallelBeam(angles, (8,)))
    np.testing.assert_allclose(w, math.pi / 60)
    # a limited range that crosses the period boundary of the ray azimuth (θ + π/2 = π)
    crossing = np.linspace(math.pi / 2 - 0.3, math.pi / 2 + 0.3, 13)
    np.testing.assert_allclose(angular_weights(ParallelBeam(crossing, (8,))), 0.05)
    # irregular full scan (largest gap 0.8 ≤ 1.5 × 0.7): midpoint rule, wrapping around
    angles = np.array([0.0, 0.5, 1.2, 2.0, 2.5])
    wrap = math.pi - 2.5
    expected = np.array([wrap + 0.5, 0.5 + 0.7, 0.7 + 0.8, 0.8 + 0.5, 0.5 + wrap]) / 2
    np.testing.assert_allclose(angular_weights(ParallelBeam(angles, (8,))), expected)
    # a gap of 1.0 > 1.5 × the others: the scan is cut there, 0.5 and 1.5 are its ends
    angles = np.array([0.0, 0.5, 1.5, 2.0, 2.5])
    expected = np.array([(wrap + 0.5) / 2, 0.5, 0.5, 0.5, (0.5 + wrap) / 2])
    np.testing.assert_allclose(angular_weights(ParallelBeam(angles, (8,))), expected)
    # a single projection
    np.testing.assert_allclose(angular_weights(ParallelBeam([0.3], (8,))), [math.pi])


# --------------------------------------------------------------------------------------------
# scans that are not full
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "geometry",
    [
        ParallelBeam(np.linspace(0, 2 * math.pi / 3, 60), (96,)),
        FanBeam(np.linspace(0, math.pi + 0.8, 100), (128,), 1.0, 100, 50),  # short scan
        ConeBeam(np.linspace(0, math.pi / 2, 24), (40, 48), 1.5, 100, 50),
    ],
    ids=["parallel-120deg", "fan-short-scan", "cone-90deg"],
)
def test_limited_angle_and_short_scans(geometry):
    volume = Volume((32, 32, 32)) if geometry.ndim == 3 else Volume((64, 64))
    ball = [((0.0, 0.0, 0.0), (12.0, 12.0, 12.0), 0.0, 1.0)]
    rec = reconstruct(ball, volume, geometry)
    assert rec.shape == volume.shape
    assert np.isfinite(rec).all()
    truth, interior = rasterize(ball, volume)
    # no redundancy weighting: a centred ball, the same from every direction, comes out
    # scaled by the fraction of the period covered (measured 0.676, 0.633, 0.260 for
    # 0.678, 0.634, 0.261)
    period = math.pi if geometry.kind == "parallel" else 2 * math.pi
    covered = angular_weights(geometry).sum() / period
    assert covered < 0.7
    assert rec[interior & (truth > 0)].mean() == pytest.approx(covered, rel=0.03)


# --------------------------------------------------------------------------------------------
# batches, dtypes, devices, chunking, linearity
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry", [PARALLEL_2D, CONE_3D], ids=["2d", "3d"])
def test_batch_dimensions(geometry):
    volume = VOLUME_2D if geometry.ndim == 2 else Volume((16, 24, 24))
    one = torch.as_tensor(project_analytic(OFF_CENTRE, geometry), dtype=torch.float32)
    scales = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, 1.5]])
    batch = scales.reshape(2, 3, *[1] * one.ndim) * one
    rec = fbp(batch, volume, geometry)
    assert rec.shape == (2, 3, *volume.shape)
    single = fbp(one, volume, geometry)
    expected = scales.reshape(2, 3, *[1] * volume.ndim) * single
    torch.testing.assert_close(rec, expected, rtol=1e-4, atol=1e-4 * single.abs().max().item())


@pytest.mark.parametrize("geometry", [PARALLEL_3D, CONE_3D], ids=["parallel", "cone"])
def test_chunking_does_not_change_the_result(geometry, monkeypatch):
    volume = Volume((12, 16, 16), voxel_size=2.0)
    sino = torch.as_tensor(project_analytic(OFF_CENTRE, geometry[::8]), dtype=torch.float64)
    whole = fbp(sino, volume, geometry[::8])
    per_slice = 16 * 16 * (2 * 1 + 6)  # working elements per z-slice and projection
    for budget in (5 * per_slice, 12 * 3 * per_slice):  # 5-slice slabs; 3 projections
        monkeypatch.setattr(fbp_module, "_CHUNK_ELEMENTS", budget)
        chunked = fbp(sino, volume, geometry[::8])
        torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-10)


def test_vector_geometry_and_projection_order():
    geometry = CONE_3D[::4]
    volume = Volume((16, 24, 24), voxel_size=1.5)
    sino = torch.as_tensor(project_analytic(OFF_CENTRE, geometry), dtype=torch.float64)
    reference = fbp(sino, volume, geometry)
    vector = geometry.to_vector_geometry()
    torch.testing.assert_close(fbp(sino, volume, vector), reference)
    order = np.random.default_rng(1).permutation(geometry.n_angles)
    shuffled = VectorGeometry(geometry.vectors[order], geometry.det_shape, kind="cone")
    torch.testing.assert_close(fbp(sino[order], volume, shuffled), reference)


def test_linear_and_differentiable():
    geometry = FAN_2D[::6]
    volume = Volume((24, 24), voxel_size=2.0)
    gen = torch.Generator().manual_seed(0)
    y1 = torch.rand(geometry.sino_shape, generator=gen, dtype=torch.float64)
    y2 = torch.rand(geometry.sino_shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        fbp(2.0 * y1 - y2, volume, geometry),
        2.0 * fbp(y1, volume, geometry) - fbp(y2, volume, geometry),
    )
    y = y1.clone().requires_grad_(True)
    (fbp(y, volume, geometry) ** 2).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    # the gradient of <w, fbp(y)> is the transpose of fbp applied to w: check one entry
    w = torch.rand(volume.shape, generator=gen, dtype=torch.float64)
    y.grad = None
    (fbp(y, volume, geometry) * w).sum().backward()
    e = torch.zeros(geometry.sino_shape, dtype=torch.float64)
    e[3, 40] = 1.0
    assert y.grad[3, 40].item() == pytest.approx((fbp(e, volume, geometry) * w).sum().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_dtype_and_device(dtype, device):
    """Same result in every dtype (float16 is computed in float32) and on every device."""
    geometry = PARALLEL_2D
    sino = torch.as_tensor(project_analytic(DISC, geometry))
    reference = fbp(sino, VOLUME_2D, geometry)
    rec = fbp(sino.to(device=device, dtype=dtype), VOLUME_2D, geometry)
    assert rec.dtype == dtype and rec.device.type == device
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2}[dtype]
    torch.testing.assert_close(rec.double().cpu(), reference, rtol=0, atol=tolerance)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_bad_inputs():
    geometry = ParallelBeam(_full(8), (16,))
    volume = Volume((16, 16))
    sino = torch.zeros(geometry.sino_shape)
    with pytest.raises(ValueError, match=r"\(8, 15\).*\(8, 16\)"):
        fbp(torch.zeros(8, 15), volume, geometry)
    with pytest.raises(ValueError, match=r"\(16,\).*\(8, 16\)"):
        fbp(torch.zeros(16), volume, geometry)
    with pytest.raises(ValueError, match="floating-point"):
        fbp(torch.zeros(8, 16, dtype=torch.int64), volume, geometry)
    for bad in (math.nan, math.inf):
        broken = sino.clone()
        broken[2, 3] = bad
        with pytest.raises(ValueError, match="sinogram contains NaN or Inf"):
            fbp(broken, volume, geometry)
    for scaling in (0.0, -0.5, 1.5, math.nan, "high"):
        with pytest.raises(ValueError, match="frequency_scaling"):
            fbp(sino, volume, geometry, frequency_scaling=scaling)
    with pytest.raises(ValueError, match="3D volume"):
        fbp(torch.zeros(8, 4, 16), volume, ParallelBeam(_full(8), (4, 16)))
    with pytest.raises(ValueError, match=r"torch\.Tensor"):
        fbp(sino.numpy(), volume, geometry)
