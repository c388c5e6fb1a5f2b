"""Issue 35, step 2, first lead: an image-space discrepancy term, measured on the APS tooth.

The linearised network gets an additive term ``x = f(θ*) + J (θ - θ*) + e`` with
``e = s W B v``, ``v ~ N(0, I)`` per voxel, ``B`` a Gaussian blur of ``--width`` voxels
(normalised to unit variance per voxel) and ``W`` either the identity (``blur``) or a weight
that follows the DIP image's edges (``edge``: the blurred gradient magnitude plus 10 % of its
rms, rms 1). In the sampler it is a second block of the design matrix, ``M = [A J Σ^{1/2},
s A W B]``: the Gram operator, the Nyström sketch, the CG solves and Matheron's rule are the
posterior's own, and ``e`` keeps its prior variance where the projections do not constrain
it. The scale ``s`` is chosen like the prior's factor: after the run's own search, on the
cross-validation's second DIP, by the held-out projections' likelihood (half of them at the
arc's ends), in decades of the rms ``s0`` of its posterior samples; it is 0 where no ``s``
beats the model without ``e``.

The scan is ``scripts/tooth_check.py --step 2 --arc 60``'s: the APS tooth's first 60° (31
projections), 96², scored over the tooth against the DIP of all 181 projections. Printed and
written to ``OUT/scores.json``: 50/90 % coverage, Spearman(std, |error|) and std/RMSE of the
run's std map, of each variant at its chosen ``s`` and at ``s0`` (unchosen, to show what the
term does); ``OUT/maps.png`` shows the maps.

This is a prototype: the term lives in a subclass of :class:`dip_uq.LinearisedLaplace` that the
script swaps in, and the search is patched into :mod:`dip_uq.stages`. About an hour on one
thread; ``--smoke`` runs a 32² simulated 90° arc in a minute.

Usage: ``python scripts/study_discrepancy.py OUT [--width 1.0] [--smoke]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tooth_check import scores_over, study_setup, support_of

from dip_uq import pipeline, stages
from dip_uq.laplace import LinearisedLaplace
from dip_uq.laplace.predictive import predictive
from dip_uq.laplace.prior_scale import best_decade
from dip_uq.metrics import gaussian_tll

VARIANTS = ("blur", "edge")
KERNEL: torch.Tensor = torch.ones(1, 1, 1, 1)  # set by main(): the normalised blur


def blur(v: torch.Tensor) -> torch.Tensor:
    """``B v`` for images ``(B, Y, X)``: a symmetric kernel with zero padding (self-adjoint)."""
    return F.conv2d(v[:, None], KERNEL.to(v.dtype), padding=KERNEL.shape[-1] // 2)[:, 0]


def edge_weight(image: torch.Tensor) -> torch.Tensor:
    """``W``: the blurred gradient magnitude of ``image`` plus 10 % of its rms, rms 1."""
    gy, gx = torch.gradient(blur(image[None])[0])
    g = (gx**2 + gy**2).sqrt()
    g = g / g.square().mean().sqrt() + 0.1
    return g / g.square().mean().sqrt()


class Discrepancy(LinearisedLaplace):
    """The posterior with the discrepancy block: whitened vectors ``[u (P), v (voxels)]``."""

    scale = 0.0
    weight: torch.Tensor | None = None

    def images(self, w: torch.Tensor) -> torch.Tensor:
        n = self.model.n_params
        out = super().images(w[:, :n])
        e = blur(w[:, n:].reshape(-1, *out.shape[1:]))
        return out + self.scale * (e if self.weight is None else self.weight * e)

    def _m_t(self, s: torch.Tensor) -> torch.Tensor:
        back = self.A.adjoint(s)
        if self.weight is not None:
            back = self.weight * back
        extra = self.scale * blur(back).reshape(s.shape[0], -1)
        return torch.cat([super()._m_t(s), extra], 1)

    def _base_noise(self, indices):  # type: ignore[override]
        u0, e0 = super()._base_noise(indices)
        n = self.model.image_star.numel()
        v0 = [
            torch.randn(n, generator=torch.Generator().manual_seed(10**7 + 31 * self.seed + k))
            for k in indices
        ]
        return torch.cat([u0, torch.stack(v0).to(u0.dtype)], 1), e0


def set_term(lap: LinearisedLaplace, scale: float, variant: str) -> None:
    """Give ``lap`` the discrepancy block of ``variant`` at ``scale`` (a new sketch)."""
    lap.__class__ = Discrepancy
    lap.scale = float(scale)
    lap.weight = edge_weight(lap.model.image_star) if variant == "edge" else None
    lap._sketch = None


def main() -> None:
    global KERNEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--width", type=float, default=1.0, help="blur σ in voxels")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    radius = int(np.ceil(3 * args.width))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * args.width**2))
    KERNEL = (k[:, None] * k[None, :] / (k[:, None] * k[None, :]).norm())[None, None]

    found: dict[str, Any] = {}
    search = stages.choose_prior_scale

    def choose(lap, A_held, y_held, mean, *, samples, batch=None, **kwargs):
        chosen = search(lap, A_held, y_held, mean, samples=samples, batch=batch, **kwargs)
        base = lap.sample(samples, warn=False)
        p, sd, _ = predictive(A_held, mean, base, lap.noise_variance)
        without = gaussian_tll(p - torch.as_tensor(y_held).to(p), sd)
        s0 = float(base.square().mean().sqrt())
        for variant in VARIANTS:

            def tll(decade: float, variant: str = variant) -> float:
                set_term(lap, s0 * 10.0**decade, variant)
                drawn = lap.sample(samples, warn=False)
                p, sd, _ = predictive(A_held, mean, drawn, lap.noise_variance)
                score = gaussian_tll(p - torch.as_tensor(y_held).to(p), sd)
                print(f"  {variant} s/s0 {10.0**decade:.3g}: held-out TLL {score:.4f}", flush=True)
                return score

            best, seen = best_decade(tll, -2, 2)
            s = s0 * 10.0**best if max(seen.values()) > without else 0.0
            found[variant] = {"s": s, "s0": s0, "tll_without": without, "tll": seen}
            print(f"{variant}: {found[variant]}", flush=True)
        lap.__class__ = LinearisedLaplace
        return chosen

    stages.choose_prior_scale = choose
    out = Path(args.out)
    sparse, volume, settings, reference = study_setup(out, args.smoke)
    maps: dict[str, np.ndarray] = {}

    class Done(Exception):
        pass

    def hook(point: str, lap: LinearisedLaplace, mean: torch.Tensor) -> None:
        if point != pipeline.FITTED:
            return
        maps["mean"] = mean.numpy()
        maps["laplace"] = lap.std(settings.samples).numpy()
        for variant in VARIANTS:
            for name, scale in (
                (variant, found[variant]["s"]),
                (f"{variant}@s0", found[variant]["s0"]),
            ):
                set_term(lap, scale, variant)
                maps[name] = lap.std(settings.samples).numpy()
        raise Done

    try:
        pipeline.reconstruct(
            sparse, settings, volume=volume, work_dir=out / "sparse", resume=True, hook=hook
        )
    except Done:
        pass
    error = maps["mean"] - reference
    support = support_of(reference)
    scores: dict[str, Any] = {"search": found, "width": args.width}
    for name in ("laplace", *VARIANTS, *(f"{v}@s0" for v in VARIANTS)):
        scores[name] = scores_over(error, maps[name], support)
    (out / "scores.json").write_text(json.dumps(scores, indent=1, default=float))
    print(json.dumps(scores, indent=1, default=float))
    import matplotlib.pyplot as plt

    shown = ("mean", "laplace", "blur@s0", "edge@s0")
    fig, axes = plt.subplots(1, 5, figsize=(20, 4))
    panels = [(np.abs(error), "|error| against the full-angle DIP")]
    panels += [(maps[n], "DIP, 60°" if n == "mean" else f"std: {n}") for n in shown]
    for ax, (image, title) in zip(axes, panels, strict=True):
        im = ax.imshow(image, cmap="gray" if title.startswith("DIP") else "magma")
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(out / "maps.png", dpi=90)


if __name__ == "__main__":
    main()
