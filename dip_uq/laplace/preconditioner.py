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

**The rank grows with the run's needs** (:meth:`NystromSketch.choose_rank`): the sketch
grows in blocks (:data:`INITIAL_RANK`, then doubling) while the next block is expected to
save more products in CG than it costs. Preconditioned CG needs about ``c √κ_r``
iterations, ``κ_r = (λ_r + μ)/μ`` (:data:`ITERATIONS_PER_ROOT_CONDITION`), for each of the
:data:`ROWS_PER_SKETCH` rows a run solves at one set of hyperparameters; doubling the rank
costs ``(1 + power) r`` products and shrinks ``λ_r`` by the factor the last doubling did.
How many eigenvalues lie above ``μ`` varies by orders of magnitude between scans and prior
scales (a well-fitted 64² DIP of 30 angles has hundreds, a 30° arc of a real scan at 128²
far fewer), so a fixed rank was either far too large, its build the slowest part of a run,
or too small, CG then stopping at its iteration cap. Each block depends on the seed and its
index only and the first ``r`` columns of a sketch are those a sketch of rank ``r`` is made
of, so a sketch is the same whatever order it grew in, and a resumed run that restores the
rank (:meth:`dip_uq.LinearisedLaplace.state_dict`) solves with the same preconditioners.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = [
    "INITIAL_RANK",
    "ITERATIONS_PER_ROOT_CONDITION",
    "MAX_RANK",
    "ROWS_PER_SKETCH",
    "NystromPreconditioner",
    "NystromSketch",
    "rank_cap",
]

BASIS_BYTES = 2**31  # the most memory a sketch and its float64 basis U may take
INITIAL_RANK = 100  # the first block of an adaptive sketch; every later one doubles the rank
MAX_RANK = 1600  # the largest rank an adaptive sketch grows to (below the memory bound)
# CG iterations to a relative residual of 1e-3 per √κ of the preconditioned system (the CG
# bound 0.5 ln(2/1e-3) is 3.8; docs/measurements.md has the fit on a DIP)
ITERATIONS_PER_ROOT_CONDITION = 4.3
# the rows a run solves at one set of hyperparameters: EM's 2 x 8 samples, the std map's 16
# (the prior-scale search's 8 per candidate, but its scales pass each other's sketch on)
ROWS_PER_SKETCH = 16
# λ_r / λ_2r where only one block is sketched: a spectrum falling as 1 / i²
FIRST_DECAY = 4.0


def rank_cap(size: int) -> int:
    """The largest rank for ``size`` measurements: :data:`MAX_RANK`, at most ``size`` and at
    most what keeps the sketch (float32 ``Q`` and ``Y``) and the float64 basis ``U`` within
    :data:`BASIS_BYTES`."""
    return max(1, min(MAX_RANK, size, BASIS_BYTES // (16 * size)))


def _blocks(rank: int) -> list[int]:
    """The block widths of a sketch of ``rank`` columns: ``INITIAL_RANK``, then doubling the
    rank (100, 100, 200, 400, ...), the last one cut to ``rank``."""
    widths: list[int] = []
    while sum(widths) < rank:
        widths.append(min(max(INITIAL_RANK, sum(widths)), rank - sum(widths)))
    return widths


def _ends(widths: list[int]) -> list[int]:
    """The ranks at the ends of blocks of ``widths`` (100, 200, 400, ...)."""
    return [sum(widths[: i + 1]) for i in range(len(widths))]


class NystromSketch:
    """A randomised Nyström sketch ``(Q, Y = G Q)`` of a PSD operator ``G`` that grows on
    demand, and the preconditioners of ``s G + μ I`` made from it.

    Args:
        operator: ``G`` (without a shift) on rows ``(B, size)``.
        size: the number of rows of ``G`` (flattened sinograms: measurements).
        like: the dtype and device of the products.
        seed: seeds the Gaussian test matrix, block by block (every process of a
            distributed run builds the same sketch).
        batch: rows per product while sketching.
        power: subspace iterations per block (each as many products again). One pays for
            itself on DIP Jacobians, whose spectra decay too slowly for a plain sketch to
            find the top eigenspace: a plain sketch underestimates ``λ_r`` and CG stalls above
            the tolerance; with one iteration ``λ_r`` comes out far larger and CG converges in
            a fraction of the iterations (docs/measurements.md).

    A block of ``w`` columns costs ``(1 + power) w`` products: ``Z = G Ω`` (``power`` times),
    orthogonalised against the columns before it, then ``Y = G Q``. The span of the first ``r``
    columns is that of a one-shot sketch with the same test vectors.
    """

    def __init__(
        self,
        operator: Callable[[torch.Tensor], torch.Tensor],
        size: int,
        *,
        like: torch.Tensor,
        seed: int = 0,
        batch: int = 32,
        power: int = 1,
    ) -> None:
        if power < 0:
            raise ValueError(f"the subspace iterations must be 0 or more, got {power}")
        self.operator, self.size, self.seed = operator, int(size), int(seed)
        self.batch, self.power = batch, power
        self.dtype, self.device = like.dtype, like.device
        self.q = torch.zeros(self.size, 0, dtype=like.dtype, device=like.device)
        self.y = torch.zeros_like(self.q)
        self.widths: list[int] = []
        self._eigenvalues: dict[int, torch.Tensor] = {}  # by rank
        self._pairs: tuple[int, torch.Tensor, torch.Tensor] | None = None  # the last (r, U, Λ)

    @property
    def rank(self) -> int:
        """The columns sketched so far."""
        return int(self.q.shape[1])

    def _apply(self, columns: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.operator(part) for part in columns.T.split(self.batch)]).T

    def grow(self, rank: int) -> None:
        """Sketch the blocks of a rank-``min(rank, size)`` sketch (:func:`_blocks`) that are
        not sketched yet.

        Raises:
            ValueError: ``rank < 1``, or the sketch was cut to another rank before.
        """
        if rank < 1:
            raise ValueError(f"the preconditioner rank must be at least 1, got {rank}")
        widths = _blocks(min(rank, self.size))
        done = len(self.widths)
        if self.rank < sum(widths) and self.widths != widths[:done]:
            raise ValueError(f"a sketch cut to rank {self.rank} cannot grow to {rank}")
        for index in range(done, len(widths)):
            g = torch.Generator(device=self.device).manual_seed(self.seed + 7919 * index)
            omega = torch.randn(self.size, widths[index], generator=g, device=self.device)
            z = torch.linalg.qr(omega.to(self.dtype)).Q
            for _ in range(self.power):
                z = self._apply(z)
            # orthonormal to the columns before: the last columns of a Householder QR of
            # [Q, Z] (where G maps Z into span(Q), Gram-Schmidt would leave round-off only,
            # normalised into columns along Q; Householder's Q is orthogonal as a whole)
            both = torch.linalg.qr(torch.cat([self.q, z], dim=1).double()).Q
            block = both[:, self.rank :].to(self.dtype)
            self.q = torch.cat([self.q, block], dim=1)
            self.y = torch.cat([self.y, self._apply(block)], dim=1)
            self.widths.append(widths[index])

    def _factor(self, rank: int) -> tuple[torch.Tensor, float]:
        """``B = Y_ν (Qᵀ Y_ν)^{-1/2}`` (Cholesky) of the first ``rank`` columns, float64, and
        the shift ``ν``: the Nyström approximation is ``B Bᵀ - ν I``. A tiny ``ν`` keeps the
        factor defined where ``G`` is rank-deficient."""
        if rank not in _ends(self.widths):
            raise ValueError(f"rank {rank} is not the end of a block of the sketch")
        q, y = self.q[:, :rank].double(), self.y[:, :rank].double()
        nu = math.sqrt(self.size) * torch.finfo(self.dtype).eps * float(y.norm())
        y = y + nu * q
        core = q.T @ y
        factor = torch.linalg.cholesky((core + core.T) / 2)
        return torch.linalg.solve_triangular(factor, y.T, upper=False).T, nu

    def eigenvalues(self, rank: int) -> torch.Tensor:
        """The eigenvalues, descending ``(rank,)`` float64, of the Nyström approximation from
        the first ``rank`` columns (the end of a block), from its ``rank × rank`` Gram matrix
        (cheap: what the choice of the rank reads)."""
        if rank not in self._eigenvalues:
            b, nu = self._factor(rank)
            squares = torch.linalg.eigvalsh(b.T @ b).flip(0)  # the singular values of B, squared
            self._eigenvalues[rank] = (squares - nu).clamp_min(0)
        return self._eigenvalues[rank]

    def eigenpairs(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, Λ)`` of the Nyström approximation from the first ``rank`` columns (the end of
        a block): ``U`` ``(size, rank)`` orthonormal and ``Λ`` descending ``(rank,)``, float64,
        by an SVD (kept for the last rank asked for only: ``U`` is large)."""
        if self._pairs is None or self._pairs[0] != rank:
            b, nu = self._factor(rank)
            u, s, _ = torch.linalg.svd(b, full_matrices=False)
            self._pairs = (rank, u, (s.square() - nu).clamp_min(0))
        return self._pairs[1], self._pairs[2]

    def choose_rank(
        self, scale: float, shift: float, *, rows: int = 0, iterations: int = 300
    ) -> int:
        """The rank for ``scale · G + shift · I``: every column sketched so far (they cost
        nothing more), and more blocks while the next one costs fewer products than it saves
        ``rows`` solves (:func:`_worth_growing`) or while CG is expected to need more than
        half of ``iterations`` (the model's iterations are an estimate), up to
        :func:`rank_cap`."""
        if not shift > 0:
            raise ValueError(f"the shift must be positive, got {shift}")
        ends = _ends(_blocks(rank_cap(self.size)))
        conditions: list[float] = []
        for index, rank in enumerate(ends):
            self.grow(rank)
            conditions.append(1 + scale * float(self.eigenvalues(rank)[-1]) / shift)
            if index + 1 == len(ends):
                break
            if ends[index + 1] <= self.rank:
                continue  # sketched already
            capped = 2 * ITERATIONS_PER_ROOT_CONDITION * conditions[-1] ** 0.5 > iterations
            cost = (1 + self.power) * (ends[index + 1] - rank)
            if not (capped or _worth_growing(conditions, cost, rows)):
                break
        return rank

    def preconditioner(self, scale: float, shift: float, rank: int) -> NystromPreconditioner:
        """The preconditioner of ``scale · G + shift · I`` from the first ``rank`` columns
        (grown to them; :meth:`choose_rank` chooses)."""
        if not shift > 0:
            raise ValueError(f"the shift must be positive, got {shift}")
        rank = min(rank, self.size)
        self.grow(rank)
        basis, eigenvalues = self.eigenpairs(rank)
        return NystromPreconditioner(basis, eigenvalues * scale, float(shift))


def _worth_growing(conditions: list[float], cost: int, rows: int) -> bool:
    """Whether the next block (``cost`` products) saves more: the condition numbers
    ``κ_r`` at the block ends so far predict the next by the last ratio (or
    :data:`FIRST_DECAY`), and each of ``rows`` solves saves
    :data:`ITERATIONS_PER_ROOT_CONDITION` ``(√κ_r - √κ_next)`` products."""
    now = conditions[-1]
    decay = conditions[-2] / now if len(conditions) > 1 else FIRST_DECAY
    following = max(1.0, now / max(decay, 1.0))
    saved = rows * ITERATIONS_PER_ROOT_CONDITION * (now**0.5 - following**0.5)
    return saved > cost


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
        """The preconditioner of ``operator + shift · I`` from a :class:`NystromSketch` of
        ``min(rank, size)`` columns (``like``, ``seed``, ``batch``, ``power`` as there)."""
        if rank < 1:
            raise ValueError(f"the preconditioner rank must be at least 1, got {rank}")
        sketch = NystromSketch(operator, size, like=like, seed=seed, batch=batch, power=power)
        return sketch.preconditioner(1.0, shift, rank)

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
