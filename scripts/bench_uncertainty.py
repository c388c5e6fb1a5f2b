"""The uncertainty stage of a run with the adaptive Nyström rank against a fixed rank, on the
same DIP fits, in one process.

For a scan (a file, read with :func:`dip_uq.read_scan` on the grid
:func:`dip_uq.scan.grid_for_device` chooses for a CPU, or the 2D demo's simulated scan)
:func:`dip_uq.reconstruct` fits the DIP and the cross-validation's second DIP once into a work
folder and is stopped when they are done; then each variant resumes a copy of that folder,
so it reads the finished fits and runs the rest of the pipeline (EM, the cross-validated
prior-scale search, the std map): ``preconditioner_rank=None`` (the adaptive default) and a
fixed rank (``--fixed``, default the earlier default ``m / 8`` within 400-1200) as the
reference. Per variant: the pipeline's seconds for the search and for the rest of the
uncertainty stage (the linearisation, EM, the std map), the time in the preconditioner
(sketching) and in CG, every solve's iterations, the chosen factor, and the std map's ratio
to the reference's.

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
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import dip_uq as du
from dip_uq.laplace import posterior
from dip_uq.scan import grid_for_device
from dip_uq.settings import Settings

# seconds in the posterior's preconditioner and solves, and each solve's iterations, of the
# variant being run (reset by variant())
SECONDS: dict[str, float] = defaultdict(float)
ITERATIONS: list[int] = []


class _FitsDone(Exception):
    """Stops the first run once both DIPs are fitted (and checkpointed)."""


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


def fit_once(scan: du.Scan, volume: du.Volume, settings: Settings, folder: Path) -> float:
    """Fit both DIPs of a run into ``folder`` (their checkpoints stay there); seconds."""

    def stop(point: str, *_: Any) -> None:
        raise _FitsDone

    start = time.perf_counter()
    try:
        du.reconstruct(scan, settings, volume=volume, work_dir=folder, hook=stop)
    except _FitsDone:
        return time.perf_counter() - start
    raise RuntimeError("the run ended without reaching its linearisation")


def variant(
    scan: du.Scan, volume: du.Volume, settings: Settings, fits: Path, folder: Path
) -> dict[str, Any]:
    """The rest of the run after the fits in ``fits`` (copied to ``folder``), timed by part."""
    shutil.copytree(fits, folder)
    SECONDS.clear()
    ITERATIONS.clear()
    result = du.reconstruct(scan, settings, volume=volume, work_dir=folder, resume=True)
    sketch = SECONDS["preconditioner"]
    return {
        "search_s": result.timings["cross_validation_s"],
        "uncertainty_s": result.timings["uncertainty_s"],
        "total_s": result.timings["cross_validation_s"] + result.timings["uncertainty_s"],
        "preconditioner_s": sketch,
        "cg_s": SECONDS["_solve_dual"] - sketch,
        "iterations_per_solve": list(ITERATIONS),
        "chosen_factor": result.hyperparameters["prior_scale_search"]["chosen_factor"],
        "std": torch.as_tensor(result.std),
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
    m = scan.sinogram.size
    fixed = args.fixed or max(400, min(1200, m // 8))
    with tempfile.TemporaryDirectory() as tmp:
        fits = Path(tmp) / "fits"
        dip_s = fit_once(scan, volume, settings, fits)
        runs = {
            "adaptive": variant(scan, volume, settings, fits, Path(tmp) / "adaptive"),
            f"fixed rank {fixed}": variant(
                scan,
                volume,
                replace(settings, preconditioner_rank=fixed),
                fits,
                Path(tmp) / "fixed",
            ),
        }
    reference = runs[f"fixed rank {fixed}"]["std"]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"measurements {m}, grid {tuple(volume.shape)}, both DIP fits {dip_s:.0f} s")
    print("| rank | search | EM and std map | total | sketching | CG | factor | std / reference |")
    print("|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        ratio = (
            (run["std"] / reference)
            .double()
            .flatten()
            .quantile(torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
        )
        print(
            f"| {name} | {run['search_s']:.0f} s | {run['uncertainty_s']:.0f} s | "
            f"{run['total_s']:.0f} s | "
            f"{run['preconditioner_s']:.0f} s | {run['cg_s']:.0f} s | "
            f"{run['chosen_factor']:.3g} | {', '.join(f'{r:.3f}' for r in ratio.tolist())} |"
        )
    if args.json:
        out = {name: {k: v for k, v in run.items() if k != "std"} for name, run in runs.items()}
        with open(args.json, "w") as f:
            json.dump({"dip_fits_s": dip_s, "measurements": m, "runs": out}, f, indent=1)


if __name__ == "__main__":
    main()
