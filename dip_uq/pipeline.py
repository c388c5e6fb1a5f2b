"""The method of ``dip-uq reconstruct`` as one call, :func:`reconstruct`, and the only place
that puts the stages of :mod:`dip_uq.stages` in order.

One scan goes through::

    FBP (always, as reference) → DIP → uncertainty → scores against the truth (when known)

with the uncertainty from the linearised Laplace (EM of the noise variance, the prior's scale
cross-validated on projections a second fit did not see, then a per-voxel std map from
posterior samples) or from a baseline (MC dropout, SGLD). Given a ``work_dir``, every stage
checkpoints there (the DIP every 100 iterations, EM after every step, the samples batch by
batch) and a rerun with ``resume=True`` continues from the last checkpoint and reaches the
same result as an uninterrupted run.

>>> from dip_uq.simulation import simulate_scan
>>> scan = simulate_scan(size=16, angles=12, noise=0.02)
>>> result = reconstruct(scan, method="fbp")
>>> sorted(result.scores)
['psnr_fbp_db', 'ssim_fbp']
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import holdout, stages
from .background import beside
from .directions import DirectionalPower, missing_wedge
from .laplace.prior_scale import choose_prior_scale
from .metrics import summary
from .noise import estimate_noise_sigma
from .outputs import Result
from .scan import Scan, grid_for_device
from .settings import MEANS, METHODS, PRIOR_SCALES, UQ_METHODS, Settings
from .stages import RunContext

if TYPE_CHECKING:
    from .distributed import DistContext
    from .geometry import Volume
    from .laplace import LinearisedLaplace
    from .projector import RayTransform

__all__ = [
    "CHECKPOINTS",
    "MEANS",
    "METHODS",
    "PRIOR_SCALES",
    "UQ_METHODS",
    "Hook",
    "Result",
    "Settings",
    "find_checkpoints",
    "reconstruct",
    "remove_checkpoints",
    "scores",
]

logger = logging.getLogger("dip_uq")
COVERAGE_LEVELS = (0.5, 0.9, 0.95)
# names in work_dir that belong to an unfinished run
CHECKPOINTS = ("dip-checkpoint.pt", "em-checkpoint.pt", "samples", stages.CROSS_VALIDATION)
# hook(point, lap, mean) at LINEARISED (before EM) and at FITTED (after EM and the prior
# scale, before the std map's samples); lap must be left as it was found
Hook = Callable[[str, "LinearisedLaplace", torch.Tensor], None]
LINEARISED, FITTED = "linearised", "fitted"


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


def _as_scan(data: Scan | tuple[RayTransform, Any]) -> tuple[Scan, Volume | None, str | None]:
    """The scan of :func:`reconstruct`'s ``data``, the grid and backend an operator brings."""
    if isinstance(data, Scan):
        return data, None, None
    try:
        A, y = data
        geometry, volume, backend = A.geometry, A.volume, A.backend
    except (TypeError, ValueError, AttributeError):
        raise ValueError(
            "reconstruct takes a dip_uq.Scan or a pair (A, y) of a dip_uq.RayTransform and "
            f"its sinogram, got {type(data).__name__}"
        ) from None
    sinogram = np.asarray(torch.as_tensor(y).detach().cpu(), dtype=np.float32)
    if sinogram.shape != tuple(A.range_shape):
        raise ValueError(f"y has shape {sinogram.shape}; A maps to {tuple(A.range_shape)}")
    return Scan(sinogram=sinogram, geometry=geometry), volume, backend


def reconstruct(
    data: Scan | tuple[RayTransform, Any],
    settings: Settings | None = None,
    *,
    volume: Volume | None = None,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    work_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    group: DistContext | None = None,
    hook: Hook | None = None,
    keep_samples: bool = False,
    notify: Callable[[str], None] | None = None,
    **options: Any,
) -> Result:
    """Reconstruct a scan and quantify its uncertainty: what ``dip-uq reconstruct`` runs.

    Args:
        data: a :class:`~dip_uq.Scan` (line integrals, geometry and, for simulated scans, the
            truth), or a pair ``(A, y)``: a :class:`~dip_uq.RayTransform` and its sinogram
            ``A.range_shape`` (then ``A``'s grid and backend are used).
        settings: what to run; the defaults are those of ``dip-uq reconstruct``.
        volume: the reconstruction grid; default ``A``'s grid, the scan's stored one, or the
            one :func:`dip_uq.scan.grid_for_device` chooses for the scan and ``device``.
        backend: projector backend (``"auto"``, ``"torch"``, ``"astra"``).
        device: where to compute.
        work_dir: folder for the checkpoints (:data:`CHECKPOINTS`); None: no checkpoints.
        resume: continue from the checkpoints in ``work_dir``; without it, existing
            checkpoints are an error (nothing is overwritten by accident).
        progress: show progress bars.
        group: a :class:`dip_uq.distributed.DistContext` (``torchrun``): rank 0 fits the DIP
            and the others receive it; the posterior samples of EM and of the std map are
            shared out, and every rank returns the same result. Linearised Laplace only; the
            result is that of one process with the same thread count.
        hook: called as ``hook(point, lap, mean)`` with the linearised Laplace at
            ``"linearised"`` (before EM) and at ``"fitted"`` (before the std map's samples),
            for a caller that draws its own samples there (:mod:`dip_uq.evaluate`); it must
            leave ``lap``'s hyperparameters as it found them.
        keep_samples: keep the std map's posterior deviations in :attr:`Result.samples`.
        notify: takes the lines that say which grid the run chose and why (without a
            ``volume``; :func:`dip_uq.scan.grid_for_device`) and, after the DIP's first
            iterations, how long the run will take on this device; default: printed with
            ``progress`` (:func:`print_above_bars`), else logged. They are also in
            ``result.run_info["plan"]``.
        **options: :class:`~dip_uq.pipeline.Settings` fields (``iterations=``,
            ``samples=``, ``channels=``, ...), replacing those of ``settings``.

    Returns:
        The :class:`Result`; :meth:`Result.save` writes what the command writes.

    Raises:
        ValueError: an unknown option, a bad setting, or checkpoints in ``work_dir``
            without ``resume``.
    """
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}; reconstruct takes the fields of "
            "dip_uq.pipeline.Settings"
        )
    settings = replace(settings or Settings(), **options)
    scan, grid, operator_backend = _as_scan(data)
    backend = operator_backend or backend
    if group is not None and (settings.method, settings.uq) != ("dip", "laplace"):
        raise ValueError(
            "several processes share out the linearised-Laplace samples only; run "
            f"method={settings.method!r}, uq={settings.uq!r} as one process (without torchrun)"
        )
    device = torch.device(device)
    main = group is None or group.is_main  # rank 0, or the only process: shows progress
    told: list[str] = []
    tell = notify or (print_above_bars if progress and main else logger.info)

    def say(line: str) -> None:
        told.append(line)
        tell(line)

    if volume is None and grid is None:
        volume, why = grid_for_device(scan, device, dip=settings.method == "dip")
        say(why)
    volume = volume or grid
    # before the work folder is touched: a K beyond the scan's angles fails here
    data = holdout.split_scan(scan, volume, settings.holdout, backend=backend, device=device)
    work_dir = None if work_dir is None else Path(work_dir)
    if work_dir is not None:
        found = find_checkpoints(work_dir)
        if found and not resume:
            raise ValueError(
                f"{work_dir} holds checkpoints of an unfinished run ({', '.join(found)}); "
                "pass resume=True to continue it, or remove them to start again"
            )
        work_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(device, work_dir, progress and main, group, say)
    timings: dict[str, float] = {}
    with _stage(timings, "fbp_s"):
        fbp = data.A.fbp(data.y, filter=settings.fbp_filter)
    result = Result(
        mean=_numpy(fbp),
        std=None,
        fbp=_numpy(fbp),
        truth=None if scan.truth is None else np.asarray(scan.truth, dtype=np.float32),
        timings=timings,
        backend=data.A.backend,
        scan=scan,
        volume=volume,
        settings=settings,
        run_info={
            "device": str(device),
            "projector_backend": data.A.backend,
            "threads": torch.get_num_threads(),
            "processes": 1 if group is None else group.world_size,
            "plan": told,
        },
    )
    if settings.method == "dip" and settings.uq in ("mcdropout", "sgld"):
        _baseline(data, settings, ctx, result, keep_samples)
    elif settings.method == "dip":
        _dip(data, settings, ctx, result, hook, keep_samples)
    if result.truth is not None:
        dip_mean = result.mean if settings.method == "dip" else None
        result.scores = scores(result.truth, result.fbp, dip_mean, result.std)
    if group is not None:
        group.barrier()  # every rank has finished reading the checkpoints
    if work_dir is not None and ctx.is_main:  # finished: the checkpoints have served their purpose
        remove_checkpoints(work_dir)
    return result


def _baseline(
    data: holdout.Data, settings: Settings, ctx: RunContext, result: Result, keep_samples: bool
) -> None:
    """MC dropout or SGLD (``settings.uq``) into ``result``."""
    with _stage(result.timings, "dip_and_uncertainty_s"):
        fitted = stages.fit_baseline(data.A, data.y, settings, ctx)
    result.mean, result.std = _numpy(fitted.mean), _numpy(fitted.std)
    result.curves["DIP loss"] = {"loss": np.asarray(fitted.history["loss"])}
    if keep_samples:
        result.samples = fitted.samples - fitted.mean
    if settings.holdout:  # the baselines' noise level: the DIP's estimate from the data
        sigma = estimate_noise_sigma(data.y, data.A.geometry)
        result.holdout = holdout.check(
            data.A_held,
            data.y_held,
            fitted.mean,
            fitted.samples - fitted.mean,
            sigma**2,
            every=settings.holdout,
        ).to_dict()


def _dip(
    data: holdout.Data,
    settings: Settings,
    ctx: RunContext,
    result: Result,
    hook: Hook | None,
    keep_samples: bool,
) -> None:
    """The DIP and, for ``uq="laplace"``, its linearised Laplace, into ``result``.

    The cross-validated prior scale's second DIP fit runs beside the fit to all projections
    (:func:`dip_uq.background.beside`; on a CPU, in one process, and not when a resumed run
    finds its search done), each on half the threads; EM, the second fit's linearisation and
    search, and the std map then follow on all threads.
    """
    A, y, timings = data.A, data.y, result.timings
    laplace = settings.uq == "laplace"
    cross_validated = laplace and settings.prior_scale == "cross-validated"

    def second_fit(check: Callable[[], None]) -> stages.CrossValidationFit:
        return stages.fit_cross_validation(A, y, settings, ctx, check=check)

    alongside = (
        cross_validated
        and ctx.device.type == "cpu"  # on a GPU both would share one stream
        and ctx.group is None
        and not stages.saved_search(ctx.work_dir)
    )
    with beside(second_fit, enabled=alongside) as background:
        with _stage(timings, "dip_s"):
            rec = stages.fit_dip(
                A, y, settings, ctx, checkpoint=ctx.file("dip-checkpoint.pt"), estimate=True
            )
            mean = rec.predict()
        with _stage(timings, "cross_validation_s"):
            fitted = None if background is None else background.result()
    result.mean = _numpy(mean)
    result.curves["DIP loss"] = {"loss": np.asarray(rec.history["loss"])}
    if not laplace:
        return
    # after the fits, on all threads: batched Jacobian products do use a second thread
    with _stage(timings, "uncertainty_s"):
        ctx.notify(
            f"uncertainty: the linearised network's posterior; EM fits the noise level in "
            f"{settings.em_steps} step{'s' * (settings.em_steps > 1)} of "
            f"{settings.samples_per_step} samples"
            if settings.em_steps
            else "uncertainty: the linearised network's posterior"
        )
        lap = stages.linearise(rec, y, settings, group=ctx.group)
        if hook is not None:
            hook(LINEARISED, lap, mean)
        stages.fit_em(lap, settings, ctx, fingerprint=stages.checkpoint_fingerprint(settings, y))
        em_solves = len(lap.solves)
    search = {}
    if cross_validated:  # a factor found by a second fit
        ctx.notify(
            "prior scale: 4-6 candidate factors of "
            f"{settings.samples_per_step} samples each, scored on the projections a second "
            "DIP fit left out"
        )
        with _stage(timings, "cross_validation_s"):
            search = stages.cross_validate_prior_scale(
                A, y, settings, ctx, noise_variance=lap.noise_variance, fitted=fitted
            )
        lap.prior.scale_variances(search["chosen_factor"])
    with _stage(timings, "uncertainty_s"):
        if settings.prior_scale == "holdout":
            search = choose_prior_scale(
                lap,
                data.A_held,
                data.y_held,
                mean,
                samples=settings.samples_per_step,
                batch=settings.batch,
            )
        if hook is not None:
            hook(FITTED, lap, mean)
        ctx.notify(f"std map: {settings.samples} posterior samples")
        std_solves = len(lap.solves)
        wedge = missing_wedge(A.geometry)
        moments = lap.moments(
            settings.samples,
            batch=settings.batch,
            checkpoint=ctx.file("samples"),
            keep_samples=bool(settings.holdout) or keep_samples or wedge is not None,
            progress=ctx.progress,
        )
        if wedge is not None:
            result.directions = _directions(moments.samples, wedge, ctx)
        std = moments.std.to(mean.dtype)
        # this process's solves (a resumed run's read from checkpoints are not among them)
        result.run_info["solves"] = {
            "em": lap.solves[:em_solves],
            "std_map": lap.solves[std_solves:],
        }
        if settings.mean == "linear":
            mean = lap.mean()
        if settings.holdout:
            result.holdout = holdout.check(
                data.A_held,
                data.y_held,
                mean,
                moments.samples,
                lap.noise_variance,
                every=settings.holdout,
                group=ctx.group,
            ).to_dict()
    result.mean, result.std = _numpy(mean), _numpy(std)
    if keep_samples:
        result.samples = moments.samples
    hyper, em_curves = stages.hyperparameters(lap, settings)
    if search:
        hyper["prior_scale_search"] = search
    result.hyperparameters = hyper
    result.curves.update(em_curves)


def _directions(
    samples: torch.Tensor, wedge: tuple[float, float], ctx: RunContext
) -> DirectionalPower:
    """The std map's samples' power per Fourier direction against the scan's missing wedge,
    told in one line: a posterior that knows what the scan does not measure varies more
    there (:mod:`dip_uq.directions`)."""
    reduce = None if ctx.group is None else ctx.group.all_reduce_sum
    spread = DirectionalPower.of(samples, wedge, reduce)
    start, end = wedge[0], wedge[0] + wedge[1]
    end = end if end <= 180 else end - 180
    ctx.notify(
        f"limited arc: the Fourier directions {start:.0f}°–{end:.0f}° are not "
        f"measured; the posterior samples vary {spread.ratio:.3g} times as much there as in the "
        "measured directions, but the network's bias there is not in the std: read it as a "
        "lower bound (report.png, run.json's directions; docs/calibration.md)"
    )
    return spread


def print_above_bars(line: str) -> None:
    """Print ``line`` to standard output above the progress bars, which are redrawn below it:
    a plain ``print`` would land in the middle of a bar (two of them while the
    cross-validation's DIP runs beside the first)."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def find_checkpoints(work_dir: Path) -> list[str]:
    """The names of :data:`CHECKPOINTS` present in ``work_dir``."""
    return [name for name in CHECKPOINTS if (work_dir / name).exists()]


def remove_checkpoints(work_dir: Path) -> None:
    """Delete the checkpoints of a run (finished, or to be started again) from ``work_dir``."""
    for name in find_checkpoints(work_dir):
        path = work_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
