"""Sample-based EM (MacKay updates) of the hyperparameters of a linearised Laplace posterior.

:meth:`dip_uq.laplace.LinearisedLaplace.fit_hyperparameters` runs it; this module sees the
posterior through :class:`Posterior`, what EM reads and updates of it.

In the whitened coordinates of :mod:`dip_uq.laplace.posterior` (``θ = Σ^{1/2} u``,
``M = A J Σ^{1/2}``):

**E-step.** The linear model's mode ``û`` solves ``(I + MᵀM/σ_y²) û = Mᵀ r / σ_y²`` with
``r = y - A f(θ*) + A J θ*``; posterior samples ``u_k`` as in the posterior module.

**M-step**, for a block ``b`` with ``n_b`` weights (or, by default, for all blocks together:
one factor on every ``σ_b²``, see below): the effective dimension
``γ_b = n_b - E||u_{k,b}||²`` (``= n_b - E[ζ_bᵀ Σ_b⁻¹ ζ_b]`` in weight space), estimated
as ``mean_k (||u₀_{k,b}||² - ||u_{k,b}||²)`` with each sample's own base noise ``u₀`` as
control variate (same mean, since ``E||u₀_b||² = n_b``; without it the estimate carries the
noise of ``n_b`` prior directions, ``±sqrt(2 n_b / K)`` for K samples, which swamps a small
``γ_b``). A block whose estimate is within two standard errors (over
the samples) of 0 keeps its variance for that step: with samples the solver has not
converged, ``u_k`` stays close to ``u₀_k``, the estimate of ``γ_b`` tends to 0 and the update
below would blow ``σ_b²`` up within a few steps (docs/measurements.md). Even
so, truncated solves can make EM raise ``σ_b²`` step after step (the mode's whitened norm
does not shrink as it should); ``σ_b²`` is therefore capped at 100 times its start, the
scale of the fitted weights, with a warning. Otherwise::

    σ_b² ← θ̂_bᵀ K_b⁻¹ θ̂_b / γ_b = σ_b² ||û_b||² / γ_b,
    σ_y² ← ||y - A h(θ̂)||² / (m - Σ_b γ_b).

(The function-space estimate ``Σ_b γ_b = E||M u||²/σ_y²`` was tried for the noise update and
dropped: with samples that CG has not fully converged it came out near ``m`` and threw
``σ_y²`` up by orders of magnitude.)

**One factor for all blocks** (the default, ``per_block=False``): ``σ_b² ← s σ_b²`` with
``s = Σ_b ||û_b||² / Σ_b γ_b``. The per-block update has more freedom than one DIP scan
supports: even with exact dense solves, per-block steps drove some blocks' variances down
by orders of magnitude and left the std overconfident, while the shared scale settled within
a few steps, with better coverage and test log-likelihood (docs/measurements.md).

**The noise variance** is fitted by default (``fit_noise=True``). Its update needs the
linear model's exact mode: with the plain-sketch preconditioner of earlier versions and a
truncated CG, the residual ``||r - M û||²`` was far too large and ``σ_y²`` swung by orders
of magnitude between steps. With the Nyström preconditioner it is stable, within a small
factor of the true ``σ_y²``, as the DIP's own estimate is (docs/measurements.md). When the
prior is fitted too, ``σ_y²`` is held for the first :data:`NOISE_HOLD_STEPS` step(s); with
``fit_prior=False`` it is updated from the first step.

Length scales stay fixed at the value given (default 1 tap): they shape the prior within a
filter, the variances carry its scale, and fitting them would need a second estimator.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Protocol

import torch
from tqdm.auto import tqdm

from ..diagnostics import warn_not_converged
from .moments import batches
from .solvers import Method

if TYPE_CHECKING:
    from ..distributed import DistContext
    from ..projector.operator import Operator
    from .priors import MaternPrior
    from .solvers import SolverConfig

__all__ = ["Posterior", "fit_hyperparameters", "last_change", "unsettled"]

MIN_GAMMA_FRACTION = 1e-3  # γ_b is kept above this fraction of n_b (sampling noise)
# σ_b² is updated only where the estimate of γ_b exceeds this many standard errors
GAMMA_SIGNIFICANCE = 2.0
# EM never raises σ_b² above this multiple of its start, the scale of the fitted weights
MAX_VARIANCE_GROWTH = 100.0
# with fit_noise and fit_prior, σ_y² is held for the first EM steps (the schedule of Antorán
# et al., ICLR 2023): at the start the prior is at the fitted weights' scale, and a joint
# update there moves σ_y² by what the prior's scale has yet to correct
NOISE_HOLD_STEPS = 1
# EM has settled when its last step changed no hyperparameter by more than this (relative)
SETTLED_CHANGE = 0.1
logger = logging.getLogger("dip_uq")


class Posterior(Protocol):
    """What EM reads and updates of a :class:`~dip_uq.laplace.LinearisedLaplace` (a
    protocol, so that this module need not import the class that calls it)."""

    y: torch.Tensor
    A: Operator
    prior: MaternPrior
    solver: SolverConfig
    group: DistContext | None
    noise_variance: float
    history: dict[str, list]
    em_warm_starts: dict[tuple[int, int], torch.Tensor]
    last_mode_solve: dict | None  # the solver's info of the last mode()

    @property
    def linear_data(self) -> torch.Tensor:
        """``r = y - A f(θ*) + A J θ*``, shape ``sino_shape``."""

    def images(self, u: torch.Tensor) -> torch.Tensor:
        """``J Σ^{1/2} u``: whitened weights ``(B, P)`` to images ``(B, *volume)``."""

    def mode(self) -> torch.Tensor:
        """The linear model's whitened posterior mode ``û``, ``(P,)``."""

    def sample_weights(
        self, n_samples: int, *, start: int = 0, x0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Whitened posterior samples ``(n_samples, P)`` and the solver's info."""


def fit_hyperparameters(
    lap: Posterior,
    em_steps: int,
    n_samples: int,
    *,
    batch: int | None = None,
    per_block: bool = False,
    fit_noise: bool = False,
    fit_prior: bool = True,
    progress: bool = False,
) -> dict[str, list]:
    """Run ``em_steps`` EM steps on ``lap`` in place; returns its :attr:`history`.

    See :meth:`LinearisedLaplace.fit_hyperparameters`, which calls this, for the arguments.
    """
    mine = batches(n_samples, batch, lap.group)
    # warm starts, one per batch of ``mine``, kept on ``lap`` across calls (the pipeline makes
    # one step per call, to checkpoint it): each sample starts from its own previous solution,
    # which after a small change of the hyperparameters is most of the way there
    states = [lap.em_warm_starts.get(rows) for rows in mine]
    for _ in tqdm(range(em_steps), desc="EM", disable=not progress):
        stats = _statistics(lap, n_samples, mine, states)
        _update(
            lap,
            stats,
            n_samples,
            states,
            per_block=per_block,
            fit_noise=fit_noise,
            fit_prior=fit_prior,
        )
        lap.em_warm_starts.update(zip(mine, states, strict=True))
    return lap.history


def _statistics(
    lap: Posterior,
    n_samples: int,
    mine: list[tuple[int, int]],
    states: list[torch.Tensor | None],
) -> torch.Tensor:
    """The E-step's sums over all ranks, float64 ``(3 nb + 2,)``: ``[Σ_k d_k,b | Σ_k d_k,b² |
    ||û_b||² (per block each) | Σ_k (Σ_b d_k,b)² | ||r - M û||²]`` with
    ``d_k,b = ||u₀_k,b||² - ||u_k,b||²``; updates the warm starts ``states`` in place.

    The sums over ``k`` are taken over a table of ``d_k,b`` by sample index, in index order,
    after the all-reduce: every rank fills the rows of its own samples and leaves the others
    at 0, so the all-reduce adds exact zeros, and the sums are the same bit for bit whatever
    the batches and the number of ranks (summed per batch, they differed by round-off).
    """
    blocks = lap.prior.blocks
    nb = len(blocks)
    d = torch.zeros(n_samples, nb, dtype=torch.float64)
    mode = torch.zeros(nb + 1, dtype=torch.float64)  # ||û_b||², ||r - M û||²; 0 off rank 0
    for i, (start, stop) in enumerate(mine):
        samples, info = lap.sample_weights(stop - start, start=start, x0=states[i])
        states[i] = info["state"]
        norms = lap.prior.block_sqnorms(samples.double())
        # the samples' own base noise u₀ as control variate: E||u₀_b||² = n_b exactly, and
        # ||u₀_b||² - ||u_b||² varies with the data-informed part of u_b only, where
        # n_b - ||u_b||² carries the chi-square noise of n_b prior directions
        base = lap.prior.block_sqnorms(info["base"].double())
        d[start:stop] = torch.stack([base[b] - norms[b] for b in blocks], 1).cpu()
    if lap.group is None or lap.group.rank == 0:
        # the mode is one deterministic solve: the other ranks would only repeat it
        u_hat = lap.mode()
        _check_mode(lap)
        norms = lap.prior.block_sqnorms(u_hat[None].double())
        mode[:nb] = torch.stack([norms[b][0] for b in blocks]).cpu()
        with torch.no_grad():
            misfit = lap.linear_data - lap.A(lap.images(u_hat[None]))[0]
        mode[nb] = float(misfit.double().square().sum())
    if lap.group is not None:
        both = lap.group.all_reduce_sum(
            torch.cat([d.reshape(-1), mode]), "all-reduce of the EM statistics"
        )
        d, mode = both[: d.numel()].reshape(d.shape), both[d.numel() :]
    return torch.cat(
        [d.sum(0), d.square().sum(0), mode[:nb], d.sum(1).square().sum()[None], mode[nb:]]
    )


def _check_mode(lap: Posterior) -> None:
    """Warn when the mode's solve stopped short (:meth:`SolverConfig.unconverged`): its
    misfit sets ``σ_y²`` and its norms the prior variances (a mode stopped at the cap has
    made ``σ_y²`` swing widely; docs/measurements.md)."""
    info = lap.last_mode_solve
    worst = float(info["residual"].max())
    if lap.solver.unconverged(worst):
        lap.solver.warn(
            f"EM: the linear model's mode stopped after {info['iterations']} iterations at a "
            f"relative residual of {worst:.1e} (tolerance {lap.solver.tolerance:.0e}); this "
            "step's noise and prior variances rest on it",
            info,
        )


def _update(
    lap: Posterior,
    stats: torch.Tensor,
    n_samples: int,
    states: list[torch.Tensor | None],
    *,
    per_block: bool,
    fit_noise: bool,
    fit_prior: bool,
) -> None:
    """The M-step from the E-step's ``stats``: new variances, the history, rescaled warm
    starts ``states`` (in place)."""
    m = lap.y.numel()
    blocks = lap.prior.blocks
    nb = len(blocks)
    gammas = {}
    for i, b in enumerate(blocks):
        n_b = lap.prior.block_sizes[b]
        gammas[b] = min(max(float(stats[i]) / n_samples, MIN_GAMMA_FRACTION * n_b), n_b)
    # the shared factor sums the blocks' estimates before bounding them: bounded block by block,
    # the blocks the data do not see (γ_b ≈ 0) each added their floor, a sizeable bias towards
    # a narrower prior (docs/measurements.md)
    n_params = lap.prior.n_params
    total = min(max(float(stats[:nb].sum()) / n_samples, MIN_GAMMA_FRACTION * n_params), n_params)
    if not fit_prior:
        factors = dict.fromkeys(blocks, 1.0)
    elif per_block:
        factors = {
            b: _em_factor(stats[i], stats[nb + i], stats[2 * nb + i], gammas[b], n_samples)
            for i, b in enumerate(blocks)
        }
    else:
        shared = _em_factor(
            stats[:nb].sum(),
            stats[-2],
            stats[2 * nb : 3 * nb].sum(),
            total,
            n_samples,
        )
        factors = dict.fromkeys(blocks, shared)
    new_variances, capped = {}, set()
    for b in blocks:
        new_variances[b] = lap.prior.variances[b] * factors[b]
        cap = MAX_VARIANCE_GROWTH * lap.history[f"prior_variance/{b}"][0]
        if new_variances[b] > cap:
            capped.add(b)
            new_variances[b] = cap
    data_residual = float(stats[-1])
    gamma_total = min(sum(gammas.values()) if per_block else total, (1 - MIN_GAMMA_FRACTION) * m)
    steps_done = len(lap.history["noise_variance"]) - 1
    if fit_noise and (steps_done >= NOISE_HOLD_STEPS or not fit_prior):
        lap.noise_variance = data_residual / (m - gamma_total)
    if lap.solver.method is not Method.CG:
        # whitened warm starts refer to the old variances
        states[:] = [_rescale(lap.prior, state, new_variances) for state in states]
    lap.prior.variances = new_variances
    lap.history["noise_variance"].append(lap.noise_variance)
    lap.history.setdefault("data_residual", []).append(data_residual)
    lap.history.setdefault("gamma_total", []).append(gamma_total)
    if capped:
        warn_not_converged(
            f"EM pushed the prior variance of {', '.join(sorted(capped))} beyond "
            f"{MAX_VARIANCE_GROWTH:g} times its start and was stopped there; the posterior "
            "samples have probably not converged",
            "cg_iterations",
        )
    for b in blocks:
        lap.history[f"prior_variance/{b}"].append(new_variances[b])
        lap.history.setdefault(f"gamma/{b}", []).append(gammas[b])


def last_change(history: dict[str, list]) -> dict[str, float]:
    """The relative change ``|new / old - 1|`` of every hyperparameter in the last EM step of
    ``history`` (:attr:`LinearisedLaplace.history`), by name (``noise_variance``,
    ``prior_variance/<block>``); empty before the first step. EM has settled when all are
    below :data:`SETTLED_CHANGE`."""
    return {
        name: abs(values[-1] / values[-2] - 1)
        for name, values in history.items()
        if (name == "noise_variance" or name.startswith("prior_variance/")) and len(values) > 1
    }


def unsettled(history: dict[str, list]) -> str | None:
    """A one-line report when the last EM step of ``history`` changed a hyperparameter by more
    than :data:`SETTLED_CHANGE` (the largest change, how many moved so much), else ``None``."""
    changes = last_change(history)
    moved = {k: v for k, v in changes.items() if v > SETTLED_CHANGE}
    if not moved:
        return None
    name, change = max(moved.items(), key=lambda kv: kv[1])
    return (
        f"EM has not settled: its last step changed {name} by {100 * change:.0f}% ({len(moved)} "
        f"of {len(changes)} hyperparameters by more than {100 * SETTLED_CHANGE:.0f}%)"
    )


def _em_factor(
    d_sum: torch.Tensor,
    d_sqsum: torch.Tensor,
    mode_sqnorm: torch.Tensor,
    gamma: float,
    n_samples: int,
) -> float:
    """The M-step's factor on the variances of a set of blocks, ``||û||² / γ``, from the
    samples' sums ``Σ_k d_k`` and ``Σ_k d_k²`` (``d_k`` the control-variate estimates of
    ``γ``); 1 (no update) when ``γ`` is lost in its Monte-Carlo error."""
    mean = float(d_sum) / n_samples
    spread = max(float(d_sqsum) / n_samples - mean**2, 0.0)
    if mean > GAMMA_SIGNIFICANCE * math.sqrt(spread / n_samples):
        return float(mode_sqnorm) / gamma
    return 1.0


def _rescale(prior: MaternPrior, u: torch.Tensor, variances: dict[str, float]) -> torch.Tensor:
    """The whitened coordinates ``(B, P)`` under ``prior`` of the same weights under new
    block ``variances``."""
    factors = torch.cat(
        [
            u.new_full((w.numel,), math.sqrt(prior.variances[w.block] / variances[w.block]))
            for w in prior.weights
        ]
    )
    return u * factors
