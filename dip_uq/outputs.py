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
    curves: Mapping[str, np.ndarray] | None = None,
) -> None:
    """A PNG with one panel per image (three central slices each for volumes) plus curves.

    Args:
        path: the PNG to write.
        images: panel title -> image ``(ny, nx)`` or volume ``(nz, ny, nx)``; images whose title
            starts with ``"error"`` or ``"std"`` get a sequential colour map, others grey.
        title: figure title.
        curves: optional title -> 1D array (e.g. loss per iteration), drawn on a log scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = curves or {}
    rows = [(name, slab) for name, image in images.items() for slab in _central_slices(image)]
    n_slices = len(_central_slices(next(iter(images.values()))))
    n_images = len(images)
    n_rows = n_slices + (1 if curves else 0)
    fig, axes = plt.subplots(
        n_rows, max(n_images, len(curves), 1), figsize=(3.2 * n_images, 3.2 * n_rows), squeeze=False
    )
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
    for k, (name, values) in enumerate(curves.items()):
        ax = axes[-1, k]
        ax.set_axis_on()
        ax.semilogy(np.asarray(values))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
