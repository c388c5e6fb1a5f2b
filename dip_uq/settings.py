"""What the pipeline runs: :class:`Settings`, the options of ``dip-uq reconstruct`` and
``dip-uq demo`` with their defaults, checked when they are made."""

from __future__ import annotations

from dataclasses import dataclass

from . import holdout
from .laplace import SolverConfig

__all__ = ["CROSS_VALIDATION_EVERY", "MEANS", "METHODS", "PRIOR_SCALES", "UQ_METHODS", "Settings"]

METHODS = ("fbp", "dip")
UQ_METHODS = ("laplace", "mcdropout", "sgld", "none")
PRIOR_SCALES = ("weights", "holdout", "cross-validated")
# prior_scale="cross-validated" holds out every K-th projection of its second fit
CROSS_VALIDATION_EVERY = 5
MEANS = ("linear", "network")


@dataclass
class Settings:
    """What the pipeline does; the defaults are those of ``dip-uq reconstruct``.

    Attributes:
        method: ``"fbp"`` (FBP/FDK only) or ``"dip"``.
        uq: for ``method="dip"``: ``"laplace"`` (linearised Laplace with EM), ``"mcdropout"``,
            ``"sgld"`` (:mod:`dip_uq.baselines`) or ``"none"``.
        iterations: DIP iterations; ``None``: the DIP's default from the noise level.
        channels: U-Net feature channels per scale; ``None``: the default for the dimension
            (32; :class:`dip_uq.UNet`). Smaller is much faster on a CPU.
        scales: U-Net resolutions; ``None``: the default for the grid.
        samples: posterior samples for the std map.
        em_steps: steps of sample-based EM (0: none), which fits the noise variance
            (``fit_noise``) and, with ``fit_prior``, the prior's scale. Two steps bring the DIP's
            estimate of the noise close to the true level (docs/calibration.md).
        em_samples: posterior samples per EM step; ``None``: ``samples``.
        cg_iterations: the most conjugate-gradient iterations per sampling solve (each
            stops at a relative residual of 1e-3).
        preconditioner_rank: rank of the Nyström preconditioner of those solves (0: none;
            ``None``: grown as the run needs it,
            :meth:`dip_uq.laplace.preconditioner.NystromSketch.choose_rank`).
        batch: samples solved together; ``None``: all at once. The samples do not depend
            on it (nor on the number of processes).
        per_block: let EM fit every block's prior variance on its own instead of one
            scale for all (see :meth:`dip_uq.LinearisedLaplace.fit_hyperparameters`).
        fit_noise: let EM fit the noise variance (default) from the DIP's estimate.
        fit_prior: let EM fit the prior's scale too (off: it made the std overconfident,
            see :mod:`dip_uq.laplace.em`).
        gprior: the g-prior (default; :mod:`dip_uq.laplace.gprior`,
            :class:`dip_uq.LinearisedLaplace`).
        mean: beside the Laplace std, ``"network"`` (default): the DIP's ``f(θ*)``;
            ``"linear"``: the linear model's posterior mean (:meth:`LinearisedLaplace.mean`).
        seed: seeds the network, the DIP input and the posterior samples.
        fbp_filter: filter of the reference FBP.
        holdout: 0 (default) or ``K >= 2``: every K-th projection is kept out of the fit,
            the EM and the posterior, and scored afterwards under the posterior predictive
            (:mod:`dip_uq.holdout`): a calibration check without a ground truth.
        prior_scale: ``"cross-validated"`` (default): after the DIP fitted to all
            projections and its EM, a second DIP fit leaves every
            :data:`CROSS_VALIDATION_EVERY`-th projection out (of a limited arc as many, half
            of them at its ends: :func:`dip_uq.holdout.cross_validation_indices`), and the
            factor on its weights' scale that those projections' predictive likelihood likes
            best (searched within :data:`dip_uq.holdout.PRIOR_SCALE_DECADES` by
            :func:`dip_uq.holdout.best_decade`, at EM's noise variance) is applied to the
            weights' scale of the first (a second DIP fit and 4-6 sets of ``em_samples``
            samples; the ``holdout`` check, if asked for, stays independent of it).
            ``"weights"``: the scale of the fitted weights (and EM's, with ``fit_prior``);
            ``"holdout"``: the search on this run's own held-out projections (needs
            ``holdout``; no longer an independent check).
    """

    method: str = "dip"
    uq: str = "laplace"
    iterations: int | None = None
    channels: int | None = None
    scales: int | None = None
    samples: int = 16
    em_steps: int = 2
    em_samples: int | None = 8
    cg_iterations: int = SolverConfig.iterations
    preconditioner_rank: int | None = SolverConfig.preconditioner_rank
    batch: int | None = None
    per_block: bool = False
    fit_noise: bool = True
    fit_prior: bool = False
    gprior: bool = True
    mean: str = "network"
    seed: int = 0
    fbp_filter: str = "hann"
    holdout: int = 0
    prior_scale: str = "cross-validated"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.uq not in UQ_METHODS:
            raise ValueError(f"unknown uq {self.uq!r}; use one of {', '.join(UQ_METHODS)}")
        # a std needs two samples, and so does an EM step's estimate of the spread
        for name in ("samples", "em_samples"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"{name} must be at least 2, got {value}")
        if self.em_steps < 0:
            raise ValueError(f"em_steps must be 0 or more, got {self.em_steps}")
        if self.holdout != 0:
            holdout.check_every(self.holdout)
        for name, known in (("prior_scale", PRIOR_SCALES), ("mean", MEANS)):
            if getattr(self, name) not in known:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; use one of {', '.join(known)}"
                )
        if self.prior_scale == "holdout" and not self.holdout:
            raise ValueError("prior_scale='holdout' needs held-out projections: set holdout=K")
        if self.prior_scale != "weights" and self.em_steps and self.fit_prior:
            raise ValueError(
                f"prior_scale={self.prior_scale!r} chooses the scale EM would fit: use fit_prior "
                "with prior_scale='weights'"
            )
        if self.mean == "linear" and (self.method, self.uq) != ("dip", "laplace"):
            raise ValueError("mean='linear' is the Laplace posterior's mean: it needs uq='laplace'")
        if self.em_steps and not (self.fit_noise or self.fit_prior):
            raise ValueError(
                "EM has nothing to fit: set fit_noise or fit_prior, or em_steps=0 for no EM"
            )
        self.solver_config()  # the solver settings are checked where they are defined

    @property
    def samples_per_step(self) -> int:
        """Posterior samples per EM step and per candidate of a prior-scale search:
        ``em_samples``, or ``samples`` where that is ``None``."""
        return self.em_samples or self.samples

    def solver_config(self) -> SolverConfig:
        """The :class:`~dip_uq.laplace.SolverConfig` of the sampling solves."""
        return SolverConfig(
            iterations=self.cg_iterations, preconditioner_rank=self.preconditioner_rank
        )
