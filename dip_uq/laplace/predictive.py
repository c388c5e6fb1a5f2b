"""The posterior predictive of measurements the posterior did not see.

Projections ``A_h`` kept out of a fit are predicted by the linearised model as

    y_h ~ N(A_h x̂, A_h Σ A_hᵀ + σ_y² I),

estimated per detector pixel from posterior samples: the predictive variance of pixel ``j`` is
``mean_k (A_h d_k)_j² + σ_y²``, with ``d_k`` the samples' deviations from the mean (``J ζ_k``
for the linearised Laplace, ``x_k - x̄`` for MC dropout and SGLD). The held-out check
(:mod:`dip_uq.holdout`) scores it; the prior-scale search (:mod:`dip_uq.laplace.prior_scale`)
maximises its likelihood.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..distributed import DistContext
    from ..projector.operator import Operator

__all__ = ["predictive"]


def predictive(
    A_held: Operator,
    mean: torch.Tensor,
    deviations: torch.Tensor,
    noise_variance: float,
    *,
    group: DistContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The posterior predictive of the held-out measurements, per detector pixel.

    Args:
        A_held: the ray transform of the held-out projections.
        mean: the reconstruction ``x̂``, ``A_held.domain_shape``.
        deviations: posterior samples minus the mean, ``(n, *domain_shape)``; with a
            ``group``, this rank's share.
        noise_variance: ``σ_y²`` of one measurement.
        group: the processes that share the samples (their sums are all-reduced).

    Returns:
        ``(predicted, std, sample_std)``, each ``A_held.range_shape``: ``A_h x̂``, the
        predictive std ``sqrt(mean_k (A_h d_k)² + σ_y²)`` and its samples' part alone.
    """
    with torch.no_grad():
        predicted = A_held(mean)
        projected = A_held(deviations).double()
        total = projected.square().sum(0)
        count = torch.tensor(float(projected.shape[0]), dtype=torch.float64)
        if group is not None:
            total = group.all_reduce_sum(total, "all-reduce of the held-out predictive")
            count = group.all_reduce_sum(count, "all-reduce of the held-out sample count")
        sample_var = total / count
        std = (sample_var + noise_variance).sqrt()
    return predicted, std.to(predicted.dtype), sample_var.sqrt().to(predicted.dtype)
