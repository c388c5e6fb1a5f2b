"""Pretraining of the DIP's U-Net on simulated phantoms ("educated" DIP, Barbano et al. 2022).

:func:`pretrain` teaches the network the map from a scan's FBP to its phantom on random
ellipses seen through the scan's own ray transform, so that :class:`dip_uq.dip.DIP` starts
from weights that already reconstruct; the DIP recognises such a network and shortens its
default iteration budget (:func:`dip_uq.noise.default_iterations`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .dip import FBP_FILTER, _resolve_device
from .networks import UNet
from .noise import _positive_float, _positive_int, image_scale
from .phantoms import random_ellipses
from .simulation import simulate

if TYPE_CHECKING:
    from .projector.ray_transform import RayTransform

__all__ = ["pretrain"]


def pretrain(
    A: RayTransform,
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
            seed=seed)``, the network :class:`~dip_uq.dip.DIP` builds by default.
        noise: a relative noise level, or ``(low, high)`` to draw one per image.
        batch_size: images per step.
        lr: peak Adam learning rate.
        seed: seeds the phantoms, the noise, the network and the batch order (local
            generators only).
        device: as for :class:`~dip_uq.dip.DIP`.
        progress: show a tqdm progress bar.

    Returns:
        The trained network (on the CPU), with an attribute ``pretraining`` (a dict of these
        settings and the final training loss) by which :class:`~dip_uq.dip.DIP` recognises
        it and shortens the default iteration budget
        (:func:`dip_uq.noise.default_iterations`).
    """
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
            fbp_image = A.fbp(y, filter=FBP_FILTER)
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
