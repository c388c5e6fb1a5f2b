"""dip-uq: deep-image-prior tomographic reconstruction with per-voxel uncertainty.

What a notebook needs, in the order of the pipeline::

    Volume, ParallelBeam, FanBeam, ConeBeam, VectorGeometry   the grid and the scan geometry
    read_scan, Scan, default_volume, simulate_scan           scans: real files, simulations
    RayTransform, Operator, fbp                              the forward model, its inverse
    UNet, DIP, pretrain, tv_reconstruct                      reconstructors
    LinearisedLaplace, SolverConfig                          the posterior and its std map
    reconstruct, Result                                      the method of `dip-uq reconstruct`
    metrics, plots, baselines                                scores, their plots; MC dropout, SGLD
    directions                                               a scan's missing wedge of directions

Modules keep their own names (``dip_uq.simulation``, ``dip_uq.pretraining``,
``dip_uq.projector.analytic``), so no function here hides a module.
"""

from . import baselines, directions, io, metrics, phantoms, pipeline, plots
from .diagnostics import NotConvergedWarning
from .dip import DIP
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
from .io import read_scan
from .laplace import LinearisedLaplace, SolverConfig
from .networks import UNet
from .outputs import Result
from .pipeline import reconstruct
from .pretraining import pretrain
from .projector import Operator, RayTransform, fbp
from .scan import Scan, default_volume
from .simulation import noise_sigma, simulate, simulate_scan
from .tv import tv_reconstruct
from .version import __version__

__all__ = [
    "DIP",
    "ConeBeam",
    "FanBeam",
    "Geometry",
    "LinearisedLaplace",
    "NotConvergedWarning",
    "Operator",
    "ParallelBeam",
    "RayTransform",
    "Result",
    "Scan",
    "SolverConfig",
    "UNet",
    "VectorGeometry",
    "Volume",
    "__version__",
    "baselines",
    "default_volume",
    "directions",
    "fbp",
    "geometry_from_astra",
    "geometry_from_dict",
    "io",
    "metrics",
    "noise_sigma",
    "phantoms",
    "pipeline",
    "plots",
    "pretrain",
    "read_scan",
    "reconstruct",
    "simulate",
    "simulate_scan",
    "tv_reconstruct",
]
