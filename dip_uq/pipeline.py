"""The reconstruct-and-quantify pipeline behind ``dip-uq demo`` and ``dip-uq reconstruct``.

One scan goes through::

    FBP (always, as reference) → DIP → uncertainty → scores against the truth (when known)

with the uncertainty from the linearised Laplace (EM for the prior and noise variances, then
a per-voxel std map from posterior samples) or from a baseline (MC dropout, SGLD). Given a
``work_dir``, every stage checkpoints there (the DIP every ``checkpoint_every`` iterations,
EM after every step, the samples batch by batch) and a rerun with ``resume=True`` continues
from the last checkpoint and reaches the same result as an uninterrupted run.

>>> from dip_uq.simulation import simulate_scan
>>> scan = simulate_scan(size=16, angles=12, noise=0.02)
>>> result = run(scan, Settings(method="fbp"))
>>> sorted(result.scores)
['psnr_fbp_db', 'ssim_fbp']
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import baselines, holdout
from .checkpoint import load, save
from .dip import DIP
from .laplace import LinearisedLaplace, em
from .laplace.distributed import share_fit
from .metrics import summary
from .networks import UNet
from .noise import estimate_noise_sigma
from .projector import RayTransform
from .scan import Scan, default_volume
from .settings import CROSS_VALIDATION_EVERY, MEANS, METHODS, PRIOR_SCALES, UQ_METHODS, Settings

if TYPE_CHECKING:
    from .geometry import Volume
    from .laplace.distributed import DistContext

__all__ = [
    "CHECKPOINTS",
    "MEANS",
    "METHODS",
    "PRIOR_SCALES",
    "UQ_METHODS",
    "Result",
    "Settings",
    "build_network",
    "cross_validate_prior_scale",
    "find_checkpoints",
    "fit_baseline",
    "fit_dip",
    "fit_em",
    "hyperparameters",
    "linearise",
    "remove_checkpoints",
    "run",
    "scores",
]

COVERAGE_LEVELS = (0.5, 0.9, 0.95)
# names in work_dir that belong to an unfinished run
CROSS_VALIDATION = "cross-validation"  # the folder of the cross-validated prior scale's fit
CHECKPOINTS = ("dip-checkpoint.pt", "em-checkpoint.pt", "samples", CROSS_VALIDATION)
EM_CHECKPOINT = "dip_uq.pipeline EM checkpoint 1"
SEARCH_CHECKPOINT = "dip_uq.pipeline prior-scale search 1"
logger = logging.getLogger("dip_uq")


@dataclass
class Result:
    """What the pipeline produced; images are float32 NumPy arrays shaped like the volume.

    Attributes:
        mean: the reconstruction (the DIP, as ``settings.mean`` says, or the FBP for
            ``method="fbp"``), ``(y, x)`` or ``(z, y, x)``, attenuation per length unit.
        std: per-voxel posterior standard deviation in the same units, or None.
        fbp: the FBP/FDK reference.
        truth: the ground truth when the scan has one, else None.
        scores: PSNR/SSIM of FBP and mean; with a std and a truth also coverage, TLL and
            Spearman(std, |error|) (:func:`scores`).
        timings: seconds per stage.
        hyperparameters: the noise and prior variances the Laplace used (after EM).
        curves: per-iteration records for the report: DIP loss, EM history.
        holdout: the held-out projections' scores (``settings.holdout``), else empty.
        backend: the projector backend the run used (``"auto"`` resolved).
    """

    mean: np.ndarray
    std: np.ndarray | None
    fbp: np.ndarray
    truth: np.ndarray | None = None
    scores: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    holdout: dict[str, Any] = field(default_factory=dict)
    backend: str = ""


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def scores(
    truth: np.ndarray, fbp: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None
) -> dict[str, float]:
    """Quality of the FBP and the DIP ``mean`` and calibration of ``std`` against ``truth``
    (:func:`dip_uq.metrics.summary`), under the names ``run.json`` uses."""
    out = {}
    for name, image in (("fbp", fbp), ("dip", mean)):
        if image is None:
            continue
        s = summary(image, truth, std if name == "dip" else None, levels=COVERAGE_LEVELS)
        out[f"psnr_{name}_db"] = s["psnr"]
        if not math.isnan(s["ssim"]):
            out[f"ssim_{name}"] = s["ssim"]
        if name == "dip" and std is not None:
            for level in COVERAGE_LEVELS:
                out[f"coverage_{round(100 * level)}"] = s[f"coverage_{level:g}"]
            out["spearman_std_error"] = s["spearman"]
            out["tll_per_voxel"] = s["tll_1"]
    return out


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    """Adds the time of a stage to ``timings[name]`` (seconds)."""
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


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
    *,
    device: torch.device,
    progress: bool = False,
) -> baselines.UQResult:
    """The MC-dropout or SGLD DIP of ``settings.uq`` (:mod:`dip_uq.baselines`) on ``y``,
    with the run's network, iterations, samples and seed."""
    baseline = {"mcdropout": baselines.mc_dropout, "sgld": baselines.sgld}[settings.uq]
    return baseline(
        A,
        y,
        n_samples=settings.samples,
        iterations=settings.iterations,
        seed=settings.seed,
        device=device,
        progress=progress,
        network=build_network(A.volume.shape, settings),
    )


def fit_dip(
    A: RayTransform,
    y: torch.Tensor,
    settings: Settings,
    *,
    device: torch.device,
    checkpoint: Path | None = None,
    progress: bool = False,
    group: DistContext | None = None,
) -> DIP:
    """Fit the deep image prior of a run to ``y`` (``A.range_shape``) and return it.

    ``checkpoint`` is the DIP's checkpoint file (resumed when present). With a process
    ``group`` rank 0 fits and the other ranks receive its fit.
    """
    main = group is None or group.is_main
    rec = DIP(
        A,
        iterations=settings.iterations,
        seed=settings.seed,
        device=device,
        progress=progress,
        network=build_network(A.volume.shape, settings),
        checkpoint=checkpoint if main else None,
    )
    if main:
        rec.fit(y)
    if group is not None:
        share_fit(rec, group)  # the DIP is fitted once, on rank 0
    return rec


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
    *,
    checkpoint: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    progress: bool = False,
) -> None:
    """``settings.em_steps`` steps of sample-based EM on ``lap``, checkpointed after each.

    One step per call of :meth:`LinearisedLaplace.fit_hyperparameters`, so that a run resumed
    from ``checkpoint`` (written by rank 0 of ``lap.group``) repeats an uninterrupted one;
    ``fingerprint`` is what the checkpoint must match. Warns when EM has not settled.
    """
    from tqdm.auto import tqdm

    main = lap.group is None or lap.group.is_main
    done, fingerprint = 0, fingerprint or {}
    state = None if checkpoint is None else load(checkpoint, EM_CHECKPOINT, fingerprint)
    if state is not None:
        lap.load_state_dict(state["laplace"])
        done = state["em_steps_done"]
    steps = range(done, settings.em_steps)
    for step in tqdm(steps, desc="EM", disable=not progress or not steps):
        lap.fit_hyperparameters(
            1,
            n_samples=settings.samples_per_step,
            batch=settings.batch,
            per_block=settings.em_per_block,
            fit_noise=settings.fit_noise,
            fit_prior=settings.em_prior,
        )
        if checkpoint is not None and main:
            save(
                checkpoint,
                EM_CHECKPOINT,
                fingerprint,
                {"laplace": lap.state_dict(), "em_steps_done": step + 1},
            )
    unsettled = em.unsettled(lap.history)
    if unsettled and main:
        logger.warning("%s; the std may still be off: raise Settings.em_steps", unsettled)


def hyperparameters(
    lap: LinearisedLaplace, settings: Settings
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """The hyperparameters ``lap`` ended with (for ``run.json``) and, after EM, the history
    of what it fitted as report curves."""
    history = lap.history
    curves = {}
    if settings.em_steps:  # without EM the "curves" would be single points
        curves["EM noise variance σ_y²"] = {"σ_y²": np.asarray(history["noise_variance"])}
    if settings.em_steps and settings.em_prior:  # else flat lines, before any scale factor
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


def cross_validate_prior_scale(
    A: RayTransform,
    y: torch.Tensor,
    settings: Settings,
    *,
    noise_variance: float,
    device: torch.device,
    work_dir: Path | None = None,
    progress: bool = False,
    group: DistContext | None = None,
) -> dict[str, Any]:
    """The factor on the prior's scale that the projections a fit did not see like best.

    A DIP fitted to all but every :data:`~dip_uq.settings.CROSS_VALIDATION_EVERY`-th
    projection of ``y`` (of a limited arc as many, half of them at its ends:
    :func:`dip_uq.holdout.cross_validation_indices`) is linearised with the noise variance
    ``noise_variance`` (``σ_y²``, that of the fit to all projections after its EM: the
    noise is the scan's, and a second EM would cost as many samples again); then
    :func:`dip_uq.holdout.choose_prior_scale` searches the factor on the weights' scale by
    the held-out projections' likelihood.
    Returns that search (``chosen_factor``, the factors tried and their held-out
    log-likelihoods). With ``work_dir`` the fit checkpoints into
    ``work_dir / CROSS_VALIDATION`` and a resumed run reads the search from there (refused
    with a ``ValueError`` when written for other settings, data or noise variance).
    """
    folder = None if work_dir is None else work_dir / CROSS_VALIDATION
    done = None if folder is None else folder / "search.pt"
    fingerprint = {**_fingerprint(settings, y), "noise_variance": noise_variance}
    saved = None if done is None else load(done, SEARCH_CHECKPOINT, fingerprint, rtol=1e-9)
    if saved is not None:
        return saved["search"]
    main = group is None or group.is_main
    if folder is not None and main:  # rank 0 alone writes (and judges) the checkpoints
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
        device=device,
        checkpoint=None if folder is None else folder / "dip-checkpoint.pt",
        progress=progress,
        group=group,
    )
    lap = linearise(rec, data.y, settings, noise_variance=noise_variance, group=group)
    search = holdout.choose_prior_scale(
        lap,
        data.A_held,
        data.y_held,
        rec.predict(),
        n_samples=settings.samples_per_step,
        batch=settings.batch,
    )
    search.update(every=CROSS_VALIDATION_EVERY, projections=len(held), held_out=where)
    logger.info("cross-validated prior scale: %.3g times the weights'", search["chosen_factor"])
    if done is not None and main:
        save(done, SEARCH_CHECKPOINT, fingerprint, {"search": search})
    return search


def _fingerprint(settings: Settings, y: torch.Tensor) -> dict[str, Any]:
    """What must match for a checkpoint of the uncertainty stage to be reused."""
    return {"settings": asdict(settings), "y_sum": float(y.double().sum()), "y_shape": [*y.shape]}


def run(
    scan: Scan,
    settings: Settings | None = None,
    *,
    volume: Volume | None = None,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    work_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    group: DistContext | None = None,
) -> Result:
    """Reconstruct ``scan`` and quantify its uncertainty.

    Args:
        scan: line integrals, geometry and (for simulated scans) the truth.
        settings: what to run (:class:`Settings`; default: DIP + linearised Laplace).
        volume: the reconstruction grid; default ``scan.volume`` or
            :func:`dip_uq.scan.default_volume`.
        backend: projector backend (``"auto"``, ``"torch"``, ``"astra"``).
        device: where to compute.
        work_dir: folder for the checkpoints (:data:`CHECKPOINTS`); None: no checkpoints.
        resume: continue from the checkpoints in ``work_dir``; without it, existing
            checkpoints are an error (nothing is overwritten by accident).
        progress: show progress bars.
        group: a :class:`dip_uq.laplace.distributed.DistContext` (``torchrun``): rank 0 fits
            the DIP and the others receive it; the posterior samples of EM and of the std
            map are shared out, and every rank returns the same result. Linearised Laplace
            only; the result is that of one process with the same thread count.
    """
    settings = settings or Settings()
    if group is not None and (settings.method, settings.uq) != ("dip", "laplace"):
        raise ValueError(
            "several processes share out the linearised-Laplace samples only; run "
            f"method={settings.method!r}, uq={settings.uq!r} as one process (without torchrun)"
        )
    main = group is None or group.is_main
    progress = progress and main
    device = torch.device(device)
    volume = volume or scan.volume or default_volume(scan)
    # before the work folder is touched: a K beyond the scan's angles fails here
    data = holdout.split_scan(scan, volume, settings.holdout, backend=backend, device=device)
    A, y, A_held, y_held = data.A, data.y, data.A_held, data.y_held
    work_dir = None if work_dir is None else Path(work_dir)
    if work_dir is not None:
        found = find_checkpoints(work_dir)
        if found and not resume:
            raise ValueError(
                f"{work_dir} holds checkpoints of an unfinished run ({', '.join(found)}); "
                "pass resume=True to continue it, or remove them to start again"
            )
        work_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with _stage(timings, "fbp_s"):
        fbp = A.fbp(y, filter=settings.fbp_filter)
    mean, std, hyper, curves, held_out = fbp, None, {}, {}, {}
    if settings.method == "dip" and settings.uq in ("mcdropout", "sgld"):
        with _stage(timings, "dip_and_uncertainty_s"):
            result = fit_baseline(A, y, settings, device=device, progress=progress)
        mean, std = result.mean, result.std
        curves["DIP loss"] = {"loss": np.asarray(result.history["loss"])}
        if settings.holdout:  # the baselines' noise level: the DIP's estimate from the data
            sigma = estimate_noise_sigma(y, A.geometry)
            held_out = holdout.check(
                A_held, y_held, mean, result.samples - mean, sigma**2, every=settings.holdout
            ).to_dict()
    elif settings.method == "dip":
        checkpoint = None if work_dir is None else work_dir / "dip-checkpoint.pt"
        with _stage(timings, "dip_s"):
            rec = fit_dip(
                A, y, settings, device=device, checkpoint=checkpoint, progress=progress, group=group
            )
            mean = rec.predict()
        curves["DIP loss"] = {"loss": np.asarray(rec.history["loss"])}
        if settings.uq == "laplace":
            with _stage(timings, "uncertainty_s"):
                lap = linearise(rec, y, settings, group=group)
                fit_em(
                    lap,
                    settings,
                    checkpoint=None if work_dir is None else work_dir / "em-checkpoint.pt",
                    fingerprint=_fingerprint(settings, y),
                    progress=progress,
                )
            search = {}
            if settings.prior_scale == "cross-validated":  # a factor found by a second fit
                with _stage(timings, "cross_validation_s"):
                    search = cross_validate_prior_scale(
                        A,
                        y,
                        settings,
                        noise_variance=lap.noise_variance,
                        device=device,
                        work_dir=work_dir,
                        progress=progress,
                        group=group,
                    )
                lap.prior.scale_variances(search["chosen_factor"])
            with _stage(timings, "uncertainty_s"):
                if settings.prior_scale == "holdout":
                    search = holdout.choose_prior_scale(
                        lap,
                        A_held,
                        y_held,
                        mean,
                        n_samples=settings.samples_per_step,
                        batch=settings.batch,
                    )
                moments = lap.moments(
                    settings.samples,
                    batch=settings.batch,
                    checkpoint=None if work_dir is None else work_dir / "samples",
                    keep_samples=bool(settings.holdout),
                    progress=progress,
                )
                std = moments.std.to(mean.dtype)
                if settings.mean == "linear":
                    mean = lap.mean()
                if settings.holdout:
                    held_out = holdout.check(
                        A_held,
                        y_held,
                        mean,
                        moments.samples,
                        lap.noise_variance,
                        every=settings.holdout,
                        group=group,
                    ).to_dict()
            hyper, em_curves = hyperparameters(lap, settings)
            if search:
                hyper["prior_scale_search"] = search
            curves.update(em_curves)
    result = Result(
        mean=_numpy(mean),
        std=None if std is None else _numpy(std),
        fbp=_numpy(fbp),
        truth=None if scan.truth is None else np.asarray(scan.truth, dtype=np.float32),
        timings=timings,
        hyperparameters=hyper,
        curves=curves,
        holdout=held_out,
        backend=A.backend,
    )
    if result.truth is not None:
        dip_mean = result.mean if settings.method == "dip" else None
        result.scores = scores(result.truth, result.fbp, dip_mean, result.std)
    if group is not None:
        group.barrier()  # every rank has finished reading the checkpoints
    if work_dir is not None and main:  # finished: the checkpoints have served their purpose
        remove_checkpoints(work_dir)
    return result


def find_checkpoints(work_dir: Path) -> list[str]:
    """The names of :data:`CHECKPOINTS` present in ``work_dir``."""
    return [name for name in CHECKPOINTS if (work_dir / name).exists()]


def remove_checkpoints(work_dir: Path) -> None:
    """Delete the checkpoints of a run (finished, or to be started again) from ``work_dir``."""
    for name in find_checkpoints(work_dir):
        path = work_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
