"""dip-uq: deep-image-prior tomographic reconstruction with per-voxel uncertainty."""

from . import baselines, metrics, phantoms, plots
from .dip import DIP
from .projector import fbp
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
from .laplace import LinearisedLaplace
from .networks import UNet
from .pretraining import pretrain
from .projector import RayTransform
from .simulation import noise_sigma, simulate

__version__ = "0.1.0"

__all__ = [
    "DIP",
    "ConeBeam",
    "FanBeam",
    "Geometry",
    "LinearisedLaplace",
    "ParallelBeam",
    "RayTransform",
    "UNet",
    "VectorGeometry",
    "Volume",
    "__version__",
    "baselines",
    "fbp",
    "geometry_from_astra",
    "geometry_from_dict",
    "metrics",
    "noise_sigma",
    "phantoms",
    "plots",
    "pretrain",
    "simulate",
]
