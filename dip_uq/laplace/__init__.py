"""Linearised Laplace uncertainty of a deep-image-prior reconstruction.

The network is linearised around its fitted weights, with a Gaussian prior over its
convolution weights and Gaussian noise on the sinogram; the image posterior is then
Gaussian. :class:`LinearisedLaplace` draws exact samples of it by solving one linear system
per sample, gives per-voxel standard deviations from them and fits the prior (and noise)
variances by sample-based EM. The modules:

* :mod:`~dip_uq.laplace.posterior` — :class:`LinearisedLaplace`: the whitened linear
  system, samples, std, mode, dense references;
* :mod:`~dip_uq.laplace.em` — the sample-based EM behind
  :meth:`LinearisedLaplace.fit_hyperparameters`;
* :mod:`~dip_uq.laplace.moments` — :class:`Moments`, merged exactly, accumulated over
  checkpointed batches of samples;
* :mod:`~dip_uq.laplace.linearised` — :class:`LinearisedNetwork`, the Jacobian products;
* :mod:`~dip_uq.laplace.priors` — :class:`MaternPrior`, the block-wise Matérn-½ prior;
* :mod:`~dip_uq.laplace.gprior` — the g-prior's per-weight scale of that prior;
* :mod:`~dip_uq.laplace.solvers` — :class:`SolverConfig`, batched CG and SGD;
* :mod:`~dip_uq.laplace.preconditioner` — :class:`NystromPreconditioner` of the CG solves;
* :mod:`~dip_uq.laplace.predictive` — the posterior predictive of held-out projections;
* :mod:`~dip_uq.laplace.prior_scale` — the prior's scale chosen by their likelihood.

Several ``torchrun`` processes share the samples and EM through :mod:`dip_uq.distributed`.
"""

from . import prior_scale
from .linearised import LinearisedNetwork
from .moments import Moments
from .posterior import LinearisedLaplace
from .preconditioner import NystromPreconditioner
from .priors import MaternPrior, matern_half
from .solvers import Method, SolverConfig

__all__ = [
    "LinearisedLaplace",
    "LinearisedNetwork",
    "MaternPrior",
    "Method",
    "Moments",
    "NystromPreconditioner",
    "SolverConfig",
    "matern_half",
    "prior_scale",
]
