"""The evaluation suite: calibration of the uncertainty on synthetic scans with a known truth.

A suite is a fixed, seeded list of :class:`Case` (phantom, geometry, angles, noise) and one
:class:`Settings` (iterations, samples, network width). Every case is simulated by
:func:`dip_uq.simulation.simulate_scan` (the phantom times ``SCAN_ATTENUATION`` in 1/mm,
Gaussian noise relative to ``mean |A x|``) and reconstructed by

* ``fbp``: filtered back-projection (Hann filter; no std),
* ``laplace``: the DIP with the linearised Laplace std at its initial hyperparameters
  (σ_y² from the DIP's noise estimate, σ_b² from the scale of the fitted weights),
* ``laplace-em``: the same after sample-based EM of the prior variances,
* ``mc-dropout`` and ``sgld``: the baselines of :mod:`dip_uq.baselines`.

Metrics per method (:func:`dip_uq.metrics.summary`): PSNR and SSIM of the mean; coverage of the
central 50/90/95 % Gaussian intervals ``mean ± z std``; the patch-wise Gaussian test
log-likelihood (TLL, nats per voxel) for patch side 1 and :attr:`Settings.tll_patch`;
Spearman's rank correlation between the std and ``|mean - truth|``; wall time in seconds
(the Laplace rows include the DIP fit they linearise, so every row is the cost of getting
that output from the data). Uncertainty metrics of FBP are NaN.

Suites (:data:`SUITES`): ``tiny`` (two 32² cases of ``small``; the tests), ``small`` (2D
32²/48², 3D 16³; 14 minutes on a 2-core CPU), ``full`` (2D 128², 3D 64³; for a GPU). Each covers
sparse-view and limited-angle scans at 1 % and 5 % noise, Shepp-Logan and random-ellipse
phantoms, parallel beam in 2D and cone beam in 3D.

:func:`run_suite` (on the command line ``dip-uq evaluate``) writes ``results.csv``,
``results.md`` and, per case, a calibration plot (expected vs observed coverage of central
intervals) and a reliability plot (RMSE of the mean against the predicted std, in bins of the
std) to its output directory.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import metrics
from .dip import DIP
from .io import Scan
from .laplace import LinearisedLaplace, SolverConfig
from .networks import UNet
from .projector import RayTransform
from .simulation import PHANTOMS, SCAN_GEOMETRIES, simulate_scan

__all__ = [
    "LEVELS",
    "METHODS",
    "SUITES",
    "Case",
    "Settings",
    "Suite",
    "evaluate_case",
    "markdown_table",
    "run_suite",
]

logger = logging.getLogger("dip_uq")

LEVELS = (0.5, 0.9, 0.95)  # central-interval coverages reported
METHODS = ("fbp", "laplace", "laplace-em", "mc-dropout", "sgld")
FBP_FILTER = "hann"


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
            self.dim,
            self.size,
            self.geometry,
            self.n_angles,
            self.arc,
            self.noise,
            self.seed,
            device=device,
        )


@dataclass(frozen=True)
class Settings:
    """Method settings shared by every case of a suite.

    Attributes:
        dip_iterations: Adam steps of every DIP fit (Laplace, MC-dropout, SGLD alike);
            ``None`` for the DIP's default for its estimate of the noise level
            (:func:`dip_uq.dip.default_iterations`; 2000 for the suites' 5 % cases, 5200 for
            their 1 % cases), as a user would run it. (Fewer steps leave the DIP short of the
            data: with 400 on the tiny case its PSNR was 18.8 dB against 24.5 dB, and the
            Laplace std, which describes the uncertainty about a fitted network, covered 72 %
            of its 90 % interval.)
        channels: U-Net channels per scale (``UNet.default_for(shape, channels=...)``);
            ``None`` for the default width (128 in 2D, 32 in 3D).
        n_samples: posterior samples per method for the std and the metrics.
        em_steps: EM cycles of ``laplace-em``.
        em_samples: samples per EM cycle.
        cg_iterations: the most (preconditioned) CG iterations per Laplace solve (tolerance
            1e-3; the tiny case needs about 60).
        tll_patch: the larger patch side of the patch-wise TLL; ``n_samples`` should be well
            above ``tll_patch ** dim`` (the patch covariance is estimated from the samples).
    """

    dip_iterations: int | None
    channels: int | None
    n_samples: int
    em_steps: int
    em_samples: int
    cg_iterations: int
    tll_patch: int = 2


@dataclass(frozen=True)
class Suite:
    """A named list of cases run with one :class:`Settings`."""

    name: str
    cases: tuple[Case, ...]
    settings: Settings


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


_SMALL = Settings(
    dip_iterations=None, channels=16, n_samples=16, em_steps=3, em_samples=8, cg_iterations=150
)
_SMALL_CASES = (
    _grid([(2, 32, "shepp-logan", 30, 30)], (0.01, 0.05))
    + _grid([(2, 48, "ellipses", 40, 40)], (0.05,))
    + _grid([(3, 16, "shepp-logan", 16, 16)], (0.05,))
)

SUITES: dict[str, Suite] = {
    # the tests: the small suite's 2D sparse-view cases at 5 % and 1 % noise, about 1 and 2
    # minutes on one core
    "tiny": Suite("tiny", (_SMALL_CASES[1], _SMALL_CASES[0]), _SMALL),
    # 2-core CPU: 14 minutes measured (2 threads), 4 of them in the two 3D cases; at 24³ those
    # took 24 of 31 minutes (every case fits three DIPs at their default iterations)
    "small": Suite("small", _SMALL_CASES, _SMALL),
    # one GPU
    "full": Suite(
        "full",
        _grid([(2, 128, "shepp-logan", 60, 60), (2, 128, "ellipses", 60, 60)], (0.01, 0.05))
        + _grid([(3, 64, "shepp-logan", 64, 64)], (0.01, 0.05)),
        Settings(
            dip_iterations=None,
            channels=None,
            n_samples=128,
            em_steps=10,
            em_samples=16,
            cg_iterations=300,
            tll_patch=4,
        ),
    ),
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


def _network(case: Case, settings: Settings) -> UNet | None:
    if settings.channels is None:
        return None  # the DIP builds UNet.default_for itself
    return UNet.default_for(case.shape, channels=settings.channels, seed=case.seed)


def _dip_kwargs(case: Case, settings: Settings) -> dict[str, Any]:
    """Keyword arguments of every DIP fit of a case (the baselines pass them on)."""
    return {"iterations": settings.dip_iterations, "network": _network(case, settings)}


def _laplace_outputs(
    A: RayTransform,
    y: torch.Tensor,
    case: Case,
    settings: Settings,
    device: torch.device | str | None,
    progress: bool,
) -> tuple[_Output, _Output, dict[str, Any]]:
    """The DIP, then Laplace samples before and after EM; the third item is the EM history."""
    started = time.perf_counter()
    rec = DIP(A, seed=case.seed, device=device, progress=progress, **_dip_kwargs(case, settings))
    mean = rec.fit(y)
    dip_s = time.perf_counter() - started
    lap = LinearisedLaplace(
        rec, y=y, seed=case.seed, solver=SolverConfig(iterations=settings.cg_iterations)
    )

    def draw(since: float) -> _Output:
        samples = lap.sample(settings.n_samples)
        return _Output(mean, lap.std(samples=samples), samples, time.perf_counter() - since)

    started = time.perf_counter()
    before = draw(started)
    before.seconds += dip_s
    started = time.perf_counter()
    history = lap.fit_hyperparameters(
        settings.em_steps, n_samples=settings.em_samples, progress=progress
    )
    after = draw(started)
    after.seconds += dip_s
    return before, after, history


def _baseline(fn: Callable[..., Any], A, y, case, settings, device, progress) -> _Output:
    started = time.perf_counter()
    result = fn(
        A,
        y,
        n_samples=settings.n_samples,
        seed=case.seed,
        device=device,
        progress=progress,
        **_dip_kwargs(case, settings),
    )
    return _Output(
        result.mean, result.std, result.samples - result.mean, time.perf_counter() - started
    )


def evaluate_case(
    case: Case,
    settings: Settings,
    *,
    methods: Sequence[str] = METHODS,
    device: torch.device | str | None = None,
    backend: str = "auto",
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, _Output], torch.Tensor]:
    """Run ``methods`` on one case: the result rows, the outputs per method and the truth."""
    from . import baselines

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    scan = case.scan(device=device)
    A = RayTransform(scan.volume, scan.geometry, backend)
    truth = torch.as_tensor(scan.truth, device=device)
    y = torch.as_tensor(scan.sinogram, device=device)
    outputs: dict[str, _Output] = {}
    extra: dict[str, dict[str, Any]] = {}
    if "fbp" in methods:
        started = time.perf_counter()
        with torch.no_grad():
            image = A.fbp(y, filter=FBP_FILTER)
        outputs["fbp"] = _Output(image, None, None, time.perf_counter() - started)
    if "laplace" in methods or "laplace-em" in methods:
        before, after, history = _laplace_outputs(A, y, case, settings, device, progress)
        outputs["laplace"], outputs["laplace-em"] = before, after
        extra["laplace-em"] = {"noise_variance": history["noise_variance"][-1]}
        extra["laplace"] = {"noise_variance": history["noise_variance"][0]}
    for name, fn in (("mc-dropout", baselines.mc_dropout), ("sgld", baselines.sgld)):
        if name in methods:
            outputs[name] = _baseline(fn, A, y, case, settings, device, progress)
    rows = []
    for name in methods:
        out = outputs[name]
        scores = metrics.summary(
            out.mean, truth, out.std, out.deviations, levels=LEVELS, tll_patch=settings.tll_patch
        )
        row = {
            "case": case.name,
            "method": name,
            **scores,
            "seconds": out.seconds,
            **extra.get(name, {}),
        }
        rows.append(row)
        logger.info("%s", row)
    return rows, outputs, truth


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------
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

    header = [title if key != "tll_patch" else f"TLL {tll_patch}²" for key, title, _ in _COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row[k], fmt) for k, _, fmt in _COLUMNS) + " |")
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
    methods: Sequence[str] = METHODS,
    cases: Sequence[str] | None = None,
    progress: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run a suite and write ``results.csv``, ``results.md`` and the plots to ``out_dir``.

    Args:
        name: a key of :data:`SUITES` (``"tiny"``, ``"small"``, ``"full"``) or a :class:`Suite`.
        out_dir: created if missing; the files are rewritten after every case, so an
            interrupted run leaves the finished cases behind.
        device: for the networks and the projector; ``None``: CUDA when available.
        backend: projector backend (``"auto"``, ``"torch"``, ``"astra"``).
        methods: a subset of :data:`METHODS`.
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
        )
        rows += case_rows
        _write_csv(rows, out / "results.csv")
        table = markdown_table(rows, suite.settings.tll_patch)
        elapsed = time.perf_counter() - started
        (out / "results.md").write_text(
            f"# Evaluation suite {suite.name!r}\n\n{table}\n"
            f"Settings: {asdict(suite.settings)}. Total {elapsed:.0f} s.\n"
        )
        _plot_case(case, outputs, truth, out)
    return rows
