"""Benchmark what :mod:`dip_uq.background` relies on: on a CPU, two DIP fits side by side on
one thread each do more work than one fit on all threads.

For the demos' U-Nets (2D 64², 32 channels, 30 parallel angles; 3D 24³, 16 channels, 24
cone-beam angles) it times a DIP step three ways in one run: one fit on one thread (the
reference), one fit on two threads, and two fits at once in two Python threads with one
intra-op thread each (how :func:`dip_uq.reconstruct` fits the cross-validation's second DIP
beside the first). Reported: seconds per step, and the speed-up over the reference in steps
done per second of wall time.

Usage: ``python scripts/bench_background.py [--steps N] [--dims 2 3]`` (on a machine with at
least two cores).
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from dip_uq.dip import DIP
from dip_uq.networks import UNet
from dip_uq.projector import RayTransform
from dip_uq.simulation import simulate_scan

DEMOS = {
    2: {"size": 64, "geometry": "parallel", "angles": 30, "channels": 32},
    3: {"size": 24, "geometry": "cone", "angles": 24, "channels": 16},
}


def seconds_per_step(dim: int, steps: int, threads: int, seed: int = 0) -> float:
    """One DIP fit of ``steps`` iterations on ``threads`` intra-op threads (this thread's)."""
    torch.set_num_threads(threads)
    case = DEMOS[dim]
    scan = simulate_scan(
        dim=dim, size=case["size"], geometry=case["geometry"], angles=case["angles"], seed=seed
    )
    A = RayTransform(scan.volume, scan.geometry)
    network = UNet.default_for(tuple(A.volume.shape), channels=case["channels"], seed=seed)
    rec = DIP(A, iterations=steps, seed=seed, network=network, progress=False)
    start = time.perf_counter()
    rec.fit(torch.as_tensor(scan.sinogram))
    return (time.perf_counter() - start) / steps


def side_by_side(dim: int, steps: int) -> float:
    """Wall seconds per pair of steps of two fits in two threads, one intra-op thread each."""
    workers = [
        threading.Thread(target=seconds_per_step, args=(dim, steps, 1, seed)) for seed in (0, 1)
    ]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="DIP steps per fit")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    args = parser.parse_args()
    total = torch.get_num_threads()
    print(f"{total} intra-op threads available")
    print("| demo DIP | 1 thread (ref) | 2 threads | 2 fits side by side, per pair | speed-up |")
    print("|---|---|---|---|---|")
    for dim in args.dims:
        seconds_per_step(dim, 10, 1)  # warm-up: imports, first-call allocations
        one = seconds_per_step(dim, args.steps, 1)
        two = seconds_per_step(dim, args.steps, 2)
        pair = side_by_side(dim, args.steps)
        print(
            f"| {dim}D | {1e3 * one:.1f} ms | {1e3 * two:.1f} ms ({one / two:.2f}x) | "
            f"{1e3 * pair:.1f} ms | {2 * one / pair:.2f}x |"
        )
    torch.set_num_threads(total)


if __name__ == "__main__":
    main()
