"""Benchmark dip-uq's 2D and 3D projectors against their peers on the CPU (ASTRA's CPU projector,
torchtomo): FP/BP time, adjoint gap, operator agreement. (``bench_projectors.py`` measures
each backend against its raw kernel, with peak memory, on the CPU or CUDA.)

A benchmark, not a test: run by hand; the results go to the terminal and optionally to a JSON
file. What one run measures, every library on the same number of torch threads
(``--threads``, applied with ``torch.set_num_threads``):

* 2D parallel beam, 128² with 128 angles and 256² with 256 angles over 180°, 1.5 × size
  detector columns: forward (FP) and back projection (BP) of one image and of a batch of 8
  (the sampler's Jacobian products send 8 rows at once), for dip-uq's ``"torch"`` backend
  and its ``"astra"`` backend on the CPU (ASTRA's ``linear`` projector, Joseph's method).
  ASTRA's CPU projectors are single-threaded per call and dip-uq loops over the batch, so
  ASTRA gets one core whatever ``--threads`` says; the CPU/wall column shows the cores each
  library actually used. Ratios are ``time / ASTRA time`` (above 1: ASTRA is faster).
* The adjoint gap of every operator, ``|<A x, y> - <x, Aᵀ y>| / (‖A x‖ ‖y‖)`` for uniform
  random ``x`` and ``y`` in float32 (inner products in float64): round-off alone stays below
  float32's 1e-7, an approximate adjoint shows its mismatch (ASTRA's CUDA pair: ~5e-3).
* How far dip-uq's two backends are from being the same operator:
  ``‖A_torch x - A_astra x‖ / ‖A_astra x‖`` for a Shepp-Logan phantom and for random ``x``.
  They are different discretisations of the same line integrals (ray marching with bilinear
  interpolation every half voxel against Joseph's method), not the same matrix.
* torchtomo (``pip install torchtomo``, an optional benchmark-only dependency, not part of
  dip-uq), when it can be imported: its CPU ``ParallelBeam`` in the same 2D cases (it has
  ``size`` detector bins, the image spanning [-1, 1], ``circle=False``: timing only, not the
  same operator) and its ``ConeBeam`` in 3D (given dip-uq's source and detector positions,
  so it projects the same scan and is compared with dip-uq's torch backend). One timed call
  per 3D operation: a call takes seconds.
* 3D cone beam 32³, 32 angles over 360° (the geometry of ``simulate_scan(dim=3,
  geometry="cone")``): FP and BP of one volume with dip-uq's torch backend (ASTRA has no 3D
  on the CPU). ``--large`` adds 64³ with 64 angles (dip-uq only).

Times are the median over ``--repeat`` calls (fewer, at least 3, once a measurement has run
for 5 s) after one warm-up call; every operator is applied once before that, so cached
sample grids are built outside the timings. The machine load (``os.getloadavg``) is printed
and stored: on a shared machine the numbers are contended.

Usage::

    python scripts/bench_peers.py [--threads 2] [--large] [--repeat 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import dip_uq as du

CASES_2D = ((128, 128), (256, 256))  # (size, angles)
CASES_3D = ((32, 32),)
CASES_3D_LARGE = ((64, 64),)
BATCH = 8
MIN_REPEAT, TIME_BUDGET_S = 3, 5.0
TORCHTOMO_3D_MAX = 32  # torchtomo's CPU cone beam takes seconds per call at 32³
INSTALL_TORCHTOMO = "torchtomo not importable: skipped (optional: pip install torchtomo)"


def load() -> str:
    """The 1/5/15-minute load averages."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(
    fn: Callable[[], torch.Tensor], repeat: int, warmup: bool = True
) -> tuple[dict[str, Any], torch.Tensor]:
    """Median wall time (ms) of ``fn()``, the cores it kept busy, and its last output."""
    if warmup:
        fn()
    times: list[float] = []
    cpu = 0.0
    while len(times) < repeat and (len(times) < MIN_REPEAT or sum(times) < TIME_BUDGET_S):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        cpu += time.process_time() - start_cpu
    stats = {
        "ms": 1e3 * statistics.median(times),
        "runs": len(times),
        "cpu_per_wall": cpu / sum(times),
    }
    return stats, out


def vdot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


def adjoint_gap(x: torch.Tensor, ax: torch.Tensor, y: torch.Tensor, aty: torch.Tensor) -> float:
    """``|<A x, y> - <x, Aᵀ y>| / (‖A x‖ ‖y‖)``."""
    scale = float(ax.double().norm() * y.double().norm())
    return abs(vdot(ax, y) - vdot(x, aty)) / scale


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def import_torchtomo() -> Any | None:
    try:
        import torchtomo
    except ImportError:
        return None
    return torchtomo


def cone_geometry(size: int, n_angles: int) -> du.ConeBeam:
    """The cone beam of :func:`dip_uq.simulate_scan` (``dim=3``, ``geometry="cone"``)."""
    theta = 2 * np.pi * np.arange(n_angles) / n_angles
    return du.ConeBeam(theta, (size, round(1.5 * size)), 1.5, 4.0 * size, 2.0 * size)


def torchtomo_cone(torchtomo: Any, volume: du.Volume, geometry: du.ConeBeam) -> Any:
    """torchtomo's ``ConeBeam`` of the same scan: dip-uq's sources and detector pixel centres."""
    frames = geometry.frames()  # world (x, y, z), the volume centred at the origin
    rows, cols = geometry.det_shape
    r = np.arange(rows) - (rows - 1) / 2
    c = np.arange(cols) - (cols - 1) / 2
    pixels = (
        frames["center"][:, None, None, :]
        + r[None, :, None, None] * frames["v"][:, None, None, :]
        + c[None, None, :, None] * frames["u"][:, None, None, :]
    )
    return torchtomo.ConeBeam(
        volume.shape,
        torch.tensor(frames["source"], dtype=torch.float32),
        torch.tensor(pixels, dtype=torch.float32),
        voxel_spacing=volume.voxel_size[0],
    )


class Runner:
    """Times one operator (``fp``/``bp`` on single inputs and on batches) and keeps the rows."""

    def __init__(self, repeat: int) -> None:
        self.repeat = repeat
        self.timings: list[dict[str, Any]] = []
        self.adjoint: list[dict[str, Any]] = []

    def run(
        self,
        case: str,
        library: str,
        fp: Callable[[torch.Tensor], torch.Tensor],
        bp: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        batch: tuple[torch.Tensor, torch.Tensor] | None = None,
        repeat: int | None = None,
    ) -> torch.Tensor:
        """Time FP/BP of ``x``/``y`` (and of the batch), record the adjoint gap, return FP x."""
        repeat = self.repeat if repeat is None else repeat
        warmup = repeat > 1
        row: dict[str, Any] = {"case": case, "library": library}
        with torch.no_grad():
            if warmup:
                fp(x)  # builds whatever the operator caches, outside the timings
            row["fp1"], ax = timed(lambda: fp(x), repeat, warmup)
            row["bp1"], aty = timed(lambda: bp(y), repeat, warmup)
            if batch is not None:
                row[f"fp{BATCH}"], _ = timed(lambda: fp(batch[0]), repeat, warmup)
                row[f"bp{BATCH}"], _ = timed(lambda: bp(batch[1]), repeat, warmup)
        gap = adjoint_gap(x, ax, y, aty)
        self.timings.append(row)
        self.adjoint.append({"case": case, "library": library, "gap": gap})
        cols = [k for k in ("fp1", "bp1", f"fp{BATCH}", f"bp{BATCH}") if k in row]
        done = ", ".join(f"{k} {row[k]['ms']:.1f} ms" for k in cols)
        print(f"  {case:<22} {library:<12} {done}  (adjoint gap {gap:.1e})", flush=True)
        return ax


def bench_2d(runner: Runner, torchtomo: Any | None) -> list[dict[str, Any]]:
    """The 2D parallel-beam cases; returns the torch-vs-ASTRA operator differences."""
    differences = []
    for size, n_angles in CASES_2D:
        case = f"2d {size}² {n_angles} angles"
        volume = du.Volume((size, size))
        angles = np.linspace(0, np.pi, n_angles, endpoint=False)
        geometry = du.ParallelBeam(angles, (round(1.5 * size),))
        gen = torch.Generator().manual_seed(size)
        x = torch.rand(volume.shape, generator=gen)
        y = torch.rand(geometry.sino_shape, generator=gen)
        xb = torch.rand((BATCH, *volume.shape), generator=gen)
        yb = torch.rand((BATCH, *geometry.sino_shape), generator=gen)
        phantom = du.phantoms.shepp_logan(volume.shape)

        projected = {}
        for backend in ("torch", "astra"):
            try:
                A = du.RayTransform(volume, geometry, backend=backend)
            except ValueError as error:  # astra-toolbox missing
                print(f"  {case:<22} dip-uq {backend}: skipped ({error})")
                continue
            ax = runner.run(case, f"dip-uq {backend}", A, A.adjoint, x, y, (xb, yb))
            with torch.no_grad():
                projected[backend] = (ax, A(phantom))
        if len(projected) == 2:
            (t_rand, t_ph), (a_rand, a_ph) = projected["torch"], projected["astra"]
            differences.append(
                {"case": case, "phantom": rel_diff(t_ph, a_ph), "random": rel_diff(t_rand, a_rand)}
            )

        if torchtomo is not None:
            P = torchtomo.ParallelBeam(img_size=size, n_angles=n_angles, circle=False)
            shape_y = (1, 1, n_angles, P.n_det)
            ty = torch.rand(shape_y, generator=gen)
            tyb = torch.rand((BATCH, *shape_y[1:]), generator=gen)
            runner.run(case, "torchtomo", P, P.adjoint, x[None, None], ty, (xb[:, None], tyb))
    return differences


def bench_3d(runner: Runner, torchtomo: Any | None, large: bool) -> list[dict[str, Any]]:
    """The 3D cone-beam cases; returns the dip-uq-vs-torchtomo operator differences."""
    differences = []
    for size, n_angles in CASES_3D + (CASES_3D_LARGE if large else ()):
        case = f"3d cone {size}³ {n_angles} angles"
        volume, geometry = du.Volume((size,) * 3), cone_geometry(size, n_angles)
        gen = torch.Generator().manual_seed(size)
        x = torch.rand(volume.shape, generator=gen)
        y = torch.rand(geometry.sino_shape, generator=gen)
        A = du.RayTransform(volume, geometry, backend="torch")
        ax = runner.run(case, "dip-uq torch", A, A.adjoint, x, y)
        if torchtomo is None or size > TORCHTOMO_3D_MAX:
            continue
        C = torchtomo_cone(torchtomo, volume, geometry)
        tax = runner.run(case, "torchtomo", C, C.adjoint, x[None, None], y[None, None], repeat=1)
        phantom = du.phantoms.shepp_logan(volume.shape)
        with torch.no_grad():
            t_ph, d_ph = C(phantom[None, None])[0, 0], A(phantom)
        differences.append(
            {"case": case, "phantom": rel_diff(t_ph, d_ph), "random": rel_diff(tax[0, 0], ax)}
        )
    return differences


def print_table(rows: list[dict[str, Any]]) -> None:
    ops = ("fp1", "bp1", f"fp{BATCH}", f"bp{BATCH}")
    heads = ("FP 1", "BP 1", f"FP {BATCH}", f"BP {BATCH}")
    print(f"\n{'case':<22} {'library':<13}" + "".join(f"{h + ' ms':>11}" for h in heads), end="")
    print(f"{'CPU/wall':>10}" + "".join(f"{h + ' /astra':>13}" for h in heads))
    astra = {r["case"]: r for r in rows if r["library"] == "dip-uq astra"}
    for r in rows:
        cells = "".join(f"{r[k]['ms']:>11.1f}" if k in r else f"{'-':>11}" for k in ops)
        busy = max(r[k]["cpu_per_wall"] for k in ops if k in r)
        ref = astra.get(r["case"])
        ratios = ""
        if ref is not None and r is not ref:
            ratios = "".join(
                f"{r[k]['ms'] / ref[k]['ms']:>13.2f}" if k in r else f"{'-':>13}" for k in ops
            )
        print(f"{r['case']:<22} {r['library']:<13}{cells}{busy:>10.2f}{ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--large", action="store_true", help="add 3D 64³ cone, 64 angles")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--json", metavar="PATH", help="write every number to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torchtomo = import_torchtomo()
    try:
        import astra

        astra_version = str(astra.__version__)
    except ImportError:
        astra_version = None
    meta = {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "astra": astra_version,
        "torchtomo": None if torchtomo is None else str(torchtomo.__version__),
        "dip_uq": du.__version__,
        "load_start": load(),
    }
    print(
        f"CPU, float32, {meta['threads']} torch threads (all libraries); {os.cpu_count()} "
        f"cores, load {meta['load_start']}\ntorch {torch.__version__}, astra {astra_version}, "
        f"torchtomo {meta['torchtomo']}\n"
        "ASTRA's CPU projectors are single-threaded per call (dip-uq loops over the batch): "
        "ASTRA uses one core whatever --threads says"
    )
    if torchtomo is None:
        print(INSTALL_TORCHTOMO)

    runner = Runner(args.repeat)
    print("\ntimings (median ms):")
    diff_2d = bench_2d(runner, torchtomo)
    diff_3d = bench_3d(runner, torchtomo, args.large)
    meta["load_end"] = load()

    print_table(runner.timings)
    print(
        f"CPU/wall: process CPU time / wall time (cores kept busy); x /astra: time over dip-uq "
        f"astra's (> 1: ASTRA faster). Load {meta['load_start']} -> {meta['load_end']}: "
        "contended if above 0."
    )
    print("\nadjoint gap |<Ax, y> - <x, Aᵀy>| / (‖Ax‖ ‖y‖), float32:")
    for r in runner.adjoint:
        print(f"  {r['case']:<22} {r['library']:<13} {r['gap']:.1e}")
    print(
        "\nsame operator? ‖A_torch x - A_astra x‖ / ‖A_astra x‖ (different discretisations: "
        "ray marching every half voxel vs Joseph's method):"
    )
    for d in diff_2d:
        print(f"  {d['case']:<22} phantom {d['phantom']:.2%}, random x {d['random']:.2%}")
    if diff_3d:
        print("torchtomo ConeBeam vs dip-uq torch, same scan: ‖A_tt x - A x‖ / ‖A x‖:")
        for d in diff_3d:
            print(f"  {d['case']:<22} phantom {d['phantom']:.2%}, random x {d['random']:.2%}")

    if args.json:
        result = {
            "meta": meta,
            "timings": runner.timings,
            "adjoint": runner.adjoint,
            "torch_vs_astra_2d": diff_2d,
            "torchtomo_vs_torch_3d": diff_3d,
        }
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
