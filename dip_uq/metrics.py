"""Image-quality metrics for reconstructions with a known ground truth."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["patch_tll", "psnr", "ssim"]

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
    log-likelihood with variance ``mean(samples²)``.

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
    if patch < 1 or any(n < patch for n in mean.shape):
        raise ValueError(f"patch must be between 1 and the image side, got {patch}")
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
