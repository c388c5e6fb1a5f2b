"""The network linearised around its fitted weights: ``h(θ) = f(θ*) + J (θ - θ*)``.

Only the convolution weights are linearised (biases and normalisation parameters stay at their
fitted values). ``J v`` (Jacobian-vector) and ``Jᵀ u`` (vector-Jacobian) products come from
``torch.func.linearize`` / ``torch.func.vjp``, batched with ``torch.func.vmap``; ``J`` itself
is never formed. Weight vectors are flat: ``(B, P)`` with the weights of :attr:`weights`
concatenated in that order, each flattened in C order.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch.func import linearize, vjp, vmap

from ..networks import ConvWeight

__all__ = ["LinearisedNetwork"]

ImageFn = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


@contextmanager
def full_float32_convolutions() -> Iterator[None]:
    """Run cuDNN convolutions in full float32, not TF32, inside the block (restored after).

    On Ampere and newer GPUs torch computes float32 convolutions in TF32 by default (a 10-bit
    mantissa, unit round-off 5e-4 against float32's 6e-8). That is fine for fitting the DIP
    but not for the sampler's solves, which stop at a relative residual of 1e-3 of systems
    spanning many orders of magnitude (``λ_1 / σ_y²``): there, float32 products of a CG
    solution already err by a sizeable fraction of that tolerance (against float64), and
    TF32 would multiply that by about 8000, the ratio of the round-offs
    (docs/measurements.md). No effect on the CPU.
    """
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        owner, flag, full = conv, "fp32_precision", "ieee"
    else:
        owner, flag, full = cudnn, "allow_tf32", False
    saved = getattr(owner, flag)
    setattr(owner, flag, full)
    try:
        yield
    finally:
        setattr(owner, flag, saved)


class LinearisedNetwork:
    """Jacobian products of an image-valued function of network parameters.

    Args:
        image_fn: maps a full parameter dict (name -> tensor, as ``named_parameters()``) to the
            image, shape ``volume.shape`` (``(ny, nx)`` or ``(nz, ny, nx)``).
        params: the fitted parameters ``θ*`` (all of them; non-weights are held fixed).
        weights: the convolution weights to linearise over (``UNet.conv_weights()``).
        chunk: how many vectors one vmapped product handles at once; ``None`` sizes it so the
            activations of one chunk fit in ``memory_budget`` bytes (found by recording one
            forward pass).
        memory_budget: bytes of activations per chunk when ``chunk`` is ``None``.
    """

    def __init__(
        self,
        image_fn: ImageFn,
        params: Mapping[str, torch.Tensor],
        weights: Sequence[ConvWeight],
        chunk: int | None = None,
        memory_budget: int = 2**30,
    ) -> None:
        self.image_fn = image_fn
        self.weights = list(weights)
        missing = [w.name for w in self.weights if w.name not in params]
        if missing:
            raise ValueError(f"params lack the linearised weights {missing}")
        names = {w.name for w in self.weights}
        self.fixed = {k: v.detach() for k, v in params.items() if k not in names}
        self.theta_star = torch.cat([params[w.name].detach().reshape(-1) for w in self.weights])
        self.n_params = self.theta_star.numel()
        with torch.no_grad():
            self.image_star = self._image(self.theta_star)
        if chunk is None:
            chunk = max(1, int(memory_budget // max(self._activation_bytes(), 1)))
        self.chunk = int(chunk)
        self._jvp_fn: Callable | None = None
        self._vjp_fn: Callable | None = None

    def _activation_bytes(self) -> int:
        """Bytes autograd saves during one forward pass: the per-vector cost of a product."""
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        theta = self.theta_star.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self._image(theta)
        return total

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat weight vector ``(P,)`` into the named weight tensors."""
        out, start = {}, 0
        for w in self.weights:
            out[w.name] = flat[start : start + w.numel].reshape(w.shape)
            start += w.numel
        return out

    def _image(self, flat: torch.Tensor) -> torch.Tensor:
        return self.image_fn({**self.fixed, **self.unflatten(flat)})

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for a batch ``v`` of shape ``(B, P)``; returns ``(B, *volume.shape)``.

        The network at ``θ*`` is traced once (``torch.func.linearize``) and every call
        reuses its activations: a product then skips the forward pass at ``θ*``, which on a
        CPU also ran its convolutions one image at a time (faster products in 2D and 3D,
        docs/measurements.md; the same values bit for bit).
        """
        with full_float32_convolutions():
            if self._jvp_fn is None:
                with warnings.catch_warnings():  # the tracer's constant folding, harmless
                    warnings.filterwarnings("ignore", "Attempted to insert a get_attr Node")
                    _, self._jvp_fn = linearize(self._image, self.theta_star)
            fn = self._jvp_fn
            return torch.cat([vmap(fn)(part) for part in v.split(self.chunk)])

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """``Jᵀ u`` for a batch ``u`` of shape ``(B, *volume.shape)``; returns ``(B, P)``.

        The forward pass at ``θ*`` is recorded once and reused by every call.
        """
        with full_float32_convolutions():
            if self._vjp_fn is None:
                _, self._vjp_fn = vjp(self._image, self.theta_star)
            fn = self._vjp_fn
            return torch.cat([vmap(lambda c: fn(c)[0])(part) for part in u.split(self.chunk)])

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """The linear model ``h(θ) = f(θ*) + J (θ - θ*)`` for a batch ``(B, P)``."""
        return self.image_star + self.jvp(theta - self.theta_star)
