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
optimised together; see :mod:`dip_uq.laplace.solvers` for the methods.

**Hyperparameters (sample-based EM, MacKay updates).** E-step: the linear model's mode
``û`` solves ``(I + MᵀM/σ_y²) û = Mᵀ r / σ_y²`` with ``r = y - A f(θ*) + A J θ*``; posterior
samples ``u_k`` as above. M-step, per block ``b`` with ``n_b`` weights: the effective dimension
``γ_b = n_b - mean_k ||u_{k,b}||²`` (``= n_b - E[ζ_bᵀ Σ_b⁻¹ ζ_b]`` in weight space), then::

    σ_b² ← θ̂_bᵀ K_b⁻¹ θ̂_b / γ_b = σ_b² ||û_b||² / γ_b,
    σ_y² ← ||y - A h(θ̂)||² / (m - Σ_b γ_b).

Length scales stay fixed at the value given (default 1 tap): they shape the prior within
a filter, the variances carry its scale, and fitting them would need a second estimator.

Random numbers come from one generator per sample index, seeded by ``(seed, index)``, so a
sample does not depend on how many others are drawn with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..networks import ConvWeight
from .linearised import LinearisedNetwork
from .priors import MaternPrior, matern_half
from .solvers import Method, SolverConfig, solve

__all__ = [
    "LinearisedLaplace",
    "LinearisedNetwork",
    "MaternPrior",
    "Method",
    "SolverConfig",
    "matern_half",
]

_SEED_STRIDE = 1_000_003  # mixes (seed, sample index) into one generator seed
_MIN_GAMMA_FRACTION = 1e-3  # γ_b is kept above this fraction of n_b (sampling noise)


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
        noise_variance: initial ``σ_y²``; default the fit's residual ``||A f(θ*) - y||² / m``.
        prior_variance: initial ``σ_b²`` (a number or per block); default, per block,
            ``θ*_bᵀ K_b⁻¹ θ*_b / n_b``, the scale of the fitted weights.
        lengthscale: Matérn-½ length scale ``ℓ_b`` in taps (fixed).
        seed: seed of the sample generators.
        solver: :class:`SolverConfig` for samples (and, with CG, for the mode).
        chunk: vectors per batched Jacobian product; by default sized from the network's
            measured activation memory (see :class:`LinearisedNetwork`).
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
    ) -> None:
        if rec is not None:
            image_fn, params, weights, operator = self._parts_of(rec)
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

    def _dual(self, a: torch.Tensor) -> torch.Tensor:
        """``(M Mᵀ + σ_y² I) a`` on flattened sinograms ``(B, m)``."""
        s = a.reshape(-1, *self.y.shape)
        return (self._m(self._m_t(s)) + self.noise_variance * s).reshape(a.shape)

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
                self._dual, flat, x0=start if start is not None else 0 * flat, config=config
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
        ``u = u₀ + Mᵀ a``, ``(M Mᵀ + σ_y² I) a = σ_y e₀ - M u₀``; SGD and Adam minimise the
        weight-space objective of the module docstring. ``x0`` warm-starts them (``a`` for
        CG, ``u`` otherwise); the info dict returns the end point as ``"state"``.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        method = Method(self.solver.method if method is None else method)
        u0, e0 = self._base_noise(range(start, start + n_samples))
        with torch.no_grad():
            if method is Method.CG:
                u, a, info = self._solve_dual(self.noise_std * e0 - self._m(u0), x0)
                return u0 + u, {**info, "state": a}
            b = u0 + self._m_t(e0) / self.noise_std
            if method is Method.EXACT:
                return self._exact_solve(b), {"iterations": 0, "residual": torch.zeros(n_samples)}
            config = SolverConfig(**{**vars(self.solver), "method": method})
            u, info = solve(self._normal, b, x0=x0, config=config)
            return u, {**info, "state": u}

    def sample(self, n_samples: int, *, method: Method | str | None = None) -> torch.Tensor:
        """Zero-mean image-space posterior samples ``J ζ_k``, shape ``(n_samples, *volume)``.

        Add the reconstruction (``mean``) to get samples of the image itself.
        """
        u, info = self.sample_weights(n_samples, method=method)
        self.last_solve = info
        with torch.no_grad():
            return self.images(u)

    def std(self, n_samples: int = 32, *, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Per-voxel posterior standard deviation ``(*volume)`` from zero-mean samples
        (drawn here unless given), in the units of the image."""
        samples = self.sample(n_samples) if samples is None else samples
        return samples.square().mean(0).sqrt()

    def predictive_std(self, samples: torch.Tensor) -> torch.Tensor:
        """Std of a new measurement, ``sqrt(Var[A J ζ] + σ_y²)``, shape ``sino_shape``."""
        with torch.no_grad():
            return (self.A(samples).square().mean(0) + self.noise_variance).sqrt()

    # ----------------------------------------------------------------------------------------
    # hyperparameters
    # ----------------------------------------------------------------------------------------
    def mode(self) -> torch.Tensor:
        """The linear model's posterior mode ``û = Mᵀ (M Mᵀ + σ_y² I)⁻¹ r`` (whitened,
        ``(P,)``), ``r = y - A f(θ*) + A J θ*``; warm-started from the previous call."""
        with torch.no_grad():
            residual = self._fit_residual + self.A(self.model.jvp(self.model.theta_star[None]))[0]
        u, self._mode_state, _ = self._solve_dual(residual[None], self._mode_state)
        return u[0]

    def fit_hyperparameters(
        self, em_steps: int = 10, n_samples: int = 16, *, progress: bool = False
    ) -> dict[str, list]:
        """Tune ``σ_b²`` per block and ``σ_y²`` by sample-based EM (see the module docstring).

        Returns :attr:`history`: every hyperparameter, the effective dimensions ``γ_b`` and the
        data residual per step (index 0 is the initial value).
        """
        from tqdm.auto import tqdm

        m = self.y.numel()
        state = None
        for _ in tqdm(range(em_steps), desc="EM", disable=not progress):
            u_hat = self.mode()
            samples, info = self.sample_weights(n_samples, x0=state)
            state = info["state"]
            sample_norms = self.prior.block_sqnorms(samples)
            mode_norms = self.prior.block_sqnorms(u_hat[None])
            gammas = {}
            for b in self.prior.blocks:
                n_b = self.prior.block_sizes[b]
                gamma = n_b - float(sample_norms[b].mean())
                gammas[b] = min(max(gamma, _MIN_GAMMA_FRACTION * n_b), n_b)
            with torch.no_grad():
                fit = self._fit_residual + self.A(self.model.jvp(self.model.theta_star[None]))[0]
                data_residual = float((fit - self._m(u_hat[None])[0]).square().sum())
            new_variances = {
                b: self.prior.variances[b] * float(mode_norms[b][0]) / gammas[b]
                for b in self.prior.blocks
            }
            self.noise_variance = data_residual / max(m - sum(gammas.values()), 1.0)
            if self.solver.method is not Method.CG:
                # whitened warm starts refer to the old variances
                state = self._rescale(state, new_variances)
            self.prior.variances = new_variances
            self.history["noise_variance"].append(self.noise_variance)
            self.history.setdefault("data_residual", []).append(data_residual)
            for b in self.prior.blocks:
                self.history[f"prior_variance/{b}"].append(new_variances[b])
                self.history.setdefault(f"gamma/{b}", []).append(gammas[b])
        return self.history

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
