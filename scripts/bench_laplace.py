"""Benchmark the linearised Laplace: cost of a std map, Jacobian products, solver convergence.

Two parts (run by hand; results go to the terminal and optionally to Markdown / JSON files):

* ``speed``: wall time and peak memory of a per-voxel std map from ``--samples`` posterior
  samples (CG, the default solver), next to the reference costs measured in the same process:
  one ``J v`` and one ``Jᵀ u`` (single, and batched over ``--batch`` vectors with
  ``torch.func.vmap``, and as a Python loop of single products), one forward and one back
  projection, and one DIP step. Ratios: std-map time / one ``J v`` and / one DIP step. CPU
  cases: 2D 128² parallel beam (60 angles), 3D 32³ and 64³ cone beam (as many angles as
  voxels per side); ``--cases gpu``: 3D 128³ and 256³ cone beam. Each case uses the default
  U-Net (:meth:`UNet.default_for`) fitted for ``--fit-iterations`` steps only: the cost of
  sampling does not depend on how well the DIP fits (the same products, the same number of
  CG iterations when the iterations are fixed), so a long fit would only waste time.
  The std map runs a fixed number of CG iterations (``--cg-iterations``, tolerance 0) twice,
  with ``k`` and ``3k`` iterations, which separates the cost per CG iteration from the fixed
  cost (base noise, the first ``M u₀`` and the final ``Mᵀ a``); the table extrapolates to
  ``--target-iterations`` (the default cap of :class:`SolverConfig`, 300) since a full run
  of the large cases takes hours on a CPU.
* ``convergence``: on a small 2D case (default 32², 20 angles, 2 % noise, σ_y² set to the true
  noise variance), the distance after ``k`` iterations to a tightly converged CG solution
  (``--reference-iterations``, preconditioned), for CG with the default rank-200 Nyström
  preconditioner, with rank 50 and with none, and for SGD (Nesterov momentum + iterate
  averaging in the same preconditioned coordinates, ``SolverConfig(method="sgd")``) with a
  few momenta: the iterations (and seconds,
  without building the preconditioner) to a relative residual of 1e-3, and the relative error
  ``‖s_k - s_ref‖ / ‖s_ref‖`` of the image-space samples and of the std map after ``k``
  iterations. All solvers start from the same base noise, so they approach the same samples.

Usage::

    python scripts/bench_laplace.py speed [--cases cpu|2d|3d|gpu|NAME...] [--samples 32 128]
    python scripts/bench_laplace.py convergence [--size 32] [--samples 4]
    python scripts/bench_laplace.py all --quick          # smoke run: tiny sizes, seconds

Common options: ``--device``, ``--threads`` (use 1 on a shared 2-core machine: two processes
with 2 OpenMP threads each on 2 cores ran the U-Net 25x slower), ``--markdown FILE``,
``--json FILE``. The machine load (``os.getloadavg``) is recorded with every result.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.func import jvp, vjp

import dip_uq as du
from dip_uq.dip import DIP
from dip_uq.laplace import LinearisedLaplace, SolverConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dip import make_operator, median_time, sync  # sibling script

# name: (volume shape, angles); 2D parallel over 180°, 3D cone over 360° (make_operator)
SPEED_CASES = {
    "2d-128": ((128, 128), 60),
    "3d-32": ((32, 32, 32), 32),
    "3d-64": ((64, 64, 64), 64),
    "3d-128": ((128, 128, 128), 128),
    "3d-256": ((256, 256, 256), 256),
}
CASE_GROUPS = {
    "cpu": ["2d-128", "3d-32", "3d-64"],
    "2d": ["2d-128"],
    "3d": ["3d-32", "3d-64"],
    "gpu": ["3d-128", "3d-256"],
}
QUICK_CASE = ((24, 24), 12)
# solvers of the convergence table: label -> SolverConfig settings (SGD's lr: the default
# 1 / (1.1 λ_max), the largest step that is stable for every direction)
CONVERGENCE_SOLVERS = {
    "cg, Nyström rank 200 (default)": {"method": "cg"},
    "cg, Nyström rank 50": {"method": "cg", "preconditioner_rank": 50},
    "cg, no preconditioner": {"method": "cg", "preconditioner_rank": 0},
    "sgd m=0.7, Nyström rank 200": {"method": "sgd", "momentum": 0.7},
    "sgd m=0.9, Nyström rank 200": {"method": "sgd", "momentum": 0.9},
    "sgd m=0.9, rank 200, avg last 20%": {"method": "sgd", "momentum": 0.9, "average_from": 0.8},
    "sgd m=0.99, no preconditioner": {"method": "sgd", "momentum": 0.99, "preconditioner_rank": 0},
}


def load() -> str:
    """The 1/5/15-minute load averages, for the record next to every timing."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory in MiB above the level at entry, in ``result["peak_mib"]`` on exit.

    CUDA: the caching allocator's peak. CPU: the process's peak resident set (VmHWM), reset
    at entry through ``/proc/self/clear_refs`` (Linux); tracemalloc does not see torch's
    allocations.
    """
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current RSS
        base = _rss_kib("VmRSS")
        yield result
        result["peak_mib"] = (_rss_kib("VmHWM") - base) / 1024


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Seconds and peak MiB of one call of ``fn``."""
    with peak_memory(device) as memory:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        seconds = time.perf_counter() - start
    return seconds, memory["peak_mib"]


def fit_dip(A: Any, y: torch.Tensor, iterations: int, device: torch.device) -> tuple[DIP, float]:
    """The default DIP fitted for ``iterations`` steps, and its median seconds per step
    (the first step, a warm-up, left out)."""
    rec = DIP(A, iterations=iterations, device=device, progress=False)
    stamps: list[float] = []

    def stamp(dip: DIP, k: int, record: dict[str, float]) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    rec.fit(y, callback=stamp)
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    return rec, statistics.median(steps) if steps else math.nan


def jacobian_references(
    lap: LinearisedLaplace, batch: int, repeat: int, device: torch.device
) -> dict[str, float]:
    """Seconds for one ``J v`` and one ``Jᵀ u``: single, vmapped over ``batch`` vectors (the
    library's path) and a Python loop over the same vectors."""
    model = lap.model
    g = torch.Generator().manual_seed(0)
    v = torch.randn(batch, model.n_params, generator=g).to(device)
    u = torch.randn(batch, *model.image_star.shape, generator=g).to(device)

    def image(flat: torch.Tensor) -> torch.Tensor:
        return model.image_fn({**model.fixed, **model.unflatten(flat)})

    _, pullback = vjp(image, model.theta_star)
    with torch.no_grad():
        jvp_loop = lambda: [jvp(image, (model.theta_star,), (t,))[1] for t in v]  # noqa: E731
        vjp_loop = lambda: [pullback(t)[0] for t in u]  # noqa: E731
        return {
            "jvp_single_s": median_time(lambda: model.jvp(v[:1]), repeat, device),
            "vjp_single_s": median_time(lambda: model.vjp(u[:1]), repeat, device),
            "jvp_vmap_s": median_time(lambda: model.jvp(v), repeat, device),
            "vjp_vmap_s": median_time(lambda: model.vjp(u), repeat, device),
            "jvp_loop_s": median_time(jvp_loop, repeat, device),
            "vjp_loop_s": median_time(vjp_loop, repeat, device),
        }


def speed_case(
    name: str, shape: tuple[int, ...], n_angles: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The rows of one case of the ``speed`` part, one per sample count."""
    device = torch.device(args.device)
    A = make_operator(shape, n_angles, 180 if len(shape) == 2 else 360, args.backend)
    truth = du.phantoms.shepp_logan(shape, device=device)
    y = du.simulate(A, truth, noise=0.02, seed=0)
    rec, dip_step = fit_dip(A, y, args.fit_iterations, device)
    with torch.no_grad():
        fp = median_time(lambda: A(truth), args.repeat, device)
        bp = median_time(lambda: A.adjoint(y), args.repeat, device)
    lap = LinearisedLaplace(rec, y=y)
    refs = jacobian_references(lap, args.batch, args.repeat, device)
    k = args.cg_iterations
    # built once for these hyperparameters; timed apart so that the k / 3k runs below see
    # the same fixed cost
    preconditioner_s, preconditioner_mib = timed(lap.preconditioner, device)
    rows = []
    for n_samples in args.samples:
        measured = {}
        for iterations in (k, 3 * k):
            lap.solver = SolverConfig(iterations=iterations, tolerance=1e-30)
            measured[iterations] = timed(
                lambda n=n_samples: lap.std(n, batch=args.std_batch), device
            )
        per_iteration = (measured[3 * k][0] - measured[k][0]) / (2 * k)
        fixed = max(measured[k][0] - k * per_iteration, 0.0)
        std_s = preconditioner_s + fixed + args.target_iterations * per_iteration
        row = {
            "case": name,
            "device": str(device),
            "backend": A.backend,
            "params": lap.model.n_params,
            "chunk": lap.model.chunk,
            "batch": args.batch,
            "samples": n_samples,
            "std_batch": args.std_batch or n_samples,
            "dip_step_s": dip_step,
            "fp_s": fp,
            "bp_s": bp,
            **refs,
            "preconditioner_rank": lap.solver.preconditioner_rank,
            "preconditioner_s": preconditioner_s,
            "preconditioner_mib": preconditioner_mib,
            "cg_iteration_s": per_iteration,
            "fixed_s": fixed,
            "measured_s": measured[3 * k][0],
            "measured_iterations": 3 * k,
            "peak_mib": max(m for _, m in measured.values()),
            "target_iterations": args.target_iterations,
            "std_map_s": std_s,
            "std_per_jvp": std_s / refs["jvp_single_s"],
            "std_per_dip_step": std_s / dip_step,
            "load": load(),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = {"quick-2d-24": QUICK_CASE} if args.quick else {}
    if not args.quick:
        for name in args.cases:
            cases.update({n: SPEED_CASES[n] for n in CASE_GROUPS.get(name, [name])})
    return [row for name, (shape, n) in cases.items() for row in speed_case(name, shape, n, args)]


def speed_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | params | samples / batch | DIP step | FP / BP | J v 1 | Jᵀu 1 | preconditioner "
        "| CG it. (all samples) | std map @ N it. | peak MiB | std / J v | std / DIP step "
        "| load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['params']:,} | {r['samples']} / {r['std_batch']} | "
            f"{r['dip_step_s']:.3f} | "
            f"{r['fp_s']:.3f} / {r['bp_s']:.3f} | {r['jvp_single_s']:.3f} | "
            f"{r['vjp_single_s']:.3f} | {r['preconditioner_s']:.1f} "
            f"(rank {r['preconditioner_rank']}) | {r['cg_iteration_s']:.2f} | "
            f"{r['std_map_s']:.0f} s @ {r['target_iterations']} | {r['peak_mib']:.0f} | "
            f"{r['std_per_jvp']:.0f} | {r['std_per_dip_step']:.0f} | {r['load']} |"
        )
    lines += [
        "",
        "Seconds. std map = preconditioner + fixed cost + N × (CG iteration), all measured (N ="
        " the iterations extrapolated to); peak MiB = peak memory above the level before the"
        " std map (the preconditioner's own build is not in it).",
        "",
        "| case | batch | J v: single / vmap / loop (s per vector) | Jᵀ u: single / vmap / loop "
        "(s per vector) |",
        "|---|---|---|---|",
    ]
    seen = set()
    for r in rows:
        if r["case"] in seen:
            continue
        seen.add(r["case"])
        b = r["batch"]
        lines.append(
            f"| {r['case']} | {b} | {r['jvp_single_s']:.3f} / {r['jvp_vmap_s'] / b:.3f} / "
            f"{r['jvp_loop_s'] / b:.3f} | {r['vjp_single_s']:.3f} / {r['vjp_vmap_s'] / b:.3f} / "
            f"{r['vjp_loop_s'] / b:.3f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
def run_convergence(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    size = 16 if args.quick else args.size
    shape = (size, size)
    A = make_operator(shape, 20, 180, args.backend)
    truth = du.phantoms.shepp_logan(shape, device=device)
    y, sigma = du.simulate(A, truth, noise=0.02, seed=0, return_sigma=True)
    rec = DIP(A, iterations=args.convergence_fit_iterations, device=device, progress=False)
    rec.fit(y)
    # the true σ_y² (what EM aims at) sets the conditioning; the fit residual of a short fit
    # would make the system look easier than it is
    lap = LinearisedLaplace(rec, y=y, noise_variance=float(sigma) ** 2)

    def samples(config: SolverConfig) -> tuple[torch.Tensor, float]:
        lap.solver = config
        if config.method == "cg":
            lap.preconditioner()  # built once per preconditioner rank; the speed part times it
        start = time.perf_counter()
        out = lap.sample(args.convergence_samples)
        return out, time.perf_counter() - start

    reference, ref_s = samples(SolverConfig(iterations=args.reference_iterations, tolerance=1e-6))
    ref_residual = float(lap.last_solve["residual"].max())
    ref_std = reference.square().mean(0).sqrt()
    ks = [5, 10, 20] if args.quick else args.ks
    rows = []
    for label, settings in CONVERGENCE_SOLVERS.items():
        # steps to a relative residual of 1e-3 (the library default), capped like the reference
        _, to_tolerance_s = samples(
            SolverConfig(iterations=args.reference_iterations, tolerance=1e-3, **settings)
        )
        # the solver stops on its recursively updated residual; the true one, recomputed at
        # the end, can be larger in float32
        to_tolerance = (
            f"{lap.last_solve['iterations']} (true residual "
            f"{float(lap.last_solve['residual'].max()):.0e})"
        )
        for k in ks:
            config = SolverConfig(iterations=k, tolerance=1e-30, **settings)
            out, seconds = samples(config)
            std = out.square().mean(0).sqrt()
            row = {
                "solver": label,
                "k": k,
                "sample_error": float((out - reference).norm() / reference.norm()),
                "std_error": float((std - ref_std).norm() / ref_std.norm()),
                "seconds": seconds,
                "iterations_to_1e-3": to_tolerance,
                "seconds_to_1e-3": to_tolerance_s,
                "size": size,
                "params": lap.model.n_params,
                "reference_iterations": args.reference_iterations,
                "reference_residual": ref_residual,
                "reference_s": ref_s,
                "load": load(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def convergence_markdown(rows: list[dict[str, Any]]) -> str:
    r0 = rows[0]
    ks = sorted({r["k"] for r in rows})
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    table = {(r["solver"], r["k"]): r for r in rows}
    lines = [
        f"{r0['size']}² 2D, {r0['params']:,} weights; reference: preconditioned CG, "
        f"{r0['reference_iterations']} iterations (relative residual "
        f"{r0['reference_residual']:.1e}, {r0['reference_s']:.0f} s). Relative error of the "
        "image-space samples / of the std map after k iterations.",
        "",
        "| solver | iterations to 1e-3, s | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for s in solvers:
        first = table[s, ks[0]]
        cells = [f"{first['iterations_to_1e-3']}, {first['seconds_to_1e-3']:.1f} s"] + [
            f"{table[s, k]['sample_error']:.3f} / {table[s, k]['std_error']:.3f}"
            if (s, k) in table
            else "–"
            for k in ks
        ]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["speed", "convergence", "all"])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "astra"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--cases", nargs="+", default=["cpu"], help=f"groups {list(CASE_GROUPS)} or names"
    )
    parser.add_argument("--samples", nargs="+", type=int, default=[32], help="e.g. 32 128")
    parser.add_argument(
        "--std-batch",
        type=int,
        default=None,
        help="samples solved together in the std map (default: all); bounds the memory",
    )
    parser.add_argument("--batch", type=int, default=8, help="vectors per batched product")
    parser.add_argument("--fit-iterations", type=int, default=5, help="DIP steps (speed)")
    parser.add_argument("--cg-iterations", type=int, default=2, help="k: runs k and 3k")
    parser.add_argument("--target-iterations", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="convergence: image side")
    parser.add_argument("--convergence-samples", type=int, default=4)
    parser.add_argument("--convergence-fit-iterations", type=int, default=300)
    parser.add_argument("--reference-iterations", type=int, default=500)
    parser.add_argument("--ks", nargs="+", type=int, default=[10, 30, 100, 300])
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # the solves stop at fixed iteration counts on purpose: no "unconverged" warnings
    logging.getLogger("dip_uq").setLevel(logging.ERROR)
    if args.quick:
        args.samples, args.batch, args.repeat = [4], 2, 1
        args.convergence_fit_iterations, args.reference_iterations = 20, 60
    header = (
        f"bench_laplace {args.part} on {args.device} ({platform.processor() or platform.machine()}"
        f", {torch.get_num_threads()} threads, torch {torch.__version__}, load {load()})"
    )
    print(header, flush=True)
    parts = {
        "speed": (run_speed, speed_markdown),
        "convergence": (run_convergence, convergence_markdown),
    }
    chosen = list(parts) if args.part == "all" else [args.part]
    results, tables = {}, []
    for part in chosen:
        run, render = parts[part]
        results[part] = run(args)
        tables.append(render(results[part]))
    text = "\n".join(tables)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as handle:
            handle.write(f"\n### {header}\n\n{text}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"header": header, "args": vars(args), "rows": results}, handle, indent=1)


if __name__ == "__main__":
    main()
