"""The linearised Laplace posterior of a DIP reconstruction: :class:`LinearisedLaplace`.

The network is linearised around its fitted weights, ``h(θ) = f(θ*) + J (θ - θ*)`` over the
convolution weights, with a Gaussian prior ``θ ~ N(0, Σ)``
(:class:`~dip_uq.laplace.priors.MaternPrior`) and Gaussian noise ``y = A h(θ) + ε``,
``ε ~ N(0, σ_y² I)``. The image posterior is Gaussian; its covariance is ``J Σ_θ Jᵀ`` with
``Σ_θ = (Σ⁻¹ + Jᵀ Aᵀ A J / σ_y²)⁻¹``.

**Sampling (sample-then-optimise).** In prior-whitened coordinates ``θ = Σ^{1/2} u`` and with
``M = A J Σ^{1/2}``, draw ``u₀ ~ N(0, I)``, ``e₀ ~ N(0, I_m)`` and set
``u_n = u₀ + Mᵀ e₀ / σ_y``. The minimiser of::

    L(u) = ||M u||² / σ_y² + ||u - u_n||²,   i.e. the solution of  (I + MᵀM / σ_y²) u = u_n,

is an exact zero-mean posterior sample (its covariance is ``(I + MᵀM/σ_y²)⁻¹``); ``J Σ^{1/2} u``
is the image sample. The solvers (CG, the default, and SGD) solve the equivalent
measurement-space system ``u = u₀ + Mᵀ a``, ``(M Mᵀ + σ_y² I) a = σ_y e₀ - M u₀``
(Matheron's rule; see :mod:`dip_uq.laplace.solvers`), preconditioned by a randomised Nyström
approximation of ``M Mᵀ`` (:mod:`dip_uq.laplace.preconditioner`), built once per set of
hyperparameters (``method="exact"`` solves the weight-space system densely, for tests):
without it plain CG needs far more iterations than a run can afford, and solves cut short
left the samples close to the prior and the std several times too wide
(docs/measurements.md). All samples of a batch are optimised together.

**Sample k depends on (seed, k) and the hyperparameters only**, not on the batch or the
number of processes: random numbers come from one generator per sample index, seeded by
``(seed, index)``; the solver takes every step and stopping decision per sample; and every
product of a sample solve is applied to exactly ``SolverConfig.product_rows`` rows at a time
(:func:`~dip_uq.laplace.solvers.fixed_rows`), so that a sample's float32 arithmetic is the
same bit for bit in any batch. (Without that, batches of different sizes gave std maps
far apart: the round-off of another batch shape, amplified by CG.) The samples are
solved and their moments merged batch by batch (:mod:`dip_uq.laplace.moments`). The
hyperparameters are fitted by sample-based EM (:mod:`dip_uq.laplace.em`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from ..distributed import all_reduce_moments
from . import em
from .gprior import gprior_scale
from .linearised import LinearisedNetwork
from .moments import Moments, accumulate, batches
from .preconditioner import ROWS_PER_SKETCH, NystromPreconditioner, NystromSketch
from .priors import MaternPrior
from .solvers import Method, SolverConfig, fixed_rows, solve

if TYPE_CHECKING:
    from ..dip import DIP
    from ..distributed import DistContext
    from ..networks import ConvWeight
    from ..projector.operator import Operator

__all__ = ["LinearisedLaplace"]

_SEED_STRIDE = 1_000_003  # mixes (seed, sample index) into one generator seed
# the mode's cap in SolverConfig.iterations: the mode is one row (cheap next to a batch of
# samples) and its misfit sets σ_y², while at the samples' cap its residual could stay large
MODE_ITERATION_FACTOR = 2
logger = logging.getLogger("dip_uq")


class LinearisedLaplace:
    """Posterior samples, per-voxel standard deviations and EM-fitted hyperparameters.

    Build it from a fitted :class:`dip_uq.DIP` (``LinearisedLaplace(rec)``) or from parts.

    Args:
        rec: a fitted ``DIP``; supplies ``image_fn``, ``params``, ``weights``, ``operator``
            and ``y`` (the sinogram it was fitted to, ``rec.y``).
        image_fn: maps a parameter dict to the image ``volume.shape``.
        params: the fitted parameters ``θ*``.
        weights: the convolution weights to linearise over (``UNet.conv_weights()``).
        operator: the ray transform ``A``.
        y: the measured sinogram ``geometry.sino_shape``; given with ``rec``, it replaces
            ``rec.y``.
        noise_variance: initial ``σ_y²``; default ``rec.noise_sigma²`` (the data's own
            consistency, :func:`dip_uq.noise.estimate_noise_sigma`), else the fit's residual
            ``||A f(θ*) - y||² / m`` (an underestimate where the DIP overfits).
        prior_variance: initial ``σ_b²`` (a number or per block); default, per block,
            ``θ*_bᵀ K_b⁻¹ θ*_b / n_b``, the scale of the fitted weights.
        lengthscale: Matérn-½ length scale ``ℓ_b`` in taps (fixed).
        gprior: scale every weight's prior by ``diag(Jᵀ Aᵀ A J)^{-1/2}``
            (:mod:`dip_uq.laplace.gprior`) before the block variances are set (default): it
            widens the std where the plain prior's was too narrow, keeps it calibrated
            elsewhere and raises the test log-likelihood (docs/measurements.md). ``False``:
            the plain block-wise prior.
        seed: seed of the sample generators.
        solver: :class:`SolverConfig` for samples (and, with CG, for the mode).
        chunk: vectors per batched Jacobian product; by default sized from the network's
            activation memory (see :class:`LinearisedNetwork`).
        group: a :class:`~dip_uq.distributed.DistContext` to share the samples of
            :meth:`moments` and :meth:`fit_hyperparameters` among its processes (every rank
            builds the same object); ``None`` (default) for one process.
    """

    def __init__(
        self,
        rec: DIP | None = None,
        *,
        image_fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None,
        params: Mapping[str, torch.Tensor] | None = None,
        weights: Sequence[ConvWeight] | None = None,
        operator: Operator | None = None,
        y: torch.Tensor | None = None,
        noise_variance: float | None = None,
        prior_variance: float | dict[str, float] | None = None,
        lengthscale: float | dict[str, float] = 1.0,
        gprior: bool = True,
        seed: int = 0,
        solver: SolverConfig | None = None,
        chunk: int | None = None,
        group: DistContext | None = None,
    ) -> None:
        if rec is not None:
            image_fn, params, weights, operator = self._parts_of(rec)
            y = rec.y if y is None else y
            if noise_variance is None and rec.noise_sigma:
                noise_variance = float(rec.noise_sigma) ** 2
        if any(v is None for v in (image_fn, params, weights, operator, y)):
            raise ValueError(
                "LinearisedLaplace needs a fitted DIP, or image_fn, params, weights, operator and "
                "y (pass y= for a DIP without rec.y)"
            )
        self.A = operator
        self.y = y.detach()
        if tuple(self.y.shape) != tuple(operator.range_shape):
            raise ValueError(
                f"y has shape {tuple(self.y.shape)}, the operator expects {operator.range_shape}"
            )
        self.model = LinearisedNetwork(image_fn, params, weights, chunk=chunk)
        self.seed = int(seed)
        self.solver = solver or SolverConfig()
        self.group = group
        with torch.no_grad():
            self._fit_residual = self.y - self.A(self.model.image_star)
        m = self.y.numel()
        if noise_variance is None:
            noise_variance = float(self._fit_residual.square().sum()) / m
        self.noise_variance = float(noise_variance)
        scale = None
        if gprior:
            scale = gprior_scale(
                self._fixed_rows(lambda z: self.model.vjp(self.A.adjoint(z))),
                self.y.shape,
                seed=self.seed,
                like=self.y,
            )
        self.prior = MaternPrior(weights, 1.0, lengthscale, scale)
        if prior_variance is None:
            # σ_b² = θ*ᵀ K⁻¹ θ* / n_b: unit-variance whitened fitted weights per block
            norms = self.prior.block_sqnorms(self.prior.inv_sqrt(self.model.theta_star[None]))
            prior_variance = {b: float(v[0]) / self.prior.block_sizes[b] for b, v in norms.items()}
        self.prior = MaternPrior(weights, prior_variance, lengthscale, scale)
        self.history: dict[str, list] = {"noise_variance": [self.noise_variance]}
        for b in self.prior.blocks:
            self.history[f"prior_variance/{b}"] = [self.prior.variances[b]]
        self._mode_state: torch.Tensor | None = None  # CG warm start of the mode
        self.last_mode_solve: dict | None = None  # the solver's info of the last mode()
        self.em_warm_starts: dict[tuple[int, int], torch.Tensor] = {}  # by sample rows
        # every CG/SGD solve this object made, in order (:meth:`_solve_dual`): its rows,
        # iterations, worst relative residual and preconditioner rank, for run.json
        self.solves: list[dict[str, float]] = []
        # (rank setting, prior variances relative to the first block's, sketch of M Mᵀ at them)
        self._sketch: tuple[int | None, dict[str, float], NystromSketch] | None = None
        self._restored_rank = 0  # the rank of the sketch of a loaded state_dict

    @staticmethod
    def _parts_of(rec: DIP) -> tuple:
        """``(image_fn, params, weights, operator)`` of a fitted :class:`dip_uq.DIP`."""
        if rec.params_star is None:
            raise ValueError("the DIP reconstructor has not been fitted; call rec.fit(y) first")
        return rec.image, rec.params_star, rec.network.conv_weights(), rec.A

    # -- the whitened linear system ----------------------------------------------------------
    @property
    def noise_std(self) -> float:
        """``σ_y``, in the units of the sinogram."""
        return math.sqrt(self.noise_variance)

    def images(self, u: torch.Tensor) -> torch.Tensor:
        """``J Σ^{1/2} u``: whitened weight vectors ``(B, P)`` to images ``(B, *volume)``."""
        return self.model.jvp(self.prior.sqrt(u))

    def _m(self, u: torch.Tensor) -> torch.Tensor:
        return self.A(self.images(u))

    def _m_t(self, s: torch.Tensor) -> torch.Tensor:
        return self.prior.sqrt_t(self.model.vjp(self.A.adjoint(s)))

    def _gram(self, a: torch.Tensor) -> torch.Tensor:
        """``M Mᵀ a`` on flattened sinograms ``(B, m)``."""
        return self._m(self._m_t(a.reshape(-1, *self.y.shape))).reshape(a.shape)

    def _dual(self, a: torch.Tensor) -> torch.Tensor:
        """``(M Mᵀ + σ_y² I) a`` on flattened sinograms ``(B, m)``."""
        return self._gram(a) + self.noise_variance * a

    def preconditioner(self) -> NystromPreconditioner | None:
        """The Nyström preconditioner of the CG solves for the current hyperparameters, or
        ``None`` when ``SolverConfig.preconditioner_rank`` is 0.

        Its rank is ``SolverConfig.preconditioner_rank``, or, for ``None`` (the default),
        every column sketched so far and more while another block saves more CG products than
        it costs at the current hyperparameters
        (:meth:`~dip_uq.laplace.preconditioner.NystromSketch.choose_rank`). ``M Mᵀ`` is
        ``Σ_b σ_b² A J_b K_b J_bᵀ Aᵀ``: the sketch is made at the blocks' variances relative
        to the first block's, so one factor on every ``σ_b²`` (EM's default, every candidate
        of the prior-scale search) scales its eigenvalues and ``σ_y²`` shifts them, exactly
        and without products; it is made anew only when the blocks' variances change relative
        to each other.
        """
        rank = self.solver.preconditioner_rank
        if rank == 0:
            return None
        # relative to the first block's, so that the same relative variances give the same
        # sketch whatever the history (a resumed EM too)
        variances = self.prior.variances
        scale = variances[self.prior.blocks[0]]
        relative = {b: v / scale for b, v in variances.items()}
        sketched = self._sketch
        if not (
            sketched is not None
            and sketched[0] == rank
            and all(math.isclose(relative[b], sketched[1][b], rel_tol=1e-9) for b in relative)
        ):
            gram = self._gram_at(relative)
            sketch = NystromSketch(gram, self.y.numel(), like=self.y, seed=self.seed)
            sketched = self._sketch = (rank, relative, sketch)
        sketch = sketched[2]
        if self._restored_rank:  # the sketch of the run that wrote the state
            sketch.grow(self._restored_rank)
            self._restored_rank = 0
        before = sketch.rank
        if rank is None:
            rank = sketch.choose_rank(
                scale,
                self.noise_variance,
                rows=ROWS_PER_SKETCH,
                iterations=self.solver.iterations,
            )
        pre = sketch.preconditioner(scale, self.noise_variance, rank)
        if sketch.rank > before:
            logger.info(
                "Nyström preconditioner: sketched to rank %d (%d products), uses rank %d",
                sketch.rank,
                (1 + sketch.power) * sketch.rank,
                pre.rank,
            )
        return pre

    def _gram_at(self, variances: dict[str, float]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``M Mᵀ`` (:meth:`_gram`) at the prior variances ``variances``, whatever the
        current ones are."""

        def gram(a: torch.Tensor) -> torch.Tensor:
            current = self.prior.variances
            self.prior.variances = variances
            try:
                return self._gram(a)
            finally:
                self.prior.variances = current

        return gram

    def _fixed_rows(self, row_map: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
        """``row_map`` applied to ``SolverConfig.product_rows`` rows at a time: every product
        of a sample solve goes through this, so that a sample's arithmetic does not depend on
        the samples solved with it (:func:`~dip_uq.laplace.solvers.fixed_rows`)."""
        return fixed_rows(row_map, self.solver.product_rows)

    def _solve_dual(
        self,
        rhs: torch.Tensor,
        x0: torch.Tensor | None,
        *,
        padded: bool = True,
        method: Method = Method.CG,
        iterations: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``u = Mᵀ a`` with ``(M Mᵀ + σ_y² I) a = rhs`` by preconditioned CG (or SGD);
        returns ``u``, ``a``, info.

        Solving in measurement space keeps float32 usable: directions of ``a`` that the
        conditioning leaves inaccurate are those ``Mᵀ`` barely passes on to ``u``.
        ``padded``: the products ``SolverConfig.product_rows`` rows at a time
        (:meth:`_fixed_rows`), for samples; the mode, one row solved alone in every run, goes
        without the padding. ``iterations`` replaces ``SolverConfig.iterations``.
        """
        cap = iterations or self.solver.iterations
        config = replace(self.solver, method=method, iterations=cap)
        flat = rhs.reshape(rhs.shape[0], -1)
        x0 = 0 * flat if x0 is None else x0.reshape(flat.shape)
        pre = self.preconditioner()
        dual, m_t = self._dual, self._m_t
        rank = 0 if pre is None else pre.rank
        if padded:
            dual, m_t = self._fixed_rows(dual), self._fixed_rows(m_t)
            pre = None if pre is None else self._fixed_rows(pre)
        with torch.no_grad():
            a, info = solve(dual, flat, x0=x0, config=config, preconditioner=pre)
            self.solves.append(
                {
                    "rows": int(flat.shape[0]),
                    "iterations": int(info["iterations"]),
                    "worst_residual": float(info["residual"].max()),
                    "preconditioner_rank": rank,
                }
            )
            a = a.reshape(rhs.shape)
            return m_t(a), a, info

    def _base_noise(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``u₀ (B, P)`` and ``e₀ (B, *sino)`` for the given global sample indices."""
        like = self.model.theta_star
        u0, e0 = [], []
        for k in indices:
            g = torch.Generator(device=like.device).manual_seed(self.seed * _SEED_STRIDE + k)
            u0.append(torch.randn(self.model.n_params, generator=g, device=like.device))
            e0.append(torch.randn(self.y.shape, generator=g, device=like.device))
        return torch.stack(u0).to(like.dtype), torch.stack(e0).to(self.y.dtype)

    # -- samples and standard deviations -----------------------------------------------------
    def sample_weights(
        self,
        n_samples: int,
        *,
        method: Method | str | None = None,
        start: int = 0,
        x0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """Whitened zero-mean posterior samples ``u_k`` ``(n_samples, P)`` and solver info.

        ``start`` is the global index of the first sample (samples are reproducible per
        index). CG and SGD solve the measurement-space system (Matheron's rule)
        ``u = u₀ + Mᵀ a``, ``(M Mᵀ + σ_y² I) a = σ_y e₀ - M u₀``; ``"exact"`` solves the
        weight-space system of the module docstring densely. ``x0`` warm-starts the solver
        (``a``); the info dict returns the end point as ``"state"`` and the base noise
        ``u₀`` as ``"base"``."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        method = Method(self.solver.method if method is None else method)
        u0, e0 = self._base_noise(range(start, start + n_samples))
        with torch.no_grad():
            if method is Method.EXACT:
                b = u0 + self._fixed_rows(self._m_t)(e0) / self.noise_std
                zeros = torch.zeros(n_samples)
                exact = {"iterations": 0, "residual": zeros, "stalled": zeros > 0, "base": u0}
                return self._exact_solve(b), exact
            rhs = self.noise_std * e0 - self._fixed_rows(self._m)(u0)
            u, a, info = self._solve_dual(rhs, x0, method=method)
            return u0 + u, {**info, "state": a, "base": u0}

    def sample(
        self,
        n_samples: int,
        *,
        method: Method | str | None = None,
        start: int = 0,
        warn: bool = True,
    ) -> torch.Tensor:
        """Zero-mean image-space posterior samples ``J ζ_k`` ``(n_samples, *volume)`` with
        global indices ``start, ...`` (add the reconstruction to get image samples); ``warn``
        when a solve stopped above ten times the tolerance (its info: ``last_solve``)."""
        u, info = self.sample_weights(n_samples, method=method, start=start)
        self.last_solve = info
        worst = float(info["residual"].max())
        if warn and self.solver.unconverged(worst):
            self.solver.warn(
                f"posterior samples {start}-{start + n_samples - 1}: the solver stopped after "
                f"{info['iterations']} iterations at relative residuals up to {worst:.1e} "
                f"(tolerance {self.solver.tolerance:.0e}); unconverged samples stay close to the "
                "prior and make the std too wide",
                info,
            )
        with torch.no_grad():
            return self._fixed_rows(self.images)(u)

    def moments(
        self,
        n_samples: int,
        *,
        batch: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        keep_samples: bool = False,
        progress: bool = False,
    ) -> Moments:
        """Per-voxel moments of ``n_samples`` posterior samples, drawn in batches.

        The samples ``0, ..., n_samples - 1`` are cut into batches ``[0, batch)``,
        ``[batch, 2 batch)``, ... With :attr:`group`, each rank draws a contiguous share of
        the batches and the moments are merged across ranks: every rank returns the moments
        of all samples (only its own in ``samples``). The samples are the same bit for bit
        whatever ``batch`` and the number of ranks (the module docstring says why), so the
        moments agree with one process's to the round-off of their float64 merge (1e-16).

        Args:
            n_samples: the number of samples (all ranks together).
            batch: samples solved together (the solver's vectors grow with it, the products
                go through the network in blocks of ``SolverConfig.product_rows`` whatever it is);
                default an even share per rank, ``ceil(n_samples / world_size)``.
            checkpoint: a directory of per-batch checkpoints
                (:func:`dip_uq.laplace.moments.accumulate`); files written under other settings
                (seed, solver, hyperparameters, shapes) are refused (``ValueError``). They do
                not depend on the number of ranks.
            keep_samples: also return this rank's samples (kept in the checkpoint files
                too), e.g. for :func:`dip_uq.metrics.patch_tll`.
            progress: show a progress bar over this rank's batches.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        mine = batches(n_samples, batch, self.group)
        local = accumulate(
            lambda n, start: self.sample(n, start=start),
            mine,
            self.model.image_star,
            folder=checkpoint,
            fingerprint=self._checkpoint_settings(),
            keep_samples=keep_samples,
            progress=progress,
        )
        count, mean, m2 = local.count, local.mean, local.m2
        if self.group is not None:
            count, mean, m2 = all_reduce_moments(count, mean, m2, self.group)
        return Moments(count, mean, m2, local.samples, local.indices)

    def _checkpoint_settings(self) -> dict[str, Any]:
        """What the samples of a checkpoint depend on besides their indices."""
        solver = {k: getattr(v, "value", v) for k, v in vars(self.solver).items()}
        del solver["progress"]
        return {
            "seed": self.seed,
            "volume": list(self.model.image_star.shape),
            "sinogram": list(self.y.shape),
            "n_params": self.model.n_params,
            "solver": solver,
            "noise_variance": self.noise_variance,
            "prior_variances": dict(self.prior.variances),
            # the g-prior's per-weight scale, by its sum (None without it)
            "prior_scale": None if self.prior.scale is None else float(self.prior.scale.sum()),
        }

    def std(
        self,
        n_samples: int = 32,
        *,
        samples: torch.Tensor | None = None,
        batch: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Per-voxel posterior standard deviation ``sqrt(mean_k ζ_k²)``, shape ``(*volume)``,
        in the units and dtype of the image: from the given zero-mean ``samples``
        ``(n, *volume)``, or from ``n_samples`` drawn by :meth:`moments` (which see for
        ``batch``, ``checkpoint`` and the processes of :attr:`group`)."""
        if samples is None:
            moments = self.moments(n_samples, batch=batch, checkpoint=checkpoint, progress=progress)
        else:
            moments = Moments.of(samples)
        return moments.std.to(self.model.image_star.dtype)

    # -- hyperparameters ---------------------------------------------------------------------
    @cached_property
    def linear_data(self) -> torch.Tensor:
        """``r = y - A f(θ*) + A J θ*``, shape ``sino_shape``: the data the linear model
        ``A J θ`` is fitted to (fixed: computed once, at the first EM step)."""
        with torch.no_grad():
            return self._fit_residual + self.A(self.model.jvp(self.model.theta_star[None]))[0]

    def mode(self) -> torch.Tensor:
        """The linear model's posterior mode ``û = Mᵀ (M Mᵀ + σ_y² I)⁻¹ r`` (whitened,
        ``(P,)``), ``r = y - A f(θ*) + A J θ*``; warm-started from the previous call, with
        :data:`MODE_ITERATION_FACTOR` times the samples' iterations."""
        cap = MODE_ITERATION_FACTOR * self.solver.iterations
        u, self._mode_state, self.last_mode_solve = self._solve_dual(
            self.linear_data[None], self._mode_state, padded=False, iterations=cap
        )
        return u[0]

    def mean(self) -> torch.Tensor:
        """The linear model's posterior mean ``h(θ̂) = f(θ*) + J (Σ^{1/2} û - θ*)``, the mean of
        the posterior :meth:`std` describes, ``(*volume)``: one solve, warm-started from EM."""
        with torch.no_grad():
            return self.model(self.prior.sqrt(self.mode()[None]))[0]

    def fit_hyperparameters(
        self,
        em_steps: int = 2,
        em_samples: int = 8,
        *,
        batch: int | None = None,
        per_block: bool = False,
        fit_noise: bool = True,
        fit_prior: bool = False,
        progress: bool = False,
    ) -> dict[str, list]:
        """Tune the prior variances (and ``σ_y²``) by sample-based EM (:mod:`dip_uq.laplace.em`).

        Args:
            em_steps: the EM steps to make.
            em_samples: posterior samples per E-step (all ranks together): the samples
                ``0, ..., em_samples - 1``, warm-started from the previous step's.
            batch: samples solved together, as in :meth:`moments` (default
                ``ceil(em_samples / world_size)``).
            per_block: update every block's ``σ_b²`` on its own, not one factor on all (the
                default keeps the fitted weights' relative scales; the em module says why).
            fit_noise: update ``σ_y²`` (default), starting from the DIP's noise estimate.
            fit_prior: update the prior variances too (off by default, as in
                :class:`dip_uq.pipeline.Settings`: EM of the prior made the std
                overconfident, :mod:`dip_uq.laplace.em` says why; the pipeline chooses the
                prior's scale by cross-validation instead).

        The defaults are those of :func:`dip_uq.reconstruct`.
            progress: show a progress bar over the steps.

        With :attr:`group`, each rank draws its share of the batches, rank 0 alone solves for
        the mode, and one all-reduce per step gathers the statistics: every rank makes the
        same M-step as one process with any ``batch``, bit for bit (:mod:`~dip_uq.laplace.em`).
        Returns :attr:`history`: every hyperparameter, the effective dimensions ``γ_b`` and the
        data residual per step (index 0 is the initial value).
        """
        return em.fit_hyperparameters(
            self,
            em_steps,
            em_samples,
            batch=batch,
            per_block=per_block,
            fit_noise=fit_noise,
            fit_prior=fit_prior,
            progress=progress,
        )

    def state_dict(self) -> dict[str, Any]:
        """The hyperparameters, their :attr:`history`, the warm starts of the mode and of
        EM's samples and the rank the preconditioner's sketch grew to: what
        :meth:`load_state_dict` needs to continue EM where it stopped."""
        return {
            "noise_variance": self.noise_variance,
            "prior_variances": dict(self.prior.variances),
            "history": {k: list(v) for k, v in self.history.items()},
            "mode_state": None if self._mode_state is None else self._mode_state.cpu(),
            "em_warm_starts": [(*rows, a.cpu()) for rows, a in self.em_warm_starts.items()],
            "sketch_rank": 0 if self._sketch is None else self._sketch[2].rank,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (same network, data and blocks)."""
        if set(state["prior_variances"]) != set(self.prior.blocks):
            raise ValueError(
                f"the saved prior has blocks {sorted(state['prior_variances'])}, this network "
                f"{sorted(self.prior.blocks)}"
            )
        self.noise_variance = float(state["noise_variance"])
        self.prior.variances = dict(state["prior_variances"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        mode = state["mode_state"]
        self._mode_state = None if mode is None else mode.to(self.y.device)
        warm = state.get("em_warm_starts", [])  # absent from older checkpoints
        self.em_warm_starts = {(i, j): a.to(self.y.device) for i, j, a in warm}
        self._sketch, self._restored_rank = None, int(state.get("sketch_rank", 0))

    # -- dense references (tiny problems only) -----------------------------------------------
    def _dense_m(self) -> torch.Tensor:
        eye = torch.eye(self.model.n_params, dtype=self.model.theta_star.dtype)
        with torch.no_grad():
            return self._m(eye).reshape(self.model.n_params, -1).T  # (m, P)

    def _exact_solve(self, b: torch.Tensor) -> torch.Tensor:
        M = self._dense_m().double()
        N = torch.eye(M.shape[1], dtype=torch.float64) + M.T @ M / self.noise_variance
        return torch.linalg.solve(N, b.double().T).T.to(b.dtype)

    def exact_covariance(self) -> torch.Tensor:
        """Dense image-space posterior covariance ``(n_voxels, n_voxels)`` in float64, from
        ``J Σ Jᵀ - J Σ Jᵀ Aᵀ (A J Σ Jᵀ Aᵀ + σ_y² I)⁻¹ A J Σ Jᵀ`` (tiny problems only)."""
        eye = torch.eye(self.model.n_params, dtype=self.model.theta_star.dtype)
        with torch.no_grad():
            JS = self.images(eye).reshape(self.model.n_params, -1).T.double()  # (n, P)
            prior_cov = JS @ JS.T
            flat = torch.eye(JS.shape[0], dtype=self.y.dtype).reshape(-1, *self.A.domain_shape)
            A = self.A(flat).reshape(JS.shape[0], -1).T.double()  # (m, n)
        gain = A @ prior_cov
        inner = gain @ A.T + self.noise_variance * torch.eye(A.shape[0], dtype=torch.float64)
        return prior_cov - gain.T @ torch.linalg.solve(inner, gain)
