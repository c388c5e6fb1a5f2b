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

import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import holdout, stages
from .background import beside
from .metrics import summary
from .noise import estimate_noise_sigma
from .scan import Scan, default_volume
from .settings import MEANS, METHODS, PRIOR_SCALES, UQ_METHODS, Settings

if TYPE_CHECKING:
    from .geometry import Volume
    from .laplace.distributed import DistContext
    from .projector import RayTransform

__all__ = [
    "CHECKPOINTS",
    "MEANS",
    "METHODS",
    "PRIOR_SCALES",
    "UQ_METHODS",
    "Result",
    "Settings",
    "find_checkpoints",
    "remove_checkpoints",
    "run",
    "scores",
]

COVERAGE_LEVELS = (0.5, 0.9, 0.95)
# names in work_dir that belong to an unfinished run
CHECKPOINTS = ("dip-checkpoint.pt", "em-checkpoint.pt", "samples", stages.CROSS_VALIDATION)


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
            result = stages.fit_baseline(A, y, settings, device=device, progress=progress)
        mean, std = result.mean, result.std
        curves["DIP loss"] = {"loss": np.asarray(result.history["loss"])}
        if settings.holdout:  # the baselines' noise level: the DIP's estimate from the data
            sigma = estimate_noise_sigma(y, A.geometry)
            held_out = holdout.check(
                A_held, y_held, mean, result.samples - mean, sigma**2, every=settings.holdout
            ).to_dict()
    elif settings.method == "dip":
        mean, std, hyper, curves, held_out = _dip(
            A, y, A_held, y_held, settings, timings, device, work_dir, progress, group
        )
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


def _dip(
    A: RayTransform,
    y: torch.Tensor,
    A_held: RayTransform | None,
    y_held: torch.Tensor | None,
    settings: Settings,
    timings: dict[str, float],
    device: torch.device,
    work_dir: Path | None,
    progress: bool,
    group: DistContext | None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict, dict, dict]:
    """The DIP and, for ``uq="laplace"``, its linearised Laplace: ``(mean, std,
    hyperparameters, curves, held-out scores)`` of :func:`run`.

    The cross-validated prior scale's second DIP fit runs beside the fit to all projections
    (:func:`dip_uq.background.beside`; on a CPU, in one process, and not when a resumed run
    finds its search done), each on half the threads; EM, the second fit's linearisation and
    search, and the std map then follow on all threads.
    """
    laplace = settings.uq == "laplace"
    cross_validated = laplace and settings.prior_scale == "cross-validated"

    def second_fit(check: Callable[[], None]) -> stages.CrossValidationFit:
        return stages.fit_cross_validation(
            A, y, settings, device=device, work_dir=work_dir, progress=progress, check=check
        )

    alongside = (
        cross_validated
        and device.type == "cpu"  # measured on CPUs; on a GPU both would share one stream
        and group is None
        and not stages.saved_search(work_dir)
    )
    curves: dict[str, dict[str, np.ndarray]] = {}
    with beside(second_fit, enabled=alongside) as background:
        with _stage(timings, "dip_s"):
            rec = stages.fit_dip(
                A,
                y,
                settings,
                device=device,
                checkpoint=None if work_dir is None else work_dir / "dip-checkpoint.pt",
                progress=progress,
                group=group,
            )
            mean = rec.predict()
        with _stage(timings, "cross_validation_s"):
            fitted = None if background is None else background.result()
    curves["DIP loss"] = {"loss": np.asarray(rec.history["loss"])}
    if not laplace:
        return mean, None, {}, curves, {}
    # after the fits, on all threads: batched Jacobian products do use a second thread
    with _stage(timings, "uncertainty_s"):
        lap = stages.linearise(rec, y, settings, group=group)
        stages.fit_em(
            lap,
            settings,
            checkpoint=None if work_dir is None else work_dir / "em-checkpoint.pt",
            fingerprint=stages.checkpoint_fingerprint(settings, y),
            progress=progress,
        )
    search, held_out = {}, {}
    if cross_validated:  # a factor found by a second fit
        with _stage(timings, "cross_validation_s"):
            search = stages.cross_validate_prior_scale(
                A,
                y,
                settings,
                noise_variance=lap.noise_variance,
                device=device,
                work_dir=work_dir,
                progress=progress,
                group=group,
                fitted=fitted,
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
    hyper, em_curves = stages.hyperparameters(lap, settings)
    if search:
        hyper["prior_scale_search"] = search
    return mean, std, hyper, {**curves, **em_curves}, held_out


def find_checkpoints(work_dir: Path) -> list[str]:
    """The names of :data:`CHECKPOINTS` present in ``work_dir``."""
    return [name for name in CHECKPOINTS if (work_dir / name).exists()]


def remove_checkpoints(work_dir: Path) -> None:
    """Delete the checkpoints of a run (finished, or to be started again) from ``work_dir``."""
    for name in find_checkpoints(work_dir):
        path = work_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
