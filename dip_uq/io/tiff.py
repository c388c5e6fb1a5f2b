"""TIFF images as arrays: a folder of TIFF files (one projection each, in natural name order:
``p_2`` before ``p_10``) or one multi-page TIFF.

The arrays are what the files hold (raw counts or line integrals, any dtype); turning them
into a :class:`~dip_uq.scan.Scan` with the caller's geometry is :mod:`dip_uq.io.arrays`.
"""

from __future__ import annotations

import re
from pathlib import Path
from struct import error as struct_error
from typing import Any

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF and BigTIFF, both byte orders


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def tiff_files(folder: Path) -> list[Path]:
    """The ``.tif``/``.tiff`` files in ``folder``, in natural name order."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()]
    return sorted(files, key=_natural_key)


def tiff_array(path: Path) -> np.ndarray:
    """The images of a TIFF folder stacked ``(n_files, *image)``, or a TIFF file's pages.

    Raises:
        ValueError: no TIFF files in the folder, images of different sizes, or a truncated
            or damaged file.
    """
    import tifffile

    try:
        if path.is_dir():
            files = tiff_files(path)
            if not files:
                raise ValueError(f"{path}: the folder holds no .tif/.tiff files")
            first = tifffile.imread(files[0])
            stack = np.empty((len(files), *first.shape), dtype=first.dtype)
            stack[0] = first
            for k, file in enumerate(files[1:], start=1):
                image = tifffile.imread(file)
                if image.shape != first.shape:
                    raise ValueError(
                        f"{file.name}: image of shape {image.shape}, but {files[0].name} has "
                        f"{first.shape}; every projection must have the same size"
                    )
                stack[k] = image
            return stack
        return np.asarray(tifffile.imread(path))
    except (tifffile.TiffFileError, OSError, struct_error) as error:
        raise ValueError(
            f"{path.name}: cannot read the TIFF ({error}); truncated or damaged"
        ) from None
