"""Linearised Laplace uncertainty of a deep-image-prior reconstruction.

The network is linearised around its fitted weights, ``h(θ) = f(θ*) + J (θ - θ*)`` over the
convolution weights, with a Gaussian prior ``θ ~ N(0, Σ)`` (:class:`MaternPrior`) and
Gaussian noise ``y = A h(θ) + ε``, ``ε ~ N(0, σ_y² I)``. The image posterior is Gaussian; its
covariance is ``J Σ_θ Jᵀ`` with ``Σ_θ = (Σ⁻¹ + Jᵀ Aᵀ A J / σ_y²)⁻¹``.

**Sampling (sample-then-optimise).** In prior-whitened coordinates ``θ = Σ^{1/2} u`` and with
``M = A J Σ^{1/2}``, draw ``u₀ ~ N(0, I)``, ``e₀ ~ N(0, I_m)`` and set
``u_n = u₀ + Mᵀ e₀ / σ_y``. The minimiser of::

    L(u) = ||M u||² / σ_y² + ||u - u_n||²,   i.e. the solution of  (I + MᵀM / σ_y²) u = u_n,

is an exact zero-mean posterior sample (its covariance is ``(I + MᵀM/σ_y²)⁻¹``); ``J Σ^{1/2} u``
is the image sample. This "noise in the regulariser" form has the same minimiser as
``||M u - σ_y e₀||²/σ_y² + ||u - u₀||²`` with a lower-variance gradient. All samples are
optimised together; see :mod:`dip_uq.laplace.solvers` for the methods. The default, CG on
the measurement-space form, is preconditioned by a randomised Nyström approximation of
``M Mᵀ`` (:mod:`dip_uq.laplace.preconditioner`), built once per set of hyperparameters:
without it the 60–300 iterations we could afford left the samples close to the prior and
the std several times too wide (a 32² DIP needed 1203 plain CG iterations to a relative
residual of 1e-3, 58 with rank 200).

**Hyperparameters (sample-based EM, MacKay updates).** E-step: the linear model's mode
``û`` solves ``(I + MᵀM/σ_y²) û = Mᵀ r / σ_y²`` with ``r = y - A f(θ*) + A J θ*``; posterior
samples ``u_k`` as above. M-step, for a block ``b`` with ``n_b`` weights (or, by default,
for all blocks together: one factor on every ``σ_b²``, see :meth:`fit_hyperparameters`):
the effective dimension
``γ_b = n_b - E||u_{k,b}||²`` (``= n_b - E[ζ_bᵀ Σ_b⁻¹ ζ_b]`` in weight space), estimated as
``mean_k (||u₀_{k,b}||² - ||u_{k,b}||²)`` with each sample's own base noise ``u₀`` as control
variate (same mean, since ``E||u₀_b||² = n_b``; without it the estimate carries the noise of
``n_b`` prior directions, ``±sqrt(2 n_b / K)`` for K samples, which swamps a small ``γ_b``).
A block whose estimate is within two standard errors (over the samples) of 0 keeps its
variance for that step: with samples the solver has not converged, ``u_k`` stays close to
``u₀_k``, the estimate of ``γ_b`` tends to 0 and the update below would blow ``σ_b²`` up
(measured: to 1e6 in five steps on a 24³ cone-beam demo). Even so, truncated solves can
make EM raise ``σ_b²`` step after step (the mode's whitened norm does not shrink as it
should); ``σ_b²`` is therefore capped at 100 times its start, the scale of the fitted
weights, with a warning. Otherwise::

    σ_b² ← θ̂_bᵀ K_b⁻¹ θ̂_b / γ_b = σ_b² ||û_b||² / γ_b,
    σ_y² ← ||y - A h(θ̂)||² / (m - Σ_b γ_b).

(The function-space estimate ``Σ_b γ_b = E||M u||²/σ_y²`` was tried for the noise update and
dropped: with samples that CG has not fully converged it came out near ``m`` and threw
``σ_y²`` up by five orders of magnitude.)

Length scales stay fixed at the value given (default 1 tap): they shape the prior within
a filter, the variances carry its scale, and fitting them would need a second estimator.

Random numbers come from one generator per sample index, seeded by ``(seed, index)``, and
the solver stops every sample on its own residual. Samples are solved in batches of
consecutive global indices, ``[0, batch)``, ``[batch, 2 batch)``, ..., whatever the number
of processes (:mod:`dip_uq.laplace.distributed`), so with the same ``batch`` one process and
several give the same samples to round-off. A different ``batch`` changes the samples within
the solver's tolerance only (float32 products round differently in another batch shape, and
CG carries that forward: measured 4e-4 relative at ``tolerance=1e-4``, 5e-5 at ``1e-6``).

**Standard deviations.** :meth:`LinearisedLaplace.moments` draws samples in batches of global
indices and merges per-voxel moments exactly (:class:`Moments`), optionally checkpointing
every finished batch so that an interrupted run resumes where it stopped. The variance is
the second moment about the known posterior mean ``mean(ζ²)``, not the centred sample
variance: the samples are zero-mean by construction, and centring would spend a degree of
freedom on estimating a mean that is known (the sample mean is kept as a check).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..networks import ConvWeight
from .distributed import DistContext, all_reduce_moments, shard
from .linearised import LinearisedNetwork
from .preconditioner import NystromPreconditioner
from .priors import MaternPrior, matern_half
from .solvers import Method, SolverConfig, solve

__all__ = [
    "LinearisedLaplace",
    "LinearisedNetwork",
    "MaternPrior",
    "Method",
    "Moments",
    "NystromPreconditioner",
    "SolverConfig",
    "matern_half",
]

_SEED_STRIDE = 1_000_003  # mixes (seed, sample index) into one generator seed
_MIN_GAMMA_FRACTION = 1e-3  # γ_b is kept above this fraction of n_b (sampling noise)
# σ_b² is updated only where the estimate of γ_b exceeds this many standard errors
_GAMMA_SIGNIFICANCE = 2.0
# EM never raises σ_b² above this multiple of its start, the scale of the fitted weights
_MAX_VARIANCE_GROWTH = 100.0
# samples whose relative residual ends above this multiple of the solver's tolerance get a
# warning: float32 CG may stop a row on a breakdown a little above the tolerance (2e-3
# measured), harmless, while 100 iterations of the earlier plain-sketch preconditioner
# (residual ~5e-2) left the 24³ demo's std five times the converged one
_UNCONVERGED_FACTOR = 10.0
_CHECKPOINT_RTOL = 1e-6  # hyperparameters a checkpoint must match (EM rerun: round-off only)
logger = logging.getLogger("dip_uq")


@dataclass
class Moments:
    """Per-voxel moments of zero-mean image samples, accumulated in float64.

    Attributes:
        count: the number of samples.
        mean: their sample mean, shape ``(*volume)``; near 0 (the samples are zero-mean), a
            check of the solver, not the reconstruction.
        m2: the sum of squared deviations from ``mean``, shape ``(*volume)``.
        samples: when kept, this process's samples ``(len(indices), *volume)`` (image units,
            the images' dtype), else ``None``.
        indices: the global indices of ``samples`` (this process's share).
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor
    samples: torch.Tensor | None = None
    indices: range = range(0)

    @classmethod
    def of(cls, samples: torch.Tensor) -> Moments:
        """The moments of samples ``(n, *volume)``."""
        x = samples.detach().double()
        mean = x.mean(0)
        return cls(x.shape[0], mean, (x - mean).square().sum(0))

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of samples (Chan et al.'s pairwise update; exact)."""
        if other.count == 0 or self.count == 0:
            return other if self.count == 0 else self
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta.square() * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @property
    def variance(self) -> torch.Tensor:
        """``mean_k ζ_k²`` per voxel: the posterior variance estimate (image units squared),
        the second moment about the known mean 0 (see the module docstring)."""
        return self.m2 / self.count + self.mean.square()

    @property
    def std(self) -> torch.Tensor:
        """``sqrt(variance)``: the per-voxel posterior standard deviation (image units)."""
        return self.variance.sqrt()


def _same_setting(a: Any, b: Any) -> bool:
    """Equal, floats to :data:`_CHECKPOINT_RTOL` (also inside dicts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_setting(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=_CHECKPOINT_RTOL)
    return a == b


class LinearisedLaplace:
    """Posterior samples, per-voxel standard deviations and EM-fitted hyperparameters.

    Build it from a fitted :class:`dip_uq.DIP` (``LinearisedLaplace(rec)``) or from parts.

    Args:
        rec: a fitted ``DIP``; supplies ``image_fn``, ``params``, ``weights`` and ``operator``
            (``y`` must still be given: the sinogram the DIP was fitted to).
        image_fn: maps a parameter dict to the image ``volume.shape``.
        params: the fitted parameters ``θ*``.
        weights: the convolution weights to linearise over (``UNet.conv_weights()``).
        operator: the ray transform ``A``.
        y: the measured sinogram ``geometry.sino_shape``.
        noise_variance: initial ``σ_y²``; default, with a fitted DIP, the square of its noise
            estimate ``rec.noise_sigma`` (from the data's own consistency, see
            :func:`dip_uq.dip.estimate_noise_sigma`), else the fit's residual
            ``||A f(θ*) - y||² / m`` (an underestimate where the DIP overfits).
        prior_variance: initial ``σ_b²`` (a number or per block); default, per block,
            ``θ*_bᵀ K_b⁻¹ θ*_b / n_b``, the scale of the fitted weights.
        lengthscale: Matérn-½ length scale ``ℓ_b`` in taps (fixed).
        seed: seed of the sample generators.
        solver: :class:`SolverConfig` for samples (and, with CG, for the mode).
        chunk: vectors per batched Jacobian product; by default sized from the network's
            measured activation memory (see :class:`LinearisedNetwork`).
        group: a :class:`~dip_uq.laplace.distributed.DistContext` to share the samples of
            :meth:`moments` and :meth:`fit_hyperparameters` among its processes (every rank
            builds the same object); ``None`` (default) for one process.
    """

    def __init__(
        self,
        rec: Any = None,
        *,
        image_fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None,
        params: Mapping[str, torch.Tensor] | None = None,
        weights: Sequence[ConvWeight] | None = None,
        operator: Any = None,
        y: torch.Tensor | None = None,
        noise_variance: float | None = None,
        prior_variance: float | dict[str, float] | None = None,
        lengthscale: float | dict[str, float] = 1.0,
        seed: int = 0,
        solver: SolverConfig | None = None,
        chunk: int | None = None,
        group: DistContext | None = None,
    ) -> None:
        if rec is not None:
            image_fn, params, weights, operator = self._parts_of(rec)
            if noise_variance is None and getattr(rec, "noise_sigma", None):
                noise_variance = float(rec.noise_sigma) ** 2
        if any(v is None for v in (image_fn, params, weights, operator, y)):
            raise ValueError(
                "LinearisedLaplace needs a fitted DIP, or image_fn, params, weights, operator and y"
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
        self.prior = MaternPrior(weights, 1.0, lengthscale)
        if prior_variance is None:
            # σ_b² = θ*ᵀ K⁻¹ θ* / n_b: unit-variance whitened fitted weights per block
            norms = self.prior.block_sqnorms(self.prior.inv_sqrt(self.model.theta_star[None]))
            prior_variance = {b: float(v[0]) / self.prior.block_sizes[b] for b, v in norms.items()}
        self.prior = MaternPrior(weights, prior_variance, lengthscale)
        self.history: dict[str, list] = {"noise_variance": [self.noise_variance]}
        for b in self.prior.blocks:
            self.history[f"prior_variance/{b}"] = [self.prior.variances[b]]
        self._mode_state: torch.Tensor | None = None  # CG warm start of the mode
        # (rank, prior variances relative to the first block's, preconditioner) of the last
        # build
        self._preconditioner_built: tuple[int, dict, NystromPreconditioner] | None = None

    @staticmethod
    def _parts_of(rec: Any) -> tuple:
        """``(image_fn, params, weights, operator)`` of a fitted :class:`dip_uq.DIP`."""
        if getattr(rec, "params_star", None) is None:
            raise ValueError("the DIP reconstructor has not been fitted; call rec.fit(y) first")
        return rec.image, rec.params_star, rec.network.conv_weights(), rec.A

    # ----------------------------------------------------------------------------------------
    # the whitened linear system
    # ----------------------------------------------------------------------------------------
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

    def _normal(self, u: torch.Tensor) -> torch.Tensor:
        """``(I + MᵀM / σ_y²) u`` on whitened weights ``(B, P)``."""
        return u + self._m_t(self._m(u)) / self.noise_variance

    def _gram(self, a: torch.Tensor) -> torch.Tensor:
        """``M Mᵀ a`` on flattened sinograms ``(B, m)``."""
        return self._m(self._m_t(a.reshape(-1, *self.y.shape))).reshape(a.shape)

    def _dual(self, a: torch.Tensor) -> torch.Tensor:
        """``(M Mᵀ + σ_y² I) a`` on flattened sinograms ``(B, m)``."""
        return self._gram(a) + self.noise_variance * a

    def preconditioner(self) -> NystromPreconditioner | None:
        """The Nyström preconditioner of the CG solves for the current hyperparameters, or
        ``None`` when ``SolverConfig.preconditioner_rank`` is 0.

        Building it costs ``2 preconditioner_rank`` products with ``M Mᵀ``; it is rebuilt only
        when the blocks' prior variances change relative to each other. ``M Mᵀ`` is
        ``Σ_b σ_b² A J_b K_b J_bᵀ Aᵀ``, so one factor on every ``σ_b²`` (the default EM)
        scales its eigenvalues by that factor, and ``σ_y²`` is the shift alone: both are
        applied to the stored eigenpairs exactly, for free.
        """
        rank = self.solver.preconditioner_rank
        if rank == 0:
            return None
        # built for the variances relative to the first block's, so that the same relative
        # variances give the same preconditioner whatever the history (a resumed EM too)
        variances = self.prior.variances
        scale = variances[self.prior.blocks[0]]
        relative = {b: v / scale for b, v in variances.items()}
        built = self._preconditioner_built
        if not (
            built is not None
            and built[0] == rank
            and all(math.isclose(relative[b], built[1][b], rel_tol=1e-9) for b in relative)
        ):
            logger.info("building the rank-%d Nyström preconditioner", min(rank, self.y.numel()))
            self.prior.variances = relative
            try:
                pre = NystromPreconditioner.build(
                    self._gram, self.y.numel(), rank, 1.0, like=self.y, seed=self.seed
                )
            finally:
                self.prior.variances = variances
            built = self._preconditioner_built = (rank, relative, pre)
        pre = built[2]
        return NystromPreconditioner(pre.basis, pre.eigenvalues * scale, self.noise_variance)

    def _solve_dual(
        self, rhs: torch.Tensor, x0: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``u = Mᵀ a`` with ``(M Mᵀ + σ_y² I) a = rhs`` by CG; returns ``u``, ``a``, info.

        Solving in measurement space keeps float32 usable: directions of ``a`` that the
        conditioning leaves inaccurate are those ``Mᵀ`` barely passes on to ``u``.
        """
        config = SolverConfig(**{**vars(self.solver), "method": Method.CG})
        flat = rhs.reshape(rhs.shape[0], -1)
        start = None if x0 is None else x0.reshape(flat.shape)
        with torch.no_grad():
            a, info = solve(
                self._dual,
                flat,
                x0=start if start is not None else 0 * flat,
                config=config,
                preconditioner=self.preconditioner(),
            )
            a = a.reshape(rhs.shape)
            return self._m_t(a), a, info

    def _base_noise(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``u₀ (B, P)`` and ``e₀ (B, *sino)`` for the given global sample indices."""
        like = self.model.theta_star
        u0, e0 = [], []
        for k in indices:
            g = torch.Generator(device=like.device).manual_seed(self.seed * _SEED_STRIDE + k)
            u0.append(torch.randn(self.model.n_params, generator=g, device=like.device))
            e0.append(torch.randn(self.y.shape, generator=g, device=like.device))
        return torch.stack(u0).to(like.dtype), torch.stack(e0).to(self.y.dtype)

    # ----------------------------------------------------------------------------------------
    # samples and standard deviations
    # ----------------------------------------------------------------------------------------
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
        index). CG solves the equivalent measurement-space system (Matheron's rule)
        ``u = u₀ + Mᵀ a``, ``(M Mᵀ + σ_y² I) a = σ_y e₀ - M u₀``; SGD minimises the
        weight-space objective of the module docstring. ``x0`` warm-starts them (``a`` for
        CG, ``u`` otherwise); the info dict returns the end point as ``"state"`` and the
        samples' base noise ``u₀`` as ``"base"``.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        method = Method(self.solver.method if method is None else method)
        u0, e0 = self._base_noise(range(start, start + n_samples))
        with torch.no_grad():
            if method is Method.CG:
                u, a, info = self._solve_dual(self.noise_std * e0 - self._m(u0), x0)
                return u0 + u, {**info, "state": a, "base": u0}
            b = u0 + self._m_t(e0) / self.noise_std
            if method is Method.EXACT:
                exact = {"iterations": 0, "residual": torch.zeros(n_samples), "base": u0}
                return self._exact_solve(b), exact
            config = SolverConfig(**{**vars(self.solver), "method": method})
            u, info = solve(self._normal, b, x0=x0, config=config)
            return u, {**info, "state": u, "base": u0}

    def sample(
        self, n_samples: int, *, method: Method | str | None = None, start: int = 0
    ) -> torch.Tensor:
        """Zero-mean image-space posterior samples ``J ζ_k``, shape ``(n_samples, *volume)``,
        with global indices ``start, ..., start + n_samples - 1``.

        Add the reconstruction (``mean``) to get samples of the image itself.
        """
        u, info = self.sample_weights(n_samples, method=method, start=start)
        self.last_solve = info
        worst = float(info["residual"].max())
        if worst > _UNCONVERGED_FACTOR * self.solver.tolerance:
            logger.warning(
                "posterior samples %d-%d: the solver stopped after %d iterations at relative "
                "residuals up to %.1e (tolerance %.0e); unconverged samples stay close to the "
                "prior and make the std too wide: raise the iterations (SolverConfig.iterations, "
                "--cg-iterations)",
                start,
                start + n_samples - 1,
                info["iterations"],
                worst,
                self.solver.tolerance,
            )
        with torch.no_grad():
            return self.images(u)

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
        of all samples (only its own in ``samples``). With the same ``batch``, the result
        agrees with one process's to round-off.

        Args:
            n_samples: the number of samples (all ranks together).
            batch: samples solved together (memory grows with it); default an even share
                per rank, ``ceil(n_samples / world_size)``. Give it explicitly for results
                that do not depend on the number of ranks (see the module docstring).
            checkpoint: a directory; every finished batch is saved there atomically
                (``moments-START-STOP.pt``) and a later call with the same settings loads it
                instead of solving again, so an interrupted run resumes and ends with the
                result of an uninterrupted one. Files written under other settings (seed,
                solver, hyperparameters, shapes) are refused (``ValueError``). Checkpoints
                do not depend on the number of ranks.
            keep_samples: also return this rank's samples (kept in the checkpoint files
                too), e.g. for :func:`dip_uq.metrics.patch_tll`.
            progress: show a progress bar over this rank's batches.
        """
        from tqdm.auto import tqdm

        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        mine = self._batches(n_samples, batch)
        folder = None if checkpoint is None else Path(checkpoint)
        zeros = self.model.image_star.new_zeros(self.model.image_star.shape, dtype=torch.float64)
        total = Moments(0, zeros, zeros)
        kept = []
        for start, stop in tqdm(mine, desc="posterior samples", disable=not progress):
            path = None if folder is None else folder / f"moments-{start:07d}-{stop:07d}.pt"
            saved = None if path is None else self._load_batch(path, keep_samples)
            if saved is None:
                samples = self.sample(stop - start, start=start)
                part = Moments.of(samples)
                if path is not None:
                    self._save_batch(path, part, samples if keep_samples else None)
            else:
                part, samples = saved
            total = total.merge(part)
            if keep_samples:
                kept.append(samples)
        count, mean, m2 = total.count, total.mean, total.m2
        if self.group is not None:
            count, mean, m2 = all_reduce_moments(count, mean, m2, self.group)
        own = range(mine[0][0], mine[-1][1]) if mine else range(0)
        samples = torch.cat(kept) if kept else None
        return Moments(count, mean, m2, samples, own)

    def _batches(self, n_samples: int, batch: int | None) -> list[tuple[int, int]]:
        """This rank's batches ``(start, stop)`` of global sample indices (all of them for one
        process); ``batch`` defaults to ``ceil(n_samples / world_size)``."""
        rank, world = (0, 1) if self.group is None else (self.group.rank, self.group.world_size)
        batch = -(-n_samples // world) if batch is None else batch
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        starts = range(0, n_samples, batch)
        share = shard(len(starts), rank, world)
        return [(s, min(s + batch, n_samples)) for s in starts[share.start : share.stop]]

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
        }

    def _load_batch(
        self, path: Path, need_samples: bool
    ) -> tuple[Moments, torch.Tensor | None] | None:
        """A finished batch's moments (and samples) from ``path``; ``None`` to solve it."""
        if not path.exists():
            return None
        saved = torch.load(path, map_location=self.model.image_star.device, weights_only=True)
        settings, ours = saved["settings"], self._checkpoint_settings()
        differ = [k for k in ours if not _same_setting(settings.get(k), ours[k])]
        if differ:
            raise ValueError(
                f"checkpoint {path} was written with other {', '.join(differ)}: "
                f"{ {k: settings.get(k) for k in differ} }, now { {k: ours[k] for k in differ} }; "
                "use another checkpoint directory or delete it"
            )
        if need_samples and saved["samples"] is None:
            return None
        return Moments(saved["count"], saved["mean"], saved["m2"]), saved["samples"]

    def _save_batch(self, path: Path, part: Moments, samples: torch.Tensor | None) -> None:
        """Write a finished batch atomically: a crash leaves the old file or none, never half."""
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": self._checkpoint_settings(),
            "count": part.count,
            "mean": part.mean.cpu(),
            "m2": part.m2.cpu(),
            "samples": None if samples is None else samples.cpu(),
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

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

    def predictive_std(self, samples: torch.Tensor) -> torch.Tensor:
        """Std of a new measurement, ``sqrt(Var[A J ζ] + σ_y²)``, shape ``sino_shape``."""
        with torch.no_grad():
            return (self.A(samples).square().mean(0) + self.noise_variance).sqrt()

    # ----------------------------------------------------------------------------------------
    # hyperparameters
    # ----------------------------------------------------------------------------------------
    @cached_property
    def _linear_data(self) -> torch.Tensor:
        """``r = y - A f(θ*) + A J θ*``: the data the linear model ``A J θ`` is fitted to
        (fixed: computed once, at the first EM step)."""
        with torch.no_grad():
            return self._fit_residual + self.A(self.model.jvp(self.model.theta_star[None]))[0]

    def mode(self) -> torch.Tensor:
        """The linear model's posterior mode ``û = Mᵀ (M Mᵀ + σ_y² I)⁻¹ r`` (whitened,
        ``(P,)``), ``r = y - A f(θ*) + A J θ*``; warm-started from the previous call."""
        u, self._mode_state, _ = self._solve_dual(self._linear_data[None], self._mode_state)
        return u[0]

    def fit_hyperparameters(
        self,
        em_steps: int = 10,
        n_samples: int = 16,
        *,
        batch: int | None = None,
        per_block: bool = False,
        fit_noise: bool = False,
        progress: bool = False,
    ) -> dict[str, list]:
        """Tune the prior variances (and ``σ_y²``) by sample-based EM (see the module docstring).

        By default (``per_block=False``) EM fits one factor ``s`` that scales every block's
        variance, ``σ_b² ← s σ_b²``, with ``s = Σ_b ||û_b||² / Σ_b γ_b``: the evidence picks
        the prior's overall scale and the blocks keep their relative scales (those of the
        fitted weights). ``per_block=True`` makes the MacKay update of every ``σ_b²`` on its
        own. That has more freedom than one DIP scan supports: with exact dense solves on
        a 32² DIP (5 % noise; the network fitted for 1500 / 4000 steps) fifteen per-block
        steps drove some blocks' variances to 1e-6 / 4e-9 of their start, and the std's 90 %
        interval covered 59 % / 74 % of the voxels (test log-likelihood 1.4 / 5.5 nats per
        voxel); the shared scale settled within three steps and covered 74 % / 89 % (4.2 /
        6.1 nats).

        By default (``fit_noise=False``) ``σ_y²`` keeps its current value (with a DIP, the
        DIP's noise estimate) and EM tunes the prior only; ``fit_noise=True`` adds the
        MacKay update of ``σ_y²``. That update needs the linear model's exact mode: with the
        mode a few hundred CG iterations reach on DIP-sized problems, the residual
        ``||r - M û||²`` is far too large and ``σ_y²`` swung by three orders of magnitude
        between steps (32² Shepp-Logan, 2 % noise, 100 iterations; also on the tooth scan),
        while the DIP's own noise estimate was within 25 % of
        the truth and the prior-only EM stayed stable.

        Every E-step draws the samples ``0, ..., n_samples - 1`` in batches of ``batch``
        (default ``ceil(n_samples / world_size)``, as in :meth:`moments`), warm-started from
        the previous step's. With :attr:`group`, each rank draws its share of the batches,
        rank 0 alone solves for the mode, and one all-reduce per step sums the statistics, so
        every rank makes the same M-step and holds the same hyperparameters and history.

        Returns :attr:`history`: every hyperparameter, the effective dimensions ``γ_b`` and the
        data residual per step (index 0 is the initial value).
        """
        from tqdm.auto import tqdm

        m = self.y.numel()
        blocks = self.prior.blocks
        nb = len(blocks)
        mine = self._batches(n_samples, batch)
        states: list[torch.Tensor | None] = [None] * len(mine)  # warm starts, per batch
        for _ in tqdm(range(em_steps), desc="EM", disable=not progress):
            # [Σ_k d_k,b | Σ_k d_k,b² | ||û_b||² (per block each) | Σ_k (Σ_b d_k,b)² |
            # ||r - M û||²] with d_k,b = ||u₀_k,b||² - ||u_k,b||², float64; ranks other than 0
            # leave the mode's entries at 0 for the sum
            stats = torch.zeros(3 * nb + 2, dtype=torch.float64)
            for i, (start, stop) in enumerate(mine):
                samples, info = self.sample_weights(stop - start, start=start, x0=states[i])
                states[i] = info["state"]
                norms = self.prior.block_sqnorms(samples.double())
                # the samples' own base noise u₀ as control variate: E||u₀_b||² = n_b exactly,
                # and ||u₀_b||² - ||u_b||² varies with the data-informed part of u_b only,
                # where n_b - ||u_b||² carries the chi-square noise of n_b prior directions
                base = self.prior.block_sqnorms(info["base"].double())
                d = torch.stack([base[b] - norms[b] for b in blocks]).cpu()  # (nb, batch)
                stats[:nb] += d.sum(1)
                stats[nb : 2 * nb] += d.square().sum(1)
                stats[-2] += d.sum(0).square().sum()
            if self.group is None or self.group.rank == 0:
                # the mode is one deterministic solve: the other ranks would only repeat it
                u_hat = self.mode()
                norms = self.prior.block_sqnorms(u_hat[None].double())
                stats[2 * nb : 3 * nb] = torch.stack([norms[b][0] for b in blocks]).cpu()
                with torch.no_grad():
                    misfit = self._linear_data - self._m(u_hat[None])[0]
                stats[-1] = float(misfit.double().square().sum())
            if self.group is not None:
                stats = self.group.all_reduce_sum(stats, "all-reduce of the EM statistics")
            gammas = {}
            for i, b in enumerate(blocks):
                n_b = self.prior.block_sizes[b]
                gammas[b] = min(max(float(stats[i]) / n_samples, _MIN_GAMMA_FRACTION * n_b), n_b)
            if per_block:
                factors = {
                    b: self._em_factor(
                        stats[i], stats[nb + i], stats[2 * nb + i], gammas[b], n_samples
                    )
                    for i, b in enumerate(blocks)
                }
            else:
                shared = self._em_factor(
                    stats[:nb].sum(),
                    stats[-2],
                    stats[2 * nb : 3 * nb].sum(),
                    sum(gammas.values()),
                    n_samples,
                )
                factors = dict.fromkeys(blocks, shared)
            new_variances, capped = {}, set()
            for b in blocks:
                new_variances[b] = self.prior.variances[b] * factors[b]
                cap = _MAX_VARIANCE_GROWTH * self.history[f"prior_variance/{b}"][0]
                if new_variances[b] > cap:
                    capped.add(b)
                    new_variances[b] = cap
            data_residual = float(stats[-1])
            gamma_total = min(sum(gammas.values()), (1 - _MIN_GAMMA_FRACTION) * m)
            if fit_noise:
                self.noise_variance = data_residual / (m - gamma_total)
            if self.solver.method is not Method.CG:
                # whitened warm starts refer to the old variances
                states = [self._rescale(state, new_variances) for state in states]
            self.prior.variances = new_variances
            self.history["noise_variance"].append(self.noise_variance)
            self.history.setdefault("data_residual", []).append(data_residual)
            self.history.setdefault("gamma_total", []).append(gamma_total)
            if capped:
                logger.warning(
                    "EM pushed the prior variance of %s beyond %g times its start and was "
                    "stopped there; the posterior samples have probably not converged: raise "
                    "the CG iterations (SolverConfig.iterations, --cg-iterations)",
                    ", ".join(sorted(capped)),
                    _MAX_VARIANCE_GROWTH,
                )
            for b in blocks:
                self.history[f"prior_variance/{b}"].append(new_variances[b])
                self.history.setdefault(f"gamma/{b}", []).append(gammas[b])
        return self.history

    @staticmethod
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
        if mean > _GAMMA_SIGNIFICANCE * math.sqrt(spread / n_samples):
            return float(mode_sqnorm) / gamma
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        """The hyperparameters, their :attr:`history` and the mode's warm start: what
        :meth:`load_state_dict` needs to continue EM exactly where it stopped."""
        return {
            "noise_variance": self.noise_variance,
            "prior_variances": dict(self.prior.variances),
            "history": {k: list(v) for k, v in self.history.items()},
            "mode_state": None if self._mode_state is None else self._mode_state.cpu(),
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

    def _rescale(self, u: torch.Tensor, variances: dict[str, float]) -> torch.Tensor:
        """The whitened coordinates of the same weights under new block variances."""
        factors = torch.cat(
            [
                u.new_full(
                    (w.numel,), math.sqrt(self.prior.variances[w.block] / variances[w.block])
                )
                for w in self.prior.weights
            ]
        )
        return u * factors

    # ----------------------------------------------------------------------------------------
    # dense references (tiny problems only)
    # ----------------------------------------------------------------------------------------
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
