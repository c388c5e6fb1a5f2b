"""The stages of a run, one function each: the DIP fit, its linearisation, EM, the
cross-validated prior scale, and the baselines; :func:`dip_uq.pipeline.reconstruct` alone
puts them in order.

Each stage takes the run's :class:`~dip_uq.settings.Settings` and its :class:`RunContext`
(device, work folder, progress, process group); the ones that can be interrupted checkpoint
into the work folder and resume from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import baselines, holdout
from .checkpoint import load, save
from .diagnostics import warn_not_converged
from .dip import DIP
from .distributed import broadcast_params
from .laplace import LinearisedLaplace, em
from .laplace.prior_scale import choose_prior_scale
from .networks import UNet
from .projector import RayTransform
from .settings import CROSS_VALIDATION_EVERY, Settings

if TYPE_CHECKING:
    from .distributed import DistContext

__all__ = [
    "CROSS_VALIDATION",
    "CrossValidationFit",
    "RunContext",
    "build_network",
    "checkpoint_fingerprint",
    "cross_validate_prior_scale",
    "fit_baseline",
    "fit_cross_validation",
    "fit_dip",
    "fit_em",
    "hyperparameters",
    "linearise",
    "run_estimate",
    "saved_search",
    "share_fit",
]

CROSS_VALIDATION = "cross-validation"  # the folder of the cross-validated prior scale's fit
# the checkpoints' tags keep the module they were written by before the stages moved here,
# so that runs started before still resume
EM_CHECKPOINT = "dip_uq.pipeline EM checkpoint 1"
SEARCH_CHECKPOINT = "dip_uq.pipeline prior-scale search 1"
logger = logging.getLogger("dip_uq")
# DIP iterations timed before a run says how long it will take
PROBE_ITERATIONS = 20
# seconds: a run estimated to take longer names the options that shorten it
LONG_RUN_S = 1800.0
# the uncertainty stage (noise fit, cross-validated prior scale, std map) in units of the DIP
# stage before it, on the runs of docs/performance.md; far more on toy problems, whose fixed
# costs dominate
UNCERTAINTY_PER_DIP = (1.0, 4.0)


@dataclass
class RunContext:
    """Where and how a run's stages compute, the same for all of them.

    Attributes:
        device: where to compute.
        work_dir: the folder of the checkpoints; None: no checkpoints.
        progress: show progress bars (rank 0 only under ``torchrun``).
        group: the ``torchrun`` processes sharing the samples
            (:class:`dip_uq.distributed.DistContext`), or None for one process.
        notify: takes the lines that say what a run chose and how long it will take.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    work_dir: Path | None = None
    progress: bool = False
    group: DistContext | None = None
    notify: Callable[[str], None] = logger.info

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress (rank 0, or the only one)."""
        return self.group is None or self.group.is_main

    def file(self, name: str) -> Path | None:
        """``work_dir / name``, or None without a work folder."""
        return None if self.work_dir is None else self.work_dir / name


def build_network(shape: tuple[int, ...], settings: Settings) -> UNet:
    """The U-Net of every DIP fit of a run: ``UNet.default_for(shape)`` with the settings'
    ``channels`` and ``scales``, seeded with ``settings.seed``."""
    return UNet.default_for(
        shape, scales=settings.scales, channels=settings.channels, seed=settings.seed
    )


def fit_baseline(
    A: RayTransform,
    y: torch.Tensor,
    settings: Settings,
    ctx: RunContext | None = None,
) -> baselines.UQResult:
    """The MC-dropout or SGLD DIP of ``settings.uq`` (:mod:`dip_uq.baselines`) on ``y``,
    with the run's network, iterations, samples and seed."""
    ctx = ctx or RunContext()
    baseline = {"mcdropout": baselines.mc_dropout, "sgld": baselines.sgld}[settings.uq]
    return baseline(
        A,
        y,
        n_samples=settings.samples,
        iterations=settings.iterations,
        seed=settings.seed,
        device=ctx.device,
        progress=ctx.progress,
        network=build_network(A.volume.shape, settings),
    )


def fit_dip(
    A: RayTransform,
    y: torch.Tensor,
    settings: Settings,
    ctx: RunContext | None = None,
    *,
    checkpoint: Path | None = None,
    check: Callable[[], None] | None = None,
    estimate: bool = False,
) -> DIP:
    """Fit the deep image prior of a run to ``y`` (``A.range_shape``) and return it.

    ``checkpoint`` is the DIP's checkpoint file (resumed when present). With a process
    group rank 0 fits and the other ranks receive its fit (:func:`share_fit`). ``check`` is
    called after every iteration (to abort the fit, it raises). With ``estimate``, the run's
    time is estimated from the first :data:`PROBE_ITERATIONS` iterations and told
    (:func:`run_estimate`, through ``ctx.notify``).
    """
    ctx = ctx or RunContext()
    rec = DIP(
        A,
        iterations=settings.iterations,
        seed=settings.seed,
        device=ctx.device,
        progress=ctx.progress,
        network=build_network(A.volume.shape, settings),
        checkpoint=checkpoint if ctx.is_main else None,
    )
    probe = _Probe(ctx, settings) if estimate and ctx.is_main else None

    def callback(dip: DIP, iteration: int, _: dict[str, float]) -> None:
        if check is not None:
            check()
        if probe is not None:
            probe(dip, iteration)

    if ctx.is_main:
        rec.fit(y, callback=callback if check or probe else None)
    if ctx.group is not None:
        share_fit(rec, ctx.group)
    return rec


class _Probe:
    """Times the first :data:`PROBE_ITERATIONS` iterations of a fit (from where it starts,
    also when resumed) and then tells the run's estimate once."""

    def __init__(self, ctx: RunContext, settings: Settings) -> None:
        self.ctx, self.settings = ctx, settings
        self.start: tuple[int, float] | None = None
        self.done = False

    def __call__(self, dip: DIP, iteration: int) -> None:
        if self.done:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start = (iteration, now)
            return
        first, then = self.start
        if iteration - first >= PROBE_ITERATIONS or iteration + 1 >= dip.iterations:
            self.done = True
            per_iteration = (now - then) / max(iteration - first, 1)
            uncertainty = self.settings.uq == "laplace"
            self.ctx.notify(
                run_estimate(per_iteration, dip.iterations, self.ctx.device.type, uncertainty)
            )


def run_estimate(
    seconds_per_iteration: float, iterations: int, device: str, uncertainty: bool = True
) -> str:
    """One line: how long the DIP's ``iterations`` take at ``seconds_per_iteration``
    and, with the ``uncertainty`` stage after it, how long that usually takes
    (:data:`UNCERTAINTY_PER_DIP` times the DIP); where the run may take longer than
    :data:`LONG_RUN_S` it names the options that shorten it."""
    dip = seconds_per_iteration * iterations
    line = (
        f"estimate: the DIP's {iterations} iterations take about {_duration(dip)} on this "
        f"{device.upper()} ({seconds_per_iteration:.3g} s each)"
    )
    low, high = UNCERTAINTY_PER_DIP if uncertainty else (0.0, 0.0)
    if uncertainty:
        line += f"; the uncertainty stage after it usually {low:g}–{high:g} times that"
    if dip * (1 + high) > LONG_RUN_S:
        line += (
            ". That is long: a coarser grid (--size), binned detector pixels (--bin), fewer "
            "rows (--rows), a narrower network (--channels 16) or a CUDA GPU (--device cuda) "
            "shorten it"
        )
    return line


def _duration(seconds: float) -> str:
    """``seconds`` as a person says it: 40 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def share_fit(rec: DIP, group: DistContext, src: int = 0) -> None:
    """Give every rank of ``group`` the DIP fit of rank ``src``, so the DIP is fitted once.

    On ``src``, ``rec`` is fitted; on the other ranks it is a ``DIP`` built with the same
    arguments, and afterwards holds ``src``'s :meth:`~dip_uq.DIP.state_dict`.
    """
    if group.rank == src and rec.params_star is None:
        raise ValueError(f"rank {src} must fit the DIP (rec.fit(y)) before share_fit")
    state = broadcast_params(rec.state_dict() if group.rank == src else None, group, src)
    if group.rank != src:
        rec.load_state_dict(state)


def linearise(
    rec: DIP,
    y: torch.Tensor,
    settings: Settings,
    *,
    noise_variance: float | None = None,
    group: DistContext | None = None,
) -> LinearisedLaplace:
    """The linearised-Laplace posterior of a fitted DIP at its initial hyperparameters.

    ``y`` is the sinogram it was fitted to, given again because under ``torchrun`` only
    rank 0 fitted (and holds ``rec.y``); ``noise_variance``: ``σ_y²`` (default the DIP's
    estimate, see :class:`LinearisedLaplace`).
    """
    return LinearisedLaplace(
        rec,
        y=y,
        noise_variance=noise_variance,
        seed=settings.seed,
        solver=settings.solver_config(),
        group=group,
        gprior=settings.gprior,
    )


def fit_em(
    lap: LinearisedLaplace,
    settings: Settings,
    ctx: RunContext | None = None,
    *,
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """``settings.em_steps`` steps of sample-based EM on ``lap``, checkpointed after each into
    the work folder's ``em-checkpoint.pt``.

    One step per call of :meth:`LinearisedLaplace.fit_hyperparameters`, so that a resumed run
    (the checkpoint written by rank 0) repeats an uninterrupted one; ``fingerprint`` is what
    the checkpoint must match. Warns (:class:`~dip_uq.diagnostics.NotConvergedWarning`) when
    EM has not settled.
    """
    ctx = ctx or RunContext()
    from tqdm.auto import tqdm

    checkpoint = ctx.file("em-checkpoint.pt")
    done, fingerprint = 0, fingerprint or {}
    state = None if checkpoint is None else load(checkpoint, EM_CHECKPOINT, fingerprint)
    if state is not None:
        lap.load_state_dict(state["laplace"])
        done = state["em_steps_done"]
    steps = range(done, settings.em_steps)
    for step in tqdm(steps, desc="EM", disable=not ctx.progress or not steps):
        lap.fit_hyperparameters(
            1,
            settings.samples_per_step,
            batch=settings.batch,
            per_block=settings.per_block,
            fit_noise=settings.fit_noise,
            fit_prior=settings.fit_prior,
        )
        if checkpoint is not None and ctx.is_main:
            save(
                checkpoint,
                EM_CHECKPOINT,
                fingerprint,
                {"laplace": lap.state_dict(), "em_steps_done": step + 1},
            )
    unsettled = em.unsettled(lap.history)
    if unsettled and ctx.is_main:
        warn_not_converged(f"{unsettled}; the std may still be off", "em_steps")


def hyperparameters(
    lap: LinearisedLaplace, settings: Settings
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """The hyperparameters ``lap`` ended with (for ``run.json``) and, after EM, the history
    of what it fitted as report curves."""
    history = lap.history
    curves = {}
    if settings.em_steps:  # without EM the "curves" would be single points
        curves["EM noise variance σ_y²"] = {"σ_y²": np.asarray(history["noise_variance"])}
    if settings.em_steps and settings.fit_prior:  # else flat lines, before any scale factor
        curves["EM prior variances σ_b²"] = {
            name.split("/", 1)[1]: np.asarray(values)
            for name, values in history.items()
            if name.startswith("prior_variance/")
        }
    hyper = {
        "noise_variance": lap.noise_variance,
        "prior_variances": dict(lap.prior.variances),
        "history": {k: list(map(float, v)) for k, v in history.items()},
    }
    return hyper, curves


@dataclass
class CrossValidationFit:
    """The second DIP of the cross-validated prior scale, fitted to the kept projections.

    Attributes:
        rec: the DIP.
        data: the kept (``data.A``, ``data.y``) and held-out (``data.A_held``,
            ``data.y_held``) projections.
        held_out: where the held-out projections lie (:func:`holdout.cross_validation_indices`).
    """

    rec: DIP
    data: holdout.Data
    held_out: str


def _search_file(work_dir: Path | None) -> Path | None:
    """Where the prior-scale search of a run in ``work_dir`` is saved."""
    return None if work_dir is None else work_dir / CROSS_VALIDATION / "search.pt"


def saved_search(work_dir: Path | None) -> bool:
    """Whether ``work_dir`` holds a finished prior-scale search (which a resumed run reads)."""
    done = _search_file(work_dir)
    return done is not None and done.exists()


def fit_cross_validation(
    A: RayTransform,
    y: torch.Tensor,
    settings: Settings,
    ctx: RunContext | None = None,
    *,
    check: Callable[[], None] | None = None,
) -> CrossValidationFit:
    """Fit a DIP to all but every :data:`~dip_uq.settings.CROSS_VALIDATION_EVERY`-th
    projection of ``y`` (of a limited arc as many, half of them at its ends:
    :func:`dip_uq.holdout.cross_validation_indices`): the part of
    :func:`cross_validate_prior_scale` that needs neither the noise variance nor
    forward-mode AD (whose dual levels PyTorch keeps per process, not per thread), so that it
    can run beside the fit to all projections. ``check`` is called after every
    iteration (to abort, it raises); the DIP checkpoints into the work folder's
    :data:`CROSS_VALIDATION` folder.
    """
    ctx = ctx or RunContext()
    folder = ctx.file(CROSS_VALIDATION)
    if folder is not None and ctx.is_main:  # rank 0 alone writes
        folder.mkdir(parents=True, exist_ok=True)
    kept, held, where = holdout.cross_validation_indices(A.geometry, CROSS_VALIDATION_EVERY)
    data = holdout.split(A, y, kept, held)
    logger.info(
        "cross-validating the prior's scale: a DIP without %d of the %d projections",
        data.y_held.shape[0],
        y.shape[0],
    )
    rec = fit_dip(
        data.A,
        data.y,
        settings,
        ctx,
        checkpoint=None if folder is None else folder / "dip-checkpoint.pt",
        check=check,
    )
    return CrossValidationFit(rec, data, where)


def cross_validate_prior_scale(
    A: RayTransform,
    y: torch.Tensor,
    settings: Settings,
    ctx: RunContext | None = None,
    *,
    noise_variance: float,
    fitted: CrossValidationFit | None = None,
) -> dict[str, Any]:
    """The factor on the prior's scale that the projections a fit did not see like best.

    The second DIP (:func:`fit_cross_validation`; ``fitted`` when it was fitted already) is
    linearised with the noise variance ``noise_variance`` (``σ_y²``, that of the fit to all
    projections after its EM: the noise is the scan's, and a second EM would cost as many
    samples again); then :func:`dip_uq.laplace.prior_scale.choose_prior_scale` searches the
    factor on the weights' scale by the held-out projections' likelihood.
    Returns that search (``chosen_factor``, the factors tried and their held-out
    log-likelihoods). With a work folder the fit checkpoints into its
    :data:`CROSS_VALIDATION` folder and a resumed run reads the search from there (refused
    with a ``ValueError`` when written for other settings, data or noise variance).
    """
    ctx = ctx or RunContext()
    done = _search_file(ctx.work_dir)
    stamp = {**checkpoint_fingerprint(settings, y), "noise_variance": noise_variance}
    saved = None if done is None else load(done, SEARCH_CHECKPOINT, stamp, rtol=1e-9)
    if saved is not None:
        return saved["search"]
    if fitted is None:
        fitted = fit_cross_validation(A, y, settings, ctx)
    data = fitted.data
    lap = linearise(fitted.rec, data.y, settings, noise_variance=noise_variance, group=ctx.group)
    from tqdm.auto import tqdm

    shown = "{desc}: {n_fmt} candidate factors scored [{elapsed}{postfix}]"
    with tqdm(desc="prior scale", bar_format=shown, disable=not ctx.progress) as bar:

        def scored(factor: float, tll: float) -> None:
            bar.set_postfix_str(f"factor {factor:.3g}: held-out TLL {tll:.4g}", refresh=False)
            bar.update()

        search = choose_prior_scale(
            lap,
            data.A_held,
            data.y_held,
            fitted.rec.predict(),
            samples=settings.samples_per_step,
            batch=settings.batch,
            on_candidate=scored,
        )
    search.update(
        every=CROSS_VALIDATION_EVERY,
        projections=int(data.y_held.shape[0]),
        held_out=fitted.held_out,
    )
    logger.info("cross-validated prior scale: %.3g times the weights'", search["chosen_factor"])
    if done is not None and ctx.is_main:
        save(done, SEARCH_CHECKPOINT, stamp, {"search": search})
    return search


def checkpoint_fingerprint(settings: Settings, y: torch.Tensor) -> dict[str, Any]:
    """What must match for a checkpoint of the uncertainty stage to be reused."""
    return {"settings": asdict(settings), "y_sum": float(y.double().sum()), "y_shape": [*y.shape]}
