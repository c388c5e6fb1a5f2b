"""Per-stage times of ``du.reconstruct`` at the defaults, against a yardstick from the same run.

For each size (2D: ``N²``; 3D: ``N³``) a scan is simulated (Shepp-Logan; 2D parallel beam
with 30 angles, 3D cone beam with ``N`` angles; 2 % noise) and reconstructed with
:func:`dip_uq.reconstruct`'s defaults on this machine: grid, network, iterations, EM, the
cross-validated prior scale, the std map. Recorded per run: the stages' wall seconds
(``Result.timings``: FBP, the DIP fits side by side, the cross-validation's search, the
uncertainty stage), the DIP's iterations, the CG iterations of every solve of EM, of the
prior-scale search (per candidate) and of the std map, the run's own estimate
(``Result.run_info["plan"]``) and the scores against the truth.

The yardstick, measured in the same process first: 100 Adam steps of the default 2D U-Net at
64² fitted to a fixed image (no projector), seconds. Every stage is reported also as a
multiple of it, so that the numbers survive a slower or busier machine.

Usage::

    python scripts/bench_stages.py --json stages.json [--dims 2 3] [--sizes2 64 128 256]
        [--sizes3 24 32 64]

The defaults are the issue's grid (2D 64²/128²/256², 3D 24³/32³/64³), which takes hours on a
2-core CPU; ``--sizes2 16 --sizes3 8 --dims 2`` is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch

import dip_uq as du


def yardstick(steps: int = 100) -> float:
    """Seconds for ``steps`` Adam steps of the default 2D U-Net at 64² on a fixed target."""
    net = du.UNet.default_for((64, 64), seed=0)
    z = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(3):  # warm-up: allocations and oneDNN's first calls
        optimizer.zero_grad()
        (net(z) - target).square().mean().backward()
        optimizer.step()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        (net(z) - target).square().mean().backward()
        optimizer.step()
    return time.perf_counter() - started


def run_case(dim: int, size: int, device: str) -> dict[str, Any]:
    """One simulated scan of side ``size`` through ``du.reconstruct`` at its defaults."""
    geometry, angles = ("parallel", 30) if dim == 2 else ("cone", size)
    scan = du.simulate_scan(
        "shepp-logan", dim=dim, size=size, geometry=geometry, angles=angles, noise=0.02
    )
    plan: list[str] = []
    started = time.perf_counter()
    result = du.reconstruct(scan, device=device, notify=plan.append)
    total = time.perf_counter() - started
    loss = result.curves.get("DIP loss", {}).get("loss")
    solves = result.run_info.get("solves", {})
    search = result.hyperparameters.get("prior_scale_search", {})
    return {
        "dim": dim,
        "size": size,
        "geometry": geometry,
        "angles": angles,
        "timings_s": {**result.timings, "total_s": total},
        "dip_iterations": None if loss is None else len(loss),
        "cg_iterations": {
            "em": [solve["iterations"] for solve in solves.get("em", [])],
            "prior_scale_search": search.get("cg_iterations", []),
            "std_map": [solve["iterations"] for solve in solves.get("std_map", [])],
        },
        "plan": plan,
        "scores": result.scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--sizes2", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--sizes3", type=int, nargs="+", default=[24, 32, 64])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    reference = yardstick()
    print(f"yardstick: 100 steps of the default 2D U-Net at 64²: {reference:.2f} s", flush=True)
    cases = []
    for dim in args.dims:
        for size in args.sizes2 if dim == 2 else args.sizes3:
            case = run_case(dim, size, args.device)
            case["timings_in_yardsticks"] = {k: v / reference for k, v in case["timings_s"].items()}
            cases.append(case)
            t = case["timings_s"]
            print(
                f"{dim}D {size}: total {t['total_s']:.0f} s ({t['total_s'] / reference:.1f} "
                f"yardsticks); DIP {t.get('dip_s', 0):.0f} s, cross-validation "
                f"{t.get('cross_validation_s', 0):.0f} s, uncertainty "
                f"{t.get('uncertainty_s', 0):.0f} s; CG iterations per solve "
                + "; ".join(f"{k} {v}" for k, v in case["cg_iterations"].items()),
                flush=True,
            )
            record = {
                "machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "yardstick_s": reference,
                "cases": cases,
            }
            with open(args.json, "w") as f:  # after every case: a long run keeps what it has
                json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
