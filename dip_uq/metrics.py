"""Image-quality and calibration metrics for reconstructions with a known ground truth.

Images are 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` tensors. The calibration metrics (:func:`coverage`,
:func:`calibration_curve`, :func:`spearman`, :func:`reliability`) pool all voxels, so any
shape works (a masked selection ``x[mask]`` too); arrays must agree in shape. ``mean``,
``std``, ``truth`` and ``error`` are in the units of the image (attenuation per unit length);
coverages and levels are fractions in ``[0, 1]``. :func:`summary` computes every metric of
one reconstruction at once (the evaluation suite and the pipeline report it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_LEVELS",
    "calibration_curve",
    "coverage",
    "gaussian_tll",
    "patch_tll",
    "psnr",
    "reliability",
    "spearman",
    "ssim",
    "summary",
]

# Nominal levels of calibration_curve: 0.05, 0.10, ..., 0.95 and 0.99 (the tail matters).
DEFAULT_LEVELS = (*(round(0.05 * i, 2) for i in range(1, 20)), 0.99)

# SSIM constants of Wang et al. (2004): Gaussian window σ = 1.5 px truncated at 3.5σ
# (11 taps, as scikit-image with gaussian_weights=True), K1 = 0.01, K2 = 0.03.
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def psnr(estimate: torch.Tensor, truth: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(range² / mean((estimate - truth)²))``.

    Args:
        estimate: reconstruction, any shape.
        truth: ground truth, same shape.
        data_range: the peak value range; ``truth.max() - truth.min()`` by default.

    >>> round(psnr(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.1]), data_range=1.0), 2)
    23.01
    """
    if estimate.shape != truth.shape:
        raise ValueError(
            f"shapes differ: estimate {tuple(estimate.shape)}, truth {tuple(truth.shape)}"
        )
    truth = truth.to(estimate)
    span = float(truth.max() - truth.min()) if data_range is None else float(data_range)
    mse = float(((estimate - truth) ** 2).mean())
    return 10 * math.log10(span**2 / mse) if mse > 0 else math.inf


def ssim(estimate: torch.Tensor, truth: torch.Tensor, data_range: float | None = None) -> float:
    """Structural similarity (Wang et al. 2004) of a 2D image ``(Y, X)`` or 3D volume
    ``(Z, Y, X)``, averaged over the voxels whose Gaussian window fits inside the array.

    Local means, variances and the covariance are Gaussian-weighted (σ = 1.5 voxels, 11 taps
    per axis, separable, the same in 3D), with ``C1 = (0.01 L)²`` and ``C2 = (0.03 L)²``::

        SSIM = mean[(2 μ_e μ_t + C1)(2 σ_et + C2) / ((μ_e² + μ_t² + C1)(σ_e² + σ_t² + C2))]

    This equals scikit-image's ``structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False, data_range=L)`` in 2D. Computed in float64.

    Args:
        estimate: reconstruction, 2D or 3D, every axis at least 11 voxels.
        truth: ground truth, same shape.
        data_range: ``L``; ``truth.max() - truth.min()`` by default.

    Returns:
        The mean SSIM, at most 1 (1 for identical images).
    """
    if estimate.shape != truth.shape:
        raise ValueError(
            f"shapes differ: estimate {tuple(estimate.shape)}, truth {tuple(truth.shape)}"
        )
    if estimate.ndim not in (2, 3):
        raise ValueError(
            f"ssim needs a 2D (Y, X) or 3D (Z, Y, X) image, got shape {tuple(estimate.shape)}"
        )
    size = 2 * _SSIM_RADIUS + 1
    if min(estimate.shape) < size:
        raise ValueError(
            f"ssim needs at least {size} voxels along every axis, got {tuple(estimate.shape)}"
        )
    est = estimate.detach().to(torch.float64)
    ref = truth.detach().to(device=est.device, dtype=torch.float64)
    span = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    if not span > 0:
        raise ValueError(f"data_range must be positive, got {span!r} (constant truth?)")
    taps = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64, device=est.device)
    kernel = torch.exp(-(taps**2) / (2 * _SSIM_SIGMA**2))
    kernel /= kernel.sum()
    d = est.ndim
    conv = F.conv2d if d == 2 else F.conv3d

    def blur(image: torch.Tensor) -> torch.Tensor:
        out = image[None, None]
        for axis in range(d):
            shape = [1, 1] + [size if a == axis else 1 for a in range(d)]
            out = conv(out, kernel.reshape(shape))
        return out[0, 0]

    mu_e, mu_t = blur(est), blur(ref)
    var_e = blur(est * est) - mu_e**2
    var_t = blur(ref * ref) - mu_t**2
    cov = blur(est * ref) - mu_e * mu_t
    c1, c2 = (_SSIM_K1 * span) ** 2, (_SSIM_K2 * span) ** 2
    index = ((2 * mu_e * mu_t + c1) * (2 * cov + c2)) / (
        (mu_e**2 + mu_t**2 + c1) * (var_e + var_t + c2)
    )
    return float(index.mean())


def patch_tll(
    mean: torch.Tensor,
    samples: torch.Tensor,
    truth: torch.Tensor,
    patch: int = 1,
    jitter: float = 1e-6,
) -> float:
    """Patch-wise Gaussian test log-likelihood of the truth, per pixel (nats).

    The image is cut into non-overlapping ``patch``-sided squares (cubes in 3D; a remainder at
    the far edges is left out). In each patch the posterior is taken as Gaussian with the
    given ``mean`` and the covariance of the zero-mean ``samples``,
    ``Σ = Sᵀ S / n + jitter · mean(diag) · I`` (the jitter keeps ``Σ`` invertible when
    ``n`` is below the patch size), and ``log N(truth - mean; 0, Σ)`` is summed over patches
    and divided by the number of pixels covered. ``patch=1`` is the per-pixel Gaussian
    log-likelihood with variance ``mean(samples²)``. Patch sides ``1 .. k`` work in 2D and 3D
    (a curve over sides is ``[patch_tll(mean, samples, truth, p) for p in range(1, k + 1)]``).
    Samples of the image itself (:class:`dip_uq.baselines.UQResult`) are passed as
    ``samples - mean``.

    Args:
        mean: the reconstruction, ``(ny, nx)`` or ``(nz, ny, nx)``.
        samples: zero-mean posterior samples ``(n, *mean.shape)`` (``LinearisedLaplace.sample``).
        truth: the ground truth, shaped like ``mean``.
        patch: patch side in pixels (>= 1).
        jitter: relative diagonal added to each patch covariance.
    """
    if samples.shape[1:] != mean.shape or truth.shape != mean.shape:
        raise ValueError(
            f"shapes differ: mean {tuple(mean.shape)}, samples {tuple(samples.shape)}, "
            f"truth {tuple(truth.shape)}; samples must be (n, *mean.shape)"
        )
    integer = isinstance(patch, (int, np.integer)) and not isinstance(patch, bool)
    if not integer or patch < 1 or any(n < patch for n in mean.shape):
        raise ValueError(
            f"patch must be an integer between 1 and the shortest image side "
            f"{min(mean.shape)}, got {patch!r}"
        )
    dims = mean.ndim
    cut = tuple(slice(0, n - n % patch) for n in mean.shape)

    def patches(x: torch.Tensor) -> torch.Tensor:
        """``(..., *shape)`` to ``(..., n_patches, patch**dims)``."""
        lead = x.shape[: x.ndim - dims]
        x = x[(..., *cut)]
        shape = [s for n in x.shape[x.ndim - dims :] for s in (n // patch, patch)]
        x = x.reshape(*lead, *shape)
        order = [2 * i for i in range(dims)] + [2 * i + 1 for i in range(dims)]
        x = x.permute(*range(len(lead)), *(len(lead) + o for o in order))
        return x.reshape(*lead, -1, patch**dims)

    residual = patches((truth - mean).double())  # (P, k)
    deviations = patches(samples.double()).transpose(0, 1)  # (P, n, k)
    cov = deviations.transpose(1, 2) @ deviations / samples.shape[0]  # (P, k, k)
    k = cov.shape[-1]
    level = cov.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(torch.finfo(cov.dtype).tiny)
    cov = cov + jitter * level[:, None, None] * torch.eye(k, dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, residual[..., None], upper=False)[..., 0]
    logdet = 2 * chol.diagonal(dim1=1, dim2=2).log().sum(-1)
    loglik = -0.5 * (white.square().sum(-1) + logdet + k * math.log(2 * math.pi))
    return float(loglik.sum() / (residual.numel()))


# --------------------------------------------------------------------------------------------
# calibration of a per-voxel standard deviation
# --------------------------------------------------------------------------------------------
def _tensors(**arrays: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
    """The arrays as floating-point tensors of one dtype on the first one's device, after
    checking that they agree in shape, are not empty and hold only finite values."""
    tensors = {}
    for name, value in arrays.items():
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        value = torch.as_tensor(value).detach()
        tensors[name] = value if value.is_floating_point() else value.double()
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes differ: {listed}; pass arrays of one shape, e.g. (Y, X)")
    first = next(iter(tensors.values()))
    if first.numel() == 0:
        raise ValueError(f"the arrays are empty (shape {tuple(first.shape)})")
    dtypes = (t.dtype for t in tensors.values())
    dtype = functools.reduce(torch.promote_types, dtypes, torch.float32)
    out = []
    for name, t in tensors.items():
        t = t.to(first.device, dtype)
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{name} contains {bad} NaN/Inf values")
        out.append(t)
    return out


def _check_std(std: torch.Tensor) -> None:
    low = float(std.min())
    if low < 0:
        raise ValueError(f"std must be non-negative, got a minimum of {low:g}")


def _levels(levels: Iterable[float]) -> list[float]:
    """Nominal levels as floats, each strictly between 0 and 1."""
    try:
        values = [float(level) for level in np.atleast_1d(np.asarray(levels, dtype=float))]
    except (TypeError, ValueError):
        raise ValueError(f"levels must be numbers in (0, 1), got {levels!r}") from None
    if not values:
        raise ValueError("levels is empty; pass at least one level in (0, 1)")
    bad = [v for v in values if not 0 < v < 1]
    if bad:
        raise ValueError(f"levels must lie strictly between 0 and 1, got {bad[0]!r}")
    return values


def _coverages(
    mean: torch.Tensor, std: torch.Tensor, truth: torch.Tensor, levels: list[float]
) -> list[float]:
    mean, std, truth = _tensors(mean=mean, std=std, truth=truth)
    _check_std(std)
    error = (truth - mean).abs()
    normal = NormalDist()
    # |truth - mean| <= z std, not a ratio: a voxel with std 0 counts only if its error is 0
    return [
        float((error <= normal.inv_cdf((1 + level) / 2) * std).double().mean()) for level in levels
    ]


def coverage(
    mean: torch.Tensor,
    std: torch.Tensor,
    truth: torch.Tensor,
    levels: Iterable[float] = (0.5, 0.9, 0.95),
) -> dict[float, float]:
    """Empirical coverage of the central Gaussian intervals at the nominal ``levels``.

    For each level ``l`` the fraction of voxels whose truth lies in the interval::

        |truth - mean| <= z_l · std,        z_l = Φ⁻¹((1 + l) / 2)

    (``z`` = 0.674, 1.645, 1.960 for ``l`` = 0.5, 0.9, 0.95). A calibrated Gaussian posterior
    gives coverage ≈ ``l``; above ``l`` the std is too large, below too small.

    Args:
        mean: the reconstruction, ``(Y, X)`` or ``(Z, Y, X)`` (any shape works; all voxels
            are pooled).
        std: the per-voxel posterior standard deviation, same shape, ``>= 0``.
        truth: the ground truth, same shape.
        levels: nominal levels, each strictly between 0 and 1.

    Returns:
        ``{level: observed fraction}`` in the order of ``levels``.

    >>> mean = torch.zeros(2, 2)
    >>> coverage(mean, torch.ones(2, 2), torch.tensor([[0.1, -0.5], [1.0, 3.0]]), (0.5, 0.9))
    {0.5: 0.5, 0.9: 0.75}
    """
    values = _levels(levels)
    return dict(zip(values, _coverages(mean, std, truth, values), strict=True))


def calibration_curve(
    mean: torch.Tensor,
    std: torch.Tensor,
    truth: torch.Tensor,
    levels: Iterable[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected against observed coverage of the central Gaussian intervals.

    The observed value at level ``l`` is :func:`coverage` at ``l``; a calibrated posterior
    lies on the diagonal (plot it with :func:`dip_uq.plots.calibration_plot`).

    Args:
        mean, std, truth: as for :func:`coverage`.
        levels: nominal levels in (0, 1); ``None``: :data:`DEFAULT_LEVELS` (0.05, 0.10, ...,
            0.95, 0.99).

    Returns:
        ``(expected, observed)``: two float64 arrays of the same length, ``expected`` the
        levels, ``observed`` the fractions of voxels covered.
    """
    values = _levels(DEFAULT_LEVELS if levels is None else levels)
    return np.array(values), np.array(_coverages(mean, std, truth, values))


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a flat tensor in float64, ties given their average rank."""
    order = torch.argsort(x, stable=True)
    _, group, counts = torch.unique_consecutive(x[order], return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()  # rank of the last member of each tie group
    ranks = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    ranks[order] = (last - (counts - 1) / 2)[group]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two arrays of one shape (all voxels pooled).

    The Pearson correlation of the ranks, ties given their average rank (as
    ``scipy.stats.spearmanr``)::

        ρ = cov(rank a, rank b) / (std(rank a) · std(rank b))

    Used as ``spearman(std, (mean - truth).abs())``: 1 when the predicted std orders the
    voxels exactly as the actual error does. ``nan`` when either array is constant.

    >>> round(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0])), 12)
    0.5
    """
    a, b = _tensors(a=a, b=b)
    if a.numel() < 2:
        raise ValueError(f"spearman needs at least 2 values, got shape {tuple(a.shape)}")
    ra, rb = _ranks(a.reshape(-1)), _ranks(b.reshape(-1))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else math.nan


def reliability(
    std: torch.Tensor, error: torch.Tensor, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binned predicted std against the actual root-mean-square error.

    The voxels are sorted by ``std`` and split into ``bins`` groups of equal count (the std
    quantiles; the first ``n mod bins`` groups hold one voxel more). Per group ``g``::

        mean_std[g] = mean(std),        rmse[g] = sqrt(mean(error²))

    A calibrated std gives ``rmse ≈ mean_std`` (the diagonal of
    :func:`dip_uq.plots.reliability_plot`).

    Args:
        std: the per-voxel posterior std, ``(Y, X)`` or ``(Z, Y, X)`` (any shape), ``>= 0``.
        error: the error ``mean - truth`` (its sign does not matter), same shape.
        bins: number of groups, between 1 and the number of voxels.

    Returns:
        ``(mean_std, rmse, counts)``: float64, float64 and int64 arrays of length ``bins``,
        in increasing order of std.

    >>> s, r, n = reliability(torch.tensor([1.0, 2.0, 3.0, 4.0]),
    ...                       torch.tensor([1.0, -1.0, 3.0, -3.0]), bins=2)
    >>> s.tolist(), r.tolist(), n.tolist()
    ([1.5, 3.5], [1.0, 3.0], [2, 2])
    """
    std, error = _tensors(std=std, error=error)
    _check_std(std)
    n = std.numel()
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= n:
        raise ValueError(f"bins must be an integer between 1 and {n} (the voxels), got {bins!r}")
    order = torch.argsort(std.reshape(-1), stable=True)
    std_sorted = std.reshape(-1)[order].double()
    error_sorted = error.reshape(-1)[order].double()
    counts = np.full(bins, n // bins, dtype=np.int64)
    counts[: n % bins] += 1
    sizes = counts.tolist()
    mean_std = torch.stack([g.mean() for g in std_sorted.split(sizes)])
    rmse = torch.stack([g.square().mean().sqrt() for g in error_sorted.split(sizes)])
    return mean_std.cpu().numpy(), rmse.cpu().numpy(), counts


# --------------------------------------------------------------------------------------------
# every metric of one reconstruction
# --------------------------------------------------------------------------------------------
def gaussian_tll(error: torch.Tensor, std: torch.Tensor) -> float:
    """Mean per-voxel Gaussian log-likelihood (nats) of ``error = mean - truth`` under
    ``N(0, std²)``; a zero variance is raised to the smallest positive float64."""
    var = std.double().square().clamp_min(torch.finfo(torch.float64).tiny)
    return float((-0.5 * (error.double().square() / var + torch.log(2 * math.pi * var))).mean())


def summary(
    mean: torch.Tensor | np.ndarray,
    truth: torch.Tensor | np.ndarray,
    std: torch.Tensor | np.ndarray | None = None,
    deviations: torch.Tensor | np.ndarray | None = None,
    *,
    levels: Iterable[float] = (0.5, 0.9, 0.95),
    tll_patch: int = 2,
) -> dict[str, float]:
    """Every metric of a reconstruction ``mean`` (and its ``std``) against the ``truth``.

    The keys, always all present and in this order (NaN where a metric does not apply)::

        psnr            :func:`psnr` of mean against truth (dB; range from the truth)
        ssim            :func:`ssim`; NaN unless 2D/3D with every axis >= 11 voxels
        coverage_<l>    :func:`coverage` at each level l, named with ``f"{l:g}"``
                        (``coverage_0.5``, ``coverage_0.9``, ``coverage_0.95``)
        tll_1           per-voxel Gaussian test log-likelihood (nats per voxel): from the
                        deviations, :func:`patch_tll` with patch 1 (variance mean(dev²));
                        without them, from std: mean[-(e²/std² + log(2π std²)) / 2],
                        e = mean - truth
        tll_patch       :func:`patch_tll` with side ``min(tll_patch, shortest side)``;
                        NaN without deviations
        spearman        :func:`spearman` of std against |mean - truth|
        mean_std        mean of std over the voxels
        rmse            sqrt(mean((mean - truth)²)), always given

    Without ``std`` every uncertainty metric (coverages to ``mean_std``) is NaN.

    Args:
        mean: the reconstruction, ``(Y, X)`` or ``(Z, Y, X)`` (tensor or array, any device;
            computed on the CPU).
        truth: the ground truth, same shape.
        std: per-voxel posterior std, same shape, ``>= 0``; ``None`` for a reconstruction
            without uncertainty.
        deviations: zero-mean posterior samples ``(n, *mean.shape)`` (samples minus
            ``mean``) for the TLLs; needs ``std`` too.
        levels: nominal coverage levels, each in (0, 1).
        tll_patch: the larger TLL patch side (>= 1), capped at the shortest image side.

    Returns:
        ``{name: value}`` as above, plain floats.

    >>> row = summary(torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    >>> round(row["psnr"], 2), round(row["rmse"], 9), math.isnan(row["ssim"]), row["tll_1"]
    (3.01, 0.707106781, True, nan)
    """
    values = _levels(levels)
    if isinstance(tll_patch, bool) or not isinstance(tll_patch, (int, np.integer)) or tll_patch < 1:
        raise ValueError(f"tll_patch must be an integer >= 1, got {tll_patch!r}")
    if deviations is not None and std is None:
        raise ValueError(
            "deviations were given without std; pass the std too, e.g. "
            "std = deviations.square().mean(0).sqrt()"
        )
    arrays = {"mean": mean, "truth": truth}
    if std is not None:
        arrays["std"] = std
    tensors = [t.cpu() for t in _tensors(**arrays)]
    mean, truth = tensors[0], tensors[1]
    error = mean - truth
    fits = mean.ndim in (2, 3) and min(mean.shape) >= 2 * _SSIM_RADIUS + 1
    row = {"psnr": psnr(mean, truth), "ssim": ssim(mean, truth) if fits else math.nan}
    row.update(dict.fromkeys([f"coverage_{level:g}" for level in values], math.nan))
    row.update(dict.fromkeys(["tll_1", "tll_patch", "spearman", "mean_std"], math.nan))
    row["rmse"] = float(error.double().square().mean().sqrt())
    if std is None:
        return row
    std = tensors[2]
    _check_std(std)
    for level, value in zip(values, _coverages(mean, std, truth, values), strict=True):
        row[f"coverage_{level:g}"] = value
    if deviations is None:
        row["tll_1"] = gaussian_tll(error, std)
    else:
        if not isinstance(deviations, (torch.Tensor, np.ndarray)):
            raise ValueError(f"deviations must be a torch.Tensor, got {type(deviations).__name__}")
        dev = torch.as_tensor(deviations).detach().cpu()
        if dev.ndim != mean.ndim + 1 or tuple(dev.shape[1:]) != tuple(mean.shape):
            raise ValueError(
                f"deviations have shape {tuple(dev.shape)}, expected (n, "
                f"{', '.join(map(str, mean.shape))}) like mean"
            )
        dev = dev.to(mean.dtype)
        row["tll_1"] = patch_tll(mean, dev, truth, 1)
        row["tll_patch"] = patch_tll(mean, dev, truth, min(int(tll_patch), *mean.shape))
    row["spearman"] = spearman(std, error.abs())
    row["mean_std"] = float(std.double().mean())
    return row
