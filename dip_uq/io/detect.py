"""Which format a scan file or folder is in, from its content rather than its name.

=================  ===========================================================================
format             recognised by
=================  ===========================================================================
``nxtomo``         HDF5 with a NeXus entry (``NX_class=NXentry`` or ``/entry``): NXtomo,
                   Diamond NeXus and dip-uq's own files
``dxchange``       HDF5 with ``/exchange/data`` (APS Data Exchange)
``mat``            the ``MATLAB`` header (v5; v7.3 is HDF5 after a 512-byte header), HDF5
                   whose objects carry ``MATLAB_class``, or a ``.mat`` name
``tiff``           a folder of ``.tif``/``.tiff`` files or the TIFF/BigTIFF signature
``npy`` / ``npz``  the NumPy signature / a zip archive
``mrc``            ``MAP`` at byte 208 (MRC2014), or an MRC name (``.mrc``, ``.mrcs``, ``.st``,
                   ``.ali``, ``.preali``) for older files without it
``txrm``           the OLE2 compound-file signature (Zeiss Xradia ``.txrm`` / ``.txm``)
``hspy``           HDF5 with the root attribute ``file_format = "HyperSpy"`` or an
                   ``Experiments`` group (HyperSpy/etspy ``.hspy``)
=================  ===========================================================================
"""

from __future__ import annotations

from pathlib import Path

from .hdf5 import is_hdf5, nx_class, open_h5
from .hyperspy import is_hyperspy
from .mrc import MRC_SUFFIXES
from .tiff import TIFF_MAGICS, tiff_files
from .xradia import OLE_MAGIC

__all__ = ["FORMATS", "detect_format"]

FORMATS = ("nxtomo", "dxchange", "mat", "tiff", "npy", "npz", "mrc", "txrm", "hspy")


def file_head(path: Path, n: int = 4096) -> bytes:
    """The first ``n`` bytes of a file (where every signature above sits)."""
    with open(path, "rb") as fh:
        return fh.read(n)


def detect_format(path: str | Path) -> str:
    """The format of a scan file or folder, from its content (one of :data:`FORMATS`).

    HDF5 files are told apart by their datasets (Data Exchange, MATLAB 7.3, NeXus); a folder is
    a TIFF stack. Raises FileNotFoundError when nothing is there and ValueError for unknown or
    unreadable content.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        if not tiff_files(path):
            raise ValueError(
                f"{path}: the folder holds no .tif/.tiff files; a folder is read as a TIFF "
                "stack (one projection per file)"
            )
        return "tiff"
    head = file_head(path)
    if not head:
        raise ValueError(f"{path.name}: the file is empty")
    if head.startswith(b"MATLAB 7.3") or is_hdf5(head):
        return detect_hdf5(path)
    if head.startswith(b"MATLAB") or path.suffix.lower() == ".mat":
        return "mat"
    if head.startswith(TIFF_MAGICS):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if head.startswith(OLE_MAGIC):
        return "txrm"
    if head[208:212] == b"MAP " or path.suffix.lower() in MRC_SUFFIXES:
        return "mrc"
    raise ValueError(
        f"{path.name}: unknown scan format (first bytes {head[:8]!r}); dip-uq reads NeXus/NXtomo "
        "and Data Exchange HDF5, MATLAB .mat, TIFF stacks, .npy/.npz, MRC tilt series, "
        "HyperSpy .hspy and Xradia .txrm/.txm"
    )


def detect_hdf5(path: Path) -> str:
    """``"mat"``, ``"dxchange"``, ``"hspy"`` or ``"nxtomo"`` for an HDF5 file; ValueError for
    another layout."""
    if file_head(path, 16).startswith(b"MATLAB 7.3"):
        return "mat"
    with open_h5(path) as f:
        if "exchange" in f and "data" in f["exchange"]:
            return "dxchange"
        if is_hyperspy(f):
            return "hspy"
        for key in f:
            obj = f.get(key, getlink=False)
            if obj is not None and "MATLAB_class" in obj.attrs:
                return "mat"
        if any(nx_class(f.get(k)) == "NXentry" for k in f) or "entry" in f:
            return "nxtomo"
    raise ValueError(
        f"{path.name}: an HDF5 file with neither a NeXus entry, /exchange/data nor HyperSpy's "
        "/Experiments; dip-uq reads NXtomo/NeXus, Data Exchange and HyperSpy layouts"
    )
