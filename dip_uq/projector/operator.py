"""The linear-operator protocol that reconstructors and the Laplace posterior ask of ``A``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Operator"]


@runtime_checkable
class Operator(Protocol):
    """A linear map between volumes and sinograms with its adjoint, on batched tensors.

    :class:`~dip_uq.projector.RayTransform` is the one the library builds; anything with
    these four members (a masked or subsampled ray transform, a dense matrix in a test) can
    stand in for it.
    """

    @property
    def domain_shape(self) -> tuple[int, ...]:
        """Shape of one input (a volume, ``(z, y, x)`` or ``(y, x)``)."""

    @property
    def range_shape(self) -> tuple[int, ...]:
        """Shape of one output (a sinogram, ``(angles, rows, cols)`` or ``(angles, cols)``)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., *domain_shape) -> (..., *range_shape)``, differentiable."""

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``(..., *range_shape) -> (..., *domain_shape)``, the transpose of ``__call__``."""
