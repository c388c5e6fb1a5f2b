"""Reading real scans, preprocessing them, and writing dip-uq's own NXtomo files.

* :func:`read_scan` — any supported file (NXtomo/NeXus incl. Diamond, APS Data Exchange,
  MATLAB .mat v5/v7.3 incl. HTC2022, TIFF stacks, .npy/.npz) to a :class:`Scan` of line
  integrals with its geometry; :func:`load_geometry` reads geometry files.
* :func:`preprocess` — rows, centre of rotation (given or ``"auto"``), column crop, binning,
  angle subsampling; :func:`estimate_rotation_center` alone.
* :func:`default_volume` — a reconstruction grid covering the field of view.
* :func:`describe` — the human summary ``dip-uq info`` prints.
* :func:`write_nxtomo` — simulated scans (with their truth) as NXtomo files.

Layouts follow :mod:`dip_uq.geometry`: sinograms ``(angles, cols)`` / ``(angles, rows, cols)``,
volumes ``(z, y, x)``, lengths in the scan's :attr:`Scan.units`.
"""

from .nxtomo import write_nxtomo
from .preprocess import estimate_rotation_center, preprocess, select_rows
from .readers import FORMATS, detect_format, load_geometry, read_scan
from .scan import Scan, default_volume, describe, flat_dark_correct

__all__ = [
    "FORMATS",
    "Scan",
    "default_volume",
    "describe",
    "detect_format",
    "estimate_rotation_center",
    "flat_dark_correct",
    "load_geometry",
    "preprocess",
    "read_scan",
    "select_rows",
    "write_nxtomo",
]
