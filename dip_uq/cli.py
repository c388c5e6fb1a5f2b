"""The ``dip-uq`` command line.

Errors the user can fix (bad input, missing files, a device that is not there) end the
program with one line on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__

__all__ = ["main"]

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was requested but no CUDA GPU is available; use --device cpu"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _versions() -> dict[str, str]:
    """Versions recorded in run.json: dip-uq, torch, Python and ASTRA (when importable)."""
    versions = {
        "dip_uq": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import astra

        versions["astra"] = astra.__version__
    except ImportError:
        pass
    return versions


def _prepare_output(out: Path, names: list[str], overwrite: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise UserError(
            f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them "
            "or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)


def demo(args: argparse.Namespace) -> None:
    """Simulate a sparse-view scan of a built-in phantom and reconstruct it."""
    from . import ConeBeam, ParallelBeam, RayTransform, Volume, phantoms, simulate
    from .metrics import psnr
    from .outputs import save_report, write_h5, write_json

    started = time.perf_counter()
    device = _device(args.device)
    out = Path(args.out)
    _prepare_output(out, ["reconstruction.h5", "report.png", "run.json"], args.overwrite)
    size = args.size or (128 if args.dim == 2 else 48)
    angles = np.linspace(0, np.pi if args.dim == 2 else 2 * np.pi, args.angles, endpoint=False)
    if args.dim == 2:
        volume = Volume((size, size), voxel_size=1.0)
        geometry = ParallelBeam(angles, det_shape=(int(1.5 * size),))
    else:
        volume = Volume((size,) * 3, voxel_size=1.0)
        geometry = ConeBeam(angles, (size, int(1.5 * size)), 1.5, 4.0 * size, 2.0 * size)
    A = RayTransform(volume, geometry, backend=args.backend)
    truth = phantoms.shepp_logan(volume.shape, device=device) * 0.02  # attenuation per voxel
    y = simulate(A, truth, noise=args.noise, seed=args.seed)
    timings = {"simulate_s": time.perf_counter() - started}

    start = time.perf_counter()
    reconstruction = A.fbp(y, filter="hann")
    timings["fbp_s"] = time.perf_counter() - start
    scores = {"psnr_fbp_db": psnr(reconstruction, truth)}

    to_np = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    params = {
        "dim": args.dim,
        "size": size,
        "angles": args.angles,
        "noise": args.noise,
        "seed": args.seed,
        "backend": A.backend,
        "device": str(device),
    }
    write_h5(
        out / "reconstruction.h5",
        {"fbp": to_np(reconstruction), "truth": to_np(truth), "sinogram": to_np(y)},
        {"volume": volume.to_dict(), "geometry": geometry.to_dict(), "parameters": params},
    )
    error = np.abs(to_np(reconstruction) - to_np(truth))
    save_report(
        out / "report.png",
        {"truth": to_np(truth), "FBP (Hann)": to_np(reconstruction), "|error| FBP": error},
        title=f"dip-uq demo: {args.dim}D Shepp-Logan, {args.angles} angles, "
        f"{100 * args.noise:g}% noise — FBP PSNR {scores['psnr_fbp_db']:.2f} dB",
    )
    timings["total_s"] = time.perf_counter() - started
    write_json(
        out / "run.json",
        {
            "command": sys.argv,
            "versions": _versions(),
            "parameters": params,
            "scores": scores,
            "timings": timings,
        },
    )
    print(f"wrote {out / 'reconstruction.h5'}, {out / 'report.png'}, {out / 'run.json'}")
    print(f"FBP PSNR {scores['psnr_fbp_db']:.2f} dB ({timings['total_s']:.1f} s on {device})")


def info(args: argparse.Namespace) -> None:
    """Print what the reader finds in a scan file, without reconstructing."""
    from .io import describe, read_scan

    print(describe(read_scan(args.scan, geometry=args.geometry, format=args.format)))


def _slice(text: str | None) -> tuple[int, int] | int | None:
    """``"START:STOP"`` or ``"INDEX"`` from the command line."""
    if text is None:
        return None
    try:
        if ":" in text:
            start, stop = text.split(":")
            return int(start), int(stop)
        return int(text)
    except ValueError:
        raise UserError(f"expected INDEX or START:STOP, got {text!r}") from None


def reconstruct(args: argparse.Namespace) -> None:
    """Reconstruct a scan file (FBP or DIP) and, for DIP, its per-voxel uncertainty."""
    from . import DIP, LinearisedLaplace, RayTransform, io
    from .laplace import SolverConfig
    from .outputs import save_report, write_h5, write_json, write_tiff

    started = time.perf_counter()
    device = _device(args.device)
    out = Path(args.out)
    names = ["reconstruction.h5", "mean.tif", "std.tif", "report.png", "run.json"]
    _prepare_output(out, names, args.overwrite)
    center = args.center_offset
    center = None if center is None else center if center == "auto" else float(center)
    scan = io.read_scan(args.scan, geometry=args.geometry, format=args.format)
    scan = io.preprocess(
        scan,
        rows=_slice(args.rows),
        center_offset=center,
        crop=_slice(args.crop),
        binning=args.bin,
        angle_step=args.angle_step,
    )
    volume = scan.volume or io.default_volume(scan, size=args.size, voxel_size=args.voxel_size)
    A = RayTransform(volume, scan.geometry, backend=args.backend)
    y = torch.as_tensor(scan.sinogram, device=device)
    timings = {"read_s": time.perf_counter() - started}

    start = time.perf_counter()
    fbp = A.fbp(y, filter="hann")
    timings["fbp_s"] = time.perf_counter() - start
    mean, std, curves, hyper = fbp, None, {}, {}
    if args.method == "dip":
        start = time.perf_counter()
        rec = DIP(
            A,
            iterations=args.iterations,
            seed=args.seed,
            device=device,
            checkpoint=out / "dip-checkpoint.pt",
            progress=not args.quiet,
        )
        mean = rec.fit(y)
        timings["dip_s"] = time.perf_counter() - start
        curves["DIP loss"] = np.asarray(rec.history["loss"])
        if args.uq == "laplace":
            start = time.perf_counter()
            lap = LinearisedLaplace(
                rec, y=y, seed=args.seed, solver=SolverConfig(iterations=args.cg_iterations)
            )
            history = lap.fit_hyperparameters(
                args.em_steps, n_samples=args.samples, progress=not args.quiet
            )
            std = lap.std(args.samples)
            timings["uncertainty_s"] = time.perf_counter() - start
            curves["EM noise variance"] = np.asarray(history["noise_variance"])
            hyper = {"noise_variance": lap.noise_variance, "prior_variances": lap.prior.variances}

    to_np = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    datasets = {"mean": to_np(mean), "fbp": to_np(fbp)}
    images = {"FBP (Hann)": datasets["fbp"]}
    if args.method == "dip":
        images["DIP mean"] = datasets["mean"]
    if std is not None:
        datasets["std"] = to_np(std)
        images["std"] = datasets["std"]
    params = {k: v for k, v in vars(args).items() if k not in ("run",)}
    write_h5(
        out / "reconstruction.h5",
        datasets,
        {
            "volume": volume.to_dict(),
            "geometry": scan.geometry.to_dict(),
            "parameters": params,
            "notes": scan.notes,
        },
    )
    write_tiff(out / "mean.tif", datasets["mean"])
    if std is not None:
        write_tiff(out / "std.tif", datasets["std"])
    save_report(
        out / "report.png",
        images,
        title=f"dip-uq reconstruct {Path(args.scan).name}",
        curves=curves,
    )
    timings["total_s"] = time.perf_counter() - started
    write_json(
        out / "run.json",
        {
            "command": sys.argv,
            "versions": _versions(),
            "device": str(device),
            "backend": A.backend,
            "parameters": params,
            "timings": timings,
            "hyperparameters": hyper,
            "notes": scan.notes,
        },
    )
    print(f"wrote {out} ({timings['total_s']:.1f} s on {device})")


def _add_scan_arguments(p: argparse.ArgumentParser) -> None:
    """SCAN and how to read it, shared by the commands that read scan files."""
    p.add_argument("scan", help="scan file or folder (HDF5/NeXus, .mat, TIFF, .npy/.npz)")
    p.add_argument(
        "--geometry", help="geometry JSON (to_dict format) or ASTRA vector file (TIFF and NumPy)"
    )
    p.add_argument("--format", help="skip detection: nxtomo, dxchange, mat, tiff, npy or npz")


def _add_device_arguments(p: argparse.ArgumentParser) -> None:
    """Where to compute, shared by the commands that reconstruct."""
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="(default: %(default)s)"
    )
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "astra"],
        default="auto",
        help="projector (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dip-uq`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="dip-uq",
        description="Tomographic reconstruction with a deep image prior and per-voxel uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"dip-uq {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "demo",
        help="simulate a scan of a built-in phantom and reconstruct it",
        description="Simulate a sparse-view, noisy scan of the Shepp-Logan phantom "
        "(attenuation 0.02 per unit length inside the skull) and reconstruct it.",
    )
    p.add_argument("--out", default="dip-uq-demo", help="output folder (default: %(default)s)")
    p.add_argument(
        "--dim", type=int, choices=[2, 3], default=2, help="2D parallel beam or 3D cone beam"
    )
    p.add_argument("--size", type=int, help="image side in voxels (default: 128 in 2D, 48 in 3D)")
    p.add_argument(
        "--angles", type=int, default=45, help="number of projections (default: %(default)s)"
    )
    p.add_argument(
        "--noise",
        type=float,
        default=0.02,
        help="relative Gaussian noise level (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    _add_device_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.set_defaults(run=demo)

    p = commands.add_parser(
        "info",
        help="describe a scan file without reconstructing it",
        description="Print the format, arrays, angles, flats/darks, geometry and units that the "
        "reader finds in SCAN.",
    )
    _add_scan_arguments(p)
    p.set_defaults(run=info)

    p = commands.add_parser(
        "reconstruct",
        help="reconstruct a scan file, with a per-voxel uncertainty map for DIP",
        description="Read SCAN, reconstruct it with FBP or the deep image prior and, with "
        "--uq laplace, estimate the per-voxel posterior standard deviation.",
    )
    _add_scan_arguments(p)
    p.add_argument("--out", default="dip-uq-out", help="output folder (default: %(default)s)")
    p.add_argument("--method", choices=["fbp", "dip"], default="dip", help="(default: %(default)s)")
    p.add_argument(
        "--uq",
        choices=["laplace", "none"],
        default="laplace",
        help="uncertainty for --method dip (default: %(default)s)",
    )
    p.add_argument("--iterations", type=int, help="DIP iterations (default: from the noise level)")
    p.add_argument(
        "--samples", type=int, default=16, help="posterior samples (default: %(default)s)"
    )
    p.add_argument("--em-steps", type=int, default=5, help="EM steps (default: %(default)s)")
    p.add_argument(
        "--cg-iterations",
        type=int,
        default=100,
        help="conjugate-gradient iterations per sampling solve (default: %(default)s)",
    )
    p.add_argument("--rows", help="detector rows to keep: INDEX or START:STOP")
    p.add_argument("--crop", help="detector columns to keep: START:STOP")
    p.add_argument("--bin", type=int, default=1, help="bin detector pixels by this factor")
    p.add_argument("--angle-step", type=int, default=1, help="keep every k-th projection")
    p.add_argument("--center-offset", help="centre-of-rotation offset in pixels, or 'auto'")
    p.add_argument("--size", type=int, help="reconstruction grid side in voxels")
    p.add_argument("--voxel-size", type=float, help="voxel size in the scan's length unit")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    _add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.set_defaults(run=reconstruct)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``dip-uq``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        args.run(args)
    except (UserError, ValueError, FileNotFoundError, PermissionError) as error:
        if args.debug:
            raise
        print(f"dip-uq: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("dip-uq: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
