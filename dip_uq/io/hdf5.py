"""Reading HDF5 files defensively: the signature, opening with a one-line error, attributes as
``str``, links that may be broken (Diamond's external files) and scalar fields with units.

Every HDF5-based reader (NeXus, Data Exchange, MATLAB v7.3) goes through these, so a damaged
file or a missing external link gives the same message whatever the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(head: bytes) -> bool:
    """Whether the HDF5 signature is at offset 0 or after a user block (512, 1024, 2048)."""
    return any(head[k : k + 8] == HDF5_MAGIC for k in (0, 512, 1024, 2048))


def open_h5(path: Path) -> Any:
    """``h5py.File(path, "r")``; ValueError (one line) when the file is truncated or damaged."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        reason = str(error).split("(")[-1].rstrip(")") if "(" in str(error) else str(error)
        raise ValueError(
            f"{path.name}: cannot read the HDF5 file ({reason}); it is truncated or damaged"
        ) from None


def nx_class(obj: Any) -> str | None:
    """The ``NX_class`` attribute of a group or dataset (None when absent or ``obj`` is None)."""
    if obj is None:
        return None
    value = obj.attrs.get("NX_class")
    return (
        value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)
    )


def attr_str(obj: Any, name: str) -> str | None:
    """Attribute ``name`` as a ``str`` (bytes decoded, first element of an array), or None."""
    value = obj.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    return value.decode() if isinstance(value, bytes) else str(value)


def as_str(value: Any) -> str:
    """A string dataset's value (bytes or a one-element array of them) as ``str``."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def safe_get(group: Any, name: str) -> tuple[Any, str | None]:
    """``group[name]`` or ``(None, reason)`` when it is absent or a broken (external) link."""
    import h5py

    try:
        link = group.get(name, getlink=True)
    except (KeyError, OSError, RuntimeError):
        return None, None
    if link is None:
        return None, None
    try:
        return group[name], None
    except (KeyError, OSError, RuntimeError):
        if isinstance(link, h5py.ExternalLink):
            return None, f"its external file {link.filename} is missing or unreadable"
        return None, "a broken link"


def read_scalar(group: Any, name: str) -> tuple[float, str | None] | None:
    """``(value, units attribute)`` of a numeric field ``group/name``; None when there is none."""
    ds, _ = safe_get(group, name)
    if ds is None or not hasattr(ds, "shape"):
        return None
    try:
        value = float(np.asarray(ds[()], dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return value, attr_str(ds, "units")
