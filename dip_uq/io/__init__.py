"""Reading real scans, preprocessing them, and writing dip-uq's own NXtomo files.

* :func:`read_scan` — any supported file (NXtomo/NeXus incl. Diamond, APS Data Exchange,
  MATLAB .mat v5/v7.3 incl. HTC2022, TIFF stacks, .npy/.npz, MRC and HyperSpy tilt series,
  Zeiss Xradia TXRM/TXM) to a :class:`~dip_uq.scan.Scan` of line integrals with its
  geometry; bare arrays take a geometry file or the angles, beam kind and distances;
  :func:`detect_format` alone;
  :func:`load_geometry` reads geometry files, :func:`read_angles` angle files and ranges.
* :func:`preprocess` — rows, centre of rotation (given or ``"auto"``), column crop, binning,
  angle subsampling; :func:`estimate_rotation_center` and :func:`select_rows` alone.
* :func:`flat_dark_correct` — raw frames to line integrals; :mod:`~dip_uq.io.values` — what
  the stored values are (flats from elsewhere, normalised, ``-log``, scaled), for every format.
* :func:`describe` — the human summary of a scan; :func:`describe_file` — what ``dip-uq info``
  prints, for every readable file.
* :func:`write_nxtomo` — simulated scans (with their truth) as NXtomo files.

The record itself and the default reconstruction grid are :mod:`dip_uq.scan`. Layouts follow
:mod:`dip_uq.geometry`: sinograms ``(angles, cols)`` / ``(angles, rows, cols)``, volumes
``(z, y, x)``, lengths in the scan's :attr:`~dip_uq.scan.Scan.units`.

Modules: :mod:`~dip_uq.io.read` (the dispatch) over one reader per format family —
:mod:`~dip_uq.io.nexus`, :mod:`~dip_uq.io.nxtomo` (dip-uq's own layout, read and write),
:mod:`~dip_uq.io.dxchange`, :mod:`~dip_uq.io.matlab`, :mod:`~dip_uq.io.arrays` (TIFF and
NumPy data with the caller's geometry), :mod:`~dip_uq.io.mrc` and :mod:`~dip_uq.io.hyperspy`
(electron tomography, through :mod:`~dip_uq.io.tilt_series`), :mod:`~dip_uq.io.xradia` (Zeiss
lab CT) — and what they share: :mod:`~dip_uq.io.values`, :mod:`~dip_uq.io.detect`,
:mod:`~dip_uq.io.geometry_files`, :mod:`~dip_uq.io.angles`, :mod:`~dip_uq.io.acquisition`
(geometry from angles and distances), :mod:`~dip_uq.io.flat_field`, :mod:`~dip_uq.io.rows`,
:mod:`~dip_uq.io.hdf5`, :mod:`~dip_uq.io.tiff`, :mod:`~dip_uq.io.numpy_files`,
:mod:`~dip_uq.io.units`; :mod:`~dip_uq.io.preprocess` and :mod:`~dip_uq.io.summary` work on
scans once read.
"""

from .angles import read_angles
from .detect import FORMATS, detect_format
from .flat_field import flat_dark_correct
from .geometry_files import load_geometry
from .nxtomo import write_nxtomo
from .preprocess import estimate_rotation_center, preprocess, select_rows
from .read import read_scan
from .summary import describe, describe_file

__all__ = [
    "FORMATS",
    "describe",
    "describe_file",
    "detect_format",
    "estimate_rotation_center",
    "flat_dark_correct",
    "load_geometry",
    "preprocess",
    "read_angles",
    "read_scan",
    "select_rows",
    "write_nxtomo",
]
