"""Randomised Nyström preconditioner for the measurement-space system of the sampler.

The conjugate-gradient sampler solves ``(M Mᵀ + μ I) a = b`` on sinograms (``μ = σ_y²``,
:mod:`dip_uq.laplace`). ``M Mᵀ = A J Σ Jᵀ Aᵀ`` has a spectrum that decays fast but spans
many orders of magnitude above ``μ`` (a 32² DIP with 1440 measurements: largest eigenvalue
2.4e6 ``μ``, 487 above ``μ``), so plain CG needs on the order of a thousand iterations.
A rank-``r`` Nyström approximation ``M Mᵀ ≈ U Λ Uᵀ`` (Frangella, Tropp & Udell, "Randomized
Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44, 2023) gives the preconditioner::

    P⁻¹ = (λ_r + μ) U (Λ + μ I)⁻¹ Uᵀ + (I - U Uᵀ),

which maps the top ``r`` eigenvalues of the system onto about ``λ_r + μ`` and leaves the
rest alone: the condition number falls from ``(λ_1 + μ)/μ`` to about ``(λ_r + μ)/μ``.
Building it costs ``r`` products with ``M Mᵀ`` (done in batches) and is shared by all the
samples, and by the mode, of one set of hyperparameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["NystromPreconditioner"]


@dataclass
class NystromPreconditioner:
    """``P⁻¹`` of a rank-``r`` Nyström approximation of a PSD operator plus a shift.

    Attributes:
        basis: ``U``, orthonormal columns ``(m, r)`` (flattened sinograms).
        eigenvalues: ``Λ``, the approximate top eigenvalues of the operator, descending ``(r,)``.
        shift: ``μ``, the multiple of the identity added to the operator.
    """

    basis: torch.Tensor
    eigenvalues: torch.Tensor
    shift: float

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
    ) -> NystromPreconditioner:
        """Sketch the PSD ``operator`` (rows ``(B, size)`` to rows ``(B, size)``, without the
        shift) with ``min(rank, size)`` Gaussian test vectors, applied ``batch`` at a time.

        ``like`` gives the dtype and device; ``seed`` makes the sketch reproducible (every
        process of a distributed run builds the same preconditioner).
        """
        if rank < 1:
            raise ValueError(f"the preconditioner rank must be at least 1, got {rank}")
        if not shift > 0:
            raise ValueError(f"the shift must be positive, got {shift}")
        rank = min(rank, size)
        g = torch.Generator(device=like.device).manual_seed(seed)
        omega = torch.randn(size, rank, generator=g, device=like.device, dtype=like.dtype)
        q = torch.linalg.qr(omega).Q  # (size, rank)
        with torch.no_grad():
            y = torch.cat([operator(part) for part in q.T.split(batch)]).T  # (size, rank)
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
        return cls(u.to(like.dtype), eigenvalues.to(like.dtype), float(shift))

    @property
    def rank(self) -> int:
        """``r``, the number of eigenpairs kept."""
        return int(self.eigenvalues.numel())

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``P⁻¹ v`` for rows ``v`` ``(B, m)``."""
        coefficients = v @ self.basis  # (B, r)
        scale = (self.eigenvalues[-1] + self.shift) / (self.eigenvalues + self.shift) - 1
        return v + (coefficients * scale) @ self.basis.T
