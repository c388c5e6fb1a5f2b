"""dip_uq.directions: the Fourier directions a scan measures, checked against the projector
itself, the power per direction, and the run's posterior against a limited arc's wedge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dip_uq import ConeBeam, FanBeam, ParallelBeam, RayTransform, Volume, pipeline
from dip_uq.directions import (
    BINS,
    DirectionalPower,
    bin_centres,
    direction_power,
    missing_wedge,
    sector_of,
    wedge_frequencies,
)
from dip_uq.pipeline import Settings
from dip_uq.simulation import simulate_scan


def _arc(degrees: float, n: int) -> np.ndarray:
    return np.linspace(0.0, np.radians(degrees), n, endpoint=False)


def _wave(shape: tuple[int, int], direction_deg: float, frequency: float = 0.15) -> torch.Tensor:
    """A plane wave of ``frequency`` cycles per voxel along ``direction_deg`` (x along the
    columns, y along the rows), under a Gaussian window that keeps it off the grid's edge."""
    y, x = torch.meshgrid(
        torch.arange(shape[0], dtype=torch.float64),
        torch.arange(shape[1], dtype=torch.float64),
        indexing="ij",
    )
    phi = np.radians(direction_deg)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    window = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (shape[0] / 5) ** 2))
    return torch.cos(2 * np.pi * frequency * (x * np.cos(phi) + y * np.sin(phi))) * window


@pytest.mark.parametrize(
    "geometry",
    [
        ParallelBeam(_arc(180, 60), (64,)),
        ParallelBeam(_arc(180, 20), (64,)),  # sparse, not limited
        FanBeam(_arc(360, 60), (64,), 1.0, 128.0, 64.0),
        FanBeam(_arc(180, 60), (64,), 1.0, 128.0, 64.0),  # a half turn: the fan fills the gap
    ],
)
def test_a_scan_over_the_half_circle_has_no_missing_wedge(geometry):
    assert missing_wedge(geometry) is None


def test_a_parallel_arc_misses_the_directions_beyond_it():
    start, width = missing_wedge(ParallelBeam(_arc(90, 30), (64,)))
    assert start == pytest.approx(87.0, abs=0.1)  # the last projection's direction
    assert width == pytest.approx(93.0, abs=0.1)


def test_a_fan_measures_its_half_angle_beyond_the_arc_in_2d_and_3d():
    # half-angle over the detector: atan(32 / 192) = 9.46°
    start, width = missing_wedge(FanBeam(_arc(90, 30), (64,), 1.0, 128.0, 64.0))
    half = np.degrees(np.arctan(32 / 192))
    assert width == pytest.approx(93.0 - 2 * half, abs=0.1)
    assert start == pytest.approx(87.0 + half, abs=0.1)
    cone = missing_wedge(ConeBeam(_arc(90, 30), (8, 64), 1.0, 128.0, 64.0))
    assert cone == pytest.approx((start, width), abs=1e-9)


@pytest.mark.parametrize(
    "geometry",
    [ParallelBeam(_arc(90, 30), (96,)), FanBeam(_arc(100, 30), (96,), 1.0, 192.0, 96.0)],
    ids=["parallel", "fan"],
)
def test_the_projector_cannot_see_a_wave_in_the_wedge_and_sees_one_outside(geometry):
    """The convention checked against the forward model: a plane wave whose direction lies
    in the missing wedge projects to almost nothing, one in the measured directions does not."""
    volume = Volume((64, 64))
    A = RayTransform(volume, geometry, backend="torch")
    wedge = missing_wedge(geometry)
    inside = wedge[0] + wedge[1] / 2
    outside = wedge[0] - 45.0
    energy = {
        where: float(A(_wave((64, 64), direction).float()).square().sum())
        for where, direction in (("inside", inside), ("outside", outside))
    }
    assert energy["inside"] < 1e-2 * energy["outside"]


@pytest.mark.parametrize("direction", [0.0, 32.5, 90.0, 137.5])
def test_a_plane_wave_has_its_power_in_its_directions_bin(direction):
    sums, counts = direction_power(_wave((64, 64), direction)[None])
    mean = sums / counts
    assert int(torch.argmax(mean)) == int(direction // (180 / BINS))


def test_power_sums_add_over_images_and_a_volume_is_its_slices():
    images = torch.randn(4, 3, 16, 12, generator=torch.Generator().manual_seed(0))
    sums, counts = direction_power(images)
    halves = [direction_power(part) for part in (images[:2], images[2:])]
    torch.testing.assert_close(sums, halves[0][0] + halves[1][0])
    torch.testing.assert_close(counts, halves[0][1] + halves[1][1])
    slices = [direction_power(images[:, z]) for z in range(3)]
    torch.testing.assert_close(sums, sum(s for s, _ in slices))
    # a grid this small leaves some 5° bins without a frequency: NaN there, not zero
    empty = counts == 0
    power = DirectionalPower.of(images, (0.0, 90.0)).power
    assert empty.any() and np.isnan(power[empty.numpy()]).all()
    # white noise has the same power per frequency in every direction
    sums, counts = direction_power(torch.randn(8, 64, 64, generator=torch.Generator()))
    mean = sums / counts
    assert float(mean.std() / mean.mean()) < 0.1


def test_the_wedges_frequencies_are_those_whose_direction_lies_in_it():
    inside = wedge_frequencies((8, 8), (45.0, 90.0))  # 45° to 135°: the y axis's side
    assert inside.shape == (8, 8) and inside.dtype == torch.bool
    assert not inside[0, 0]  # DC has no direction
    assert inside[1, 0] and inside[3, 0]  # k along y: 90°
    assert not inside[0, 1] and not inside[0, 3]  # k along x: 0°
    assert inside[2, 1] and not inside[1, 2]  # atan2(2, 1) = 63°, atan2(1, 2) = 27°
    assert inside[2, -1] and not inside[1, -2]  # 117° in; 153° out


def test_the_ratio_compares_the_wedge_with_the_measured_directions():
    angles = bin_centres()
    power = np.where(sector_of(angles, (90.0, 90.0)), 6.0, 2.0)
    spread = DirectionalPower(angles, power, (90.0, 90.0))
    assert spread.ratio == pytest.approx(3.0)
    assert spread.missing.sum() == BINS // 2
    assert json.loads(json.dumps(spread.to_dict()))["ratio_missing_to_measured"] == 3.0
    # a sum over processes of shares gives the power of all images together
    images = torch.randn(6, 8, 8, generator=torch.Generator().manual_seed(1))
    whole = DirectionalPower.of(images, (90.0, 90.0))
    doubled = DirectionalPower.of(images, (90.0, 90.0), all_reduce=lambda t: 2 * t)
    np.testing.assert_allclose(doubled.power, whole.power)


def test_a_run_on_a_limited_arc_spreads_its_samples_into_the_wedge(tmp_path):
    """The issue's test: on a limited arc the posterior varies more along the directions the
    scan does not measure than along those it does; a full scan gets no such panel."""
    fast = {"channels": 8, "iterations": 300, "samples": 8, "em_steps": 1}
    limited = simulate_scan(size=24, angles=20, noise=0.02, arc=np.pi / 2)
    told = []
    result = pipeline.reconstruct(
        limited, Settings(**fast, prior_scale="weights"), notify=told.append
    )
    assert result.directions is not None
    assert result.directions.wedge == missing_wedge(limited.geometry)
    assert result.directions.ratio > 2.0
    assert any(line.startswith("limited arc: the Fourier directions 86°–180°") for line in told)
    result.save(tmp_path / "limited")
    recorded = json.loads((tmp_path / "limited" / "run.json").read_text())["directions"]
    assert recorded["ratio_missing_to_measured"] == pytest.approx(result.directions.ratio)

    full = simulate_scan(size=24, angles=20, noise=0.02)
    result = pipeline.reconstruct(full, Settings(**fast, prior_scale="weights"))
    assert result.directions is None
    result.save(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "run.json").read_text())["directions"] is None
