"""The uncertainty stage of a run with the adaptive Nyström rank against a fixed rank, on the
same DIP fits, in one process.

For a scan (a file, read with :func:`dip_uq.read_scan` on the grid
:func:`dip_uq.scan.grid_for_device` chooses for a CPU, or the 2D demo's simulated scan) the
DIP and the cross-validation's second DIP are fitted once; then the uncertainty stage (the
linearisation, EM, the cross-validated prior-scale search, the std map: what
:func:`dip_uq.reconstruct` runs after the fits) is timed twice, with
``preconditioner_rank=None`` (the adaptive default) and with a fixed rank (``--fixed``,
default the earlier default ``m / 8`` within 400-1200) as the reference. Per run: seconds of
each part, the time in the preconditioner (sketching) and in CG, every solve's iterations, the
chosen factor, and the std map's ratio to the reference's.

Usage::

    python scripts/bench_uncertainty.py [SCAN] [--iterations N] [--fixed R] [--size N]
        [--json out.json]

``--iterations`` shortens the DIPs (default: the DIP's own default for the noise level);
the fits then fall short of the data, which changes the chosen prior scale but not what the
stage's parts cost. Without SCAN: the demo's scan (64², 30 angles, 2 %, 2500 iterations);
``--size 24 --iterations 50`` is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import torch

import dip_uq as du
from dip_uq import holdout, stages
from dip_uq.laplace import posterior
from dip_uq.projector import RayTransform
from dip_uq.scan import grid_for_device
from dip_uq.settings import CROSS_VALIDATION_EVERY, Settings

# seconds in the posterior's preconditioner and solves, and each solve's iterations, of the
# stage being timed (reset by stage())
SECONDS: dict[str, float] = defaultdict(float)
ITERATIONS: list[int] = []


def _timed(name: str) -> None:
    """Wrap ``LinearisedLaplace.<name>`` to add its seconds to :data:`SECONDS`."""
    original = getattr(posterior.LinearisedLaplace, name)

    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        out = original(self, *args, **kwargs)
        SECONDS[name] += time.perf_counter() - start
        if name == "_solve_dual":
            ITERATIONS.append(int(out[2]["iterations"]))
        return out

    setattr(posterior.LinearisedLaplace, name, wrapper)


def stage(A, y, rec, cv, settings: Settings) -> dict[str, Any]:
    """The uncertainty stage on fitted DIPs, timed by part."""
    SECONDS.clear()
    ITERATIONS.clear()
    parts = {}
    start = time.perf_counter()
    lap = stages.linearise(rec, y, settings)
    stages.fit_em(lap, settings)
    parts["em_s"] = time.perf_counter() - start
    start = time.perf_counter()
    search = stages.cross_validate_prior_scale(
        A, y, settings, noise_variance=lap.noise_variance, fitted=cv
    )
    parts["search_s"] = time.perf_counter() - start
    lap.prior.scale_variances(search["chosen_factor"])
    start = time.perf_counter()
    std = lap.moments(settings.samples).std
    parts["std_map_s"] = time.perf_counter() - start
    sketch = SECONDS["preconditioner"]
    return {
        **parts,
        "total_s": sum(parts.values()),
        "preconditioner_s": sketch,
        "cg_s": SECONDS["_solve_dual"] - sketch,
        "iterations_per_solve": list(ITERATIONS),
        "chosen_factor": search["chosen_factor"],
        "std": std,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scan", nargs="?", help="a scan file (default: the demo's scan)")
    parser.add_argument("--iterations", type=int, help="DIP iterations (default: the DIP's)")
    parser.add_argument("--fixed", type=int, help="the reference's rank (default: m/8, 400-1200)")
    parser.add_argument("--size", type=int, default=64, help="the demo scan's side")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    for name in ("preconditioner", "_solve_dual"):
        _timed(name)
    if args.scan:
        scan = du.read_scan(args.scan)
        volume, _ = grid_for_device(scan, torch.device("cpu"))
        settings = Settings(iterations=args.iterations)
    else:
        scan = du.simulate_scan("shepp-logan", size=args.size, angles=30, noise=0.02)
        volume = scan.volume
        settings = Settings(iterations=args.iterations or 2500, channels=32)
    A = RayTransform(volume, scan.geometry)
    y = torch.as_tensor(scan.sinogram)
    start = time.perf_counter()
    rec = stages.fit_dip(A, y, settings)
    kept, held, where = holdout.cross_validation_indices(A.geometry, CROSS_VALIDATION_EVERY)
    data = holdout.split(A, y, kept, held)
    cv = stages.CrossValidationFit(stages.fit_dip(data.A, data.y, settings), data, where)
    dip_s = time.perf_counter() - start
    fixed = args.fixed or max(400, min(1200, y.numel() // 8))
    runs = {
        "adaptive": stage(A, y, rec, cv, settings),
        f"fixed rank {fixed}": stage(A, y, rec, cv, replace(settings, preconditioner_rank=fixed)),
    }
    reference = runs[f"fixed rank {fixed}"]["std"]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"measurements {y.numel()}, grid {tuple(volume.shape)}, both DIP fits {dip_s:.0f} s")
    print("| rank | EM | search | std map | total | sketching | CG | factor | std / reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        ratio = (
            (run["std"] / reference)
            .double()
            .flatten()
            .quantile(torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
        )
        print(
            f"| {name} | {run['em_s']:.0f} s | {run['search_s']:.0f} s | "
            f"{run['std_map_s']:.0f} s | {run['total_s']:.0f} s | "
            f"{run['preconditioner_s']:.0f} s | {run['cg_s']:.0f} s | "
            f"{run['chosen_factor']:.3g} | {', '.join(f'{r:.3f}' for r in ratio.tolist())} |"
        )
    if args.json:
        out = {name: {k: v for k, v in run.items() if k != "std"} for name, run in runs.items()}
        with open(args.json, "w") as f:
            json.dump({"dip_fits_s": dip_s, "measurements": y.numel(), "runs": out}, f, indent=1)


if __name__ == "__main__":
    main()
