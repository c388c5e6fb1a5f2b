"""Issue 35, step 2, second lead: a scale on the posterior's missing-wedge directions, chosen
by the held-out projections at the arc's ends, measured on the APS tooth.

Every posterior sample ``ζ`` (image deviations) is lifted in the scan's missing wedge of
Fourier directions (:func:`dip_uq.directions.missing_wedge`),
``ζ_g = F⁻¹[(1 + (g - 1) 1_wedge(k)) F ζ]`` (the DC term kept), so ``g`` multiplies the part of
the std that comes from the directions the scan does not measure and leaves the measured
ones as they are. ``g`` is chosen like the prior's factor: on the cross-validation's second
DIP, whose own wedge holds the directions of the projections held out at the arc's ends, by
the held-out projections' likelihood, from that search's samples at its chosen factor.

The scan is ``scripts/tooth_check.py --step 2 --arc 60``'s: the APS tooth's first 60° (31
projections), 96², the defaults, scored over the tooth against the DIP of all 181
projections. Printed and written to ``OUT/scores.json``: the held-out log-likelihood per
``g`` and, per ``g``, the 50/90 % coverage, Spearman(std, |error|) and std/RMSE of the run's
std map lifted by it. About 40 minutes on two threads (the two DIPs of the sparse run and
the reference DIP); a rerun resumes from ``OUT``'s checkpoints. ``--smoke`` runs a 32²
simulated 90° arc in a minute.

Usage: ``python scripts/study_wedge_scale.py OUT [--smoke]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from tooth_check import scores_over, study_setup, support_of

from dip_uq import pipeline, stages
from dip_uq.directions import missing_wedge, wedge_frequencies
from dip_uq.laplace.predictive import predictive
from dip_uq.metrics import gaussian_tll

LIFTS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


def lift(samples: torch.Tensor, wedge: tuple[float, float], g: float) -> torch.Tensor:
    """``samples`` ``(n, Y, X)`` with their Fourier components in ``wedge`` times ``g``."""
    gain = torch.where(wedge_frequencies(tuple(samples.shape[-2:]), wedge), g, 1.0)
    return torch.fft.ifft2(torch.fft.fft2(samples.double()) * gain).real.to(samples.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    held_out: dict[str, Any] = {}
    search = stages.choose_prior_scale

    def choose(lap, A_held, y_held, mean, *, samples, batch=None, **kwargs):
        chosen = search(lap, A_held, y_held, mean, samples=samples, batch=batch, **kwargs)
        drawn = lap.sample(samples, warn=False)  # at the chosen factor
        wedge = missing_wedge(lap.A.geometry)
        held_out["wedge"] = wedge
        for g in LIFTS:
            p, sd, _ = predictive(A_held, mean, lift(drawn, wedge, g), lap.noise_variance)
            held_out[g] = gaussian_tll(p - torch.as_tensor(y_held).to(p), sd)
            print(f"held-out TLL at g = {g}: {held_out[g]:.4f}", flush=True)
        return chosen

    stages.choose_prior_scale = choose
    out = Path(args.out)
    sparse, volume, settings, reference = study_setup(out, args.smoke)
    result = pipeline.reconstruct(
        sparse, settings, volume=volume, work_dir=out / "sparse", resume=True, keep_samples=True
    )
    error, support = result.mean - reference, support_of(reference)
    scores: dict[str, Any] = {"held_out_tll": held_out, "wedge": result.directions.wedge}
    for g in LIFTS:
        std = lift(result.samples, result.directions.wedge, g).double().square().mean(0).sqrt()
        scores[f"g={g}"] = scores_over(error, std.numpy(), support)
    text = json.dumps(scores, indent=1, default=float)
    (out / "scores.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
