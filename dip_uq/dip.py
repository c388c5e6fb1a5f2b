"""The deep image prior (DIP) reconstructor for 2D and 3D scans, and its optional pretraining.

The reconstruction is the output of a U-Net ``f`` with weights ``θ`` fitted to one measured
sinogram ``y``::

    x(θ) = c · f(θ; z),        z = FBP(y) / c   (input="fbp")   or   fixed noise (input="noise")

    loss(θ) = ‖A x(θ) - y‖² / m  +  γ · TV(x(θ))

with ``A`` the ray transform, ``m`` the number of measured values and TV the anisotropic total
variation of :mod:`dip_uq.tv`. The optimiser is Adam; the weights with the lowest loss over
the run are kept (:attr:`DIP.params_star`).

Scaling
-------
The network works on values of order one: ``c`` (:attr:`DIP.scale`) is the 99.9th percentile
of ``|FBP(y)|`` (Hann-filtered FBP/FDK of the data; the 99.9th percentile, not the maximum,
so that a few noisy voxels do not set it). The network input is the FBP divided by ``c`` and
the network output is multiplied by ``c``, so ``x(θ) = c · f(θ; z)`` in the units of the image
(attenuation per unit length). :meth:`DIP.image` is exactly that map ``θ ↦ x(θ)`` (what the
linearised Laplace differentiates); :attr:`DIP.network_input` holds ``z``.

Default rules (used where the argument is ``None``; every value used is stored on the object)
----------------------------------------------------------------------------------------------
* Noise level ``σ`` (:attr:`DIP.noise_sigma`, sinogram units): :func:`estimate_noise_sigma`,
  from the consistency of the projection moments across angles for parallel-beam scans
  (within 5 % of the true ``σ`` at 1-5 % noise on the regression phantoms) and from the
  median absolute second difference along the detector otherwise (an upper bound, 1.1-5×
  the true ``σ``). Give ``noise_sigma`` when it is known.
* TV weight ``γ`` (:func:`default_tv_weight`)::

      γ = κ · σ · a / m,        a² = ‖A‖_F² / N   (κ = TV_KAPPA = 0.5)

  with ``N`` the number of voxels and ``a`` the root-mean-square gain of the ray transform
  per voxel (:func:`ray_transform_gain`, a seeded Hutchinson estimate from two
  projections). Reasoning: where ``AᵀA ≈ a² I``, the data term ``½‖Ax - y‖²`` is
  ``½ a² ‖x - x̂‖²`` with ``x̂`` a least-squares image whose voxel noise is ``σ / a``; the
  weight of TV denoising that works best grows linearly with the noise level (as a
  wavelet threshold does), ``λ ∝ a² · σ / a = σ a``, and ``½‖Ax - y‖² + λ TV`` is ``m/2``
  times our loss with ``γ = 2λ/m``. It uses only the data: the noise level ``σ``, the
  number of measurements ``m`` (angles × detector pixels) and, through ``a``, the number of
  angles and the path lengths. It is independent of the units (``x → αx`` scales ``σ`` and
  ``γ`` by ``α``). ``κ`` is calibrated on the regression phantoms: the best γ of the converged
  TV reconstruction (:func:`dip_uq.tv.tv_reconstruct`) on 64² Shepp-Logan and random-ellipse
  scans with 30-60 angles over 180° or 90° and 1-5 % noise corresponds to κ between 0.23 and
  1.5, geometric mean 0.5; a quadratic-in-σ rule (Gaussian likelihood with a Laplace prior,
  the MAP balance) needed κ to change 10× across the same scans. DIP after 1000
  iterations (64² Shepp-Logan, 30 angles, 2 %) changed by < 0.5 dB for γ between 1/3 and
  3 times the rule's value and lost 1.4 dB at 6 times.
* Iterations (:func:`default_iterations`): ``2000 · (0.05 / ν)^0.7`` with the relative
  noise level ``ν = σ / mean|y|``, fewer after pretraining.
* Optimiser: Adam with ``β = (0.9, 0.99)`` and learning rate ``1e-3`` (:data:`DEFAULT_LR`),
  from scratch and after :func:`pretrain` alike. This deviates from the literature's
  ``1e-4`` (for fine-tuning a network pretrained on tens of thousands of images) because
  it was measured to be too slow here. 2D regression scan (64² Shepp-Logan, 30 angles, 2 %
  noise, U-Net 16-32-32-32), PSNR after 1000 iterations from scratch: lr 1e-4 21.7 dB,
  1e-3 23.5 dB, 3e-3 22.8 dB (1e-2 was unstable). After :func:`pretrain` (512 images,
  8 epochs, U-Net 32 channels, 64² with a 96-pixel detector): lr 1e-4 reached 22.4 / 24.4
  dB after 1000 / 3000 iterations, 3e-4 23.5 / 25.4 (1000 / 2000), 1e-3 25.2 / 29.1
  (1000 / 2000).
  β2 = 0.999 instead of 0.99 gave 21.8 dB at lr 1e-3: the huge gradients of the first
  iterations dominate Adam's second-moment average for ~1000 steps with β2 = 0.999 and
  shrink every later step.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .networks import UNet
from .tv import tv

__all__ = [
    "DEFAULT_LR",
    "DIP",
    "TV_KAPPA",
    "check_sinogram",
    "default_iterations",
    "default_tv_weight",
    "estimate_noise_sigma",
    "image_scale",
    "pretrain",
    "ray_transform_gain",
    "relative_noise",
]

logger = logging.getLogger("dip_uq")

INPUTS = ("fbp", "noise")
FBP_FILTER = "hann"  # the DIP input and the scale c come from a Hann-filtered FBP/FDK
SCALE_QUANTILE = 0.999  # c = this quantile of |FBP(y)|
NOISE_INPUT_RANGE = 0.1  # input="noise": z ~ U(0, 0.1), as in Ulyanov et al. (2018)
TV_KAPPA = 0.5  # γ = κ σ a / m; calibration in the module docstring
DEFAULT_LR = 1e-3  # Adam learning rate, from scratch and after pretrain(); see above
PRETRAINED_ITERATION_FACTOR = 0.7  # default_iterations after pretrain(); see there
ADAM_BETAS = (0.9, 0.99)  # β2 = 0.99, not 0.999: see the module docstring
CLIP_EMA = 0.99  # decay of the running gradient-norm average used for clipping
_MAX_QUANTILE_ELEMENTS = 2**20  # subsample for the quantile (torch.quantile caps at 2**24)


# --------------------------------------------------------------------------------------------
# validation and data-derived constants
# --------------------------------------------------------------------------------------------
def check_sinogram(A: Any, y: Any) -> torch.Tensor:
    """Validate one measured sinogram against the geometry of ``A`` and return it.

    Raises ``ValueError`` with a one-line message when ``y`` is not a floating-point tensor,
    its shape is not ``A.geometry.sino_shape`` (``(angles, cols)`` or ``(angles, rows,
    cols)``), or it holds NaN/Inf values.
    """
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a torch.Tensor sinogram, got {type(y).__name__}")
    if not y.is_floating_point():
        raise ValueError(f"y must be floating point, got dtype {y.dtype}; use y.float()")
    expected = tuple(A.geometry.sino_shape)
    if tuple(y.shape) != expected:
        axes = "(angles, cols)" if len(expected) == 2 else "(angles, rows, cols)"
        raise ValueError(
            f"sinogram shape {tuple(y.shape)} does not match the geometry's {expected} "
            f"{axes}; pass one sinogram laid out {axes} for this geometry"
        )
    finite = torch.isfinite(y)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"y contains {bad} NaN/Inf values; replace or mask bad detector pixels before "
            "reconstructing"
        )
    return y


def _quantile(values: torch.Tensor, q: float) -> float:
    """``q``-quantile of a tensor, on a deterministic strided subsample when it is large."""
    flat = values.detach().reshape(-1)
    stride = max(1, math.ceil(flat.numel() / _MAX_QUANTILE_ELEMENTS))
    return float(torch.quantile(flat[::stride].float(), q))


def image_scale(fbp_image: torch.Tensor) -> float:
    """The network's unit ``c``: the 99.9th percentile of ``|fbp_image|`` (1.0 if that is 0)."""
    c = _quantile(fbp_image.abs(), SCALE_QUANTILE)
    return c if c > 0 and math.isfinite(c) else 1.0


def _parallel_moment_sigma(y: torch.Tensor, geometry: Any, degree: int = 10) -> float | None:
    """Noise std from the Helgason-Ludwig consistency of a parallel-beam sinogram, or None.

    For parallel rays perpendicular to the rotation axis ``z``, the ``k``-th moment of a
    projection over the detector coordinate ``s``, ``M_k(θ) = Σ_s s^k y(θ, s)``, equals
    ``∫ x(r) (r·e_θ)^k dr``: a trigonometric polynomial of degree ``k`` in the ray angle
    ``θ``. With the detector's polynomials orthonormalised (QR of the Vandermonde matrix), the
    noise of the moments is white with variance ``σ²``, so the residual of a least-squares fit
    of each moment by a degree-``k`` trigonometric polynomial gives ``σ²`` with
    ``Σ_k (n_angles - 2k - 1)`` degrees of freedom per detector row (``k <= degree``).
    Exact when the detector covers the object; truncation and the projector's own
    discretisation error inflate it. None when the geometry is not of that kind.
    """
    if getattr(geometry, "kind", None) != "parallel":
        return None
    frames = geometry.frames()
    ray, u, center = frames["ray"], frames["u"], frames["center"]
    if geometry.ndim == 3 and (np.abs(ray[:, 2]).max() > 1e-9 or np.abs(u[:, 2]).max() > 1e-9):
        return None  # rays or columns not perpendicular to z: rows are not 2D slices
    spacing = np.linalg.norm(u, axis=1)
    e = u / spacing[:, None]
    offset = (center * e).sum(1)
    if np.abs((ray * e).sum(1)).max() > 1e-6 or np.ptp(spacing) > 1e-9 * spacing[0]:
        return None
    if np.ptp(offset) > 1e-6 * spacing[0]:
        return None
    n_cols, n_angles = geometry.det_shape[-1], geometry.n_angles
    degree = min(degree, n_cols - 1, (n_angles - 3) // 2)
    if degree < 0:
        return None
    s = (np.arange(n_cols) - (n_cols - 1) / 2) * spacing[0] + offset[0]
    t = s / max(np.abs(s).max(), 1e-12)
    basis, _ = np.linalg.qr(np.stack([t**k for k in range(degree + 1)], axis=1))
    theta = np.arctan2(ray[:, 1], ray[:, 0])
    moments = y.detach().double().cpu().numpy().reshape(n_angles, -1, n_cols) @ basis
    rss, dof = 0.0, 0
    for k in range(degree + 1):
        trig = [np.ones_like(theta)]
        for j in range(1, k + 1):
            trig += [np.cos(j * theta), np.sin(j * theta)]
        design = np.stack(trig, axis=1)
        coef, _, rank, _ = np.linalg.lstsq(design, moments[:, :, k], rcond=1e-10)
        rss += float(((moments[:, :, k] - design @ coef) ** 2).sum())
        dof += (n_angles - rank) * moments.shape[1]
    return math.sqrt(rss / dof) if dof > 0 else None


def estimate_noise_sigma(y: torch.Tensor, geometry: Any = None) -> float:
    """Estimate the noise std ``σ`` of one sinogram (its units).

    Two estimators; the smaller is returned, since both can only overestimate (signal
    leaking into the noise estimate), never systematically underestimate:

    * parallel beam (2D, or 3D with rays perpendicular to ``z``): the consistency of the
      projection moments across angles (:func:`_parallel_moment_sigma`). Measured on
      Shepp-Logan and random-ellipse scans (64²-128², 30-90 angles over 180° or 90°) it is
      within 5 % of the true ``σ`` from 1 % noise up (within 25 % at 0.5 %);
    * any geometry: the median absolute deviation of second differences along the detector
      columns, ``median(|y[j+1] - 2 y[j] + y[j-1]|) / (0.6745 √6)``. Sharp edges in the
      projections leak into it: on the same scans it is 1.1-1.6x the true ``σ`` at 5 % noise
      and 2-5x at 1 % (it is the only one for fan and cone beam; give ``noise_sigma`` when
      the noise is known).

    ``σ`` also absorbs the projector's own model error, which a fit cannot remove either.
    """
    if y.shape[-1] < 3:
        raise ValueError(
            f"cannot estimate the noise from {y.shape[-1]} detector columns; pass noise_sigma"
        )
    d2 = y[..., 2:] - 2 * y[..., 1:-1] + y[..., :-2]
    sigma = _quantile(d2.abs(), 0.5) / (0.6745 * math.sqrt(6.0))
    if geometry is not None:
        moment = _parallel_moment_sigma(y, geometry)
        if moment is not None:
            sigma = min(sigma, moment)
    return sigma


def ray_transform_gain(
    A: Any, *, probes: int = 2, seed: int = 0, device: str | torch.device | None = None
) -> float:
    """``a = ‖A‖_F / √N``: the root-mean-square gain of the ray transform per voxel.

    Hutchinson's estimate ``‖A‖_F² ≈ mean_k ‖A z_k‖²`` with Rademacher vectors ``z_k`` (±1
    per voxel) from a CPU generator seeded with ``seed``, projected in one batch on
    ``device`` (CPU by default). For a 2D
    parallel scan of unit voxels it is about ``√(0.65 · n_angles)``.
    """
    shape = tuple(A.volume.shape)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (probes, *shape), generator=generator).float().mul_(2).sub_(1)
    with torch.no_grad():
        energy = float(A(z.to(device)).double().square().sum())
    return math.sqrt(energy / (probes * math.prod(shape)))


def default_tv_weight(noise_sigma: float, gain: float, n_measurements: int) -> float:
    """The default TV weight ``γ = κ σ a / m`` (see the module docstring).

    Args:
        noise_sigma: noise std ``σ`` of the sinogram (its units).
        gain: ``a``, the RMS gain of the ray transform per voxel (:func:`ray_transform_gain`).
        n_measurements: ``m``, the number of values in the sinogram.
    """
    return TV_KAPPA * noise_sigma * gain / n_measurements


def relative_noise(y: torch.Tensor, noise_sigma: float) -> float:
    """``σ / mean(|y|)``: the noise level relative to the data (the convention of
    :func:`dip_uq.simulate`)."""
    mean = float(y.detach().abs().mean())
    return noise_sigma / mean if mean > 0 else math.inf


def default_iterations(relative_noise_level: float, pretrained: bool = False) -> int:
    """The default iteration budget from the relative noise level ``ν = σ / mean|y|``::

        iterations = 2000 · (0.05 / ν)^0.7        (from scratch)

    rounded to 100 and clipped to ``[500, 20000]``; after :func:`pretrain`, times
    :data:`PRETRAINED_ITERATION_FACTOR`. Reasoning: the budget should let the data fit reach
    the noise floor (``‖A x - y‖²/m ≈ σ²``, the discrepancy principle) and then leave as
    many iterations again for the TV term to clean up. The less noise, the more detail must
    be fitted and the longer that takes: measured from scratch (64² Shepp-Logan, lr 1e-3,
    default γ), the data fit reached ``σ²`` after about 1000, 2100 and 3000 iterations at 5 %,
    2 % and 1 % noise (≈ ``1000 · (0.05/ν)^0.7``), and the PSNR levelled off near 2500
    iterations at 5 % and was still rising at 3000 at 1-2 %. The number of angles did not
    change the iterations to reach ``σ²`` (30 and 60 angles at 2 %: 2100 both), so it enters
    only through ``ν``. After :func:`pretrain` (512 images, 8 epochs, lr 1e-3) the DIP
    reached the PSNR of 2950 scratch iterations after about 2000 (29 dB on the 64² scan of
    ``scripts/bench_dip.py pretrain``), hence the factor 0.7.
    """
    if not (relative_noise_level > 0 and math.isfinite(relative_noise_level)):
        return 20000 if relative_noise_level == 0 else 500
    iterations = 2000 * (0.05 / relative_noise_level) ** 0.7
    if pretrained:
        iterations *= PRETRAINED_ITERATION_FACTOR
    return int(min(max(round(iterations, -2), 500), 20000))


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        relation = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {relation} (or None), got {value!r}")
    return float(value)


def _resolve_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available")
    return device


def _fbp(A: Any, y: torch.Tensor) -> torch.Tensor:
    return A.fbp(y, filter=FBP_FILTER)


# --------------------------------------------------------------------------------------------
# the reconstructor
# --------------------------------------------------------------------------------------------
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
            returned by :func:`pretrain` shortens the default iteration budget.
        iterations: Adam steps (> 0); ``None``: :func:`default_iterations`.
        lr: Adam learning rate (> 0); ``None``: :data:`DEFAULT_LR` (1e-3; the module
            docstring says why not the literature's 1e-4).
        tv_weight: ``γ >= 0``; ``None``: :func:`default_tv_weight` from the data.
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
            (:func:`estimate_noise_sigma`). Only the default ``γ`` uses it.
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
    :attr:`best_iteration` the index of ``θ*``, and :attr:`tv_weight`, :attr:`iterations`,
    :attr:`lr`, :attr:`noise_sigma`, :attr:`scale` the values used.

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
        A: Any,
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
            fbp_image = _fbp(self.A, y)
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
        self.network = self._new_network()
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.lr, betas=ADAM_BETAS)
        config = self._config(y)
        run = _Run(0, math.inf, -1, {}, {"loss": [], "data_fit": [], "tv": []}, None)
        if self.checkpoint is not None and self.checkpoint.exists():
            run = self._load(config, optimizer)
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
    def _save(self, config: dict, optimizer: torch.optim.Optimizer, run: _Run) -> None:
        """Write the run state to :attr:`checkpoint` atomically (temporary file + rename)."""
        state = {
            "format": "dip_uq.DIP checkpoint 1",
            "config": config,
            "iteration": run.iteration,
            "network": self.network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best_loss": run.best_loss,
            "best_iteration": run.best_iteration,
            "best_state": run.best_state,
            "history": run.history,
            "grad_ema": run.grad_ema,
        }
        path = self.checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def _load(self, config: dict, optimizer: torch.optim.Optimizer) -> _Run:
        """Restore the run state from :attr:`checkpoint` after checking it fits this run."""
        path = self.checkpoint
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:  # a truncated or foreign file
            raise ValueError(
                f"cannot read the checkpoint {str(path)!r} ({error}); delete it or pass "
                "another checkpoint path"
            ) from None
        if not isinstance(state, dict) or state.get("format") != "dip_uq.DIP checkpoint 1":
            raise ValueError(f"{str(path)!r} is not a DIP checkpoint; pass another path")
        saved = state["config"]
        differ = [key for key in config if saved.get(key) != config[key]]
        if differ:
            details = ", ".join(f"{k}: {saved.get(k)!r} != {config[k]!r}" for k in differ)
            raise ValueError(
                f"the checkpoint {str(path)!r} belongs to another run ({details}); delete it or "
                "pass another checkpoint path"
            )
        self.network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        logger.info("DIP: resuming from %s at iteration %d", path, state["iteration"])
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

    def __repr__(self) -> str:
        return (
            f"DIP(iterations={self.iterations}, lr={self.lr:g}, tv_weight={self.tv_weight}, "
            f"input={self.input!r}, seed={self.seed}, device={str(self.device)!r})"
        )


# --------------------------------------------------------------------------------------------
# pretraining
# --------------------------------------------------------------------------------------------
def pretrain(
    A: Any,
    n_images: int = 256,
    epochs: int = 10,
    *,
    network: nn.Module | None = None,
    noise: float | Sequence[float] = (0.01, 0.05),
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train the U-Net to map FBP images to phantoms ("educated" DIP, Barbano et al. 2022).

    Training pairs come from :func:`dip_uq.phantoms.random_ellipses` on ``A.volume``'s grid,
    simulated through ``A`` with Gaussian noise (a relative level drawn uniformly from the
    ``noise`` range per image, or the one given) and reconstructed by the same Hann FBP as the
    DIP input. Each pair is scaled like the DIP scales its data: input ``FBP / c`` and target
    ``phantom / c`` with ``c = image_scale(FBP)``, so the trained network continues the DIP's
    ``x = c · f(z)`` without a change of units. Loss: mean squared error; Adam with ``lr``
    and a cosine decay to 0 over all steps.

    Args:
        A: the ray transform of the scan to be reconstructed (same geometry and grid).
        n_images: number of training phantoms (> 0).
        epochs: passes over them (> 0).
        network: the U-Net to train (deep-copied); ``None``: ``UNet.default_for(shape,
            seed=seed)``, the network :class:`DIP` builds by default.
        noise: a relative noise level, or ``(low, high)`` to draw one per image.
        batch_size: images per step.
        lr: peak Adam learning rate.
        seed: seeds the phantoms, the noise, the network and the batch order (local
            generators only).
        device: as for :class:`DIP`.
        progress: show a tqdm progress bar.

    Returns:
        The trained network (on the CPU), with an attribute ``pretraining`` (a dict of these
        settings and the final training loss) by which :class:`DIP` recognises it and
        shortens the default iteration budget (:func:`default_iterations`).
    """
    from .phantoms import random_ellipses
    from .simulate import simulate

    n_images = _positive_int("n_images", n_images)
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    lr = _positive_float("lr", lr)
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(noise, Real):
        low = high = _positive_float("noise", noise, allow_zero=True)
    else:
        try:
            low, high = (float(v) for v in noise)
        except (TypeError, ValueError):
            raise ValueError(f"noise must be a number or (low, high), got {noise!r}") from None
        if not (0 <= low <= high and math.isfinite(high)):
            raise ValueError(f"noise range must satisfy 0 <= low <= high, got {noise!r}")
    device = _resolve_device(device)
    shape = tuple(A.volume.shape)
    rng = np.random.default_rng(seed)

    inputs, targets = [], []
    with torch.no_grad():
        for _ in range(n_images):
            phantom = random_ellipses(shape, seed=rng).to(device)
            level = float(rng.uniform(low, high))
            y = simulate(A, phantom, noise=level, seed=int(rng.integers(2**31)))
            fbp_image = _fbp(A, y)
            c = image_scale(fbp_image)
            inputs.append((fbp_image / c).float().cpu())
            targets.append((phantom / c).float().cpu())
    inputs_t = torch.stack(inputs)[:, None]
    targets_t = torch.stack(targets)[:, None]

    net = UNet.default_for(shape, seed=seed) if network is None else copy.deepcopy(network)
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = math.ceil(n_images / batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    order_gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="pretrain", unit="step")
    last = math.nan
    try:
        for _ in range(epochs):
            order = torch.randperm(n_images, generator=order_gen)
            running = 0.0
            for b in range(steps_per_epoch):
                idx = order[b * batch_size : (b + 1) * batch_size]
                z = inputs_t[idx].to(device)
                target = targets_t[idx].to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = (net(z) - target).square().mean()
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += float(loss.detach()) * len(idx)
                if bar is not None:
                    bar.update(1)
            last = running / n_images
            if bar is not None:
                bar.set_postfix(loss=f"{last:.3g}")
    finally:
        if bar is not None:
            bar.close()
    net = net.cpu()
    net.pretraining = {
        "n_images": n_images,
        "epochs": epochs,
        "noise": (low, high),
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "volume_shape": list(shape),
        "final_loss": last,
    }
    return net
