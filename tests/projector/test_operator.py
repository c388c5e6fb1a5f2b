"""The Operator protocol: RayTransform satisfies it, and so does any linear map with the
four members, which the linearised Laplace then accepts in place of a ray transform."""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call

import dip_uq as du
from dip_uq.laplace import LinearisedLaplace


class MatrixOperator:
    """A dense matrix between 8×8 images and 20 measurements."""

    domain_shape = (8, 8)
    range_shape = (20,)

    def __init__(self) -> None:
        self.matrix = torch.randn(20, 64, generator=torch.Generator().manual_seed(0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-2], 64) @ self.matrix.T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.matrix).reshape(*y.shape[:-1], 8, 8)


def test_ray_transforms_and_matrices_are_operators():
    A = du.RayTransform(du.Volume((8, 8)), du.ParallelBeam(np.zeros(3), (8,)), "torch")
    assert isinstance(A, du.Operator) and isinstance(MatrixOperator(), du.Operator)
    assert not isinstance(torch.nn.Linear(2, 2), du.Operator)  # no adjoint, no shapes


def test_the_linearised_laplace_takes_any_operator():
    A = MatrixOperator()
    net = du.UNet(dim=2, scales=2, channels=4, skip_channels=2, seed=0)
    z = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    params = {k: v.detach() for k, v in net.named_parameters()}
    y = A(functional_call(net, params, (z,))[0, 0]).detach() + 0.01
    lap = LinearisedLaplace(
        image_fn=lambda p: functional_call(net, p, (z,))[0, 0],
        params=params,
        weights=net.conv_weights(),
        operator=A,
        y=y,
        noise_variance=1e-2,
    )
    exact = lap.exact_covariance().diagonal().sqrt().reshape(8, 8)
    std = lap.std(256)
    relative = ((std.double() - exact) / exact).abs().median()
    assert float(relative) < 0.15  # 256 samples: a std to about 5 %, median over voxels
