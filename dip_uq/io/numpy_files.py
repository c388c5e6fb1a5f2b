"""NumPy ``.npy`` and ``.npz`` files as arrays, without pickles, with a one-line error when a
file is truncated.

Turning them into a :class:`~dip_uq.scan.Scan` with a geometry is :mod:`dip_uq.io.arrays`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def npy_array(path: Path) -> np.ndarray:
    """The array in a ``.npy`` file."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path.name}: cannot read the .npy file ({error}); truncated?") from None


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array in a ``.npz`` archive, by name."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path.name}: cannot read the .npz file ({error}); truncated?") from None
