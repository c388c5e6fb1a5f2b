"""Image-quality metrics for reconstructions with a known ground truth."""

from __future__ import annotations

import math

import torch

__all__ = ["psnr"]


def psnr(estimate: torch.Tensor, truth: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(range² / mean((estimate - truth)²))``.

    Args:
        estimate: reconstruction, any shape.
        truth: ground truth, same shape.
        data_range: the peak value range; ``truth.max() - truth.min()`` by default.

    >>> round(psnr(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.1]), data_range=1.0), 2)
    23.01
    """
    if estimate.shape != truth.shape:
        raise ValueError(
            f"shapes differ: estimate {tuple(estimate.shape)}, truth {tuple(truth.shape)}"
        )
    truth = truth.to(estimate)
    span = float(truth.max() - truth.min()) if data_range is None else float(data_range)
    mse = float(((estimate - truth) ** 2).mean())
    return 10 * math.log10(span**2 / mse) if mse > 0 else math.inf
