"""The ray transform ``A`` of a scan and its analytic inverse (FBP/FDK).

``RayTransform`` is a ``torch.nn.Module`` whose forward is differentiable: its backward
applies the backend's adjoint and the adjoint's backward applies the forward, so gradients,
second derivatives, ``torch.func.jvp``/``vjp`` and ``torch.func.vmap`` work through it.

Backends (chosen lazily, imported lazily):

* ``"torch"``: pure PyTorch ray marching, every geometry, CPU and CUDA; ``adjoint`` is the
  exact transpose of ``forward``.
* ``"astra"``: astra-toolbox; CUDA for 3D (and 2D on CUDA tensors), CPU projectors for 2D.
  Its CUDA FP/BP pair is not an exact adjoint (relative mismatch of a few 1e-3).
* ``"auto"``: ``"astra"`` where ASTRA's CUDA is usable, and for 2D parallel beam wherever
  ASTRA imports (its CPU ``linear`` projector: an exact adjoint pair, and faster than the
  torch backend at every size benchmarked, most of all in back projection,
  ``scripts/bench_peers.py``; docs/measurements.md); otherwise
  ``"torch"``. Fan beam stays on ``"torch"``: ASTRA's CPU fan-beam projector is the
  coarser ``line_fanflat``. :attr:`RayTransform.backend` (and ``run.json``) says which.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch

from ..geometry import Geometry, Volume
from .analytic import fbp

__all__ = ["BACKENDS", "Backend", "RayTransform"]

logger = logging.getLogger("dip_uq")

BACKENDS = ("auto", "torch", "astra")


class Backend(Protocol):
    """What a projector backend provides: plain tensor maps with one leading batch axis."""

    name: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *volume.shape) -> (B, *geometry.sino_shape)``, line integrals."""

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, *geometry.sino_shape) -> (B, *volume.shape)``."""


def _auto_backend(geometry: Geometry) -> str:
    """What ``"auto"`` means for ``geometry`` here (see the module docstring)."""
    try:
        from . import astra_backend
    except ImportError:
        return "torch"
    if astra_backend.astra_cuda_available():
        return "astra"
    if geometry.ndim == 2 and geometry.kind == "parallel" and astra_backend.astra_importable():
        return "astra"
    return "torch"


def _make_backend(name: str, volume: Volume, geometry: Geometry, options: dict) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    if name == "auto":
        name = _auto_backend(geometry)
    if name == "astra":
        from .astra_backend import AstraBackend

        return AstraBackend(volume, geometry, **options)
    from .torch_backend import TorchBackend

    return TorchBackend(volume, geometry, **options)


def _check_input(
    value: Any, tail: tuple[int, ...], what: str, fix: str
) -> tuple[torch.Tensor, torch.Size]:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(value).__name__}; {fix}")
    if not value.is_floating_point() or value.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{what} must be float32 or float64, got {value.dtype}; use .float()")
    if tuple(value.shape[value.ndim - len(tail) :]) != tail or value.ndim < len(tail):
        raise ValueError(
            f"{what} has shape {tuple(value.shape)}, expected (..., {', '.join(map(str, tail))})"
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{what} contains NaN or Inf; clean the data before projecting")
    return value, value.shape[: value.ndim - len(tail)]


class _Project(torch.autograd.Function):
    """``A`` (``transpose=False``) or ``Aᵀ`` (``transpose=True``) with matched derivatives."""

    @staticmethod
    def forward(x: torch.Tensor, op: RayTransform, transpose: bool) -> torch.Tensor:
        if transpose:
            tail_in, tail_out, apply = op.range_shape, op.domain_shape, op.impl.adjoint
        else:
            tail_in, tail_out, apply = op.domain_shape, op.range_shape, op.impl.forward
        what = "the sinogram passed to RayTransform.adjoint" if transpose else "the volume"
        x, lead = _check_input(x, tail_in, what, "convert it with torch.as_tensor(...)")
        out = apply(x.reshape(-1, *tail_in).contiguous())
        return out.reshape(*lead, *tail_out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        _, ctx.op, ctx.transpose = inputs

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _Project.apply(grad, ctx.op, not ctx.transpose), None, None

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, _op: None, _transpose: None) -> torch.Tensor:
        return _Project.apply(tangent, ctx.op, ctx.transpose)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: torch.Tensor, op: Any, transpose: bool):
        # The operator accepts leading batch axes, so a vmapped axis is just one more.
        if in_dims[0] is None:
            return _Project.apply(x, op, transpose), None
        return _Project.apply(x.movedim(in_dims[0], 0), op, transpose), 0


class RayTransform(torch.nn.Module):
    """The discrete ray transform of a scan: line integrals of a volume along every ray.

    Args:
        volume: the reconstruction grid.
        geometry: the scan geometry; ``geometry.ndim`` must equal ``volume.ndim``.
        backend: ``"auto"``, ``"torch"`` or ``"astra"`` (see the module docstring). The
            backend used is logged and stored in :attr:`backend`.
        **options: passed to the backend (e.g. ``step`` and ``memory_budget`` for torch).

    Shapes: ``A(x)`` maps ``(..., *volume.shape) -> (..., n_angles, *det_shape)``
    (physical line integrals: attenuation × length); ``A.adjoint(y)`` maps back. Both accept
    any leading batch axes and float32/float64 tensors on any device.

    >>> import torch, numpy as np, dip_uq as du
    >>> A = du.RayTransform(du.Volume((8, 8)), du.ParallelBeam(np.zeros(1), (8,)), "torch")
    >>> float(A(torch.ones(8, 8)).mean())   # every ray crosses 8 unit voxels
    8.0
    """

    def __init__(
        self, volume: Volume, geometry: Geometry, backend: str = "auto", **options: Any
    ) -> None:
        super().__init__()
        if not isinstance(volume, Volume):
            raise ValueError(f"volume must be a dip_uq.Volume, got {type(volume).__name__}")
        if not isinstance(geometry, Geometry):
            raise ValueError(f"geometry must be a dip_uq geometry, got {type(geometry).__name__}")
        if volume.ndim != geometry.ndim:
            raise ValueError(
                f"a {volume.ndim}D volume needs a {volume.ndim}D geometry, got {geometry!r} "
                f"(det_shape {geometry.det_shape} makes it {geometry.ndim}D)"
            )
        self.volume, self.geometry = volume, geometry
        self.impl = _make_backend(backend, volume, geometry, options)
        self.backend: str = self.impl.name
        logger.info("RayTransform uses the %s backend (requested %r)", self.backend, backend)

    @property
    def domain_shape(self) -> tuple[int, ...]:
        """Shape of one volume, ``volume.shape``."""
        return self.volume.shape

    @property
    def range_shape(self) -> tuple[int, ...]:
        """Shape of one sinogram, ``(n_angles, *det_shape)``."""
        return self.geometry.sino_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` of shape ``(..., *volume.shape)`` to ``(..., *sino_shape)``."""
        return _Project.apply(x, self, False)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Back-project ``y`` of shape ``(..., *sino_shape)`` to ``(..., *volume.shape)``."""
        return _Project.apply(y, self, True)

    def fbp(
        self, y: torch.Tensor, filter: str = "ram-lak", frequency_scaling: float = 1.0
    ) -> torch.Tensor:
        """Filtered back-projection (parallel, fan) or FDK (cone) of ``y``; see
        :func:`dip_uq.projector.analytic.fbp` for the filters and the weighting."""
        return fbp(y, self.volume, self.geometry, filter, frequency_scaling)

    def extra_repr(self) -> str:
        return f"{self.volume!r}, {self.geometry!r}, backend={self.backend!r}"
