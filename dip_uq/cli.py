"""The ``dip-uq`` command line.

Errors the user can fix (bad input, missing files, a device that is not there) end the
program with one line on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cli_parser import DEMO_DEFAULTS, UserError, parse
from .diagnostics import NotConvergedWarning
from .evaluate import SUITES, markdown_table, run_suite
from .holdout import ENDS_AND_INSIDE
from .settings import Settings

if TYPE_CHECKING:
    from .geometry import Volume
    from .pipeline import Result
    from .scan import Scan

__all__ = ["COMMANDS", "main"]

EXIT_USER_ERROR = 2


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was requested but no CUDA GPU is available; use --device cpu"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _prepare_output(
    out: Path, names: tuple[str, ...], overwrite: bool, resume: bool = False
) -> None:
    """Refuse to replace results without ``--overwrite``, and to start over an unfinished
    run without ``--resume`` or ``--overwrite``; with ``--overwrite`` (and without
    ``--resume``), clear the checkpoints of the earlier run."""
    from .pipeline import find_checkpoints, remove_checkpoints

    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise UserError(
            f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them "
            "or choose another --out"
        )
    found = find_checkpoints(out)
    if found and not (overwrite or resume):
        raise UserError(
            f"{out} holds checkpoints of an unfinished run ({', '.join(found)}); pass "
            "--resume to continue it or --overwrite to start again"
        )
    if overwrite and not resume:
        remove_checkpoints(out)


def _settings(args: argparse.Namespace) -> Any:
    """The pipeline settings that the command line sets (the others keep their defaults)."""
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    return Settings(**given)


def _run_and_write(scan: Scan, volume: Volume | None, args: argparse.Namespace, title: str) -> None:
    """Run :func:`dip_uq.reconstruct` on ``scan`` and write its outputs
    (:data:`dip_uq.outputs.OUTPUTS`) into ``args.out``.

    Under ``torchrun`` every rank runs this; rank 0 alone writes and prints the summary.
    """
    from .distributed import init_from_env
    from .outputs import OUTPUTS
    from .pipeline import print_above_bars, reconstruct

    started = time.perf_counter()
    settings = _settings(args)  # bad options fail before any file is touched
    device = _device(args.device)
    out = Path(args.out)
    group = init_from_env()  # a process group under torchrun, else None
    main = group is None or group.is_main
    if main:
        _prepare_output(out, OUTPUTS, args.overwrite, args.resume)
    if group is not None:
        group.barrier()  # rank 0 has checked (and, with --overwrite, cleared) the folder
        device = group.device
    result = reconstruct(
        scan,
        settings,
        volume=volume,
        backend=args.backend,
        device=device,
        work_dir=out,
        resume=args.resume or not main,  # rank 0 alone judges the checkpoints
        progress=not args.quiet,
        group=group,
        notify=print_above_bars if main else lambda line: None,
    )
    if group is not None:
        group.close()
        if not main:  # every rank holds the result; rank 0 writes it
            return
    result.timings["total_s"] = time.perf_counter() - started
    written = result.save(
        out,
        title=title,
        parameters=vars(args),
        run_info={"command": sys.argv},
        overwrite=True,  # _prepare_output refused what --overwrite did not allow
    )
    _print_summary(written, result, str(device))


def _print_summary(written: list[Path], result: Result, device: str) -> None:
    print(f"wrote {', '.join(map(str, written))}")
    s = result.scores
    parts = [f"FBP PSNR {s['psnr_fbp_db']:.2f} dB"] if "psnr_fbp_db" in s else []
    if "psnr_dip_db" in s:
        parts.append(f"DIP PSNR {s['psnr_dip_db']:.2f} dB")
    if "coverage_90" in s:
        parts.append(f"90% interval covers {100 * s['coverage_90']:.1f}% of voxels")
    parts.append(f"{result.timings['total_s']:.1f} s on {device}")
    print(", ".join(parts))
    search = result.hyperparameters.get("prior_scale_search")
    if search and "every" in search:  # cross-validated
        where = f"one in {search['every']}"
        if search.get("held_out") == ENDS_AND_INSIDE:
            where = "half at the arc's ends, half inside"
        print(
            f"prior scale: {search['chosen_factor']:.2g} times the fitted weights', chosen by "
            f"{search['projections']} projections ({where}) a second fit left out"
        )
    if result.holdout:
        h = result.holdout
        print(
            f"held-out projections ({h['projections']}, one in {h['every']}): 90% interval "
            f"covers {h['coverage_90']:.1%} of their pixels (50%: {h['coverage_50']:.1%}), "
            f"TLL {h['tll_per_pixel']:.2f} nats/pixel"
        )


def _simulated(args: argparse.Namespace, **overrides: Any) -> Any:
    from .simulation import simulate_scan

    options = {
        "phantom": args.phantom,
        "dim": args.dim,
        "size": args.size,
        "geometry": args.geometry,
        "angles": args.angles,
        "arc": None if args.arc is None else np.deg2rad(args.arc),
        "noise": args.noise,
        "seed": args.seed,
    }
    return simulate_scan(**{**options, **overrides})


def demo(args: argparse.Namespace) -> None:
    """Simulate a sparse-view scan of a built-in phantom and run the whole pipeline on it."""
    dim = args.dim
    _device(args.device)  # a missing GPU is reported before any work
    for name, value in DEMO_DEFAULTS[dim].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    scan = _simulated(args)
    title = (
        f"dip-uq demo: {dim}D {args.phantom}, {args.geometry} beam, {args.angles} angles, "
        f"{100 * args.noise:g}% noise"
    )
    _run_and_write(scan, scan.volume, args, title)


def simulate(args: argparse.Namespace) -> None:
    """Write a simulated scan (NXtomo, with the ground truth) that ``reconstruct`` reads."""
    from .io import write_nxtomo

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    if args.geometry is None:
        args.geometry = "parallel" if args.dim == 2 else "cone"
    scan = _simulated(args)
    write_nxtomo(out, scan)
    print(f"wrote {out}: {scan.notes[0]}; sinogram {scan.sinogram.shape}")


def info(args: argparse.Namespace) -> None:
    """Print what the reader finds in a scan file, without reconstructing (also for files
    that ``reconstruct`` needs more options for: the summary names them)."""
    from .io import describe_file

    print(describe_file(args.scan, **_read_options(args)))


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
    from . import io
    from .scan import default_volume

    center = args.center_offset
    center = None if center is None else center if center == "auto" else float(center)
    scan = io.read_scan(args.scan, **_read_options(args))
    scan = io.preprocess(
        scan,
        rows=_slice(args.rows),
        center_offset=center,
        crop=_slice(args.crop),
        binning=args.bin,
        angle_step=args.angle_step,
    )
    volume = None  # the scan's own grid, or the one the pipeline chooses for the device
    if args.size is not None or args.voxel_size is not None:
        volume = default_volume(scan, size=args.size, voxel_size=args.voxel_size)
        scan = scan.replace(truth=None)  # a truth on another grid cannot be compared
    _run_and_write(scan, volume, args, f"dip-uq reconstruct {Path(args.scan).name}")


def evaluate(args: argparse.Namespace) -> None:
    """Run a calibration suite of :mod:`dip_uq.evaluate` and print its table."""
    out = Path(args.out)
    existing = [n for n in ("results.csv", "results.md") if (out / n).exists()]
    if existing and not (args.overwrite or args.resume):
        raise UserError(
            f"{out} already holds {', '.join(existing)}; pass --resume to finish its cases, "
            "--overwrite to start again, or choose another --out"
        )
    started = time.perf_counter()
    suite = SUITES[args.suite]
    if args.holdout:  # every method is fitted to the kept projections and scored on the rest
        suite = replace(suite, settings=replace(suite.settings, holdout=args.holdout))
    rows = run_suite(
        suite,
        out,
        device=_device(args.device),
        backend=args.backend,
        methods=args.methods,
        cases=args.cases,
        progress=not args.quiet,
        resume=args.resume,
    )
    print(markdown_table(rows, suite.tll_patch))
    print(f"{len(rows)} rows in {time.perf_counter() - started:.0f} s; tables and plots in {out}")


# the options of _add_scan_arguments that go to dip_uq.io.read_scan as they are
_READ_OPTIONS = (
    "geometry",
    "format",
    "angles",
    "angle_unit",
    "geometry_kind",
    "pixel_size",
    "source_origin",
    "origin_detector",
    "dataset",
    "tilt_axis",
    "tilt_axis_offset",
    "log",
    "scale",
    "normalised",
    "flats",
    "darks",
)


def _read_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`dip_uq.io.read_scan` that the command line sets."""
    return {name: getattr(args, name) for name in _READ_OPTIONS}


# the subcommands of build_parser, by name
COMMANDS = {
    "demo": demo,
    "simulate": simulate,
    "info": info,
    "reconstruct": reconstruct,
    "evaluate": evaluate,
}


def _warning_line(warning: Warning) -> str:
    """One line for a warning; a :class:`~dip_uq.diagnostics.NotConvergedWarning` names the
    option of this command that sets what it asks to raise (``cg_iterations`` →
    ``--cg-iterations``)."""
    if isinstance(warning, NotConvergedWarning) and warning.setting is not None:
        return f"{warning.message}: raise --{warning.setting.replace('_', '-')}"
    return str(warning)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` while a command runs: one line on stderr, no source line."""
    print(f"dip-uq: warning: {_warning_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``dip-uq``; returns the exit status."""
    try:
        args = parse(argv)
    except UserError as error:
        print(f"dip-uq: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        with warnings.catch_warnings():  # for this command only: main() may run in a notebook
            warnings.showwarning = _show_warning
            COMMANDS[args.command](args)
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
