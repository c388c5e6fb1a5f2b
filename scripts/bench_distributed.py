"""Posterior samples on 1 and 2 processes (torch.distributed, gloo, CPU): samples per second,
wall time to a std map and the share of it spent in collectives.

Every run draws the same samples (global indices ``0..samples-1`` in batches of ``batch``)
with a fixed number of CG iterations (the tolerance is never reached), so every run does the
same work. The reference, timed in the same run on rank 0, is one batched CG step: one
application of ``(M Mᵀ + σ² I)`` to ``batch`` sinograms, as the sampler applies it
(``SolverConfig.product_rows`` at a time, padded); a std map costs about
``iterations x batches per rank`` of them. Communication time is the time inside
collectives, including waiting for a slower rank.

    python scripts/bench_distributed.py [--size 24] [--samples 16] [--batch 4] [--iterations 30]

The 2-process run needs 2 free cores to show a speed-up; on a shared machine the numbers
move with the load of others.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torch.func import functional_call

import dip_uq as du
from dip_uq.distributed import init_from_env
from dip_uq.laplace import LinearisedLaplace, SolverConfig
from dip_uq.laplace.solvers import fixed_rows


def build(args: argparse.Namespace, group) -> LinearisedLaplace:
    """A U-Net at random weights on a ``size²`` Shepp-Logan scan (the cost of the Jacobian
    products does not depend on the weights, so no DIP fit)."""
    shape = (args.size, args.size)
    angles = np.linspace(0, np.pi, args.size, endpoint=False)
    A = du.RayTransform(du.Volume(shape), du.ParallelBeam(angles, (args.size + 8,)), "torch")
    net = du.UNet(dim=2, scales=3, channels=8, skip_channels=2, seed=0)
    z = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    y, sigma = du.simulate(A, du.phantoms.shepp_logan(shape), noise=0.05, seed=0, return_sigma=True)
    return LinearisedLaplace(
        image_fn=lambda p: functional_call(net, p, (z,))[0, 0],
        params={k: v.detach() for k, v in net.named_parameters()},
        weights=net.conv_weights(),
        operator=A,
        y=y,
        noise_variance=float(sigma) ** 2,
        solver=SolverConfig(iterations=args.iterations, tolerance=1e-30),
        group=group,
    )


def cg_step_seconds(lap: LinearisedLaplace, batch: int, repeats: int = 3) -> float:
    """Median time of one batched CG step (the operator of the dual system, applied in
    blocks of ``product_rows`` as the sampler does)."""
    a = torch.randn(batch, lap.y.numel(), generator=torch.Generator().manual_seed(0))
    dual = fixed_rows(lap._dual, lap.solver.product_rows)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            dual(a)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    ctx = None
    if world > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
        )
        ctx = init_from_env(timeout=600)
    lap = build(args, ctx)
    step = cg_step_seconds(lap, args.batch) if rank == 0 else None
    if ctx is not None:
        ctx.barrier()  # start together
        ctx.comm_seconds = 0.0
    started = time.perf_counter()
    std = lap.std(args.samples, batch=args.batch)
    wall = time.perf_counter() - started
    record = {
        "wall_s": wall,
        "comm_s": 0.0 if ctx is None else ctx.comm_seconds,
        "step_s": step,
        "std_mean": float(std.mean()),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    if ctx is not None:
        ctx.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=24, help="image side (pixels)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="samples solved together")
    parser.add_argument("--iterations", type=int, default=30, help="CG iterations per sample")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()

    rows, base = [], None
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            mp.spawn(worker, args=(world, free_port(), args, out), nprocs=world, join=True)
            ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
        wall = max(r["wall_s"] for r in ranks)
        comm = max(r["comm_s"] for r in ranks)
        base = base or wall
        batches = -(-args.samples // args.batch)
        steps = args.iterations * -(-batches // world)  # CG steps on the busiest rank
        rows.append(
            f"| {world} | {args.threads} | {args.samples / wall:.2f} | {wall:.2f} | "
            f"{base / wall:.2f} | {100 * comm / wall:.1f} % | {ranks[0]['step_s'] * 1e3:.1f} | "
            f"{wall / (steps * ranks[0]['step_s']):.2f} | {ranks[0]['std_mean']:.6g} |"
        )
    print(
        f"{args.size}×{args.size} image, U-Net 3 scales × 8 channels, {args.samples} samples in "
        f"batches of {args.batch}, {args.iterations} CG iterations each, gloo on "
        f"{os.cpu_count()} CPU cores (torch {torch.__version__})\n"
    )
    print(
        "| processes | threads each | samples/s | wall to std map (s) | speed-up | "
        "communication | one batched CG step (ms) | wall / (CG steps × step) | mean std |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
