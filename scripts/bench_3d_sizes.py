"""Project the time of ``dip-uq demo --dim 3 --size N`` on this machine from measured parts.

A full run at 64³ takes hours on a laptop CPU, too long to time end to end; its cost is
two parts whose unit prices this script measures in one run, per size ``N`` (cone beam, the
demo's 24 angles, 2 % noise, its 16-channel U-Net, all of PyTorch's threads):

* the DIP fits: the fit to all projections and the cross-validation's second fit, side by
  side in two Python threads with half the threads each (as :func:`dip_uq.reconstruct`
  fits them): wall seconds per pair of steps (``--steps`` steps; the reference, a DIP step
  on all threads, is measured too), times the default iterations for 2 % noise
  (:func:`dip_uq.noise.default_iterations`);
* the linearised Laplace: wall seconds per row of a Jacobian product pair ``M Mᵀ a``
  (blocks of ``SolverConfig.product_rows``, as the CG solves and the preconditioner's
  sketch apply it), times the rows that a run pushes through it: two Nyström sketches of
  ``2 r`` rows each (``r`` = :func:`~dip_uq.laplace.preconditioner.rank_cap` of the
  measurements, the most an adaptive sketch grows to: an upper bound for them) and the CG
  iterations × rows of every solve. The solves' iterations are
  those ``dip-uq demo --dim 3`` took at 24³ (``--solves``; measured on 2026-12-03, 2 cores:
  EM 236 × 8 rows, its mode 174 × 1 row, counted as half an 8-row block per iteration as
  measured, the search's four candidates 59, 166, 300 and 277 × 8, the std map 276 × 16).
  Larger volumes have more measurements and likely need more iterations at the same rank,
  so above 24³ the projection is a lower bound.

Checked against full runs (2026-12-03, 2 cores): projected 19.3 / 42.3 minutes at 24³ / 32³,
measured 16.2 / 53.3 (at 32³ the solves took more iterations than at 24³: the mode of EM's
first step stopped at the 300-iteration cap). Projected at 64³: 7.6 hours (DIP fits 64
minutes, the two rank-910 builds 84, the solves 5.2 hours).

Usage: ``python scripts/bench_3d_sizes.py [--sizes 24 32 64] [--steps 20]``; prints a
Markdown table (seconds; the DIP step on all threads is the reference of the "step ratio").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dip_uq.background import beside
from dip_uq.dip import DIP
from dip_uq.laplace import LinearisedLaplace
from dip_uq.laplace.preconditioner import rank_cap
from dip_uq.networks import UNet
from dip_uq.noise import default_iterations
from dip_uq.projector import RayTransform
from dip_uq.simulation import simulate_scan

ANGLES, NOISE, CHANNELS = 24, 0.02, 16  # dip-uq demo --dim 3
# (CG iterations, rows) of every solve of the 24³ demo, in the order the run makes them
DEMO_SOLVES = [(236, 8), (174, 1), (59, 8), (166, 8), (300, 8), (277, 8), (276, 16)]
MODE_BLOCK_SHARE = 0.5  # a 1-row product pair costs this share of an 8-row one (measured)


def _fit(A: RayTransform, y: torch.Tensor, steps: int, seed: int) -> DIP:
    network = UNet.default_for(tuple(A.volume.shape), channels=CHANNELS, seed=seed)
    rec = DIP(A, iterations=steps, seed=seed, network=network, progress=False)
    rec.fit(y)
    return rec


def measure(size: int, steps: int, repeat: int = 3) -> dict[str, float]:
    """Unit prices at ``size``³ (seconds) and the run's counts."""
    scan = simulate_scan(dim=3, size=size, geometry="cone", angles=ANGLES, noise=NOISE)
    A = RayTransform(scan.volume, scan.geometry)
    y = torch.as_tensor(scan.sinogram)
    A(torch.zeros(A.domain_shape))  # the projector's first call builds its matrix: not timed
    _fit(A, y, 3, 0)  # warm-up
    start = time.perf_counter()
    rec = _fit(A, y, steps, 0)
    step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    with beside(lambda check: _fit(A, y, steps, 1)) as background:
        _fit(A, y, steps, 0)
        if background is not None:
            background.result()
    pair = (time.perf_counter() - start) / steps
    lap = LinearisedLaplace(rec, gprior=False)
    rows = lap.solver.product_rows
    gram = lap._fixed_rows(lap._gram)
    a = torch.randn(rows, y.numel())
    gram(a)  # traces the linearisation
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        gram(a)
        seconds.append(time.perf_counter() - start)
    block = statistics.median(seconds)
    rank = rank_cap(y.numel())
    return {
        "step": step,
        "pair": pair,
        "row": block / rows,
        "iterations": default_iterations(NOISE),
        "rank": rank,
        "measurements": y.numel(),
    }


def project(m: dict[str, float]) -> dict[str, float]:
    """The run's seconds from the unit prices: DIP fits, builds, solves, and their sum."""
    dip = m["iterations"] * m["pair"]
    builds = 2 * 2 * m["rank"] * m["row"]
    rows = sum(its * (MODE_BLOCK_SHARE * 8 if n == 1 else n) for its, n in DEMO_SOLVES)
    solves = rows * m["row"]
    return {"dip": dip, "builds": builds, "solves": solves, "total": dip + builds + solves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 32, 64])
    parser.add_argument("--steps", type=int, default=20, help="DIP steps per timing")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} intra-op threads")
    print(
        "| size | m | DIP step (ref) | pair side by side | per product row (step ratio) | "
        "rank | DIP fits | builds | solves | projected run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        m = measure(size, args.steps)
        p = project(m)
        print(
            f"| {size}³ | {m['measurements']} | {m['step']:.3f} s | {m['pair']:.3f} s | "
            f"{m['row']:.3f} s ({m['row'] / m['step']:.2f}) | {m['rank']} | "
            f"{p['dip']:.0f} s | {p['builds']:.0f} s | {p['solves']:.0f} s | "
            f"{p['total'] / 60:.1f} min |",
            flush=True,
        )


if __name__ == "__main__":
    main()
