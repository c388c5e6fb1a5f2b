"""Gaussian priors over the convolution weights, one per U-Net block.

Every ``k×k`` (2D) or ``k×k×k`` (3D) filter ``w`` of block ``b`` is a priori
``N(0, σ_b² K_ℓ)`` with the Matérn-½ kernel over the filter taps::

    K_ℓ(i, j) = exp(-||c_i - c_j|| / ℓ),      c_i the tap coordinates (unit spacing)

so neighbouring taps correlate; a ``1×1`` convolution has one tap and gets ``N(0, σ_b² I)``.
Filters are independent. With ``K_ℓ = L Lᵀ`` (Cholesky), ``Σ^{1/2} = σ_b L`` per filter, so
applying ``Σ``, ``Σ^{1/2}``, ``Σ^{-1}`` to a flat weight vector costs one small matrix product
per weight tensor.

An optional per-weight ``scale`` ``g`` (the g-prior of
:func:`dip_uq.laplace.gprior.gprior_scale`) makes it ``Σ = σ_b² G K_ℓ G`` with
``G = diag(g)``, i.e. ``Σ^{1/2} = σ_b G L``. Vectors are ``(B, P)`` in the layout of
:class:`~dip_uq.laplace.linearised.LinearisedNetwork`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from ..networks import ConvWeight

__all__ = ["MaternPrior", "matern_half"]


def matern_half(kernel_size: Sequence[int], lengthscale: float) -> torch.Tensor:
    """The Matérn-½ covariance ``exp(-d / ℓ)`` between the taps of one filter, float64
    ``(taps, taps)``, taps in C order of ``kernel_size``.

    >>> matern_half((1, 2), 1.0).numpy().round(4).tolist()
    [[1.0, 0.3679], [0.3679, 1.0]]
    """
    taps = torch.tensor(
        list(itertools.product(*(range(k) for k in kernel_size))), dtype=torch.float64
    )
    return torch.exp(-torch.cdist(taps, taps) / lengthscale)


class MaternPrior:
    """Block-wise Matérn-½ prior ``Σ`` over a list of convolution weights.

    Args:
        weights: the linearised weights (``UNet.conv_weights()``), in flat-vector order.
        variance: initial ``σ_b²`` of every block (or a dict block -> variance).
        lengthscale: ``ℓ_b`` of every block, in units of the tap spacing (or a dict).
        scale: per-weight factors ``g`` ``(P,)`` (positive), or ``None`` for all ones.

    ``variances`` (a dict block -> float) may be changed at any time; the factorisations
    depend on the lengthscales only and are cached.
    """

    def __init__(
        self,
        weights: Sequence[ConvWeight],
        variance: float | dict[str, float] = 1.0,
        lengthscale: float | dict[str, float] = 1.0,
        scale: torch.Tensor | None = None,
    ) -> None:
        self.weights = list(weights)
        self.blocks = list(dict.fromkeys(w.block for w in self.weights))
        per_block = lambda v: {b: float(v[b] if isinstance(v, dict) else v) for b in self.blocks}  # noqa: E731
        self.variances = per_block(variance)
        self.lengthscales = per_block(lengthscale)
        for name, values in (("variance", self.variances), ("lengthscale", self.lengthscales)):
            bad = {b: v for b, v in values.items() if not (v > 0 and math.isfinite(v))}
            if bad:
                raise ValueError(f"prior {name}s must be positive and finite, got {bad}")
        self.n_params = sum(w.numel for w in self.weights)
        self.block_sizes = {
            b: sum(w.numel for w in self.weights if w.block == b) for b in self.blocks
        }
        if scale is not None and (scale.shape != (self.n_params,) or not bool((scale > 0).all())):
            raise ValueError(f"scale must be positive with shape ({self.n_params},)")
        self.scale = scale
        self._factors: dict[tuple, torch.Tensor] = {}

    def scale_variances(self, factor: float) -> None:
        """Multiply every block's variance by one positive ``factor`` (the prior's overall
        scale; the variances relative to each other, and so the preconditioner, stay)."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"the factor on the prior variances must be positive, got {factor}")
        self.variances = {b: factor * v for b, v in self.variances.items()}

    def _cholesky(self, w: ConvWeight, like: torch.Tensor) -> torch.Tensor:
        key = (w.kernel_size, self.lengthscales[w.block], like.device, like.dtype)
        if key not in self._factors:
            K = matern_half(w.kernel_size, self.lengthscales[w.block])
            self._factors[key] = torch.linalg.cholesky(K).to(like)
        return self._factors[key]

    def _per_filter(self, u: torch.Tensor, apply) -> torch.Tensor:
        """Apply ``apply(filters (B, n_filters, taps), weight)`` to every weight slice."""
        parts, start = [], 0
        for w in self.weights:
            taps = math.prod(w.kernel_size)
            part = u[:, start : start + w.numel].reshape(u.shape[0], -1, taps)
            parts.append(apply(part, w).reshape(u.shape[0], -1))
            start += w.numel
        return torch.cat(parts, dim=1)

    def _scaled(self, theta: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """``G θ`` (or ``G⁻¹ θ``) for a batch ``(B, P)``."""
        if self.scale is None:
            return theta
        g = self.scale.to(theta)
        return theta / g if inverse else theta * g

    def sqrt(self, u: torch.Tensor) -> torch.Tensor:
        """``Σ^{1/2} u``: a whitened vector to weights (a prior sample when ``u ~ N(0, I)``)."""
        return self._scaled(
            self._per_filter(
                u, lambda f, w: f @ self._cholesky(w, f).T * math.sqrt(self.variances[w.block])
            )
        )

    def sqrt_t(self, theta: torch.Tensor) -> torch.Tensor:
        """``(Σ^{1/2})ᵀ θ``, the adjoint of :meth:`sqrt`."""
        return self._per_filter(
            self._scaled(theta),
            lambda f, w: f @ self._cholesky(w, f) * math.sqrt(self.variances[w.block]),
        )

    def inv_sqrt(self, theta: torch.Tensor) -> torch.Tensor:
        """``Σ^{-1/2} θ``: weights to whitened coordinates (the inverse of :meth:`sqrt`)."""

        def solve(f: torch.Tensor, w: ConvWeight) -> torch.Tensor:
            L = self._cholesky(w, f)
            x = torch.linalg.solve_triangular(L, f.transpose(1, 2), upper=False)
            return x.transpose(1, 2) / math.sqrt(self.variances[w.block])

        return self._per_filter(self._scaled(theta, inverse=True), solve)

    def block_sqnorms(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """``||u_b||²`` per block for a batch ``(B, P)``; each entry has shape ``(B,)``."""
        out, start = {b: u.new_zeros(u.shape[0]) for b in self.blocks}, 0
        for w in self.weights:
            out[w.block] = out[w.block] + u[:, start : start + w.numel].square().sum(1)
            start += w.numel
        return out

    def dense(self) -> torch.Tensor:
        """The full covariance ``Σ`` as a ``(P, P)`` float64 matrix (tiny problems only)."""
        # row i of the result is (Σ^{1/2} (Σ^{1/2})ᵀ e_i)ᵀ, i.e. row i of Σ
        return self.sqrt(self.sqrt_t(torch.eye(self.n_params, dtype=torch.float64)))
