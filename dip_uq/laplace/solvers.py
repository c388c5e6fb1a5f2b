"""Batched solvers for the symmetric positive definite systems of the posterior sampler.

:func:`solve` takes the system's operator ``N`` as a callable on a batch of rows ``(B, n)``;
each row is an independent system. The posterior (:mod:`dip_uq.laplace.posterior`) gives it
one of two systems, in whitened weights ``u`` (``θ = Σ^{1/2} u``, ``M = A J Σ^{1/2}``):

* CG, the default: the measurement-space system ``(M Mᵀ + σ_y² I) a = σ_y e₀ - M u₀`` on
  flattened sinograms ``(B, m)``, preconditioned by
  :class:`~dip_uq.laplace.preconditioner.NystromPreconditioner`; the sample is
  ``u = u₀ + Mᵀ a``. The mode solves the same system with the data ``r`` on the right.
* SGD: the same measurement-space system in the preconditioned coordinates of CG
  (gradient ``P⁻¹ (N a - b)``), with Nesterov momentum and iterate averaging; the largest
  eigenvalue of ``P⁻¹ N`` (power iteration) sets the step. It needs no inner products, so
  it suits stochastic or distributed products, but with exact products CG is faster
  (``scripts/bench_laplace.py convergence``), so CG is the default.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..diagnostics import warn_not_converged

__all__ = ["Method", "SolverConfig", "fixed_rows", "largest_eigenvalue", "solve"]

# a linear map applied to a batch of rows (B, n) -> (B, n)
RowMap = Callable[[torch.Tensor], torch.Tensor]

RESTARTS = 5  # the most restarts of a CG row from its true residual (see _cg)
# solves whose relative residual ends above this multiple of the tolerance get a warning:
# float32 CG may stop a row on a breakdown a little above the tolerance, harmless, while a
# residual tens of times the tolerance (the earlier plain-sketch preconditioner, cut short)
# left the std several times the converged one (docs/measurements.md)
UNCONVERGED_FACTOR = 10.0


class Method(str, enum.Enum):
    """How posterior samples are computed; both the strings and the members are accepted."""

    SGD = "sgd"  # measurement space, preconditioned: Nesterov momentum, iterate averaging
    CG = "cg"  # measurement space: preconditioned conjugate gradients (the default)
    EXACT = "exact"  # weight space: dense linear algebra (tiny problems only)


@dataclass
class SolverConfig:
    """Settings of the iterative solvers, with their defaults.

    Attributes:
        method: see :class:`Method`.
        iterations: the most iterations per solve.
        tolerance: stop once every row's relative residual ``||N u - b|| / ||b||`` is below it.
        lr: SGD step size; ``None`` takes ``1 / λ_max(N)`` (estimated by power iteration).
        preconditioner_rank: rank of the Nyström preconditioner of the measurement-space
            solves (:mod:`dip_uq.laplace.preconditioner`; sketched at the cost of twice that
            many Jacobian product pairs, and rescaled for a common prior factor and the noise);
            0 for plain CG; ``None`` (default): grown while it saves more CG work than it
            costs (:meth:`~dip_uq.laplace.preconditioner.NystromSketch.choose_rank`).
        product_rows: rows every product of a posterior-sample solve is applied to at once
            (:func:`fixed_rows`): a batch of samples goes through the network this many at a
            time, the last ones padded with zeros, so that a sample's float32 arithmetic
            is the same in a batch of any size and on any number of processes. Larger is
            faster per sample where the device has room (a product's time grows much more
            slowly than its rows; docs/measurements.md) and wastes more on a batch smaller
            than it.
        momentum: Nesterov momentum of SGD.
        average_from: fraction of ``iterations`` after which SGD's iterates are averaged.
        progress: show a progress bar.
    """

    method: Method | str = Method.CG
    iterations: int = 300
    tolerance: float = 1e-3
    lr: float | None = None
    preconditioner_rank: int | None = None
    product_rows: int = 8
    momentum: float = 0.9
    average_from: float = 0.5
    progress: bool = False

    def unconverged(self, residual: float | torch.Tensor) -> bool | torch.Tensor:
        """Whether a solve that ended at the relative ``residual`` stopped short: above
        :data:`UNCONVERGED_FACTOR` times the tolerance (worth a warning); row by row for a
        tensor of residuals."""
        return residual > UNCONVERGED_FACTOR * self.tolerance

    def remedy(self, info: dict) -> str | None:
        """The setting to raise for a solve (:func:`solve`'s ``info``) that stopped short:
        ``"cg_iterations"`` (this config's ``iterations``) where a row stopped at the cap;
        None where every such row stalled on float32 round-off (``info["stalled"]``), which
        more iterations will not cure."""
        if bool((self.unconverged(info["residual"]) & ~info["stalled"]).any()):
            return "cg_iterations"
        return None

    def warn(self, message: str, info: dict) -> None:
        """Warn (:class:`~dip_uq.diagnostics.NotConvergedWarning`) that the solve of ``info``
        stopped short, naming :meth:`remedy` or saying that round-off stopped it."""
        setting = self.remedy(info)
        if setting is None:
            message += "; float32 round-off stops the solve there, more iterations will not help"
        warn_not_converged(message, setting, stacklevel=4)

    def __post_init__(self) -> None:
        try:
            self.method = Method(self.method)
        except ValueError:
            known = ", ".join(repr(m.value) for m in Method)
            raise ValueError(f"unknown method {self.method!r}; known methods: {known}") from None
        if self.iterations < 1:
            raise ValueError(f"SolverConfig.iterations must be at least 1, got {self.iterations}")
        if self.preconditioner_rank is not None and self.preconditioner_rank < 0:
            raise ValueError(
                "SolverConfig.preconditioner_rank must be 0 (none) or more, got "
                f"{self.preconditioner_rank}"
            )
        if self.product_rows < 1:
            raise ValueError(
                f"SolverConfig.product_rows must be at least 1, got {self.product_rows}"
            )
        if not self.tolerance > 0:
            raise ValueError(f"SolverConfig.tolerance must be positive, got {self.tolerance}")


def fixed_rows(row_map: RowMap, rows: int) -> RowMap:
    """``row_map`` applied to blocks of exactly ``rows`` rows (the last one padded with zero
    rows, whose results are dropped): the rows of ``(B, ...)`` in, the rows of the result out.

    Why: batched float32 kernels (the vmapped convolutions of the Jacobian products, the
    matrix products of the preconditioner) round a row's result differently when it shares
    the call with another number of rows (by float32 round-off), and CG carries that into the
    posterior samples, which are the small remainder of a prior sample minus its
    data-explained part: the same samples solved in batches of different sizes differed by
    percents in image space and their std maps by far more (docs/measurements.md). With
    every call the same shape, a row's result depends on its own values only: not on the
    other rows' values, nor on its position in the block (bit for bit on the CPU).
    """

    def apply(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        padded = torch.cat([x, x.new_zeros(-n % rows, *x.shape[1:])])
        return torch.cat([row_map(part) for part in padded.split(rows)])[:n]

    return apply


def largest_eigenvalue(normal: RowMap, like: torch.Tensor, iterations: int = 20) -> float:
    """Power-iteration estimate of ``λ_max(N)`` (slightly low; callers leave a margin)."""
    g = torch.Generator(device=like.device).manual_seed(12345)
    v = torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype)[None]
    value = 1.0
    for _ in range(iterations):
        w = normal(v)
        value = float(w.norm())
        v = w / value
    return value


def _residual_norms(r: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
    return r.norm(dim=1) / b_norm


def solve(
    normal: RowMap,
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    config: SolverConfig | None = None,
    lam_max: float | None = None,
    preconditioner: RowMap | None = None,
) -> tuple[torch.Tensor, dict]:
    """Solve ``N u = b`` row by row for ``b`` of shape ``(B, P)``, starting at ``x0`` (or ``b``).

    ``preconditioner`` applies an approximation of ``N⁻¹`` to rows: CG's, and SGD's
    gradient ``P⁻¹ (N u - b)``.

    Each row stops on its own once its relative residual is below the tolerance, and ``N`` is
    then applied to the remaining rows only: every step size and stopping decision is the
    row's own, so a row's result does not depend on the rows solved with it, and converged
    rows cost nothing. Bit for bit where ``N`` and ``preconditioner`` treat every row alike
    whatever the number of rows (:func:`fixed_rows`); else up to round-off, which CG
    amplifies.

    Returns the solution and a dict with ``iterations`` (of the slowest row), ``residual`` (the
    relative residual of every row at the end), ``stalled`` (the rows CG stopped above the
    tolerance before the iteration cap, their restarts used up or their step broken down:
    float32 round-off ended them) and ``trace`` (the largest relative residual of the rows
    still running, per iteration).
    """
    config = config or SolverConfig()
    x = (b if x0 is None else x0).clone()
    b_norm = b.norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)
    trace: list[float] = []
    bar = tqdm(
        total=config.iterations,
        desc=f"posterior samples ({config.method.value})",
        disable=not config.progress,
        leave=False,
    )
    running = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)  # at the cap
    if config.method is Method.CG:
        it, active = _cg(normal, b, x, b_norm, config, trace, bar, preconditioner or torch.clone)
        running[active] = True
    else:
        pre = preconditioner or torch.clone
        if lam_max is None and config.lr is None:
            lam_max = largest_eigenvalue(lambda v: pre(normal(v)), b)
        lr = config.lr if config.lr is not None else 1.0 / (1.1 * lam_max)  # power it. is low
        x, it = _sgd(normal, b, x, b_norm, config, lr, trace, bar, pre)
        running[:] = True  # SGD stops at the tolerance or the cap
    residual = _residual_norms(b - normal(x), b_norm)
    bar.close()
    stalled = ~running & (residual >= config.tolerance)
    return x, {"iterations": it, "residual": residual, "stalled": stalled, "trace": trace}


def _cg(
    normal: RowMap,
    b: torch.Tensor,
    x: torch.Tensor,
    b_norm: torch.Tensor,
    config: SolverConfig,
    trace: list[float],
    bar: tqdm,
    preconditioner: RowMap,
) -> tuple[int, torch.Tensor]:
    """Preconditioned conjugate gradients on the rows of ``x`` (updated in place); returns
    the iterations and the rows still running at the cap.

    In float32 the recursively updated residual drifts away from the true ``b - N x`` when
    the system spans many orders of magnitude (as a 3D DIP's does: rows stopped at the
    tolerance on their recursive residual with a true one several times larger, the mode's
    far larger still; docs/measurements.md). So a row
    that reaches the tolerance on its recursive residual is checked against its true one, and
    one whose step finds a non-positive curvature ``pᵀ N p`` restarts; either way CG restarts
    that row from its true residual (at most :data:`RESTARTS` times). A row whose step from a
    true residual (the start, a restart) breaks down stops where it is: a restart would
    repeat that step.
    """
    tiny = torch.finfo(b.dtype).tiny
    r = b - normal(x)
    p = preconditioner(r)
    rz = (r * p).sum(1)
    active = torch.arange(b.shape[0], device=b.device)
    broken = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    fresh = torch.ones_like(broken)  # r is the true residual b - N x, not a recursive one
    restarts = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)

    def restart(rows: torch.Tensor) -> None:
        r[rows] = b[rows] - normal(x[rows])
        p[rows] = preconditioner(r[rows])
        rz[rows] = (r[rows] * p[rows]).sum(1)
        restarts[rows] += 1
        fresh[rows] = True

    it = 0
    while it < config.iterations:
        res = _residual_norms(r[active], b_norm[active])
        trace.append(float(res.max()))
        check = (res < config.tolerance) & ~fresh[active] & (restarts[active] < RESTARTS)
        if bool(check.any()):
            restart(active[check])
            res = _residual_norms(r[active], b_norm[active])
        active = active[(res >= config.tolerance) & ~broken[active]]
        if active.numel() == 0:
            break
        pa, rz_a = p[active], rz[active]
        q = normal(pa)
        curvature = (pa * q).sum(1)
        bad = ~(curvature > 0) | ~(rz_a > 0)
        alpha = torch.where(bad, 0.0, rz_a / curvature.clamp_min(tiny))
        x[active] += alpha[:, None] * pa
        ra = r[active] - alpha[:, None] * q
        za = preconditioner(ra)
        rz_new = (ra * za).sum(1)
        p[active] = za + (rz_new / rz_a.clamp_min(tiny))[:, None] * pa
        r[active], rz[active] = ra, rz_new
        broken[active] = bad & (fresh[active] | (restarts[active] >= RESTARTS))
        fresh[active] = False
        again = active[bad & ~broken[active]]
        if again.numel():
            restart(again)
        it += 1
        bar.update()
    return it, active


def _sgd(
    normal: RowMap,
    b: torch.Tensor,
    x: torch.Tensor,
    b_norm: torch.Tensor,
    config: SolverConfig,
    lr: float,
    trace: list[float],
    bar: tqdm,
    preconditioner: RowMap,
) -> tuple[torch.Tensor, int]:
    """Preconditioned Nesterov gradient descent with iterate averaging; returns the solution
    and the iterations. The stopping test uses the plain residual at the look-ahead point."""
    velocity = torch.zeros_like(x)
    averaged = torch.zeros_like(x)
    n_averaged = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    start_avg = int(config.average_from * config.iterations)
    active = torch.arange(b.shape[0], device=b.device)
    it = 0
    for it in range(1, config.iterations + 1):
        xa, va = x[active], velocity[active]
        residual = normal(xa + config.momentum * va) - b[active]  # half the loss gradient
        va = config.momentum * va - lr * preconditioner(residual)
        xa = xa + va
        x[active], velocity[active] = xa, va
        res = _residual_norms(residual, b_norm[active])
        trace.append(float(res.max()))
        if it > start_avg:
            n_averaged[active] += 1
            averaged[active] += (xa - averaged[active]) / n_averaged[active, None]
        bar.update()
        active = active[res >= config.tolerance]
        if active.numel() == 0:
            break
    return torch.where(n_averaged[:, None] > 0, averaged, x), it
