"""Randomised Nyström preconditioner for the measurement-space system of the sampler.

The conjugate-gradient sampler solves ``(M Mᵀ + μ I) a = b`` on sinograms (``μ = σ_y²``,
:mod:`dip_uq.laplace.posterior`). ``M Mᵀ = A J Σ Jᵀ Aᵀ`` has a spectrum that decays fast but
spans many orders of magnitude above ``μ``, with hundreds of eigenvalues above ``μ`` even
for a small DIP, so plain CG needs far more iterations than a run can afford
(docs/measurements.md).
A rank-``r`` Nyström approximation ``M Mᵀ ≈ U Λ Uᵀ`` (Frangella, Tropp & Udell, "Randomized
Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44, 2023) gives the preconditioner::

    P⁻¹ = (λ_r + μ) U (Λ + μ I)⁻¹ Uᵀ + (I - U Uᵀ),

which maps the top ``r`` eigenvalues of the system onto about ``λ_r + μ`` and leaves the
rest alone: the condition number falls from ``(λ_1 + μ)/μ`` to about ``(λ_r + μ)/μ`` (to at
most ``1e-9 (λ_1 + μ)/μ``, the floor of :meth:`NystromPreconditioner.__call__`).
Building it costs ``2 r`` products with ``M Mᵀ`` (one subspace iteration, then the sketch;
done in batches) and is shared by all the samples, and by the mode, of one set of
hyperparameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = ["DEFAULT_RANKS", "NystromPreconditioner", "default_rank"]

BASIS_BYTES = 2**30  # the most memory the default rank gives the float64 basis U
DEFAULT_RANKS = (400, 1200)  # the range of default_rank (below the memory bound)


def default_rank(size: int) -> int:
    """The default rank for ``size`` measurements: ``m / 8`` within :data:`DEFAULT_RANKS`, and at
    most what keeps ``U`` (float64) within :data:`BASIS_BYTES`.

    The rank trades its build (``2 r`` products) against the CG iterations of every batch of
    samples (a run solves about ten: EM, the std map, the prior-scale search): a larger rank
    cut the iterations and time of every batch by more than its longer build costs, and too
    small a rank left the solves of a 3D DIP unconverged at the iteration cap
    (docs/measurements.md has the measurements). The rank grows with the number of
    eigenvalues far above ``μ``, which grows with ``m``.
    """
    low, high = DEFAULT_RANKS
    return max(1, min(high, max(low, size // 8), BASIS_BYTES // (8 * size)))


@dataclass
class NystromPreconditioner:
    """``P⁻¹`` of a rank-``r`` Nyström approximation of a PSD operator plus a shift.

    Attributes:
        basis: ``U``, orthonormal columns ``(m, r)`` (flattened sinograms), float64.
        eigenvalues: ``Λ``, the approximate top eigenvalues of the operator, descending
            ``(r,)``, float64.
        shift: ``μ``, the multiple of the identity added to the operator.
    """

    basis: torch.Tensor
    eigenvalues: torch.Tensor
    shift: float

    FLOOR: ClassVar[float] = 1e-9  # least shrink factor of __call__ (float64: eps 1e-16)

    @classmethod
    def build(
        cls,
        operator: Callable[[torch.Tensor], torch.Tensor],
        size: int,
        rank: int,
        shift: float,
        *,
        like: torch.Tensor,
        seed: int = 0,
        batch: int = 32,
        power: int = 1,
    ) -> NystromPreconditioner:
        """Sketch the PSD ``operator`` (rows ``(B, size)`` to rows ``(B, size)``, without the
        shift) with ``min(rank, size)`` Gaussian test vectors, applied ``batch`` at a time,
        after ``power`` subspace iterations (each ``rank`` more products).

        One subspace iteration pays for itself on DIP Jacobians, whose spectra decay too slowly
        for a plain sketch to find the top eigenspace: a plain sketch underestimates ``λ_r``
        and CG stalls above the tolerance; with one iteration ``λ_r`` comes out far larger
        and CG converges in a fraction of the iterations, which saves much more time than
        the doubled build costs (docs/measurements.md).

        ``like`` gives the dtype and device; ``seed`` makes the sketch reproducible (every
        process of a distributed run builds the same preconditioner).
        """
        if rank < 1:
            raise ValueError(f"the preconditioner rank must be at least 1, got {rank}")
        if not shift > 0:
            raise ValueError(f"the shift must be positive, got {shift}")
        if power < 0:
            raise ValueError(f"the subspace iterations must be 0 or more, got {power}")
        rank = min(rank, size)
        g = torch.Generator(device=like.device).manual_seed(seed)
        omega = torch.randn(size, rank, generator=g, device=like.device, dtype=like.dtype)
        q = torch.linalg.qr(omega).Q  # (size, rank)

        def apply(columns: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([operator(part) for part in columns.T.split(batch)]).T

        y = apply(q)  # (size, rank)
        for _ in range(power):
            q = torch.linalg.qr(y).Q
            y = apply(q)
        # the sketch in float64 (r × r and m × r: cheap next to the products); a tiny
        # shift ν keeps the Cholesky factor defined where the operator is rank-deficient
        q, y = q.double(), y.double()
        nu = math.sqrt(size) * torch.finfo(like.dtype).eps * float(y.norm())
        y = y + nu * q
        core = q.T @ y
        factor = torch.linalg.cholesky((core + core.T) / 2)
        b = torch.linalg.solve_triangular(factor, y.T, upper=False).T  # y · factor⁻ᵀ
        u, s, _ = torch.linalg.svd(b, full_matrices=False)
        eigenvalues = (s.square() - nu).clamp_min(0)
        return cls(u, eigenvalues, float(shift))

    @property
    def rank(self) -> int:
        """``r``, the number of eigenpairs kept."""
        return int(self.eigenvalues.numel())

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``P⁻¹ v`` for rows ``v`` ``(B, m)``, returned in ``v``'s dtype.

        ``P⁻¹`` shrinks the direction of ``λ_i`` to ``(λ_r + μ) / (λ_i + μ)``; that factor is
        kept at least :attr:`FLOOR`. Computed as ``v - U (1 - factor) Uᵀ v`` in float64: in
        float32 a factor near round-off is lost in the cancellation (``μ / λ_1`` falls below
        float32's round-off once EM has raised the prior), ``P⁻¹`` stops being positive
        definite and CG diverges, so float32 needed a floor of 1e-5, and that floor bounded
        the condition number at ``1e-5 λ_1 / μ``, thousands on a 3D DIP, where CG then
        stalled far above the tolerance; in float64 it converges (docs/measurements.md). The
        products of ``U`` cost little next to the Jacobian products.
        """
        factor = (self.eigenvalues[-1] + self.shift) / (self.eigenvalues + self.shift)
        scale = factor.clamp_min(self.FLOOR) - 1
        w = v.to(self.basis.dtype)
        return (w + ((w @ self.basis) * scale) @ self.basis.T).to(v.dtype)
