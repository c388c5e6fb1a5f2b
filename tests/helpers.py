"""Small problems shared by the test files of every folder (``from helpers import ...``;
tests/conftest.py puts this folder on ``sys.path``).

* :func:`parallel_scan`: a Shepp-Logan parallel-beam scan with its noise level.
* :func:`small_unet`: the 3-scale U-Net the DIP tests fit.
* :func:`calibrated`: mean, std and a truth drawn from them, for the calibration metrics.
* :data:`SHAPE`, :func:`small_linearised_unet`, :func:`tiny_problem`: the 12×12 linearised
  U-Net of the Laplace tests and the parts of a ``LinearisedLaplace`` built on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.func import functional_call

import dip_uq as du

SHAPE = (12, 12)  # image shape of tiny_problem, in voxels


def parallel_scan(n: int, n_angles: int, noise: float = 0.02, span: float = np.pi, seed: int = 0):
    """Shepp-Logan on an ``n x n`` grid of unit voxels, parallel beam, detector of ``n`` pixels."""
    A = du.RayTransform(
        du.Volume((n, n)),
        du.ParallelBeam(np.linspace(0, span, n_angles, endpoint=False), (n,)),
        "torch",
    )
    x = du.phantoms.shepp_logan((n, n))
    y, sigma = du.simulate(A, x, noise=noise, seed=seed, return_sigma=True)
    return A, x, y, float(sigma)


def small_unet(dim: int = 2, seed: int = 0) -> du.UNet:
    return du.UNet(dim, scales=3, channels=(8, 16, 16), skip_channels=4, seed=seed)


def calibrated(shape, seed=0, scale=1.0):
    """``mean``, ``std`` and a truth drawn from ``N(mean, (scale · std)²)`` per voxel."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g)
    std = 0.1 + torch.rand(shape, generator=g)
    truth = mean + scale * std * torch.randn(shape, generator=g)
    return mean, std, truth


def small_linearised_unet() -> dict[str, Any]:
    """A 2-scale U-Net of 4 channels (seed 0) on a fixed random input of :data:`SHAPE`
    (seed 1): the ``image_fn``, ``params`` and ``weights`` of a ``LinearisedLaplace``."""
    net = du.UNet(dim=2, scales=2, channels=4, skip_channels=2, seed=0)
    z = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(1))
    return dict(
        image_fn=lambda p: functional_call(net, p, (z,))[0, 0],
        params={k: v.detach() for k, v in net.named_parameters()},
        weights=net.conv_weights(),
    )


def tiny_problem() -> tuple[dict, float]:
    """:func:`small_linearised_unet` on a 12×12 image, 6 parallel-beam angles, 5% noise: the
    parts of a ``LinearisedLaplace`` and the true noise variance. float32, as in use (CPU
    convolutions with per-sample weights are ~30x slower in float64). The
    ``small_laplace_problem`` fixture of tests/laplace/conftest.py; also used by
    test_distributed."""
    A = du.RayTransform(
        du.Volume(SHAPE), du.ParallelBeam(np.linspace(0, np.pi, 6, endpoint=False), (16,)), "torch"
    )
    network = small_linearised_unet()
    y, sigma = du.simulate(A, du.phantoms.shepp_logan(SHAPE), noise=0.05, seed=0, return_sigma=True)
    parts = dict(**network, operator=A, y=y)
    return parts, float(sigma) ** 2
