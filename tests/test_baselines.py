"""Tests of dip_uq.baselines: MC-dropout and SGLD DIP end to end on a tiny 2D scan, seeding,
and argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dip_uq as du
from dip_uq.baselines import UQResult, mc_dropout, sgld

N = 16


@pytest.fixture(scope="module")
def scan():
    """16² Shepp-Logan, 12 parallel-beam angles, 5 % noise."""
    A = du.RayTransform(
        du.Volume((N, N)),
        du.ParallelBeam(np.linspace(0, np.pi, 12, endpoint=False), (N,)),
        "torch",
    )
    return A, du.simulate(A, du.phantoms.shepp_logan((N, N)), noise=0.05, seed=0)


def tiny_unet(seed: int = 0) -> du.UNet:
    return du.UNet(2, scales=2, channels=4, skip_channels=2, seed=seed)


def check_result(result: UQResult, n_samples: int, iterations: int) -> None:
    assert isinstance(result, UQResult)
    assert result.mean.shape == result.std.shape == (N, N)
    assert result.samples.shape == (n_samples, N, N)
    assert bool(torch.isfinite(result.samples).all())
    assert bool((result.std > 0).all())
    torch.testing.assert_close(result.mean, result.samples.mean(0))
    torch.testing.assert_close(result.std, result.samples.std(0))
    assert len(result.history["loss"]) == iterations


def test_mc_dropout_end_to_end_and_seeded(scan):
    A, y = scan
    net = tiny_unet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.get_rng_state()
    kwargs = dict(dropout=0.1, iterations=20, n_samples=6, device="cpu", network=net)
    result = mc_dropout(A, y, **kwargs)
    assert torch.equal(state, torch.get_rng_state())  # dropout drew from a forked RNG
    check_result(result, 6, 20)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # not trained
    again = mc_dropout(A, y, **kwargs)
    assert torch.equal(again.samples, result.samples) and again.history == result.history
    other = mc_dropout(A, y, **{**kwargs, "seed": 1})
    assert not torch.equal(other.samples, result.samples)


def test_mc_dropout_default_network(scan):
    A, y = scan
    result = mc_dropout(A, y, iterations=2, n_samples=2, device="cpu")
    check_result(result, 2, 2)


def test_sgld_end_to_end_and_seeded(scan):
    A, y = scan
    state = torch.get_rng_state()
    kwargs = dict(iterations=30, burn_in=10, n_samples=4, device="cpu", network=tiny_unet())
    result = sgld(A, y, **kwargs)
    assert torch.equal(state, torch.get_rng_state())
    check_result(result, 4, 30)
    # thinning (30 - 10) // 4 = 5, the last sample after the final step
    assert result.history["sample_iterations"] == [14, 19, 24, 29]
    again = sgld(A, y, **kwargs)
    assert torch.equal(again.samples, result.samples) and again.history == result.history
    assert not torch.equal(sgld(A, y, **{**kwargs, "seed": 1}).samples, result.samples)
    # the Langevin noise is what spreads the samples: more noise, larger std
    louder = sgld(A, y, **{**kwargs, "noise_scale": 20.0})
    assert float(louder.std.mean()) > 2 * float(result.std.mean())
    # burn_in defaults to half the run
    halves = sgld(A, y, **{**kwargs, "burn_in": None, "iterations": 12})
    assert halves.history["sample_iterations"] == [8, 9, 10, 11]


@pytest.mark.parametrize(
    ("function", "kwargs", "message"),
    [
        (mc_dropout, {"dropout": 0.0}, r"dropout must be a probability in \(0, 1\), got 0.0"),
        (mc_dropout, {"dropout": 1}, "dropout must be a probability"),
        (mc_dropout, {"n_samples": 1}, "n_samples must be an integer >= 2, got 1"),
        (mc_dropout, {"network": torch.nn.Conv2d(1, 1, 3)}, "needs a dip_uq.UNet as network"),
        (sgld, {"n_samples": 2.5}, "n_samples must be an integer >= 2"),
        (sgld, {"burn_in": -1}, "burn_in must be a non-negative integer"),
        (sgld, {"noise_scale": 0}, "noise_scale must be a finite number > 0"),
        (sgld, {"checkpoint": "run.pt"}, "sgld does not take a checkpoint"),
        (sgld, {"burn_in": 3, "iterations": 4}, "burn_in=3 leaves fewer than n_samples=2"),
    ],
)
def test_bad_arguments(scan, function, kwargs, message):
    A, y = scan
    args = {"iterations": 2, "n_samples": 2, "device": "cpu", "network": tiny_unet(), **kwargs}
    with pytest.raises(ValueError, match=message):
        function(A, y, **args)
