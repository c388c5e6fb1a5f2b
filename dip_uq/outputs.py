"""Writing results: atomic files (HDF5, TIFF, JSON, PNG) and the report figure.

Every writer goes through :func:`atomic_write`: the file is written under a temporary name in
the same folder and renamed into place, so an interrupted run never leaves a half-written
result and an existing file is replaced in one step.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "save_report", "write_h5", "write_json", "write_tiff"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import calibration_curve
    from .plots import calibration_plot, reliability_plot

    curves = dict(curves or {})
    plots = len(curves) + (2 if calibration is not None else 0)
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
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
