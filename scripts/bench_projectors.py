"""Benchmark the ray transform: FP/BP time, adjoint mismatch and peak memory per backend.

Every case runs in its own process, so peak memory is that case's alone (peak RSS growth on
the CPU, ``torch.cuda.max_memory_allocated`` on CUDA). Each row carries a reference measured in
the same process, because these machines are noisy:

* torch backend: on the CPU, the bare sparse product with the matrix it stores; on CUDA, the
  bare ``grid_sample`` kernel over the same sample points (the wrapper's overhead is
  ``FP / kernel``);
* astra backend: the raw ASTRA call on the same data (``astra.create_sino`` on the CPU,
  ``astra.experimental.direct_FP3D`` on CUDA); overhead is ``FP / raw``.

Usage: ``python scripts/bench_projectors.py [--sizes small|all] [--device cpu|cuda]
[--repeat N] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

import dip_uq as du

CASES = {
    "2d-256-parallel": ((256, 256), "parallel", 180),
    "2d-256-fan": ((256, 256), "fan", 180),
    "3d-64-parallel": ((64, 64, 64), "parallel", 64),
    "3d-64-cone": ((64, 64, 64), "cone", 64),
    "3d-128-parallel": ((128, 128, 128), "parallel", 128),
    "3d-128-cone": ((128, 128, 128), "cone", 128),
}


def make(shape: tuple[int, ...], kind: str, n_angles: int) -> tuple[du.Volume, du.Geometry]:
    """A volume of unit voxels and a geometry whose detector covers it."""
    n = shape[-1]
    volume = du.Volume(shape)
    if kind == "parallel":
        angles = np.linspace(0, np.pi, n_angles, endpoint=False)
        det = (int(1.5 * n),) if len(shape) == 2 else (shape[0], int(1.5 * n))
        return volume, du.ParallelBeam(angles, det)
    angles = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    det_spacing, src, dist = 1.5, 4.0 * n, 2.0 * n  # magnification 1.5
    if kind == "fan":
        return volume, du.FanBeam(angles, (int(1.5 * n),), det_spacing, src, dist)
    return volume, du.ConeBeam(angles, (int(1.2 * n), int(1.5 * n)), det_spacing, src, dist)


def timed(fn, repeat: int, device: str) -> float:
    """Median wall time of ``fn()`` in milliseconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def reference(A: du.RayTransform, x: torch.Tensor, repeat: int, device: str) -> tuple[str, float]:
    """Time of the raw kernel the backend wraps, on the same data."""
    if A.backend == "torch":
        matrices = A.impl._matrices_for(x)
        if matrices is not None:  # the CPU path: one sparse product with the stored matrix
            forward, flat = matrices[0], x.reshape(-1, 1)

            def product():
                forward @ flat

            return "CSR matmul", timed(product, repeat, device)
        grids = [g for _, g in A.impl._grids(x.device, x.dtype)]
        volume = x[None, None]

        def kernel():
            for grid in grids:
                torch.nn.functional.grid_sample(volume, grid, align_corners=False).sum(-1)

        return "grid_sample", timed(kernel, repeat, device)
    import astra

    if device == "cpu":
        proj_id = astra.create_projector(
            "linear" if A.geometry.kind == "parallel" else "line_fanflat",
            A.geometry.to_astra(),
            A.volume.to_astra(),
        )
        image = x.numpy()

        def raw():
            sino_id, _ = astra.create_sino(image, proj_id)
            astra.data2d.delete(sino_id)

        try:
            return "astra.create_sino", timed(raw, repeat, device)
        finally:
            astra.projector.delete(proj_id)
    import astra.experimental

    if A.volume.ndim == 2 and A.geometry.kind != "parallel":
        return "n/a (2D fan on CUDA goes through host copies)", float("nan")
    proj_id = A.impl._projector("cuda3d")  # the projector the wrapper itself uses
    volume = x.reshape(-1, *x.shape[-2:]).contiguous()
    det = A.geometry.det_shape
    rows = det[0] if len(det) == 2 else 1
    sino = torch.zeros(rows, A.geometry.n_angles, det[-1], device="cuda")
    return "direct_FP3D", timed(
        lambda: astra.experimental.direct_FP3D(proj_id, volume, sino), repeat, device
    )


def run_case(name: str, backend: str, device: str, repeat: int) -> dict:
    shape, kind, n_angles = CASES[name]
    volume, geometry = make(shape, kind, n_angles)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    A = du.RayTransform(volume, geometry, backend=backend)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(volume.shape, generator=g, device=device)
    y = torch.rand(geometry.sino_shape, generator=g, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fp = timed(lambda: A(x), repeat, device)
    bp = timed(lambda: A.adjoint(y), repeat, device)
    ax, aty = A(x).double(), A.adjoint(y).double()
    lhs, rhs = float((ax * y.double()).sum()), float((x.double() * aty).sum())
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    ref_name, ref_ms = reference(A, x, repeat, device)
    return {
        "case": name,
        "backend": A.backend,
        "device": device,
        "fp_ms": fp,
        "bp_ms": bp,
        "adjoint_mismatch": abs(lhs - rhs) / abs(lhs),
        "peak_mb": peak_mb,
        "reference": ref_name,
        "reference_ms": ref_ms,
        "fp_over_reference": fp / ref_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", choices=["small", "all"], default="all")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backends", default="torch,astra")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args()
    if args.case:
        name, backend = args.case.split(":")
        print(json.dumps(run_case(name, backend, args.device, args.repeat)))
        return

    names = [n for n in CASES if args.sizes == "all" or "128" not in n]
    rows = []
    for backend in args.backends.split(","):
        for name in names:
            if backend == "astra" and args.device == "cpu" and name.startswith("3d"):
                continue  # ASTRA 3D needs CUDA (it kills the process without it)
            command = [sys.executable, __file__, "--case", f"{name}:{backend}"]
            command += ["--device", args.device, "--repeat", str(args.repeat)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["failed"])[-1]
                print(f"{name} [{backend}]: {last}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)

    header = (
        "| case | backend | device | FP ms | BP ms | adjoint mismatch | peak MB "
        "| reference | ref ms | FP / ref |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['backend']} | {r['device']} | {r['fp_ms']:.1f} | "
            f"{r['bp_ms']:.1f} | {r['adjoint_mismatch']:.1e} | {r['peak_mb']:.0f} | "
            f"{r['reference']} | {r['reference_ms']:.1f} | {r['fp_over_reference']:.2f} |"
        )
    table = "\n".join(lines)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads\n{table}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
