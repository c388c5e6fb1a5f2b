"""Every file a run writes: the reconstruction (HDF5, TIFF), ``run.json`` and ``report.png``.

:class:`Result` is what :func:`dip_uq.reconstruct` returns; :meth:`Result.save`
(:func:`write_results`) writes the outputs of :data:`OUTPUTS` for it, and the writers below
are its parts. Every file goes through
:func:`dip_uq.checkpoint.atomic_write`: an interrupted run never leaves a half-written result
and an existing file is replaced in one step.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import atomic_write
from .directions import DirectionalPower
from .version import __version__

if TYPE_CHECKING:
    from .geometry import Volume
    from .scan import Scan
    from .settings import Settings

__all__ = [
    "OUTPUTS",
    "Result",
    "save_report",
    "versions",
    "write_h5",
    "write_json",
    "write_results",
    "write_tiff",
]

# what write_results writes into its folder (std.tif only with a std map)
OUTPUTS = ("reconstruction.h5", "mean.tif", "std.tif", "report.png", "run.json")


@dataclass
class Result:
    """What a run produced; images are float32 NumPy arrays shaped like the volume.

    Attributes:
        mean: the reconstruction (the DIP, as ``settings.mean`` says, or the FBP for
            ``method="fbp"``), ``(y, x)`` or ``(z, y, x)``, attenuation per length unit.
        std: per-voxel posterior standard deviation in the same units, or None.
        fbp: the FBP/FDK reference.
        truth: the ground truth when the scan has one, else None.
        scores: PSNR/SSIM of FBP and mean; with a std and a truth also coverage, TLL and
            Spearman(std, |error|) (:func:`dip_uq.pipeline.scores`).
        timings: seconds per stage.
        hyperparameters: the noise and prior variances the Laplace used (after EM), and the
            prior-scale search.
        curves: per-iteration records for the report: DIP loss, EM history.
        holdout: the held-out projections' scores (``settings.holdout``), else empty.
        backend: the projector backend the run used (``"auto"`` resolved).
        scan, volume, settings: what the run was given (recorded by :meth:`save`).
        run_info: device, projector backend, threads and processes of the run, and for the
            linearised Laplace the CG solves (``solves``: of EM and of the std map, each
            solve's ``rows``, ``iterations``, ``worst_residual`` and ``preconditioner_rank``;
            the prior-scale search's are in ``hyperparameters``).
        samples: the std map's posterior deviations ``(samples, *volume)`` when asked for
            (``keep_samples``), else None.
        directions: for a scan with a missing wedge of Fourier directions, the std map's
            posterior deviations' power per direction against it
            (:class:`dip_uq.directions.DirectionalPower`), else None.
    """

    mean: np.ndarray
    std: np.ndarray | None
    fbp: np.ndarray
    truth: np.ndarray | None = None
    scores: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    holdout: dict[str, Any] = field(default_factory=dict)
    backend: str = ""
    scan: Scan | None = None
    volume: Volume | None = None
    settings: Settings | None = None
    run_info: dict[str, Any] = field(default_factory=dict)
    samples: torch.Tensor | None = None
    directions: DirectionalPower | None = None

    def save(
        self,
        folder: str | os.PathLike,
        *,
        title: str = "dip-uq",
        parameters: Mapping[str, Any] | None = None,
        run_info: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write what ``dip-uq reconstruct`` writes (:data:`OUTPUTS`) into ``folder``;
        returns the files written.

        ``title`` heads the report; ``parameters`` (the options as the user gave them) and
        ``run_info`` (e.g. the command line) are recorded beside the run's own; existing
        outputs are replaced only with ``overwrite`` (else a ``FileExistsError`` names them).
        """
        if self.scan is None or self.volume is None or self.settings is None:
            raise ValueError("this Result does not record its scan, volume and settings")
        out = Path(folder)
        existing = [n for n in OUTPUTS if (out / n).exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"{out} already holds {', '.join(existing)}; pass overwrite=True to replace "
                "them or choose another folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        return write_results(
            out,
            self,
            self.scan,
            self.volume,
            self.settings,
            title=title,
            parameters=parameters or {},
            run_info={**(run_info or {}), "versions": versions(), **self.run_info},
        )


def versions() -> dict[str, str]:
    """Versions recorded in run.json: dip-uq, torch, Python and ASTRA (when importable)."""
    found = {
        "dip_uq": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import astra

        found["astra"] = astra.__version__
    except ImportError:
        pass
    return found


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (numpy scalars and arrays become numbers and lists)."""

    def default(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot write {type(value).__name__} to JSON")

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=default) + "\n")


def write_h5(
    path: str | os.PathLike,
    datasets: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write float arrays as HDF5 datasets; ``attrs`` (JSON-able values) go on the root.

    Nested values (dicts, lists) are stored as JSON strings so they survive any HDF5 reader.
    """
    import h5py

    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        for name, array in datasets.items():
            f.create_dataset(name, data=np.asarray(array), compression="gzip")
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def write_tiff(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a float32 image (2D) or stack (3D, one page per z slice) as TIFF."""
    import tifffile

    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(array, dtype=np.float32))


def _central_slices(array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if array.ndim == 2:
        return [("", array)]
    z, y, x = (n // 2 for n in array.shape)
    return [(" (z slice)", array[z]), (" (y slice)", array[:, y]), (" (x slice)", array[:, :, x])]


def save_report(
    path: str | os.PathLike,
    images: Mapping[str, np.ndarray],
    title: str = "",
    curves: Mapping[str, np.ndarray | Mapping[str, np.ndarray]] | None = None,
    calibration: Mapping[str, np.ndarray] | None = None,
    holdout_curve: tuple[np.ndarray, np.ndarray] | None = None,
    prior_scale_search: Mapping[str, Any] | None = None,
    directions: DirectionalPower | None = None,
) -> None:
    """A PNG with one panel per image (three central slices each for volumes) plus plots.

    Args:
        path: the PNG to write.
        images: panel title -> image ``(ny, nx)`` or volume ``(nz, ny, nx)``; images whose title
            starts with ``"error"``, ``"|error|"`` or ``"std"`` get a sequential colour map,
            others grey.
        title: figure title.
        curves: optional panel title -> 1D array (e.g. loss per iteration) or a mapping of
            line labels to 1D arrays (several lines in one panel), drawn on a log scale.
        calibration: optional ``mean``, ``std`` and ``truth`` arrays: adds the calibration
            curve (expected vs observed coverage of central intervals) and the reliability
            plot (RMSE of the error vs the std, binned by std).
        holdout_curve: optional ``(expected, observed)`` coverage of the held-out
            projections' predictive intervals (:mod:`dip_uq.holdout`): one more panel.
        prior_scale_search: optional search of the prior's scale (run.json's
            ``prior_scale_search``: ``factors``, ``tll_per_pixel``, ``chosen_factor``): the
            held-out log-likelihood against the factor, the chosen one marked.
        directions: optional posterior samples' power per Fourier direction against the
            scan's missing wedge (shaded); with ``calibration`` also the error's.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import calibration_curve
    from .plots import calibration_plot, directions_plot, reliability_plot

    curves = dict(curves or {})
    plots = len(curves) + (2 if calibration is not None else 0) + (holdout_curve is not None)
    plots += (prior_scale_search is not None) + (directions is not None)
    rows = [(name, slab) for name, image in images.items() for slab in _central_slices(image)]
    n_slices = len(_central_slices(next(iter(images.values()))))
    n_images = len(images)
    n_rows = n_slices + (1 if plots else 0)
    n_cols = max(n_images, plots, 1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 3.2 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, (name, (suffix, slab)) in enumerate(rows):
        ax = axes[k % n_slices, k // n_slices]
        sequential = name.lower().startswith(("error", "std", "|error|"))
        shown = ax.imshow(slab, cmap="magma" if sequential else "gray")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name + suffix, fontsize=9)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
    plot_axes = iter(axes[-1])
    for name, values in curves.items():
        ax = next(plot_axes)
        ax.set_axis_on()
        lines = values if isinstance(values, Mapping) else {"": values}
        for label, line in lines.items():
            ax.semilogy(np.asarray(line), label=label or None)
        if len(lines) > 1:
            ax.legend(fontsize=5, ncol=1 + len(lines) // 7, framealpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration" if "EM" not in name else "EM step")
    if calibration is not None:
        mean, std, truth = (np.asarray(calibration[k]) for k in ("mean", "std", "truth"))
        ax = next(plot_axes)
        ax.set_axis_on()
        calibration_plot(ax, *calibration_curve(mean, std, truth))
        ax.set_title("calibration", fontsize=9)
        ax = next(plot_axes)
        ax.set_axis_on()
        reliability_plot(ax, std, np.abs(mean - truth))
        ax.set_title("reliability", fontsize=9)
    if holdout_curve is not None:
        ax = next(plot_axes)
        ax.set_axis_on()
        calibration_plot(ax, *holdout_curve)
        ax.set_title("held-out projections", fontsize=9)
    if prior_scale_search is not None:
        ax = next(plot_axes)
        ax.set_axis_on()
        search = prior_scale_search
        ax.semilogx(search["factors"], search["tll_per_pixel"], "o-")
        ax.axvline(search["chosen_factor"], color="grey", linestyle="--", label="chosen")
        ax.legend(fontsize=7)
        ax.set_xlabel("factor on the weights' prior scale")
        ax.set_ylabel("held-out TLL (nats/pixel)")
        ax.set_title("prior scale search", fontsize=9)
    if directions is not None:
        error = None
        if calibration is not None:
            error = np.asarray(calibration["mean"]) - np.asarray(calibration["truth"])
        ax = next(plot_axes)
        ax.set_axis_on()
        directions_plot(ax, directions, error)
        ax.set_title("missing wedge", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_results(
    out: str | os.PathLike,
    result: Result,
    scan: Scan,
    volume: Volume,
    settings: Settings,
    *,
    title: str,
    parameters: Mapping[str, Any],
    run_info: Mapping[str, Any],
) -> list[Path]:
    """Write the outputs of a pipeline run into the folder ``out``; returns the files written.

    Args:
        out: the folder (created).
        result: what :func:`dip_uq.reconstruct` returned.
        scan: the scan it ran on (its geometry and notes are recorded).
        volume: the reconstruction grid (recorded).
        settings: the pipeline settings it ran with (recorded).
        title: first line of the report's title; the scores follow on a second line.
        parameters: the options as the user gave them (recorded in both files).
        run_info: what ``run.json`` records about the run before its parameters (command,
            versions, device, projector backend, threads, processes).

    ``reconstruction.h5`` holds ``mean``, ``fbp`` and, where known, ``std`` and ``truth``
    (float32, shaped like the volume, attenuation per length unit) with the volume, geometry,
    parameters, settings and notes as root attributes; ``mean.tif``/``std.tif`` the same
    images; ``report.png`` the images, the curves and, with a truth and a std, the calibration
    and reliability plots (and the held-out projections' calibration curve); ``run.json`` the
    settings, seeds, timings, scores, fitted hyperparameters and held-out scores.
    """
    out = Path(out)
    dip = settings.method == "dip"
    datasets = {"mean": result.mean, "fbp": result.fbp}
    images = {} if result.truth is None else {"truth": result.truth}
    images[f"FBP ({settings.fbp_filter})"] = result.fbp
    if dip:
        images["DIP mean"] = result.mean
    if result.std is not None:
        datasets["std"] = result.std
        images["std"] = result.std
    if result.truth is not None:
        datasets["truth"] = result.truth
        images["|error| " + ("DIP" if dip else "FBP")] = np.abs(result.mean - result.truth)
    record = {
        "parameters": dict(parameters),
        "settings": asdict(settings),
    }
    written = [out / "reconstruction.h5", out / "mean.tif"]
    write_h5(
        written[0],
        datasets,
        {
            "volume": volume.to_dict(),
            "geometry": scan.geometry.to_dict(),
            **record,
            "notes": scan.notes,
        },
    )
    write_tiff(written[1], result.mean)
    if result.std is not None:
        written.append(out / "std.tif")
        write_tiff(written[-1], result.std)
    headline = ", ".join(f"{k} {v:.3g}" for k, v in result.scores.items())
    calibration = None
    if result.std is not None and result.truth is not None:
        calibration = {"mean": result.mean, "std": result.std, "truth": result.truth}
    written.append(out / "report.png")
    holdout_curve = None
    if result.holdout:
        curve = result.holdout["calibration_curve"]
        holdout_curve = (np.asarray(curve["expected"]), np.asarray(curve["observed"]))
    save_report(
        written[-1],
        images,
        title=title + (f"\n{headline}" if headline else ""),
        curves=result.curves,
        calibration=calibration,
        holdout_curve=holdout_curve,
        prior_scale_search=result.hyperparameters.get("prior_scale_search"),
        directions=result.directions,
    )
    written.append(out / "run.json")
    write_json(
        written[-1],
        {
            **run_info,
            **record,
            "seeds": {"network_and_samples": settings.seed},
            "timings": result.timings,
            "scores": result.scores,
            "hyperparameters": result.hyperparameters,
            "holdout": result.holdout,
            "directions": None if result.directions is None else result.directions.to_dict(),
            "notes": scan.notes,
        },
    )
    return written
