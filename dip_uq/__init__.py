"""dip-uq: deep-image-prior tomographic reconstruction with per-voxel uncertainty."""

from .geometry import (
    ConeBeam,
    FanBeam,
    Geometry,
    ParallelBeam,
    VectorGeometry,
    Volume,
    geometry_from_astra,
    geometry_from_dict,
)
from .projector import RayTransform

__version__ = "0.1.0"

__all__ = [
    "ConeBeam",
    "FanBeam",
    "Geometry",
    "ParallelBeam",
    "RayTransform",
    "VectorGeometry",
    "Volume",
    "__version__",
    "geometry_from_astra",
    "geometry_from_dict",
]
