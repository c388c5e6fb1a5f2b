"""Simulated measurements: noisy sinograms ``y`` of a known image ``x``.

Two noise models, both reproducible from an integer ``seed`` through a local
``torch.Generator`` on the data's device (the global RNG is never used or changed):

* **Gaussian** (default): ``y = A x + sigma * n`` with ``n ~ N(0, I)`` and a *relative* noise
  level (the DIP-CT literature's convention)::

      sigma = noise * mean(|A x|)

  the mean running over every bin of one noiseless sinogram (each item of a batch gets its own
  ``sigma``). :func:`noise_sigma` computes it; ``return_sigma=True`` hands it back.

* **Poisson** (``photons=I0``): photon counts behind the object, then the log transform::

      counts ~ Poisson(I0 * exp(-A x)),      y = -log(max(counts, 1) / I0)

  A bin that received no photon at all has no finite log value; it is set to one count (the
  smallest positive count, so ``y = log(I0)``, the largest line integral the dose can
  resolve), as real pipelines clip zero counts before the log. ``A x`` must then be in units
  of attenuation (dimensionless line integrals). For large counts the per-bin variance of
  ``y`` is about ``exp(A x) / I0`` (the delta method); ``return_sigma=True`` returns that
  approximate per-bin std ``sqrt(exp(A x) / I0)``.
"""

from __future__ import annotations

import math
from functools import partial
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .scan import Scan

if TYPE_CHECKING:
    from .projector import Operator

__all__ = [
    "DEFAULT_NOISE",
    "PHANTOMS",
    "SCAN_GEOMETRIES",
    "noise_sigma",
    "simulate",
    "simulate_scan",
]

DEFAULT_NOISE = 0.02  # relative Gaussian noise level used when ``noise`` is not given
PHANTOMS = ("shepp-logan", "ellipses")
SCAN_GEOMETRIES = {2: ("parallel", "fan"), 3: ("parallel", "cone")}
# Attenuation of phantom value 1 per voxel edge: line integrals through a 64-voxel object
# stay near 1 (transmission ~40 %), a typical lab-CT contrast for the demo and the tests.
SCAN_ATTENUATION = 0.02


def _check_noise(noise: Any) -> float:
    if isinstance(noise, bool) or not isinstance(noise, Real):
        raise ValueError(f"noise must be a number >= 0 (a relative level), got {noise!r}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0 (a relative level), got {noise!r}")
    return float(noise)


def noise_sigma(
    clean: torch.Tensor, noise: float = DEFAULT_NOISE, *, sino_ndim: int | None = None
) -> torch.Tensor:
    """The Gaussian noise std ``sigma = noise * mean(|clean|)`` of :func:`simulate`.

    Args:
        clean: noiseless sinogram(s) ``A x``, shape ``(..., *sino_shape)``.
        noise: relative noise level (>= 0).
        sino_ndim: how many trailing axes form one sinogram; the mean runs over those, so
            ``sigma`` has the leading (batch) shape. None: all axes (one sinogram, a 0-dim
            result).

    Returns:
        ``sigma`` as a tensor of the batch shape (0-dim for one sinogram), in the units of
        ``clean``; ``float(sigma)`` gives the number.

    >>> round(float(noise_sigma(torch.tensor([1.0, -3.0]), 0.1)), 6)   # 0.1 * mean(1, 3)
    0.2
    """
    if not isinstance(clean, torch.Tensor):
        raise ValueError(f"clean must be a torch.Tensor, got {type(clean).__name__}")
    noise = _check_noise(noise)
    ndim = clean.ndim if sino_ndim is None else int(sino_ndim)
    if not 0 <= ndim <= clean.ndim:
        raise ValueError(f"sino_ndim must be in [0, {clean.ndim}], got {sino_ndim!r}")
    dims = tuple(range(clean.ndim - ndim, clean.ndim))
    if not dims:
        return noise * clean.abs()
    return noise * clean.abs().mean(dim=dims)


def simulate(
    A: Operator,
    x: torch.Tensor,
    noise: float | None = None,
    *,
    photons: float | None = None,
    seed: int = 0,
    return_sigma: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Noisy measurements ``y`` of the image(s) ``x`` through the ray transform ``A``.

    Args:
        A: the forward operator, e.g. :class:`dip_uq.projector.RayTransform`: a callable
            mapping ``(..., *volume.shape)`` to ``(..., n_angles, *det_shape)``. When it has a
            ``volume`` attribute (a :class:`~dip_uq.geometry.Volume`), ``x``'s trailing shape is
            checked against it and leading axes are batch axes; without one, ``x`` is one
            image.
        x: the true image(s), a floating-point tensor ``(..., *volume.shape)``, finite.
        noise: Gaussian mode only: relative noise level (>= 0), ``sigma = noise * mean(|A x|)``
            per sinogram. None means :data:`DEFAULT_NOISE` (0.02). Giving it together with
            ``photons`` is an error (the two models are alternatives).
        photons: Poisson mode: incident photons per detector bin ``I0`` (> 0), see the module
            docstring. None selects the Gaussian mode.
        seed: integer seed of the local ``torch.Generator`` (on ``A(x)``'s device) that draws the
            noise; the same seed, input and device give the same ``y``.
        return_sigma: also return the noise std: Gaussian mode, the exact ``sigma`` as a tensor
            of the batch shape (0-dim for one image); Poisson mode, the approximate per-bin std
            ``sqrt(exp(A x) / I0)`` with the sinogram's shape.

    Returns:
        ``y`` with ``A(x)``'s shape, dtype and device (no autograd history), or ``(y, sigma)``.

    Raises:
        ValueError: ``x`` is not a tensor, not floating point, has the wrong shape or contains
            NaN/Inf; ``noise < 0``; ``photons <= 0``; both ``noise`` and ``photons`` given;
            a bad ``seed``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}; use .float()")
    if not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"x contains {bad} values; the true image must be finite")
    volume = getattr(A, "volume", None)
    vol_shape = tuple(getattr(volume, "shape", x.shape))
    if x.ndim < len(vol_shape) or tuple(x.shape[x.ndim - len(vol_shape) :]) != vol_shape:
        raise ValueError(
            f"x has shape {tuple(x.shape)}, expected (..., {', '.join(map(str, vol_shape))}) "
            "to match A.volume"
        )
    batch_ndim = x.ndim - len(vol_shape)
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if photons is not None:
        if noise is not None:
            raise ValueError(
                f"give either noise (Gaussian, got {noise!r}) or photons (Poisson, got "
                f"{photons!r}), not both"
            )
        if isinstance(photons, bool) or not isinstance(photons, Real):
            raise ValueError(f"photons must be a positive number, got {photons!r}")
        if not (math.isfinite(photons) and photons > 0):
            raise ValueError(f"photons must be a finite number > 0, got {photons!r}")
    else:
        noise = _check_noise(DEFAULT_NOISE if noise is None else noise)

    with torch.no_grad():
        clean = A(x)
        if not isinstance(clean, torch.Tensor):
            raise ValueError(f"A(x) must return a torch.Tensor, got {type(clean).__name__}")
        clean = clean.detach()
        if not bool(torch.isfinite(clean).all()):
            raise ValueError("A(x) contains NaN or Inf; check the operator and the image")
        generator = torch.Generator(device=clean.device)
        generator.manual_seed(int(seed))
        if photons is None:
            sigma = noise_sigma(clean, noise, sino_ndim=clean.ndim - batch_ndim)
            draw = torch.randn(
                clean.shape, generator=generator, dtype=clean.dtype, device=clean.device
            )
            y = clean + sigma.reshape(sigma.shape + (1,) * (clean.ndim - batch_ndim)) * draw
        else:
            line = clean.double()  # Poisson rates and logs in float64, then back
            rate = photons * torch.exp(-line)
            counts = torch.poisson(rate, generator=generator)
            y = -torch.log(counts.clamp_min(1.0) / photons)
            sigma = torch.sqrt(torch.exp(line) / photons).to(clean.dtype)
            y = y.to(clean.dtype)
    return (y, sigma) if return_sigma else y


def simulate_scan(
    phantom: str = "shepp-logan",
    *,
    dim: int = 2,
    size: int = 64,
    geometry: str = "parallel",
    angles: int = 30,
    arc: float | None = None,
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Scan:
    """A simulated scan of a built-in phantom, with its ground truth: a :class:`dip_uq.scan.Scan`.

    The object is ``phantom`` on a ``size``-voxel grid (voxel edge 1 mm, centred at the
    origin; ``(y, x)`` or ``(z, y, x)``) with attenuation :data:`SCAN_ATTENUATION` (1/mm) per
    unit phantom value. The detector has ``1.5 · size`` columns (and ``size`` rows in 3D) of
    1 mm at the rotation axis, so the whole grid is seen from every angle; fan and cone beams
    have the source ``4 · size`` mm before and the detector ``2 · size`` mm behind the axis
    (magnification 1.5). ``angles`` projections are spread evenly over ``arc`` radians
    without repeating the end point; ``arc < π`` is a limited-angle scan. The sinogram gets
    relative Gaussian noise ``noise`` (:func:`simulate`).

    Args:
        phantom: ``"shepp-logan"`` or ``"ellipses"`` (random ellipses drawn with ``seed``).
        dim: 2 or 3.
        size: voxels per side (>= 8).
        geometry: ``"parallel"`` or ``"fan"`` (2D); ``"parallel"`` or ``"cone"`` (3D).
        angles: number of projections (>= 1).
        arc: angular range in radians; default π for parallel beam, 2π for fan and cone.
        noise: relative Gaussian noise level (>= 0).
        seed: seeds the noise and the random ellipses.
        device: where the simulation runs; the returned arrays are NumPy.

    Returns:
        A ``Scan`` with ``sinogram`` ``(angles, cols)`` or ``(angles, rows, cols)``, ``truth``
        (attenuation in 1/mm) and ``volume`` set, ``source_format="simulated"``.
    """
    from .geometry import ConeBeam, FanBeam, ParallelBeam, Volume
    from .phantoms import random_ellipses, shepp_logan
    from .projector import RayTransform

    if phantom not in PHANTOMS:
        raise ValueError(f"unknown phantom {phantom!r}; use one of {', '.join(PHANTOMS)}")
    if dim not in SCAN_GEOMETRIES:
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if geometry not in SCAN_GEOMETRIES[dim]:
        choices = " or ".join(SCAN_GEOMETRIES[dim])
        raise ValueError(f"a {dim}D scan takes geometry {choices}, got {geometry!r}")
    if isinstance(size, bool) or not isinstance(size, Integral) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    if isinstance(angles, bool) or not isinstance(angles, Integral) or angles < 1:
        raise ValueError(f"angles must be a positive integer, got {angles!r}")
    arc = (np.pi if geometry == "parallel" else 2 * np.pi) if arc is None else float(arc)
    if not (0 < arc <= 2 * np.pi):
        raise ValueError(f"arc must be in (0, 2π] radians, got {arc!r}")
    theta = arc * np.arange(angles) / angles
    cols = round(1.5 * size)
    det_shape = (cols,) if dim == 2 else (size, cols)
    if geometry == "parallel":
        scan_geometry = ParallelBeam(theta, det_shape)
    else:
        beam = FanBeam if geometry == "fan" else ConeBeam
        scan_geometry = beam(theta, det_shape, 1.5, 4.0 * size, 2.0 * size)
    volume = Volume((size,) * dim, voxel_size=1.0)
    make = shepp_logan if phantom == "shepp-logan" else partial(random_ellipses, seed=seed)
    truth = make(volume.shape, device=device) * SCAN_ATTENUATION
    y = simulate(RayTransform(volume, scan_geometry), truth, noise=noise, seed=seed)
    note = (
        f"simulated: {phantom} phantom, {dim}D {geometry} beam, {angles} angles over "
        f"{np.rad2deg(arc):g}°, {100 * noise:g}% Gaussian noise, seed {seed}"
    )
    return Scan(
        y.cpu().numpy(),
        scan_geometry,
        source_format="simulated",
        notes=[note],
        truth=truth.cpu().numpy(),
        volume=volume,
        metadata={"title": note},
    )
