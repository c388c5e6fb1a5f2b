"""Calibration on a real scan: the std map of a sparse-view DIP against a full-angle DIP.

The APS tooth (``data/aps_tooth.h5``, detector row 0, centre of rotation estimated, columns
binned by 4 to 160) is reconstructed twice on the same grid with the same settings: from all
181 projections (the reference) and from every 6th (31 of 181) with the linearised-Laplace
std map. The sparse-view mean ± std is scored against the reference: coverage of the central
50/90 % intervals and Spearman(std, |error|) over the voxels of the reference's support
(where it exceeds 10 % of its maximum, dilated by 2 voxels) and over all voxels.

What it can show: whether the std is as large as the error that dropping 5 of every 6
projections causes, and whether it sits where that error is. What it cannot: the reference
is itself a DIP with errors of its own (noise, the network's bias, detector artefacts), so
an error it shares with the sparse-view reconstruction is invisible, and its own noise adds
to the "error" (which makes the coverage a slight underestimate of the calibration against
the real object).

``--arc 60`` keeps only the projections of the first 60° (a limited-angle scan), scored
against the same full-angle reference; then the Fourier power per direction of the std
map's samples is set against the error's (``directions``: their ratio in the missing wedge
and in the measured directions, ≈ 1 where the samples vary as much as the error), and a
fifth panel plots both per direction.

Usage: ``python scripts/tooth_check.py [--size 96] [--step 6] [--arc 180 [ARC ...]]
[--out tooth-check]``. For each arc it writes ``tooth_check-<ARC>deg.json``, ``.png`` and
``.npz`` (the reference, mean and std in (rows, columns), mm⁻¹) to ``--out``; the reference
is fitted once. Checkpoints under ``full/`` and ``sparse-<ARC>deg/`` let a rerun resume.
About 14 minutes on one CPU core for the default arc; 12 minutes per limited arc with
``--step 2`` on two.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats

import dip_uq as du
from dip_uq import directions, io, metrics, pipeline
from dip_uq.plots import directions_plot

SCAN = Path(__file__).parents[1] / "data/aps_tooth.h5"


def tooth_scans(
    scan: str | Path = SCAN, size: int = 96, step: int = 6, arc: float = 180.0
) -> tuple[du.Scan, du.Scan, du.Volume]:
    """``(full, sparse, volume)``: the tooth's row 0 (centre of rotation estimated, columns
    binned by 4), every ``step``-th of its projections within the first ``arc`` degrees, and
    the ``size``² grid over the full scan's default extent."""
    full = io.preprocess(io.read_scan(scan), rows=0, center_offset="auto", binning=4)
    sparse = io.preprocess(full, angle_step=step)
    if arc < 180:  # a limited arc: the first ARC degrees of the kept projections
        angles = sparse.angles_deg
        sparse = sparse.projections(np.flatnonzero(angles - angles.min() < arc + 1e-6))
    side = du.default_volume(full).extent[-1]
    return full, sparse, du.Volume((size, size), voxel_size=side / size)


def study_setup(out: Path, smoke: bool) -> tuple[du.Scan, du.Volume, pipeline.Settings, np.ndarray]:
    """``(sparse, volume, settings, reference)`` of issue 35's tooth studies, the reference
    DIP fitted (and checkpointed) under ``out / "full"``: the tooth's first 60° (every 2nd
    projection) at 96² with the defaults; with ``smoke`` a 32² simulated 90° arc with a
    short, small run (a minute)."""
    out.mkdir(parents=True, exist_ok=True)
    if smoke:
        full = du.simulate_scan("shepp-logan", size=32, angles=60, noise=0.02)
        sparse = du.simulate_scan("shepp-logan", size=32, angles=16, arc=np.deg2rad(90), noise=0.02)
        volume = sparse.volume
        settings = pipeline.Settings(iterations=100, channels=8, samples=4, em_samples=4)
    else:
        full, sparse, volume = tooth_scans(step=2, arc=60)
        settings = pipeline.Settings()
    reference = reference_fit(full, volume, settings, out / "full").mean
    return sparse, volume, settings, reference


def reference_fit(
    full: du.Scan, volume: du.Volume, settings: pipeline.Settings, work_dir: Path
) -> du.Result:
    """The reference: the DIP of all projections, without a std (checkpoints in
    ``work_dir``, from which a rerun resumes)."""
    return pipeline.reconstruct(
        full, replace(settings, uq="none"), volume=volume, work_dir=work_dir, resume=True
    )


def scores_over(error: np.ndarray, std: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """50/90 % coverage of ``mean ± z std``, Spearman(std, |error|) and std/RMSE over
    ``mask``'s voxels."""
    e, s = error[mask], std[mask]
    covered = metrics.coverage(torch.as_tensor(e), torch.as_tensor(s), torch.zeros(e.shape))
    return {
        "cov50": float(covered[0.5]),
        "cov90": float(covered[0.9]),
        "spearman": float(stats.spearmanr(s, np.abs(e)).statistic),
        "std_over_rmse": float(np.sqrt((s**2).mean() / (e**2).mean())),
    }


def support_of(reference: np.ndarray) -> np.ndarray:
    """The object: where the reference exceeds 10 % of its maximum, dilated by 2 voxels."""
    return ndimage.binary_dilation(reference > 0.1 * reference.max(), iterations=2)


def check_arc(
    sparse: du.Scan,
    volume: du.Volume,
    settings: pipeline.Settings,
    reference: np.ndarray,
    work_dir: Path,
) -> tuple[dict[str, Any], du.Result]:
    """The sparse run's scores against ``reference`` (support and whole grid, PSNR, and on a
    limited arc the error's power per direction over the samples'), and the run itself
    (checkpoints in ``work_dir``, from which a rerun resumes)."""
    result = pipeline.reconstruct(sparse, settings, volume=volume, work_dir=work_dir, resume=True)
    error = result.mean - reference
    support = support_of(reference)
    scores: dict[str, Any] = {"angles_sparse": sparse.geometry.n_angles}
    for name, mask in (("support", support), ("all", np.ones_like(support))):
        scores[name] = scores_over(error, result.std, mask)
    scores["psnr_sparse_vs_full_db"] = float(
        metrics.psnr(torch.as_tensor(result.mean), torch.as_tensor(reference))
    )
    spread = result.directions
    if spread is not None:
        power = directions.DirectionalPower.of(torch.as_tensor(error)[None], spread.wedge).power

        def over(bins: np.ndarray) -> float:  # the error's mean power over the samples'
            return float(np.nanmean(power[bins]) / np.nanmean(spread.power[bins]))

        scores["directions"] = {
            **spread.to_dict(),
            "error_power": [float(p) if np.isfinite(p) else None for p in power],
            "error_over_samples_missing": over(spread.missing),
            "error_over_samples_measured": over(~spread.missing),
        }
    scores["prior_scale_search"] = result.hyperparameters.get("prior_scale_search")
    return scores, result


def plot_check(reference: np.ndarray, result: du.Result, title: str, path: Path) -> None:
    """Reference, sparse mean, |error|, std and, on a limited arc, the power per direction."""
    import matplotlib.pyplot as plt

    error = result.mean - reference
    spread = result.directions
    fig, axes = plt.subplots(
        1, 4 + (spread is not None), figsize=(16 + 4 * (spread is not None), 4)
    )
    panels = (
        (reference, "full-angle DIP (reference)"),
        (result.mean, f"DIP, {title}"),
        (np.abs(error), "|error| against the reference"),
        (result.std, "std (linearised Laplace)"),
    )
    for ax, (image, name) in zip(axes, panels, strict=False):
        shown = ax.imshow(image, cmap="gray" if "DIP" in name else "magma")
        ax.set_title(name)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, shrink=0.8)
    if spread is not None:
        directions_plot(axes[-1], spread, error)
        axes[-1].set_title("Fourier power per direction")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", default=str(SCAN))
    parser.add_argument("--size", type=int, default=96, help="grid side in voxels")
    parser.add_argument("--step", type=int, default=6, help="keep every STEP-th projection")
    parser.add_argument(
        "--arc",
        type=float,
        nargs="+",
        default=[180.0],
        help="keep the projections of the first ARC degrees (several: one check each)",
    )
    parser.add_argument("--out", default="tooth-check")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = pipeline.Settings()
    full, _, volume = tooth_scans(args.scan, args.size, args.step)
    # every run checkpoints under OUT, so a rerun (after a crash or kill) resumes
    fit = reference_fit(full, volume, settings, out / "full")
    for arc in args.arc:
        _, sparse, _ = tooth_scans(args.scan, args.size, args.step, arc)
        name = f"{arc:g}deg"
        scores, result = check_arc(sparse, volume, settings, fit.mean, out / f"sparse-{name}")
        scores = {"angles_full": full.geometry.n_angles, **scores}
        scores["timings"] = {"reference": fit.timings, "sparse": result.timings}
        (out / f"tooth_check-{name}.json").write_text(json.dumps(scores, indent=2))
        np.savez(
            out / f"tooth_check-{name}.npz", reference=fit.mean, mean=result.mean, std=result.std
        )
        print(json.dumps(scores, indent=2))
        title = f"1 in {args.step} angles of {arc:g}°"
        plot_check(fit.mean, result, title, out / f"tooth_check-{name}.png")


if __name__ == "__main__":
    main()
