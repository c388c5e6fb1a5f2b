"""The deep image prior (DIP) reconstructor for 2D and 3D scans.

The reconstruction is the output of a U-Net ``f`` with weights ``θ`` fitted to one measured
sinogram ``y``::

    x(θ) = c · f(θ; z),        z = FBP(y) / c   (input="fbp")   or   fixed noise (input="noise")

    loss(θ) = ‖A x(θ) - y‖² / m  +  γ · TV(x(θ))

with ``A`` the ray transform, ``m`` the number of measured values and TV the anisotropic total
variation of :mod:`dip_uq.tv`. The optimiser is Adam; the weights with the lowest loss over
the run are kept (:attr:`DIP.params_star`).

Scaling
-------
The network works on values of order one: ``c`` (:attr:`DIP.scale`) is
:func:`dip_uq.noise.image_scale` of the Hann-filtered FBP/FDK of the data (its 99.9th
percentile in absolute value). The network input is the FBP divided by ``c`` and the network
output is multiplied by ``c``, so ``x(θ) = c · f(θ; z)`` in the units of the image
(attenuation per unit length). :meth:`DIP.image` is exactly that map ``θ ↦ x(θ)`` (what the
linearised Laplace differentiates); :attr:`DIP.network_input` holds ``z``.

Defaults (used where the argument is ``None``; every value used is stored on the object)
----------------------------------------------------------------------------------------
* Noise level ``σ``, TV weight ``γ`` and iterations: the data-driven rules of
  :mod:`dip_uq.noise` (:func:`~dip_uq.noise.estimate_noise_sigma`,
  :func:`~dip_uq.noise.default_tv_weight`, :func:`~dip_uq.noise.default_iterations`), where
  their calibration is given. Give ``noise_sigma`` when it is known.
* Optimiser: Adam with ``β = (0.9, 0.99)`` and learning rate ``1e-3`` (:data:`DEFAULT_LR`),
  from scratch and after :func:`dip_uq.pretraining.pretrain` alike. This deviates from the
  literature's ``1e-4`` (for fine-tuning a network pretrained on tens of thousands of
  images), which reached a lower PSNR in the same iterations here, from scratch and after
  pretraining alike; ``3e-3`` was worse again, ``1e-2`` unstable. ``β2 = 0.99`` rather than
  ``0.999``: with the latter the huge gradients of the first iterations dominate Adam's
  second-moment average for about a thousand steps and shrink every later step
  (docs/measurements.md has the PSNRs).
* Gradient clipping: the gradient norm is capped at ``clip_grad`` (5) times its running
  average, so a rare spike cannot throw the weights far; ordinary steps are untouched.

Randomness comes only from ``seed``: the U-Net's initial weights (``UNet(seed=seed)``) and,
for ``input="noise"``, a local ``torch.Generator``. The global RNG is never used. On the CPU
two runs with the same seed, data and thread count give bit-identical results; on CUDA the
projector's backward (``grid_sample``/ASTRA atomics) is not bit-reproducible.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .checkpoint import load as load_checkpoint
from .checkpoint import save as save_checkpoint
from .networks import UNet, onednn_convolutions
from .noise import (
    _positive_float,
    _positive_int,
    check_sinogram,
    default_iterations,
    default_tv_weight,
    estimate_noise_sigma,
    image_scale,
    ray_transform_gain,
    relative_noise,
)
from .tv import tv

if TYPE_CHECKING:
    from .projector.ray_transform import RayTransform

__all__ = ["ADAM_BETAS", "DEFAULT_LR", "DIP", "FBP_FILTER"]

logger = logging.getLogger("dip_uq")

INPUTS = ("fbp", "noise")
FBP_FILTER = "hann"  # the DIP input and the scale c come from a Hann-filtered FBP/FDK
NOISE_INPUT_RANGE = 0.1  # input="noise": z ~ U(0, 0.1), as in Ulyanov et al. (2018)
DEFAULT_LR = 1e-3  # Adam learning rate, from scratch and after pretrain(); see above
ADAM_BETAS = (0.9, 0.99)  # β2 = 0.99, not 0.999: see the module docstring
CLIP_EMA = 0.99  # decay of the running gradient-norm average used for clipping
CHECKPOINT_KIND = "dip_uq.DIP checkpoint 2"


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` is CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available")
    return device


@dataclass
class _Run:
    """Mutable state of one fit: what a checkpoint holds besides the network and optimiser."""

    iteration: int
    best_loss: float
    best_iteration: int
    best_state: dict[str, torch.Tensor]
    history: dict[str, list[float]]
    grad_ema: float | None


class DIP:
    """Deep-image-prior reconstruction of one scan (2D or 3D) through a ray transform ``A``.

    Args:
        A: the forward operator, a :class:`dip_uq.RayTransform` (``A(x)``, ``A.fbp``,
            ``A.volume``, ``A.geometry``). The DIP uses ``A`` only through ``A(x)`` (autograd
            supplies ``Aᵀ``) and ``A.fbp`` for the input.
        network: the U-Net ``f``; ``None`` builds ``UNet.default_for(A.volume.shape,
            seed=seed)``. A given network is deep-copied (the caller's stays unchanged); one
            returned by :func:`dip_uq.pretraining.pretrain` shortens the default iteration
            budget.
        iterations: Adam steps (> 0); ``None``: :func:`dip_uq.noise.default_iterations`.
        lr: Adam learning rate (> 0); ``None``: :data:`DEFAULT_LR` (1e-3; the module
            docstring says why not the literature's 1e-4).
        tv_weight: ``γ >= 0``; ``None``: :func:`dip_uq.noise.default_tv_weight` from the
            data.
        input: ``"fbp"`` (the scaled FBP/FDK of ``y``) or ``"noise"`` (fixed uniform noise in
            ``[0, 0.1)``, drawn from a generator seeded with ``seed``).
        seed: non-negative int; seeds the network initialisation and the noise input.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device`` or ``None`` (CUDA when
            available).
        checkpoint: a file path; the run state is saved there atomically every
            ``checkpoint_every`` iterations and at the end, and :meth:`fit` resumes from it
            when it exists.
        checkpoint_every: iterations between checkpoints (> 0).
        noise_sigma: noise std of ``y`` (sinogram units); ``None``: estimated from ``y``
            (:func:`dip_uq.noise.estimate_noise_sigma`). Only the default ``γ`` uses it.
        clip_grad: gradient clipping: the gradient norm is capped at ``clip_grad`` times its
            running average (exponential, decay 0.99), which stops the rare loss spikes of DIP
            without touching ordinary steps and does not depend on the units of the data;
            ``None`` disables clipping.
        mixed_precision: run the U-Net under bf16 autocast (CUDA only; the projector and the
            loss stay in float32). Off by default: it was not faster for small-channel 3D
            U-Nets on an H200.
        progress: show a tqdm progress bar during :meth:`fit`.
        after_step: a hook called as ``after_step(dip, iteration)`` right after every
            optimiser step, before the next loss is evaluated. It may change the weights of
            :attr:`network` in place (under ``torch.no_grad()``): stochastic-gradient Langevin
            dynamics adds its noise this way (:func:`dip_uq.baselines.sgld`). Unlike
            ``fit``'s ``callback`` it runs before that iteration's checkpoint is written, so
            the checkpoint holds the weights it left; its own state (a random generator, say)
            is not checkpointed.

    After :meth:`fit`: :attr:`network` holds the selected weights ``θ*`` (also in
    :attr:`params_star`, detached), :attr:`history` the per-iteration ``loss``, ``data_fit``
    and ``tv`` (lists of floats, iteration ``k`` evaluated at the weights before step ``k``),
    :attr:`best_iteration` the index of ``θ*``, :attr:`y` the sinogram it was fitted to (as
    checked and moved by :meth:`fit`: float32, contiguous, on :attr:`device`, shape
    ``A.geometry.sino_shape``; what :class:`dip_uq.laplace.LinearisedLaplace` conditions
    on), and :attr:`tv_weight`, :attr:`iterations`, :attr:`lr`, :attr:`noise_sigma`,
    :attr:`scale` the values used.

    >>> import numpy as np, dip_uq as du
    >>> A = du.RayTransform(du.Volume((16, 16)),
    ...                     du.ParallelBeam(np.linspace(0, np.pi, 8, endpoint=False), (16,)))
    >>> y = du.simulate(A, du.phantoms.shepp_logan((16, 16)), noise=0.02)
    >>> rec = DIP(A, iterations=5, device="cpu", progress=False)
    >>> rec.fit(y).shape
    torch.Size([16, 16])
    """

    def __init__(
        self,
        A: RayTransform,
        network: nn.Module | None = None,
        iterations: int | None = None,
        lr: float | None = None,
        tv_weight: float | None = None,
        input: str = "fbp",
        seed: int = 0,
        device: str | torch.device | None = None,
        checkpoint: str | os.PathLike | None = None,
        *,
        checkpoint_every: int = 100,
        noise_sigma: float | None = None,
        clip_grad: float | None = 5.0,
        mixed_precision: bool = False,
        progress: bool = True,
        after_step: Callable[[DIP, int], Any] | None = None,
    ) -> None:
        for attr in ("volume", "geometry", "fbp"):
            if not hasattr(A, attr):
                raise ValueError(
                    f"A must be a dip_uq.RayTransform (it has no {attr!r}), got {type(A).__name__}"
                )
        if input not in INPUTS:
            raise ValueError(f"unknown input {input!r}; use one of {', '.join(map(repr, INPUTS))}")
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if network is not None and not isinstance(network, nn.Module):
            raise ValueError(f"network must be a torch.nn.Module or None, got {network!r}")
        self.A = A
        self.input = input
        self.seed = int(seed)
        self.device = _resolve_device(device)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
        self.clip_grad = _positive_float("clip_grad", clip_grad)
        self.mixed_precision = bool(mixed_precision)
        if self.mixed_precision and self.device.type != "cuda":
            raise ValueError("mixed_precision=True needs a CUDA device; leave it off on the CPU")
        self.progress = bool(progress)
        if after_step is not None and not callable(after_step):
            raise ValueError(f"after_step must be callable or None, got {after_step!r}")
        self.after_step = after_step
        self._requested = {
            "iterations": _positive_int("iterations", iterations, allow_none=True),
            "lr": _positive_float("lr", lr),
            "tv_weight": _positive_float("tv_weight", tv_weight, allow_zero=True),
            "noise_sigma": _positive_float("noise_sigma", noise_sigma, allow_zero=True),
        }
        self.pretrained = network is not None and getattr(network, "pretraining", None) is not None
        self._initial_network = None if network is None else copy.deepcopy(network).cpu()
        # the values used; set from the arguments now and from the data by fit()
        self.iterations: int | None = self._requested["iterations"]
        self.lr: float = self._requested["lr"] or DEFAULT_LR
        self.tv_weight: float | None = self._requested["tv_weight"]
        self.noise_sigma: float | None = self._requested["noise_sigma"]
        self.scale: float | None = None
        self.gain: float | None = None  # ray_transform_gain(A), computed once when needed
        self.network: nn.Module = self._new_network()
        self.network_input: torch.Tensor | None = None
        self.y: torch.Tensor | None = None  # the sinogram of the last fit(), set by fit()
        self.params_star: dict[str, torch.Tensor] | None = None
        self.best_iteration: int | None = None
        self.history: dict[str, list[float]] = {"loss": [], "data_fit": [], "tv": []}
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------
    def _new_network(self) -> nn.Module:
        if self._initial_network is None:
            net = UNet.default_for(tuple(self.A.volume.shape), seed=self.seed)
        else:
            net = copy.deepcopy(self._initial_network)
        return net.to(self.device)

    def _network_input(self, fbp_image: torch.Tensor) -> torch.Tensor:
        shape = tuple(self.A.volume.shape)
        if self.input == "fbp":
            z = fbp_image / self.scale
        else:
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            z = NOISE_INPUT_RANGE * torch.rand(shape, generator=generator)
        return z.reshape(1, 1, *shape).to(self.device, torch.float32).contiguous()

    def image(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The reconstruction ``x(θ) = c · f(θ; z)`` for weights ``params``, shaped like the
        volume (``(Y, X)`` or ``(Z, Y, X)``), differentiable in ``params``.

        ``params`` maps parameter names (``network.named_parameters()`` keys) to tensors, as
        for ``torch.func.functional_call``; names left out take the network's current values
        (after :meth:`fit`, ``θ*``). ``None`` evaluates the network as it is. Usable inside
        ``torch.func.jvp``/``vjp`` (the linearisation) after :meth:`fit` has set the input.
        Always evaluated in float32 (also when the fit used ``mixed_precision``).
        """
        if self.network_input is None or self.scale is None:
            raise ValueError("DIP.image needs the network input; call fit(y) first")
        if params is None:
            out = self.network(self.network_input)
        else:
            out = torch.func.functional_call(
                self.network, params, (self.network_input,), strict=False
            )
        return (self.scale * out.float()).reshape(tuple(self.A.volume.shape))

    def _forward(self, network: nn.Module, z: torch.Tensor) -> torch.Tensor:
        if self.mixed_precision:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                return network(z).float()
        with onednn_convolutions():  # a training step: plain autograd, one image
            return network(z)

    def predict(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """:meth:`image` at ``params`` (default :attr:`params_star`), without autograd."""
        with torch.no_grad():
            return self.image(self.params_star if params is None else params).detach()

    # ---------------------------------------------------------------------------------------
    def _prepare(self, y: torch.Tensor) -> torch.Tensor:
        """Validate ``y``, set the scale, input and every default from it."""
        y = check_sinogram(self.A, y).to(self.device, torch.float32).contiguous()
        started = time.perf_counter()
        with torch.no_grad():
            fbp_image = self.A.fbp(y, filter=FBP_FILTER)
        self.timings["fbp_s"] = time.perf_counter() - started
        self.scale = image_scale(fbp_image)
        self.network_input = self._network_input(fbp_image)
        req = self._requested
        self.noise_sigma = (
            estimate_noise_sigma(y, self.A.geometry)
            if req["noise_sigma"] is None
            else req["noise_sigma"]
        )
        if req["tv_weight"] is None:
            if self.gain is None:
                self.gain = ray_transform_gain(self.A, seed=self.seed, device=self.device)
            self.tv_weight = default_tv_weight(self.noise_sigma, self.gain, y.numel())
        else:
            self.tv_weight = req["tv_weight"]
        self.iterations = req["iterations"] or default_iterations(
            relative_noise(y, self.noise_sigma), self.pretrained
        )
        logger.info(
            "DIP: %d iterations, lr %.3g, tv_weight %.4g, noise sigma %.4g, scale %.4g, input %s",
            self.iterations,
            self.lr,
            self.tv_weight,
            self.noise_sigma,
            self.scale,
            self.input,
        )
        return y

    def _config(self, y: torch.Tensor) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed (everything but ``iterations``)."""
        digest = hashlib.sha256(y.detach().cpu().numpy().tobytes()).hexdigest()
        return {
            "volume_shape": list(self.A.volume.shape),
            "sino_shape": list(self.A.geometry.sino_shape),
            "data_sha256": digest,
            "lr": self.lr,
            "tv_weight": self.tv_weight,
            "seed": self.seed,
            "input": self.input,
            "clip_grad": self.clip_grad,
            "n_params": sum(p.numel() for p in self.network.parameters()),
        }

    def fit(
        self,
        y: torch.Tensor,
        callback: Callable[[DIP, int, dict[str, float]], Any] | None = None,
    ) -> torch.Tensor:
        """Fit the network to the sinogram ``y`` and return the reconstruction.

        Args:
            y: one sinogram, shape ``A.geometry.sino_shape`` (``(angles, cols)`` or
                ``(angles, rows, cols)``), finite floating point; moved to :attr:`device`.
            callback: called after every iteration as ``callback(dip, iteration, record)``
                with ``record = {"loss", "data_fit", "tv"}``; raising from it aborts the fit
                (a later :meth:`fit` with the same ``checkpoint`` resumes from the last one
                saved).

        Returns:
            ``x(θ*)``, shaped like the volume, on :attr:`device` (no autograd history).

        With ``checkpoint`` set and the file present, the run continues from it and ends in
        the same state (weights, optimiser, history, ``θ*``) as an uninterrupted run. A
        checkpoint written for other data or settings is refused (``ValueError``).
        """
        y = self._prepare(y)
        self.y = y
        self.network = self._new_network()
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.lr, betas=ADAM_BETAS)
        config = self._config(y)
        run = self._load(config, optimizer) if self.checkpoint is not None else None
        if run is None:
            run = _Run(0, math.inf, -1, {}, {"loss": [], "data_fit": [], "tv": []}, None)
        self.history = run.history

        steps = range(run.iteration, self.iterations)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.iterations, initial=run.iteration, desc="DIP", unit="it")
        started = time.perf_counter()
        try:
            for k in steps:
                record = self._step(y, params, optimizer, run)
                run.iteration = k + 1
                if not math.isfinite(record["loss"]):
                    logger.warning(
                        "DIP: the loss became %s at iteration %d; stopping with the best weights "
                        "(iteration %d). Lower lr.",
                        record["loss"],
                        k,
                        run.best_iteration,
                    )
                    break
                if self.checkpoint is not None and (
                    run.iteration % self.checkpoint_every == 0 or run.iteration == self.iterations
                ):
                    self._save(config, optimizer, run)
                if bar is not None:
                    bar.update(1)
                    if k % 10 == 0:
                        bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                if callback is not None:
                    callback(self, k, record)
        finally:
            if bar is not None:
                bar.close()
        self.timings["fit_s"] = time.perf_counter() - started
        done = run.iteration - (self.iterations - len(steps))
        self.timings["seconds_per_iteration"] = self.timings["fit_s"] / max(done, 1)
        if not run.best_state:
            raise RuntimeError("DIP.fit made no iteration with a finite loss; lower lr")
        with torch.no_grad():
            self.network.load_state_dict(run.best_state)
        self.params_star = {n: p.detach().clone() for n, p in self.network.named_parameters()}
        self.best_iteration = run.best_iteration
        return self.predict()

    def _step(
        self,
        y: torch.Tensor,
        params: list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        run: _Run,
    ) -> dict[str, float]:
        """One Adam step; records the loss of the weights before the step."""
        optimizer.zero_grad(set_to_none=True)
        x = self.scale * self._forward(self.network, self.network_input)
        x = x.reshape(tuple(self.A.volume.shape))
        data_fit = (self.A(x) - y).square().mean()
        tv_value = tv(x)
        loss = data_fit + self.tv_weight * tv_value
        loss.backward()
        record = {
            "loss": float(loss.detach()),
            "data_fit": float(data_fit.detach()),
            "tv": float(tv_value.detach()),
        }
        for key, value in record.items():
            run.history[key].append(value)
        k = len(run.history["loss"]) - 1
        if record["loss"] < run.best_loss:
            run.best_loss, run.best_iteration = record["loss"], k
            run.best_state = {n: t.detach().clone() for n, t in self.network.state_dict().items()}
        if not math.isfinite(record["loss"]):
            return record
        if self.clip_grad is not None:
            grads = [p.grad for p in params if p.grad is not None]
            norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            if run.grad_ema is not None and norm > self.clip_grad * run.grad_ema:
                factor = self.clip_grad * run.grad_ema / norm
                for g in grads:
                    g.mul_(factor)
                norm = self.clip_grad * run.grad_ema
            run.grad_ema = (
                norm if run.grad_ema is None else CLIP_EMA * run.grad_ema + (1 - CLIP_EMA) * norm
            )
        optimizer.step()
        if self.after_step is not None:
            self.after_step(self, k)
        return record

    # ---------------------------------------------------------------------------------------
    def _save(self, config: dict[str, Any], optimizer: torch.optim.Optimizer, run: _Run) -> None:
        """Write the run state to :attr:`checkpoint` atomically, fingerprinted by ``config``."""
        payload = {
            "iteration": run.iteration,
            "network": self.network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best_loss": run.best_loss,
            "best_iteration": run.best_iteration,
            "best_state": run.best_state,
            "history": run.history,
            "grad_ema": run.grad_ema,
        }
        save_checkpoint(self.checkpoint, CHECKPOINT_KIND, config, payload)

    def _load(self, config: dict[str, Any], optimizer: torch.optim.Optimizer) -> _Run | None:
        """Restore the run state from :attr:`checkpoint`; ``None`` when there is none yet.

        A checkpoint of another run (``config`` differs) is refused with a ``ValueError``.
        """
        state = load_checkpoint(self.checkpoint, CHECKPOINT_KIND, config, map_location=self.device)
        if state is None:
            return None
        self.network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        logger.info("DIP: resuming from %s at iteration %d", self.checkpoint, state["iteration"])
        if state["iteration"] > self.iterations:
            logger.warning(
                "DIP: the checkpoint is at iteration %d, beyond iterations=%d; using it as is",
                state["iteration"],
                self.iterations,
            )
        return _Run(
            iteration=int(state["iteration"]),
            best_loss=float(state["best_loss"]),
            best_iteration=int(state["best_iteration"]),
            best_state=state["best_state"],
            history={k: list(v) for k, v in state["history"].items()},
            grad_ema=state["grad_ema"],
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fit as named tensors: the network's weights at ``θ*`` and buffers, the network
        input ``z``, the image scale ``c`` and the noise level ``σ`` (float64 scalars): what
        :meth:`image`, :meth:`predict` and the linearised Laplace use.

        Raises:
            ValueError: before :meth:`fit`.
        """
        if self.params_star is None:
            raise ValueError("the DIP is not fitted: call fit(y) before state_dict()")
        return {
            **{f"network.{k}": v for k, v in self.network.state_dict().items()},
            "network_input": self.network_input,
            "scale": torch.tensor(self.scale, dtype=torch.float64),
            "noise_sigma": torch.tensor(self.noise_sigma, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take the fit of :meth:`state_dict` (of a DIP built with the same network) instead
        of fitting: afterwards :meth:`image`, :meth:`predict` and :attr:`params_star` are
        those of the DIP that wrote it. History, timings and ``y`` stay as they are.

        Raises:
            ValueError: ``state`` holds another network's weights.
        """
        prefix = "network."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            self.network.load_state_dict(weights)
        except RuntimeError as err:
            raise ValueError(
                f"the state is of another network than this DIP's; build it with the same "
                f"network arguments ({err})"
            ) from err
        self.network_input = state["network_input"].to(self.device)
        self.scale = float(state["scale"])
        self.noise_sigma = float(state["noise_sigma"])
        self.params_star = {n: p.detach().clone() for n, p in self.network.named_parameters()}

    def __repr__(self) -> str:
        return (
            f"DIP(iterations={self.iterations}, lr={self.lr:g}, tv_weight={self.tv_weight}, "
            f"input={self.input!r}, seed={self.seed}, device={str(self.device)!r})"
        )
