"""Pure-PyTorch ray transform: ray marching with (bi/tri)linear interpolation.

Each detector pixel defines one ray through its centre (parallel to the ray direction, or
from the source). The ray is sampled at equidistant points ``Δs`` apart where it crosses the
volume (its box widened by half a voxel, the support of the interpolation); the volume is
interpolated there with ``torch.nn.functional.grid_sample`` (zero outside the grid) and the
line integral is ``Δs · Σ_m f(p_m)``, in physical units (attenuation × length).

The adjoint is the exact transpose of that sum: it calls the backward kernel of
``grid_sample`` directly, without a forward pass. Everything runs on any device and in
float32 or float64.

On the CPU the operator is stored as a sparse matrix where it fits in ``matrix_budget``
bytes: the same sample points and interpolation weights, summed per (ray, voxel), as CSR
matrices ``A`` and ``Aᵀ``, so that forward and adjoint are sparse matrix products (the same
operator up to float rounding, ``Aᵀ`` its exact transpose). The same products by ray marching
cost far more on a CPU, an order of magnitude and more for a batch of volumes
(docs/measurements.md).
Elsewhere (and on CUDA) memory is bounded by processing the projections in chunks whose
sample points fit in ``memory_budget`` bytes; the sample points are kept between calls (the
same operator is applied thousands of times in a reconstruction) while they fit in
``cache_budget`` bytes.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Geometry, Volume

__all__ = ["TorchBackend"]


class TorchBackend:
    """Ray-marching projector on torch tensors.

    Args:
        volume: the reconstruction grid.
        geometry: the scan geometry (2D or 3D, same dimension as ``volume``).
        step: distance between samples along a ray, in units of the smallest voxel edge.
            Default 0.5 in 2D and 1.0 in 3D, where the cost matters more: against a converged
            reference (a much finer step) the relative error of ``A x`` at either default is
            below the noise of real scans (docs/measurements.md).
        memory_budget: bytes of sample points and interpolated values per chunk.
        cache_budget: the sample points of all projections are cached between calls when
            they fit in this many bytes (per device and dtype); 0 disables the cache.
        matrix_budget: on the CPU, the operator is stored as sparse matrices ``A`` and
            ``Aᵀ`` when both fit in this many bytes (per dtype; a 24³ cone beam with 24
            projections needs 24 MB; a 64³ one with 64 fits the default); 0: always ray-march.
    """

    name = "torch"

    def __init__(
        self,
        volume: Volume,
        geometry: Geometry,
        step: float | None = None,
        memory_budget: int = 256 * 2**20,
        cache_budget: int = 512 * 2**20,
        matrix_budget: int = 2**31,
    ) -> None:
        if step is None:
            step = 0.5 if volume.ndim == 2 else 1.0
        if not (step > 0 and math.isfinite(step)):
            raise ValueError(f"step must be a positive number of voxels, got {step!r}")
        self.volume, self.geometry = volume, geometry
        self.step_length = step * min(volume.voxel_size)
        self.cache_budget = int(cache_budget)
        self.matrix_budget = int(matrix_budget)
        ndim = volume.ndim
        center = np.array(volume.center[::-1])  # world order (x, y[, z])
        self._half_extent = np.array(volume.extent[::-1]) / 2
        # the interpolation reaches half a voxel beyond the outer voxel faces
        self._support = self._half_extent + np.array(volume.voxel_size[::-1]) / 2

        frames = geometry.frames()
        self._parallel = geometry.kind == "parallel"
        det = geometry.det_shape
        # world-frame quantities relative to the volume centre
        self._arrays = {
            "first": frames["ray"] if self._parallel else frames["source"] - center,
            "center": frames["center"] - center,
            "u": frames["u"],
            "col": np.arange(det[-1]) - (det[-1] - 1) / 2,
        }
        if ndim == 3:
            self._arrays.update(v=frames["v"], row=np.arange(det[0]) - (det[0] - 1) / 2)
        self._rays_per_projection = math.prod(det)
        longest = 2 * float(np.linalg.norm(self._support))
        per_projection = self._rays_per_projection * (longest / self.step_length + 1)
        per_projection *= (2 * ndim + 3) * 4  # grid, temporaries, values of a batch group
        self._chunk = max(1, min(geometry.n_angles, int(memory_budget // per_projection)))
        self._cache: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        # (A, Aᵀ) per dtype, or None where they do not fit matrix_budget
        self._matrices: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._constants: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    # ----------------------------------------------------------------------------------------
    def _tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        key = (device, dtype)
        if key not in self._constants:
            arrays = {**self._arrays, "half": self._half_extent, "support": self._support}
            self._constants[key] = {
                k: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)
                for k, a in arrays.items()
            }
        return self._constants[key]

    def _rays(self, t: dict[str, torch.Tensor], chunk: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Origins and unit directions of the rays of projections ``chunk``,
        broadcastable to ``(K, [rows,] cols, ndim)``."""
        ndim = self.volume.ndim
        pixels = t["center"][chunk, None, :] + t["col"][None, :, None] * t["u"][chunk, None, :]
        if ndim == 3:
            pixels = pixels[:, None] + t["row"][None, :, None, None] * t["v"][chunk, None, None]
        first = t["first"][chunk].reshape(-1, *(1,) * (ndim - 1), ndim)
        if self._parallel:
            return pixels, first / first.norm(dim=-1, keepdim=True)
        direction = pixels - first
        return first, direction / direction.norm(dim=-1, keepdim=True)

    def _grid(self, t: dict[str, torch.Tensor], chunk: slice) -> torch.Tensor:
        """Sample points of the rays of projections ``chunk`` in ``grid_sample``'s normalised
        coordinates (the volume spans [-1, 1] per axis with ``align_corners=False``), shaped
        ``(1, K*rows, cols, M, 3)`` in 3D or ``(1, K*cols, M, 2)`` in 2D."""
        origin, direction = self._rays(t, chunk)
        # slab method: where each ray enters and leaves the interpolation support
        inverse = 1 / direction  # ±inf along axes the ray is parallel to
        near = (-t["support"] - origin) * inverse
        far = (t["support"] - origin) * inverse
        enter = torch.minimum(near, far).nan_to_num(nan=-math.inf).amax(-1)
        leave = torch.maximum(near, far).nan_to_num(nan=math.inf).amin(-1)
        if not self._parallel:
            enter = enter.clamp(min=0)  # nothing behind the source
        hits = leave > enter
        enter = torch.where(hits, enter, torch.zeros_like(enter))
        chord = torch.where(hits, leave - enter, torch.zeros_like(enter))
        n_samples = max(1, math.ceil(float(chord.max()) / self.step_length))
        offsets = (torch.arange(n_samples, device=enter.device, dtype=enter.dtype) + 0.5) * (
            self.step_length
        )
        lengths = enter[..., None] + offsets  # (K, [rows,] cols, M)
        points = torch.addcmul(origin[..., None, :], lengths[..., None], direction[..., None, :])
        points /= t["half"]
        return points.reshape(1, -1, *points.shape[-self.volume.ndim :])

    def _grids(self, device: torch.device, dtype: torch.dtype):
        """Yield ``(projection slice, grid)`` per chunk, cached while it fits the budget."""
        key = (device, dtype)
        chunks = [slice(s, s + self._chunk) for s in range(0, self.geometry.n_angles, self._chunk)]
        if key in self._cache:
            yield from zip(chunks, self._cache[key], strict=True)
            return
        t = self._tensors(device, dtype)
        kept, size = [], 0
        for chunk in chunks:
            grid = self._grid(t, chunk)
            size += grid.numel() * grid.element_size()
            if size <= self.cache_budget:
                kept.append(grid)
            yield chunk, grid
        if len(kept) == len(chunks):
            self._cache[key] = kept

    def _matrix_rows(
        self, grid: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The matrix rows of the rays of ``grid`` (part of a chunk's, :meth:`_grid`) in CSR
        form ``(row offsets, voxel indices, values)``: ``grid_sample``'s interpolation
        weights (``zeros`` padding, ``align_corners=False``) times the step, summed per
        voxel in float64."""
        sizes = self.volume.shape[::-1]  # grid coordinates are (x, y[, z])
        points = grid.reshape(-1, grid.shape[-2], grid.shape[-1]).double()
        rays, n = points.shape[0], math.prod(sizes)
        # voxel coordinates of every sample, ray by ray (M samples per ray)
        index = torch.stack([((points[..., d] + 1) * size - 1) / 2 for d, size in enumerate(sizes)])
        low = index.floor()
        frac = index - low
        ray = torch.arange(rays).repeat_interleave(points.shape[1])
        keys, weights = [], []
        for corner in itertools.product((0, 1), repeat=len(sizes)):
            weight = torch.ones_like(frac[0])
            voxel = torch.zeros_like(frac[0])
            inside = torch.ones_like(frac[0], dtype=torch.bool)
            for d in reversed(range(len(sizes))):  # z (slowest) to x (fastest)
                at = low[d] + corner[d]
                weight = weight * (frac[d] if corner[d] else 1 - frac[d])
                inside &= (at >= 0) & (at < sizes[d])
                voxel = voxel * sizes[d] + at
            inside = (inside & (weight > 0)).reshape(-1)
            keys.append((ray * n + voxel.reshape(-1).long())[inside])
            weights.append(weight.reshape(-1)[inside])
        key, where = torch.cat(keys).unique(return_inverse=True)
        values = torch.zeros(key.numel(), dtype=torch.float64).index_add_(
            0, where, torch.cat(weights)
        )
        crow = torch.searchsorted(key // n, torch.arange(rays + 1))
        return crow, key % n, (values * self.step_length).to(dtype)

    def _matrix(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(A, Aᵀ)`` as CSR matrices ``(m, n)`` and ``(n, m)`` with int32 indices, built
        on first use; None when they would exceed ``matrix_budget`` (judged while they are
        built, from the projections done so far)."""
        if dtype in self._matrices:
            return self._matrices[dtype]
        self._matrices[dtype] = None
        if self.matrix_budget <= 0:
            return None
        n, angles = math.prod(self.volume.shape), self.geometry.n_angles
        bytes_per_entry = 2 * (4 + torch.empty((), dtype=dtype).element_size())  # A and Aᵀ
        t = self._tensors(torch.device("cpu"), dtype)
        crows, cols, values, entries = [torch.zeros(1, dtype=torch.long)], [], [], 0
        for start in range(0, angles, self._chunk):
            grid = self._grid(t, slice(start, start + self._chunk))
            # rays at a time, so that the temporaries stay near 2**21 sample coordinates
            rays = max(1, 2**21 // math.prod(grid.shape[2:]))
            for part in grid.split(rays, dim=1):
                crow, col, value = self._matrix_rows(part, dtype)
                crows.append(crow[1:] + entries)
                cols.append(col)
                values.append(value)
                entries += col.numel()
            done = min(start + self._chunk, angles)
            projected = entries * angles / done  # the projections are alike in size
            if projected * bytes_per_entry > self.matrix_budget or projected >= 2**31:
                return None  # (int32 indices)
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            m = angles * self._rays_per_projection
            a = torch.sparse_csr_tensor(
                torch.cat(crows).int(), torch.cat(cols).int(), torch.cat(values), (m, n)
            )
            csc = a.to_sparse_csc()
            a_t = torch.sparse_csr_tensor(
                csc.ccol_indices(), csc.row_indices(), csc.values(), (n, m)
            )
        self._matrices[dtype] = (a, a_t)
        return self._matrices[dtype]

    def _matrices_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored matrices for ``x``'s dtype, on the CPU only (CUDA ray-marches fast)."""
        return self._matrix(x.dtype) if x.device.type == "cpu" else None

    def _batch_groups(self, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the batch rides in grid_sample's channel axis; groups bound the values per chunk
        return tensor.split(self.volume.ndim + 3)

    # ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Line integrals: ``(B, *volume.shape) -> (B, *geometry.sino_shape)``."""
        matrices = self._matrices_for(x)
        if matrices is not None:
            flat = (matrices[0] @ x.reshape(x.shape[0], -1).T).T
            return flat.reshape(x.shape[0], *self.geometry.sino_shape)
        out = []
        for _, grid in self._grids(x.device, x.dtype):
            values = [
                F.grid_sample(group[None], grid, "bilinear", "zeros", align_corners=False)[0].sum(
                    -1
                )
                for group in self._batch_groups(x)
            ]
            out.append(torch.cat(values))
        sino = torch.cat(out, dim=1) * self.step_length
        return sino.reshape(x.shape[0], *self.geometry.sino_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact transpose of :meth:`forward`: ``(B, *sino_shape) -> (B, *volume.shape)``."""
        matrices = self._matrices_for(y)
        if matrices is not None:
            flat = (matrices[1] @ y.reshape(y.shape[0], -1).T).T
            return flat.reshape(y.shape[0], *self.volume.shape)
        backward = (
            torch.ops.aten.grid_sampler_3d_backward
            if self.volume.ndim == 3
            else torch.ops.aten.grid_sampler_2d_backward
        )
        det = self.geometry.det_shape
        flat = y.reshape(y.shape[0], -1, *det[1:]) * self.step_length  # grid_sample's layout
        result = torch.zeros((y.shape[0], *self.volume.shape), dtype=y.dtype, device=y.device)
        for chunk, grid in self._grids(y.device, y.dtype):
            lines = flat[:, chunk.start * det[0] : chunk.stop * det[0]]
            for group, target in zip(
                self._batch_groups(lines), self._batch_groups(result), strict=True
            ):
                placeholder = group.new_zeros(()).expand(1, group.shape[0], *self.volume.shape)
                grad = group[None, ..., None].expand(*group[None].shape, grid.shape[-2])
                target += backward(grad, placeholder, grid, 0, 0, False, [True, False])[0][0]
        return result
