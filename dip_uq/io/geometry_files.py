"""Scan geometries from files: dip-uq's ``to_dict`` JSON and ASTRA vector text files.

The readers of formats that do not record a geometry (TIFF, NumPy, generic .mat arrays) and
the ``geometry=`` override of the others go through :func:`load_geometry`; a vector file does
not record the detector shape, so the readers pass the data's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Geometry, Volume, geometry_from_astra, geometry_from_dict

__all__ = ["load_geometry"]

# what a geometry may be given as: an object, a to_dict dictionary, or a file of either kind
GeometrySource = Geometry | dict | str | Path

# how to give a geometry to a file that lacks one (readers append it to their messages)
GEOMETRY_HINT = (
    "pass --geometry geom.json (the to_dict format of dip_uq.geometry) or an ASTRA vector file"
)


def load_geometry(
    source: GeometrySource,
    *,
    kind: str | None = None,
    det_shape: Sequence[int] | None = None,
) -> Geometry:
    """A geometry from an object, a ``to_dict`` dictionary, a JSON file or an ASTRA vector file.

    Args:
        source: a :class:`Geometry` (returned as is), a dictionary in the ``to_dict`` format,
            a ``.json`` file holding one, or a text file of ASTRA vectors (``np.loadtxt``): one
            line per projection, 12 columns ``(s, d, u, v)`` for ``parallel3d_vec``/``cone_vec``
            or 6 columns ``(s, d, u)`` for ``parallel_vec``/``fanflat_vec``, in ASTRA's
            conventions (2D vectors are mirrored in ``y`` like :func:`geometry_from_astra`).
        kind: ``"parallel"`` or ``"cone"`` (``"fan"``) for a vector file; inferred when None:
            parallel if every first vector has unit length (a ray direction), else cone.
        det_shape: the detector ``(rows, cols)`` or ``(cols,)`` for a vector file, which does
            not record it (the readers take it from the data).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable content, wrong number of columns, a volume instead of a
            geometry, a missing ``det_shape``.
    """
    return read_geometry(source, kind=kind, det_shape=det_shape)[0]


def read_geometry(
    source: GeometrySource,
    *,
    kind: str | None = None,
    det_shape: Sequence[int] | None = None,
) -> tuple[Geometry, str | None]:
    """:func:`load_geometry` plus a note on where the geometry came from (None for objects)."""
    if isinstance(source, Geometry):
        return source, None
    if isinstance(source, dict):
        return geometry_from_description(source, "the geometry dictionary"), None
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such geometry file")
    text = path.read_text(errors="replace")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            description = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name}: not valid JSON ({error})") from None
        return geometry_from_description(description, path.name), f"geometry from {path.name}"
    try:
        vectors = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except ValueError as error:
        raise ValueError(
            f"{path.name}: neither JSON nor a table of numbers ({error}); a geometry file is a "
            "to_dict JSON or an ASTRA vector text file"
        ) from None
    if vectors.shape[1] not in (6, 12):
        raise ValueError(
            f"{path.name}: {vectors.shape[1]} columns; an ASTRA vector file has 12 (3D: "
            "source/ray, detector centre, u, v) or 6 (2D) per line"
        )
    if det_shape is None:
        raise ValueError(
            f"{path.name}: a vector file does not record the detector shape; pass det_shape"
        )
    det = tuple(int(n) for n in det_shape)
    dims = 2 if vectors.shape[1] == 6 else 3
    if dims == 3 and len(det) == 1:
        det = (1, *det)
    if dims == 2 and len(det) == 2 and det[0] == 1:
        det = det[1:]
    if len(det) != dims - 1:
        raise ValueError(
            f"{path.name}: {vectors.shape[1]}-column vectors describe a {dims}D scan but the data "
            f"have detector shape {det}"
        )
    inferred = kind is None
    if kind is None:
        norms = np.linalg.norm(vectors[:, :dims], axis=1)
        kind = "parallel" if np.allclose(norms, 1.0, rtol=0, atol=1e-6) else "cone"
    kind = {"fan": "cone", "fanflat": "cone"}.get(kind, kind)
    if kind not in ("parallel", "cone"):
        raise ValueError(f"geometry_kind must be 'parallel' or 'cone', got {kind!r}")
    if dims == 3:
        astra_type = "parallel3d_vec" if kind == "parallel" else "cone_vec"
        proj = {"DetectorRowCount": det[0], "DetectorColCount": det[1]}
    else:
        astra_type = "parallel_vec" if kind == "parallel" else "fanflat_vec"
        proj = {"DetectorCount": det[0]}
    geometry = geometry_from_astra({"type": astra_type, "Vectors": vectors, **proj})
    how = "inferred from the vector lengths" if inferred else "as given"
    return geometry, f"geometry from the ASTRA vector file {path.name} ({astra_type}, {how})"


def geometry_from_description(description: Any, where: str) -> Geometry:
    """The geometry a ``to_dict`` dictionary describes; ``where`` names its source in errors."""
    if not isinstance(description, dict):
        raise ValueError(f"{where}: a geometry description must be a JSON object")
    try:
        result = geometry_from_dict(description)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if isinstance(result, Volume):
        raise ValueError(f"{where}: describes a volume, not a scan geometry")
    return result
