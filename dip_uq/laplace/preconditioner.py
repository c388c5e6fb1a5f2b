"""Randomised Nyström preconditioner for the measurement-space system of the sampler.

The conjugate-gradient sampler solves ``(M Mᵀ + μ I) a = b`` on sinograms (``μ = σ_y²``,
:mod:`dip_uq.laplace.posterior`). ``M Mᵀ = A J Σ Jᵀ Aᵀ`` has a spectrum that decays fast but
spans many orders of magnitude above ``μ`` (a 32² DIP with 1440 measurements: largest
eigenvalue 2.4e6 ``μ``, 487 above ``μ``), so plain CG needs on the order of a thousand
iterations.
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
    samples (a run solves about ten: EM, the std map, the prior-scale search). Measured on
    one thread, batches of 8 samples at the fitted prior scale: the 2D demo's DIP (64²,
    2880 measurements) took 81 / 42 / 17 iterations (21.5 / 11.0 / 5.3 s) with rank 200 /
    400 / 800, built in 17 / 31 / 56 s; the 3D demo's (24³ cone beam, 20736 measurements)
    stopped at the 300-iteration cap (residual 1e-2, 137 s) with rank 600 (built in 76 s)
    and reached 1e-3 in 169 (97 s) with rank 1200 (142 s). The rank grows with the number
    of eigenvalues far above ``μ``, which grows with ``m``.
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
        for a plain sketch to find the top eigenspace: on the 2D demo's DIP (64², 32 channels)
        the plain rank-200 sketch put ``λ_r`` at 2.1 ``μ`` and CG stalled after 223 iterations at
        a residual of 4e-3; with one iteration ``λ_r`` came out at 39 ``μ`` and CG reached 1e-3 in
        64 (24³ cone-beam DIP: 300 iterations at 6e-3 before, 72 at 2e-3 after; the build took
        22 s instead of 11 s, the solve 29 s instead of 113 s).

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
        float32 a factor near round-off is lost in the cancellation (``μ / λ_1 = 2e-8`` was
        measured after EM raised the prior), ``P⁻¹`` stops being positive definite and CG
        diverges, so float32 needed a floor of 1e-5, and that floor bounded the condition
        number at ``1e-5 λ_1 / μ``: 6800 on the 3D demo's DIP (24³ cone beam, ``λ_1 / μ =
        6.8e8``), where CG then stalled at a relative residual of 0.04-0.15 after 150
        iterations; in float64, rank 600 reached 7.5e-4 in 94. The products of ``U`` cost
        little next to the Jacobian products.
        """
        factor = (self.eigenvalues[-1] + self.shift) / (self.eigenvalues + self.shift)
        scale = factor.clamp_min(self.FLOOR) - 1
        w = v.to(self.basis.dtype)
        return (w + ((w @ self.basis) * scale) @ self.basis.T).to(v.dtype)
