"""The argument parser of ``dip-uq``: every command's options with their units, defaults
and help text, and ``--config`` files. :mod:`dip_uq.cli` runs what it parses.

``reconstruct --help`` lists first what a user needs (method, iterations, samples, output,
device), then how to read the scan, the stored values, preprocessing and grid, and last the
advanced options (solver settings and research switches), whose defaults are the calibrated
method.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .evaluate import HOLDOUT_METHOD, SUITE_METHODS, SUITES
from .laplace.preconditioner import MAX_RANK
from .settings import CROSS_VALIDATION_EVERY, MEANS, METHODS, PRIOR_SCALES, UQ_METHODS, Settings
from .simulation import PHANTOMS, SCAN_GEOMETRIES
from .version import __version__

__all__ = ["DEMO_DEFAULTS", "UserError", "build_parser", "parse"]


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def _add_scan_arguments(p: argparse.ArgumentParser) -> None:
    """SCAN and how to read it, shared by the commands that read scan files."""
    p.add_argument(
        "scan",
        help="scan file or folder (HDF5/NeXus, .mat, TIFF, .npy/.npz, MRC or HyperSpy .hspy "
        "tilt series, Xradia .txrm/.txm)",
    )
    reading = p.add_argument_group(
        "reading the scan",
        "what a file does not record itself (dip-uq info SCAN shows what it does)",
    )
    reading.add_argument(
        "--geometry", help="geometry JSON (to_dict format) or ASTRA vector file (TIFF and NumPy)"
    )
    reading.add_argument(
        "--format",
        help="skip detection: nxtomo, dxchange, mat, tiff, npy, npz, mrc, txrm or hspy",
    )
    reading.add_argument(
        "--angles",
        help="projection angles instead of a geometry file (TIFF, NumPy, .mat; MRC and .hspy "
        "tilt series): a text/.npy file, or START:STOP:COUNT with a unit, e.g. 0:180:360deg "
        "(COUNT angles from START, STOP not included)",
    )
    reading.add_argument(
        "--angle-unit",
        choices=["deg", "rad"],
        default="deg",
        help="unit of an angle file or a range without one (default: %(default)s)",
    )
    reading.add_argument(
        "--geometry-kind",
        choices=["parallel", "fan", "cone"],
        help="beam of a scan given by --angles (default: parallel); fan/cone need "
        "--pixel-size, --source-origin and --origin-detector",
    )
    reading.add_argument(
        "--pixel-size", type=float, help="detector pixel pitch in mm, with --angles"
    )
    reading.add_argument(
        "--source-origin", type=float, help="source to rotation-axis distance in mm (fan/cone)"
    )
    reading.add_argument(
        "--origin-detector",
        type=float,
        help="rotation-axis to detector distance in mm (fan/cone)",
    )
    reading.add_argument(
        "--dataset", help="the variable (.mat) or array (.npz) that holds the sinogram"
    )
    reading.add_argument(
        "--tilt-axis",
        choices=["x", "y"],
        help="tilt series: the image axis the tilt axis runs along (default: y for MRC, "
        "IMOD's convention; x for .hspy, etspy's)",
    )
    reading.add_argument(
        "--tilt-axis-offset",
        type=float,
        help="tilt series: pixels by which the tilt axis lies right of the image centre (like "
        "--center-offset, applied when reading)",
    )
    values = p.add_argument_group(
        "stored values", "for files whose values are not line integrals (dip-uq info says which)"
    )
    values.add_argument(
        "--log",
        action="store_const",
        const=True,
        help="take -log(I / I0), I0 the 99.9th percentile of the data: intensities without a "
        "flat field (bright-field tilt series; by default MRC/.hspy values are used as line "
        "integrals, HAADF)",
    )
    values.add_argument(
        "--scale",
        type=float,
        metavar="S",
        help="multiply the stored values by S: line integrals stored as integers times a "
        "factor (S = 1 takes them as they are), or with --normalised scaled transmissions",
    )
    values.add_argument(
        "--normalised",
        action="store_const",
        const=True,
        help="the values are transmissions I / I0, already divided by a flat field: take -log",
    )
    values.add_argument(
        "--flat",
        dest="flats",
        metavar="FILE",
        help="flat field(s) from another file (TIFF, .npy, or an Xradia file's reference), for "
        "raw projections whose file has none; replaces the file's own",
    )
    values.add_argument(
        "--dark", dest="darks", metavar="FILE", help="dark frame(s) to go with --flat"
    )


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


# The demo's defaults: small enough that FBP → DIP → std map runs in minutes on a CPU,
# sparse-view and noisy enough that the std map has work. Fewer DIP iterations than these
# leave the DIP short of the data and its std, which describes the fitted network, too
# narrow (docs/measurements.md, "cli").
DEMO_DEFAULTS = {
    2: {"size": 64, "geometry": "parallel", "angles": 30, "iterations": 2500, "channels": 32},
    3: {"size": 24, "geometry": "cone", "angles": 24, "channels": 16},
}


def _add_simulation_arguments(p: argparse.ArgumentParser, demo: bool) -> None:
    """The synthetic scan of ``demo`` and ``simulate``."""
    default = "(default: 64 in 2D, 24 in 3D)" if demo else "(default: %(default)s)"
    p.add_argument(
        "--phantom",
        choices=PHANTOMS,
        default="shepp-logan",
        help="object (default: %(default)s)",
    )
    p.add_argument(
        "--dim", type=int, choices=[2, 3], default=2, help="2D slice or 3D volume (default: 2)"
    )
    p.add_argument(
        "--size", type=int, default=None if demo else 64, help=f"voxels per side {default}"
    )
    p.add_argument(
        "--geometry",
        choices=sorted({g for names in SCAN_GEOMETRIES.values() for g in names}),
        help="beam: parallel or fan in 2D, parallel or cone in 3D (default: parallel in 2D, "
        "cone in 3D)",
    )
    p.add_argument(
        "--angles",
        type=int,
        default=None if demo else 30,
        help="number of projections " + ("(default: 30 in 2D, 24 in 3D)" if demo else default),
    )
    p.add_argument(
        "--arc",
        type=float,
        help="angular range in degrees; below 180 is limited-angle (default: 180 parallel, "
        "360 fan/cone)",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=0.02,
        help="relative Gaussian noise level, σ / mean|Ax| (default: %(default)s)",
    )


def _add_pipeline_arguments(p: argparse.ArgumentParser, demo: bool) -> None:
    """What ``demo`` and ``reconstruct`` run, and where they write; the solver settings and
    research switches, whose defaults are the calibrated method, in an "advanced" group."""
    advanced = p.add_argument_group(
        "advanced options",
        "solver settings and switches for research; the defaults are the method whose "
        "calibration docs/calibration.md reports",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default="dip",
        help="FBP only, or the deep image prior (default: %(default)s)",
    )
    p.add_argument(
        "--uq",
        choices=UQ_METHODS,
        default="laplace",
        help="uncertainty for --method dip: linearised Laplace (EM with --em-steps), "
        "MC dropout, SGLD, or none (default: %(default)s)",
    )
    demo_note = " (demo default: 2500 in 2D)" if demo else ""
    p.add_argument(
        "--iterations",
        type=int,
        help=f"DIP iterations (default: from the noise level){demo_note}",
    )
    demo_note = " (demo default: 32 in 2D, 16 in 3D)" if demo else ""
    p.add_argument(
        "--channels",
        type=int,
        help=f"U-Net channels per scale; smaller is faster on a CPU (default: 32){demo_note}",
    )
    advanced.add_argument("--scales", type=int, help="U-Net resolutions (default: from the grid)")
    p.add_argument(
        "--samples",
        type=int,
        default=Settings.samples,
        help="posterior samples for the std map (default: %(default)s)",
    )
    advanced.add_argument(
        "--em-samples",
        type=int,
        default=Settings.em_samples,
        help="posterior samples per EM step (default: %(default)s)",
    )
    p.add_argument(
        "--em-steps",
        type=int,
        default=Settings.em_steps,
        help="steps of sample-based EM, which fits the noise level (and, with --fit-prior, "
        "the prior's scale); 0 for none (default: %(default)s)",
    )
    advanced.add_argument(
        "--cg-iterations",
        type=int,
        default=Settings.cg_iterations,
        help="conjugate-gradient iterations per sampling solve (default: %(default)s)",
    )
    advanced.add_argument(
        "--preconditioner-rank",
        type=int,
        default=Settings.preconditioner_rank,
        help="rank of the Nyström preconditioner of the CG solves; 0 for plain CG (default: "
        f"grown from 100 to at most {MAX_RANK} while it saves more CG work than it costs)",
    )
    advanced.add_argument(
        "--per-block",
        action="store_true",
        help="let EM fit every U-Net block's prior variance on its own (default: one scale "
        "for all blocks, which is steadier)",
    )
    advanced.add_argument(
        "--fit-noise",
        action=argparse.BooleanOptionalAction,
        default=Settings.fit_noise,
        help="let EM fit the noise variance, starting from the DIP's estimate from the data "
        "(default: on)",
    )
    advanced.add_argument(
        "--fit-prior",
        action="store_true",
        help="let EM fit the prior's scale too (default: off; on our simulated scans it "
        "made the std overconfident: see README)",
    )
    advanced.add_argument(
        "--gprior",
        action=argparse.BooleanOptionalAction,
        default=Settings.gprior,
        help="scale every weight's prior by how little the data sees it (the g-prior; default: on)",
    )
    advanced.add_argument(
        "--mean",
        choices=MEANS,
        default=Settings.mean,
        help="the reconstruction beside the Laplace std: the network's output, or the "
        "linearised network's posterior mean (the output moved by the step that fits the "
        "data the early-stopped DIP left: closer to the truth where the std is well scaled, "
        "farther where it is too wide; see README) (default: %(default)s)",
    )
    advanced.add_argument(
        "--batch",
        type=int,
        help="posterior samples solved together; lower it to save memory (default: all)",
    )
    p.add_argument(
        "--holdout",
        type=int,
        default=0,
        metavar="K",
        help="keep every K-th projection out of the fit and the posterior and score it "
        "afterwards under the posterior predictive: a calibration check of the measurements "
        "that needs no ground truth (K >= 2; default: 0, off)",
    )
    advanced.add_argument(
        "--prior-scale",
        choices=PRIOR_SCALES,
        default=Settings.prior_scale,
        help="the prior's scale: 'weights', that of the fitted weights (and EM's, with "
        "--em-prior); 'holdout', the one that maximises the likelihood of the --holdout "
        "projections (the check is then no longer independent); 'cross-validated', the "
        f"factor on the weights' scale that a second DIP fit without every "
        f"{CROSS_VALIDATION_EVERY}th projection (of a limited arc: as many, half at its ends) "
        "finds best for them, applied to the fit to all of them (a second DIP fit and 4-6 "
        "sets of --em-samples samples) (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the network, the samples (and the simulated noise) (default: 0)",
    )
    p.add_argument(
        "--out",
        default="dip-uq-demo" if demo else "dip-uq-out",
        help="output folder (default: %(default)s)",
    )
    _add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from the checkpoints in --out",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs and checkpoints in --out"
    )
    p.add_argument(
        "--config",
        help="JSON or TOML file of option values (keys as the long options, e.g. em-steps); "
        "options given on the command line win",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The argument parser of ``dip-uq`` and its subcommands (by name)."""
    parser = argparse.ArgumentParser(
        prog="dip-uq",
        description="Tomographic reconstruction with a deep image prior and per-voxel uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"dip-uq {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    subparsers = {}

    p = subparsers["demo"] = commands.add_parser(
        "demo",
        help="simulate a scan of a built-in phantom and run the whole pipeline on it",
        description="Simulate a sparse-view, noisy scan of a built-in phantom, reconstruct it "
        "with FBP and the deep image prior, estimate the per-voxel uncertainty (linearised "
        "Laplace) and score it against the truth. Writes reconstruction.h5, mean.tif, "
        "std.tif, report.png and run.json to --out.",
    )
    _add_simulation_arguments(p, demo=True)
    _add_pipeline_arguments(p, demo=True)

    p = subparsers["simulate"] = commands.add_parser(
        "simulate",
        help="write a simulated scan (NXtomo with the ground truth)",
        description="Simulate a scan of a built-in phantom and write it as an NXtomo HDF5 file "
        "with the ground truth, which 'dip-uq reconstruct' reads (and scores against).",
    )
    _add_simulation_arguments(p, demo=False)
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    p.add_argument("--out", default="scan.h5", help="the file to write (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    p = subparsers["info"] = commands.add_parser(
        "info",
        help="describe a scan file without reconstructing it",
        description="Print the format, arrays, angles, flats/darks, geometry and units that the "
        "reader finds in SCAN.",
    )
    _add_scan_arguments(p)

    p = subparsers["reconstruct"] = commands.add_parser(
        "reconstruct",
        help="reconstruct a scan file, with a per-voxel uncertainty map for DIP",
        description="Read SCAN, reconstruct it with FBP or the deep image prior and estimate "
        "the per-voxel posterior standard deviation. Writes reconstruction.h5 (mean, std, fbp), "
        "mean.tif, std.tif, report.png and run.json to --out.",
    )
    _add_scan_arguments(p)
    preprocessing = p.add_argument_group("preprocessing and grid")
    preprocessing.add_argument("--rows", help="detector rows to keep: INDEX or START:STOP")
    preprocessing.add_argument("--crop", help="detector columns to keep: START:STOP")
    preprocessing.add_argument(
        "--bin", type=int, default=1, help="bin detector pixels by this factor"
    )
    preprocessing.add_argument(
        "--angle-step", type=int, default=1, help="keep every k-th projection"
    )
    preprocessing.add_argument(
        "--center-offset",
        help="centre-of-rotation offset in detector pixels, or 'auto' (parallel beam)",
    )
    preprocessing.add_argument(
        "--size", type=int, help="reconstruction grid side in voxels (default: from the scan)"
    )
    preprocessing.add_argument(
        "--voxel-size",
        type=float,
        help="voxel edge in the scan's length unit (default: the detector pitch at the axis)",
    )
    _add_pipeline_arguments(p, demo=False)

    p = subparsers["evaluate"] = commands.add_parser(
        "evaluate",
        help="score the uncertainty of every method on a fixed suite of simulated scans",
        description="Run a seeded suite of simulated scans (2D and 3D, sparse-view and "
        "limited-angle, 1 % and 5 % noise) through FBP, DIP with the linearised Laplace "
        "(before and after EM), MC dropout and SGLD; write results.csv, results.md and a "
        "calibration plot per case to --out. 'small' is for a CPU, "
        "'full' for a GPU.",
    )
    p.add_argument("--suite", choices=list(SUITES), default="small", help="(default: %(default)s)")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=(*SUITE_METHODS, HOLDOUT_METHOD),
        default=list(SUITE_METHODS),
        help=f"(default: all but {HOLDOUT_METHOD}, which needs --holdout)",
    )
    p.add_argument("--cases", nargs="+", help="case names of the suite (default: all)")
    p.add_argument(
        "--holdout",
        type=int,
        default=0,
        metavar="K",
        help="hold every K-th projection out of every fit and report its predictive coverage "
        "and TLL beside the image-space scores (default: 0, off)",
    )
    p.add_argument("--out", default="dip-uq-eval", help="output folder (default: %(default)s)")
    _add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resume", action="store_true", help="keep the finished cases of --out and run the rest"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    return parser, subparsers


def _load_config(path: str) -> dict[str, Any]:
    """Option values from a JSON or TOML file."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file {path} does not exist; check the --config path")
    text = file.read_text()
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except ImportError:
        raise UserError("TOML configs need Python 3.11 or newer; use a JSON file") from None
    except ValueError as error:
        raise UserError(f"cannot parse {path}: {error}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a mapping of option names to values")
    return {key.replace("-", "_"): value for key, value in values.items()}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; with ``--config``, its values become the defaults."""
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    values = _load_config(args.config)
    known = set(vars(args)) - {"command", "config", "debug", "verbose"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"{args.config}: unknown option(s) {', '.join(unknown)} for '{args.command}'; "
            "see dip-uq " + args.command + " --help"
        )
    subparsers[args.command].set_defaults(**values)
    return parser.parse_args(argv)
