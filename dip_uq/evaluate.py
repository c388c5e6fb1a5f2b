"""The evaluation suite: calibration of the uncertainty on synthetic scans with a known truth.

A suite is a fixed, seeded list of :class:`Case` (phantom, geometry, angles, noise) and one
:class:`dip_uq.pipeline.Settings` (iterations, samples, network width), run through
:func:`dip_uq.reconstruct`, the method ``dip-uq reconstruct`` runs. Every case is
simulated by :func:`dip_uq.simulation.simulate_scan` (the phantom times ``SCAN_ATTENUATION``
in 1/mm, Gaussian noise relative to ``mean |A x|``) and reconstructed by

* ``fbp``: filtered back-projection (Hann filter; no std),
* ``laplace``: the DIP with the linearised Laplace std at its initial hyperparameters
  (σ_y² from the DIP's noise estimate, σ_b² from the scale of the fitted weights), and the
  mean the settings ask for (``Settings.mean``: the network's output, or the linear model's
  posterior mean at those hyperparameters),
* ``laplace-em``: the same after sample-based EM of the suite's settings (``small`` and
  ``full`` set ``fit_prior``: the prior's scale and the noise variance; ``defaults`` runs the
  command's default: the noise alone from the g-prior, then the cross-validated factor on
  the prior's scale, :func:`dip_uq.stages.cross_validate_prior_scale`),
* ``laplace-holdout`` (with held-out projections only): the same with the prior scale that
  maximises the held-out projections' likelihood (:func:`dip_uq.holdout.choose_prior_scale`),
* ``mc-dropout`` and ``sgld``: the baselines of :mod:`dip_uq.baselines`.

Metrics per method (:func:`dip_uq.metrics.summary`): PSNR and SSIM of the mean; coverage of the
central 50/90/95 % Gaussian intervals ``mean ± z std``; the patch-wise Gaussian test
log-likelihood (TLL, nats per voxel) for patch side 1 and :attr:`Suite.tll_patch`;
Spearman's rank correlation between the std and ``|mean - truth|``; wall time in seconds
(the Laplace rows include the DIP fit they linearise, so every row is the cost of getting
that output from the data). Uncertainty metrics of FBP are NaN.

Suites (:data:`SUITES`): ``small`` (2D 32²/48², 3D 16³; for a CPU),
``full`` (2D 128², 3D 64³; for a GPU), each sparse-view and limited-angle at 1 % and 5 %
noise, Shepp-Logan and random ellipses, parallel beam in 2D and cone beam in 3D; ``defaults``,
the calibration's acceptance suite: ``dip-uq reconstruct``'s defaults on thirteen cases none of
them was tuned on (2D 32²–128², 16–64 channels, parallel and fan; 3D 16³ parallel and cone,
20³ cone; sparse-view, 60°–180° arcs; 1–5 % noise). :func:`run_suite` (``dip-uq evaluate``)
writes ``results.csv``, ``results.md`` and, per case, a calibration plot (expected vs observed
coverage of central intervals) and a reliability plot (RMSE of the mean against the predicted
std, in bins of the std).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import holdout, metrics, pipeline
from .laplace import LinearisedLaplace
from .laplace.prior_scale import choose_prior_scale
from .noise import estimate_noise_sigma
from .scan import Scan
from .settings import Settings
from .simulation import PHANTOMS, SCAN_GEOMETRIES, simulate_scan

__all__ = [
    "HOLDOUT_METHOD",
    "LEVELS",
    "SUITES",
    "SUITE_METHODS",
    "Case",
    "Suite",
    "evaluate_case",
    "markdown_table",
    "run_suite",
]

logger = logging.getLogger("dip_uq")

LEVELS = (0.5, 0.9, 0.95)  # central-interval coverages reported
SUITE_METHODS = ("fbp", "laplace", "laplace-em", "mc-dropout", "sgld")
# the Laplace with the prior scale of dip_uq.holdout.choose_prior_scale; only with held-out
# projections, so not among the defaults
HOLDOUT_METHOD = "laplace-holdout"


@dataclass(frozen=True)
class Case:
    """One synthetic scan, simulated by :func:`dip_uq.simulation.simulate_scan`.

    Attributes:
        name: identifier used in the tables and file names.
        dim: 2 (``(size, size)`` image) or 3 (``(size, size, size)`` volume); 1 mm voxels,
            centred.
        size: voxels per side (>= 16).
        n_angles: number of projections, spread over ``arc`` without its end point.
        arc: angular range in degrees, e.g. 180 (2D parallel), 360 (cone) or 90
            (limited angle).
        noise: relative Gaussian noise level, ``σ = noise · mean |A x|``.
        phantom: ``"shepp-logan"`` or ``"ellipses"`` (:func:`random_ellipses`, seeded).
        geometry: ``"parallel"`` (2D or 3D), ``"fan"`` (2D) or ``"cone"`` (3D); detector
            ``1.5 · size`` columns wide, fan and cone with the source at ``4 · size`` and the
            detector at ``2 · size`` from the centre (magnification 1.5).
        seed: seeds the phantom (ellipses), the noise, the networks and the samples.
        channels: U-Net channels per scale for this case; ``None``: the suite's setting.
    """

    name: str
    dim: int
    size: int
    n_angles: int
    arc: float
    noise: float
    phantom: str = "shepp-logan"
    geometry: str = "parallel"
    seed: int = 0
    channels: int | None = None

    def __post_init__(self) -> None:
        if self.dim not in SCAN_GEOMETRIES:
            raise ValueError(f"case {self.name!r}: dim must be 2 or 3, got {self.dim!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 16:
            raise ValueError(
                f"case {self.name!r}: size must be an integer >= 16, got {self.size!r}"
            )
        if self.phantom not in PHANTOMS:
            raise ValueError(
                f"case {self.name!r}: phantom must be one of {PHANTOMS}, got {self.phantom!r}"
            )
        if self.geometry not in SCAN_GEOMETRIES[self.dim]:
            raise ValueError(
                f"case {self.name!r}: a {self.dim}D case takes geometry "
                f"{' or '.join(SCAN_GEOMETRIES[self.dim])}, got {self.geometry!r}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """The image shape, ``(size,) * dim``."""
        return (self.size,) * self.dim

    def scan(self, device: torch.device | str | None = None) -> Scan:
        """The simulated scan: ``sinogram``, ``geometry``, ``volume`` and ``truth``
        (attenuation per mm, the phantom times :data:`dip_uq.simulation.SCAN_ATTENUATION`),
        as NumPy arrays; ``device`` is where the simulation runs."""
        return simulate_scan(
            self.phantom,
            dim=self.dim,
            size=self.size,
            geometry=self.geometry,
            angles=self.n_angles,
            arc=np.deg2rad(self.arc),
            noise=self.noise,
            seed=self.seed,
            device=device,
        )


@dataclass(frozen=True)
class Suite:
    """A named list of cases run with one set of :class:`dip_uq.pipeline.Settings`.

    Attributes:
        name: identifier in the tables.
        cases: the scans.
        settings: how every case is reconstructed, as ``dip-uq reconstruct`` would with
            these options; ``seed`` is replaced by each case's seed. ``laplace`` is the std at
            the initial hyperparameters, ``laplace-em`` after ``em_steps`` EM steps of
            ``em_samples`` samples; both and the baselines draw ``samples`` samples.
        tll_patch: the larger patch side of the patch-wise TLL; ``samples`` should be well
            above ``tll_patch ** dim`` (the patch covariance is estimated from the samples).
    """

    name: str
    cases: tuple[Case, ...]
    settings: Settings
    tll_patch: int = 2


def _grid(
    dim_cases: Sequence[tuple[int, int, str, int, int]], noises: Sequence[float]
) -> tuple[Case, ...]:
    """Sparse-view and limited-angle cases at every noise level.

    ``dim_cases``: (dim, size, phantom, sparse angles, limited-angle angles). 2D: parallel beam,
    sparse over 180°, limited over 90°. 3D: cone beam, sparse over 360°, limited over 90°.
    """
    cases = []
    for dim, size, phantom, sparse, limited in dim_cases:
        geometry = "parallel" if dim == 2 else "cone"
        full_arc = 180 if dim == 2 else 360
        for kind, n_angles, arc in (("sparse", sparse, full_arc), ("limited", limited, 90)):
            for noise in noises:
                name = f"{dim}d{size}-{phantom}-{kind}{n_angles}-{round(100 * noise)}%"
                cases.append(Case(name, dim, size, n_angles, arc, noise, phantom, geometry))
    return tuple(cases)


# DIPs run their default iterations for the noise level, as a user runs them: fewer leave the
# DIP short of the data, and the std, which describes the fitted network, too narrow
_EM_PRIOR = {"fit_prior": True, "prior_scale": "weights"}  # EM of the prior from the weights'
_SMALL = Settings(channels=16, samples=16, em_steps=3, em_samples=8, cg_iterations=150, **_EM_PRIOR)
_SMALL_CASES = (
    _grid([(2, 32, "shepp-logan", 30, 30)], (0.01, 0.05))
    + _grid([(2, 48, "ellipses", 40, 40)], (0.05,))
    + _grid([(3, 16, "shepp-logan", 16, 16)], (0.05,))
)

# The calibration's acceptance suite: the command's defaults, seeds no default was tuned on,
# and what the other suites leave out (fan beam, parallel 3D, other widths, arcs, noise)
_DEFAULTS_CASES = (
    Case("2d32-sl-sparse20-3%-16ch", 2, 32, 20, 180, 0.03, "shepp-logan", seed=21, channels=16),
    Case("2d48-ell-fan-sparse36-1%", 2, 48, 36, 360, 0.01, "ellipses", "fan", seed=22),
    Case("2d64-ell-limited45-120deg-2%", 2, 64, 45, 120, 0.02, "ellipses", seed=23),
    Case("2d64-sl-fan-sparse30-5%-64ch", 2, 64, 30, 360, 0.05, "shepp-logan", "fan", 24, 64),
    Case("2d96-ell-sparse48-2%", 2, 96, 48, 180, 0.02, "ellipses", seed=25),
    Case("3d16-ell-parallel-sparse16-3%", 3, 16, 16, 180, 0.03, "ellipses", seed=26),
    Case("3d20-sl-cone-limited20-180deg-2%", 3, 20, 20, 180, 0.02, "shepp-logan", "cone", 27),
    Case("2d48-sl-limited40-90deg-3%", 2, 48, 40, 90, 0.03, "shepp-logan", seed=41),
    Case("2d64-ell-fan-limited40-150deg-2%", 2, 64, 40, 150, 0.02, "ellipses", "fan", 42),
    Case("3d16-ell-cone-limited16-100deg-3%", 3, 16, 16, 100, 0.03, "ellipses", "cone", 43),
    Case("2d128-ell-sparse60-2%", 2, 128, 60, 180, 0.02, "ellipses", seed=44),
    Case("2d64-sl-limited32-60deg-2%", 2, 64, 32, 60, 0.02, "shepp-logan", seed=45),
    Case("3d16-ell-parallel-limited16-90deg-3%", 3, 16, 16, 90, 0.03, "ellipses", seed=46),
)

SUITES: dict[str, Suite] = {
    # a CPU (docs/performance.md has its time)
    "small": Suite("small", _SMALL_CASES, _SMALL),
    # one GPU
    "full": Suite(
        "full",
        _grid([(2, 128, "shepp-logan", 60, 60), (2, 128, "ellipses", 60, 60)], (0.01, 0.05))
        + _grid([(3, 64, "shepp-logan", 64, 64)], (0.01, 0.05)),
        Settings(samples=128, em_steps=10, em_samples=16, cg_iterations=300, **_EM_PRIOR),
        tll_patch=4,
    ),
    "defaults": Suite("defaults", _DEFAULTS_CASES, Settings()),
}


# --------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------
@dataclass
class _Output:
    """What a method hands to :func:`dip_uq.metrics.summary` and the plots."""

    mean: torch.Tensor
    std: torch.Tensor | None
    deviations: torch.Tensor | None
    seconds: float


def _laplace_outputs(
    scan: Scan,
    data: holdout.Data,
    settings: Settings,
    device: torch.device,
    backend: str,
    progress: bool,
    scale_by_holdout: bool,
) -> tuple[dict[str, _Output], dict[str, float]]:
    """The run of :func:`dip_uq.reconstruct` with, through its hook, Laplace samples before EM
    and, with ``scale_by_holdout``, at the prior scale the held-out projections like best;
    outputs by method name, and the noise variance of each."""
    outputs: dict[str, _Output] = {}
    noise: dict[str, float] = {}
    started, drawing = time.perf_counter(), 0.0

    def draw(lap: LinearisedLaplace, mean: torch.Tensor, seconds: float) -> _Output:
        samples = lap.sample(settings.samples)
        image = lap.mean() if settings.mean == "linear" else mean
        return _Output(image, lap.std(samples=samples), samples, seconds)

    def before_em(point: str, lap: LinearisedLaplace, mean: torch.Tensor) -> None:
        nonlocal drawing
        if point != pipeline.LINEARISED:
            return
        since = time.perf_counter()
        fitted = since - started  # the DIP fit(s) and the linearisation
        outputs["laplace"] = draw(lap, mean, fitted + time.perf_counter() - since)
        noise["laplace"] = noise[HOLDOUT_METHOD] = lap.noise_variance
        if scale_by_holdout:
            start, since_scaled = dict(lap.prior.variances), time.perf_counter()
            choose_prior_scale(
                lap, data.A_held, data.y_held, mean, samples=settings.samples_per_step
            )
            outputs[HOLDOUT_METHOD] = draw(lap, mean, fitted + time.perf_counter() - since_scaled)
            lap.prior.variances = start  # EM starts where it would without the search
        drawing = time.perf_counter() - since

    result, seconds = _run(scan, settings, device, backend, progress, hook=before_em)
    outputs["laplace-em"] = replace(_output(result, device, seconds), seconds=seconds - drawing)
    noise["laplace-em"] = result.hyperparameters["noise_variance"]
    return outputs, noise


def _run(
    scan: Scan,
    settings: Settings,
    device: torch.device,
    backend: str,
    progress: bool,
    hook: pipeline.Hook | None = None,
) -> tuple[pipeline.Result, float]:
    """:func:`dip_uq.reconstruct` of a case on its own grid, keeping the std map's samples;
    the result and its wall time in seconds."""
    started = time.perf_counter()
    result = pipeline.reconstruct(
        scan,
        settings,
        volume=scan.volume,
        backend=backend,
        device=device,
        progress=progress,
        hook=hook,
        keep_samples=True,
    )
    return result, time.perf_counter() - started


def _output(result: pipeline.Result, device: torch.device, seconds: float) -> _Output:
    """What the scores need of a run's result."""
    mean, std = (torch.as_tensor(a, device=device) for a in (result.mean, result.std))
    return _Output(mean, std, result.samples, seconds)


def evaluate_case(
    case: Case,
    settings: Settings,
    *,
    methods: Sequence[str] = SUITE_METHODS,
    device: torch.device | str | None = None,
    backend: str = "auto",
    progress: bool = False,
    tll_patch: int = 2,
) -> tuple[list[dict[str, Any]], dict[str, _Output], torch.Tensor]:
    """Run ``methods`` on one case: the result rows, the outputs per method and the truth.

    ``settings`` are the suite's (:attr:`Suite.settings`); the case's seed replaces theirs.
    """
    unknown = [m for m in methods if m not in (*SUITE_METHODS, HOLDOUT_METHOD)]
    if unknown:
        known = ", ".join((*SUITE_METHODS, HOLDOUT_METHOD))
        raise ValueError(f"unknown methods {unknown}; known: {known}")
    if HOLDOUT_METHOD in methods and not settings.holdout:
        raise ValueError(
            f"{HOLDOUT_METHOD} chooses the prior scale by held-out projections: set holdout"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    settings = replace(settings, seed=case.seed, method="dip")
    if case.channels is not None:
        settings = replace(settings, channels=case.channels)
    scan = case.scan(device=device)
    data = holdout.split_scan(scan, scan.volume, settings.holdout, backend=backend, device=device)
    A, y = data.A, data.y
    truth = torch.as_tensor(scan.truth, device=device)
    outputs: dict[str, _Output] = {}
    extra: dict[str, dict[str, Any]] = {}
    if "fbp" in methods:
        started = time.perf_counter()
        with torch.no_grad():
            image = A.fbp(y, filter=settings.fbp_filter)
        outputs["fbp"] = _Output(image, None, None, time.perf_counter() - started)
    if {"laplace", "laplace-em", HOLDOUT_METHOD} & set(methods):
        laplace, noise = _laplace_outputs(
            scan, data, settings, device, backend, progress, HOLDOUT_METHOD in methods
        )
        outputs.update(laplace)
        extra.update({name: {"noise_variance": value} for name, value in noise.items()})
    for name, uq in (("mc-dropout", "mcdropout"), ("sgld", "sgld")):
        if name in methods:
            result, seconds = _run(scan, replace(settings, uq=uq), device, backend, progress)
            outputs[name] = _output(result, device, seconds)
            # the baselines have no noise model: the predictive uses the DIP's estimate
            extra[name] = {"noise_variance": estimate_noise_sigma(y, A.geometry) ** 2}
    rows = []
    for name in methods:
        out = outputs[name]
        scores = metrics.summary(
            out.mean, truth, out.std, out.deviations, levels=LEVELS, tll_patch=tll_patch
        )
        row = {
            "case": case.name,
            "method": name,
            **scores,
            "seconds": out.seconds,
            **extra.get(name, {}),
        }
        if data.A_held is not None:
            row.update(_held_out_scores(data, out, row.get("noise_variance"), settings.holdout))
        rows.append(row)
        logger.info("%s", row)
    return rows, outputs, truth


def _held_out_scores(
    data: holdout.Data, out: _Output, noise_variance: float | None, every: int
) -> dict[str, float]:
    """The held-out projections' coverage and TLL under a method's predictive (NaN for a
    method without samples)."""
    if out.deviations is None or noise_variance is None:
        return dict.fromkeys(HOLDOUT_COLUMNS, math.nan)
    scores = holdout.check(
        data.A_held, data.y_held, out.mean, out.deviations, noise_variance, every=every
    )
    return {
        "holdout_coverage_0.5": scores.coverage[0.5],
        "holdout_coverage_0.9": scores.coverage[0.9],
        "holdout_tll": scores.tll,
    }


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------
HOLDOUT_COLUMNS = ("holdout_coverage_0.5", "holdout_coverage_0.9", "holdout_tll")
_COLUMNS = [
    ("case", "case", "{}"),
    ("method", "method", "{}"),
    ("psnr", "PSNR", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("coverage_0.5", "cov 50%", "{:.2f}"),
    ("coverage_0.9", "cov 90%", "{:.2f}"),
    ("coverage_0.95", "cov 95%", "{:.2f}"),
    ("tll_1", "TLL 1", "{:.2f}"),
    ("tll_patch", "TLL patch", "{:.2f}"),
    ("spearman", "Spearman", "{:.2f}"),
    ("mean_std", "mean std", "{:.3g}"),  # image units: attenuation per mm, ~0.02
    ("rmse", "RMSE", "{:.3g}"),
    ("seconds", "s", "{:.0f}"),
]


def markdown_table(rows: Sequence[dict[str, Any]], tll_patch: int = 2) -> str:
    """The result rows as a Markdown table (NaN shown as ``–``)."""

    def cell(value: Any, fmt: str) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "–"
        return fmt.format(value)

    columns = list(_COLUMNS)
    if any("holdout_tll" in row for row in rows):  # a suite with held-out projections
        columns[-1:-1] = [
            ("holdout_coverage_0.9", "held-out cov 90%", "{:.2f}"),
            ("holdout_tll", "held-out TLL", "{:.2f}"),
        ]
    header = [title if key != "tll_patch" else f"TLL {tll_patch}²" for key, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (cell(row.get(k, math.nan), fmt) for k, _, fmt in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_case(case: Case, outputs: dict[str, _Output], truth: torch.Tensor, out_dir: Path):
    """Calibration and reliability plots of one case, one curve per method with a std (none
    when no method has one)."""
    outputs = {name: out for name, out in outputs.items() if out.std is not None}
    if not outputs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plots

    fig, (ax_cal, ax_rel) = plt.subplots(1, 2, figsize=(10, 4.5))
    truth = truth.detach().cpu().float()
    for name, out in outputs.items():
        mean, std = out.mean.detach().cpu().float(), out.std.detach().cpu().float()
        expected, observed = metrics.calibration_curve(mean, std, truth)
        plots.calibration_plot(ax_cal, expected, observed, label=name)
        plots.reliability_plot(ax_rel, std, (mean - truth).abs(), label=name)
    ax_cal.set_title(f"{case.name}: central-interval coverage")
    ax_rel.set_title(f"{case.name}: reliability")
    for ax in (ax_cal, ax_rel):
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_dir / f"calibration_{case.name}.png", dpi=100)
    plt.close(fig)


def _write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows :func:`_write_csv` wrote, numbers as floats (empty cells dropped)."""
    with open(path, newline="") as handle:
        return [
            {k: v if k in ("case", "method") else float(v) for k, v in row.items() if v != ""}
            for row in csv.DictReader(handle)
        ]


def run_suite(
    name: str | Suite,
    out_dir: str | Path,
    *,
    device: torch.device | str | None = None,
    backend: str = "auto",
    methods: Sequence[str] = SUITE_METHODS,
    cases: Sequence[str] | None = None,
    progress: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run a suite and write ``results.csv``, ``results.md`` and the plots to ``out_dir``.

    Args:
        name: a key of :data:`SUITES` (``"small"``, ``"full"``) or a :class:`Suite`.
        out_dir: created if missing; the files are rewritten after every case, so an
            interrupted run leaves the finished cases behind.
        device: for the networks and the projector; ``None``: CUDA when available.
        backend: projector backend (``"auto"``, ``"torch"``, ``"astra"``).
        methods: a subset of :data:`SUITE_METHODS`.
        cases: names of the cases to run (default all).
        progress: progress bars (cases, and the fits within each).
        resume: keep the rows of the cases that ``out_dir/results.csv`` already holds for
            every method asked for (an interrupted run's finished cases) and run the others.

    Returns:
        One dict per case and method: ``case``, ``method``, ``psnr``, ``ssim``,
        ``coverage_0.5`` / ``0.9`` / ``0.95``, ``tll_1``, ``tll_patch``, ``spearman``,
        ``mean_std``, ``rmse``, ``seconds`` (and ``noise_variance`` for the Laplace rows).
    """
    from tqdm.auto import tqdm

    suite = SUITES[name] if isinstance(name, str) and name in SUITES else name
    if not isinstance(suite, Suite):
        raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    selected = [c for c in suite.cases if cases is None or c.name in cases]
    if cases is not None and len(selected) != len(set(cases)):
        missing = sorted(set(cases) - {c.name for c in selected})
        raise ValueError(f"suite {suite.name!r} has no cases {missing}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, list[dict[str, Any]]] = {}
    if resume and (out / "results.csv").exists():
        for row in _read_csv(out / "results.csv"):
            done.setdefault(row["case"], []).append(row)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for case in tqdm(selected, desc="cases", unit="case", disable=not progress):
        finished = {r["method"]: r for r in done.get(case.name, [])}
        if all(m in finished for m in methods):
            logger.info("evaluate: case %s is in %s already", case.name, out / "results.csv")
            rows += [finished[m] for m in methods]
            continue
        logger.info("evaluate: case %s (%s)", case.name, asdict(case))
        case_rows, outputs, truth = evaluate_case(
            case,
            suite.settings,
            methods=methods,
            device=device,
            backend=backend,
            progress=progress,
            tll_patch=suite.tll_patch,
        )
        rows += case_rows
        _write_csv(rows, out / "results.csv")
        table = markdown_table(rows, suite.tll_patch)
        elapsed = time.perf_counter() - started
        (out / "results.md").write_text(
            f"# Evaluation suite {suite.name!r}\n\n{table}\n"
            f"Settings: {asdict(suite.settings)}, TLL patch {suite.tll_patch}. "
            f"Total {elapsed:.0f} s.\n"
        )
        _plot_case(case, outputs, truth, out)
    return rows
