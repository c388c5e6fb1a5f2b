"""Baseline uncertainty estimates for a DIP reconstruction: MC dropout and SGLD.

Both train the same :class:`dip_uq.DIP` (its loss, optimiser, clipping and defaults) and
return a :class:`UQResult` shaped like the linearised Laplace's output, so the metrics of
:mod:`dip_uq.metrics` compare them directly:

* :func:`mc_dropout` (Gal & Ghahramani 2016; for the DIP Laves et al. 2020): channel dropout
  after every convolution of the U-Net, trained with dropout on; the samples are forward
  passes of the trained network with fresh dropout masks.
* :func:`sgld` (Cheng et al. 2019): stochastic-gradient Langevin dynamics, i.e. Gaussian
  noise added to the convolution weights after every Adam step; the samples are images along
  the trajectory after a burn-in.

Randomness comes only from ``seed``: the network's initial weights and the DIP input (as for
:class:`dip_uq.DIP`), the SGLD noise (a local generator) and the dropout masks. PyTorch's
dropout has no generator argument and draws from the global generator, so
:func:`mc_dropout` seeds it inside ``torch.random.fork_rng``, which restores the caller's
global RNG state afterwards. On the CPU the same seed, data and thread count give identical
results.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import torch

from .dip import DIP
from .networks import UNet

if TYPE_CHECKING:
    from .projector import RayTransform

__all__ = ["MC_DROPOUT_RATE", "SGLD_NOISE_SCALE", "UQResult", "mc_dropout", "sgld"]

MC_DROPOUT_RATE = 0.05  # the MC-dropout DIP baseline of Antorán et al. (2023, bayes_dip)
SGLD_NOISE_SCALE = 2.0  # noise std = scale · lr per step, as in Cheng et al.'s code


@dataclass
class UQResult:
    """A reconstruction with per-voxel uncertainty from posterior samples.

    Attributes:
        mean: the sample mean ``(Y, X)`` or ``(Z, Y, X)``, in image units; the reconstruction.
        std: the per-voxel sample standard deviation (``n - 1`` in the denominator), same
            shape and units.
        samples: ``(n_samples, *volume)`` samples **of the image itself**, not zero-mean
            deviations (unlike :meth:`dip_uq.LinearisedLaplace.sample`); pass
            ``samples - mean`` to :func:`dip_uq.metrics.patch_tll`.
        history: the DIP training record (``loss``, ``data_fit``, ``tv`` per iteration, as
            :attr:`dip_uq.DIP.history`) plus, for :func:`sgld`, ``sample_iterations``: the
            iteration after whose step each sample was taken.
    """

    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor
    history: dict[str, list[float]]

    @classmethod
    def from_samples(cls, samples: torch.Tensor, history: dict[str, list[float]]) -> UQResult:
        """Mean and std over the first axis of ``samples`` ``(n, *volume)``, ``n >= 2``."""
        return cls(samples.mean(0), samples.std(0), samples, history)


def _check_n_samples(n_samples: Any) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, Integral) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    return int(n_samples)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global generator of the CPU (and of ``device`` when it is CUDA) with ``seed``
    for the block, and restore the caller's state afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            index = torch.cuda.current_device() if device.index is None else device.index
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _with_dropout(network: UNet, dropout: float) -> UNet:
    """A :class:`UNet` like ``network`` with channel dropout ``dropout`` and its weights."""
    if not isinstance(network, UNet):
        raise ValueError(
            f"mc_dropout needs a dip_uq.UNet as network (it adds dropout layers), got "
            f"{type(network).__name__}"
        )
    twin = UNet(
        dim=network.dim,
        scales=network.scales,
        channels=network.channels,
        skip_channels=network.skip_channels,
        norm=network.norm,
        in_channels=network.in_channels,
        out_channels=network.out_channels,
        seed=0,  # any seed: the weights are replaced; None would draw from the global RNG
        dropout=dropout,
    )
    twin.load_state_dict(network.state_dict())  # same names: dropout adds no parameters
    if getattr(network, "pretraining", None) is not None:
        twin.pretraining = network.pretraining  # DIP shortens its default budget for it
    return twin


def mc_dropout(
    A: RayTransform,
    y: torch.Tensor,
    *,
    dropout: float = MC_DROPOUT_RATE,
    iterations: int | None = None,
    n_samples: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    **dip_kwargs: Any,
) -> UQResult:
    """MC-dropout DIP: a U-Net with channel dropout, trained and sampled with dropout on.

    The U-Net gets channel dropout (``Dropout2d``/``Dropout3d``, rate ``dropout``) after the
    activation of every convolution except the output one (:class:`dip_uq.UNet`'s
    ``dropout``). :class:`dip_uq.DIP` trains it with dropout active, every step with fresh
    masks, and keeps the weights of the lowest loss; then ``n_samples`` forward passes with
    fresh masks give the samples ``x_k = c · f(θ*, mask_k; z)``, and ``mean`` and ``std``
    are taken over them (so ``mean`` is the MC-dropout prediction, not the network without
    dropout).

    Args:
        A: the ray transform of the scan (:class:`dip_uq.RayTransform`).
        y: the measured sinogram, ``A.geometry.sino_shape``.
        dropout: channel dropout rate in ``(0, 1)``; default 0.05, the MC-dropout DIP
            baseline of Antorán et al. (2023).
        iterations: DIP steps; ``None``: the DIP's default for the data.
        n_samples: forward passes (>= 2).
        seed: seeds the network, the DIP input and the dropout masks.
        device: as for :class:`dip_uq.DIP`.
        progress: show the DIP's progress bar.
        **dip_kwargs: further :class:`dip_uq.DIP` arguments (``lr``, ``tv_weight``,
            ``input``, ``noise_sigma``, ...). A ``network`` must be a :class:`dip_uq.UNet`
            (say one from :func:`dip_uq.pretrain`): a copy with the same weights and dropout
            ``dropout`` is trained. Without one, ``UNet.default_for(volume shape,
            seed=seed)`` with dropout.

    Returns:
        :class:`UQResult`, tensors on the DIP's device.
    """
    ok = isinstance(dropout, Real) and not isinstance(dropout, bool)
    if not (ok and 0 < dropout < 1):
        raise ValueError(f"dropout must be a probability in (0, 1), got {dropout!r}")
    n_samples = _check_n_samples(n_samples)
    network = dip_kwargs.pop("network", None)
    if network is None:
        network = UNet.default_for(tuple(A.volume.shape), seed=seed, dropout=float(dropout))
    else:
        network = _with_dropout(network, float(dropout))
    rec = DIP(
        A,
        network=network,
        iterations=iterations,
        seed=seed,
        device=device,
        progress=progress,
        **dip_kwargs,
    )
    with _seeded_global_rng(seed, rec.device):
        rec.fit(y)
        rec.network.train()  # dropout on
        with torch.no_grad():
            samples = torch.stack([rec.image() for _ in range(n_samples)])
    return UQResult.from_samples(samples, {k: list(v) for k, v in rec.history.items()})


def sgld(
    A: RayTransform,
    y: torch.Tensor,
    *,
    iterations: int | None = None,
    burn_in: int | None = None,
    n_samples: int = 32,
    lr: float | None = None,
    noise_scale: float = SGLD_NOISE_SCALE,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    **dip_kwargs: Any,
) -> UQResult:
    """SGLD DIP (Cheng et al. 2019): the DIP's Adam steps plus Gaussian weight noise.

    After every optimiser step of :class:`dip_uq.DIP` (through its ``after_step`` hook) each
    convolution weight (every parameter with 3 or more dimensions; not biases or GroupNorm
    parameters) gets independent noise::

        θ ← θ + η,        η ~ N(0, (noise_scale · lr)²)

    as in the authors' code. Textbook SGLD, ``θ ← θ - ε ∇U(θ) + N(0, 2ε)`` for the negative
    log-posterior ``U``, assumes plain gradient steps; Adam's steps are about ``lr`` per
    weight whatever the scale of the gradient, so the noise is scaled with ``lr`` instead.
    After ``burn_in`` iterations, ``n_samples`` images are taken ``t`` steps apart, the last
    after the final step: after the steps ``iterations - 1 - j · t``, ``j = 0 .. n_samples -
    1``, with the thinning ``t = (iterations - burn_in) // n_samples``. ``mean`` and ``std``
    are over them.

    Args:
        A: the ray transform of the scan (:class:`dip_uq.RayTransform`).
        y: the measured sinogram, ``A.geometry.sino_shape``.
        iterations: all steps, burn-in included; ``None``: the DIP's default for the data.
        burn_in: steps before sampling starts, ``0 <= burn_in <= iterations - n_samples``;
            ``None``: half of ``iterations``.
        n_samples: images kept (>= 2).
        lr: Adam learning rate; ``None``: :data:`dip_uq.dip.DEFAULT_LR`.
        noise_scale: noise std per step in units of ``lr`` (default 2, Cheng et al.).
        seed: seeds the network, the DIP input and the noise.
        device: as for :class:`dip_uq.DIP`.
        progress: show the DIP's progress bar.
        **dip_kwargs: further :class:`dip_uq.DIP` arguments (``network``, ``tv_weight``,
            ``input``, ...). Not ``checkpoint``: the samples of an interrupted run are lost.

    Returns:
        :class:`UQResult` with ``history["sample_iterations"]``, tensors on the DIP's device.
    """
    n_samples = _check_n_samples(n_samples)
    ok = isinstance(noise_scale, Real) and not isinstance(noise_scale, bool)
    if not (ok and math.isfinite(noise_scale) and noise_scale > 0):
        raise ValueError(f"noise_scale must be a finite number > 0, got {noise_scale!r}")
    if burn_in is not None and (
        isinstance(burn_in, bool) or not isinstance(burn_in, Integral) or burn_in < 0
    ):
        raise ValueError(f"burn_in must be a non-negative integer or None, got {burn_in!r}")
    if "checkpoint" in dip_kwargs:
        raise ValueError("sgld does not take a checkpoint: samples of a resumed run would be lost")

    def add_noise(dip: DIP, iteration: int) -> None:
        std = noise_scale * dip.lr
        with torch.no_grad():
            for p in dip.network.parameters():
                if p.ndim >= 3:  # convolution weights, as the authors' code
                    noise = torch.randn(p.shape, generator=generator, device=p.device)
                    p.add_(noise.to(p.dtype), alpha=std)

    samples: list[torch.Tensor] = []
    taken: list[float] = []
    schedule: dict[str, int] = {}

    def collect(dip: DIP, iteration: int, record: dict[str, float]) -> None:
        if not schedule:  # the first call: dip.iterations is now known
            start = dip.iterations // 2 if burn_in is None else int(burn_in)
            if start > dip.iterations - n_samples:
                raise ValueError(
                    f"burn_in={start} leaves fewer than n_samples={n_samples} of the "
                    f"{dip.iterations} iterations to sample from"
                )
            schedule["thin"] = (dip.iterations - start) // n_samples
        to_end = dip.iterations - 1 - iteration  # steps left after this one
        thin = schedule["thin"]
        if to_end % thin == 0 and to_end < n_samples * thin:
            with torch.no_grad():
                samples.append(dip.image().detach().clone())
            taken.append(iteration)

    rec = DIP(
        A,
        iterations=iterations,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
        after_step=add_noise,
        **dip_kwargs,
    )
    generator = torch.Generator(device=rec.device).manual_seed(seed)  # used by add_noise
    rec.fit(y, callback=collect)
    if len(samples) < n_samples:
        raise RuntimeError(
            f"SGLD stopped after {len(rec.history['loss'])} of {rec.iterations} iterations "
            f"with {len(samples)} of {n_samples} samples (the loss became non-finite); "
            "lower lr or noise_scale"
        )
    history = {k: list(v) for k, v in rec.history.items()}
    history["sample_iterations"] = taken
    return UQResult.from_samples(torch.stack(samples), history)
