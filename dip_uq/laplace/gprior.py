"""The g-prior's per-weight scale: ``g_i ∝ diag(Jᵀ Aᵀ A J)_ii^{-1/2}``.

With ``Σ = σ² G K G``, ``G = diag(g)`` (:class:`~dip_uq.laplace.priors.MaternPrior`'s
``scale``), every weight gets a prior variance inversely proportional to the squared norm of
its column of ``A J``: how much the data sees it. The prior then no longer depends on how the
network happens to parameterise the image (a weight that feeds a GroupNorm can be scaled by
any ``c`` without changing the image, ``J`` scaling by ``1/c``), and weights the data barely
constrain, whose image directions lie mostly in the null space of ``A``, get the wider prior
(the isotropic g-prior of the sampling-based linearised Laplace of Antorán et al., ICLR 2023).

The diagonal is estimated with Rademacher probes (Hutchinson):
``diag(Jᵀ Aᵀ A J) = E[(Jᵀ Aᵀ z)²]`` for ``z`` uniform on ``{-1, 1}^m``, exact when the probes
are the ``m`` unit vectors; the estimate's relative error per weight is about
``sqrt(2 / probes)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["GPRIOR_PROBES", "gprior_scale"]

GPRIOR_PROBES = 128  # Rademacher probes of the diagonal's estimate
# diagonal entries are kept above this fraction of their median: a weight the data does not
# see at all would otherwise get an unbounded prior variance
MIN_RELATIVE_DIAGONAL = 1e-3


def gprior_scale(
    data_vjp: Callable[[torch.Tensor], torch.Tensor],
    data_shape: Sequence[int],
    *,
    probes: int = GPRIOR_PROBES,
    seed: int = 0,
    like: torch.Tensor,
    chunk: int = 8,
) -> torch.Tensor:
    """The g-prior's per-weight scale ``g`` ``(P,)``, 1 for the weight with the median diagonal.

    Args:
        data_vjp: ``z ↦ Jᵀ Aᵀ z`` for a batch of sinograms ``(B, *data_shape)`` to ``(B, P)``.
        data_shape: the sinogram's shape.
        probes: Rademacher probes; ``probes >= prod(data_shape)`` uses the unit vectors
            instead (the exact diagonal).
        seed: seeds the probes.
        like: a tensor of the sinograms' dtype and device.
        chunk: probes per call of ``data_vjp``.
    """
    m = int(torch.Size(data_shape).numel())
    exact = probes >= m
    count = m if exact else int(probes)
    generator = torch.Generator(device=like.device).manual_seed(seed)
    diagonal = None
    with torch.no_grad():
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            if exact:
                z = torch.zeros(n, m, dtype=like.dtype, device=like.device)
                z[torch.arange(n), torch.arange(start, start + n)] = 1
            else:
                bits = torch.randint(0, 2, (n, m), generator=generator, device=like.device)
                z = (2 * bits - 1).to(like.dtype)
            columns = data_vjp(z.reshape(n, *data_shape)).double().square().sum(0)
            diagonal = columns if diagonal is None else diagonal + columns
    diagonal = diagonal / (1 if exact else count)
    median = diagonal.median()
    diagonal = diagonal.clamp_min(MIN_RELATIVE_DIAGONAL * median)
    return (diagonal / median).rsqrt().to(like.dtype)
