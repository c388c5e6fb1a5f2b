"""ASTRA Toolbox backend of the ray transform.

The backend is plain: it maps a batch of volumes to a batch of sinograms (:meth:`forward`) and
back (:meth:`adjoint`). Input validation and the autograd wiring live in
:class:`dip_uq.projector.RayTransform`.

Every ASTRA quirk the backend works around is isolated in one small function below, with a
docstring that says why it is needed:

* :func:`_voxel_unit_vectors` – ASTRA sees unit voxels; physical lengths come back through
  :func:`_physical_scale`.
* :meth:`dip_uq.geometry.Geometry.to_astra` – ASTRA's 2D image rows run against ``y``.
* :func:`_lift_to_3d` – a 2D parallel slice on the GPU is a one-slice 3D problem.
* :func:`_astra_sino_to_ours` / :func:`_our_sino_to_astra` – ASTRA's 3D sinogram order.
* :func:`_astra_cuda` – GPU selection and stream synchronisation around ASTRA calls.
* :func:`_check_written` – ASTRA 2.5 can fail silently on the GPU.
* :meth:`AstraBackend._adjoint_scale` – the CUDA back projection is only an approximate adjoint.

ASTRA 3D code is CUDA only: without a CUDA device, any ASTRA 3D call kills the process with
SIGFPE (it cannot be caught). Nothing here calls ASTRA 3D unless :func:`astra_cuda_available`
is true, and a 3D geometry is refused at construction otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import torch

from ..geometry import Geometry, VectorGeometry, Volume

__all__ = ["AstraBackend", "astra_cuda_available"]

_LOG = logging.getLogger(__name__)

# ASTRA keeps process-global state (the selected GPU) and releases the GIL while it projects:
# one CUDA projection at a time per process.
_CUDA_LOCK = threading.Lock()

# ASTRA 2.5 CPU projectors that accept vector geometries: ``parallel_vec`` works with
# ``line``, ``linear``, ``strip`` and ``distance_driven``; ``fanflat_vec`` only with
# ``line_fanflat`` (``strip_fanflat`` rejects it). ``linear`` is Joseph's method.
_CPU_PROJECTOR = {"parallel": "linear", "cone": "line_fanflat"}

# |c - 1| above this for the calibrated CUDA adjoint scale c means a scaling bug, not the
# interpolation mismatch of ASTRA's FP/BP pair (about 5e-3).
_CALIBRATION_WARN = 0.05


# --------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _astra() -> ModuleType | None:
    """The ``astra`` module with ``astra.experimental`` loaded, or ``None`` if not importable.

    ``import astra`` alone does not load ``astra.experimental`` (the zero-copy entry points).
    """
    try:
        import astra
        import astra.experimental
    except Exception:  # ImportError, or a broken binary (OSError) on an odd platform
        return None
    return astra


@functools.lru_cache(maxsize=1)
def astra_importable() -> bool:
    """Whether astra-toolbox imports here (its CPU projectors then work)."""
    return _astra() is not None


def astra_cuda_available() -> bool:
    """Whether ASTRA can project on a CUDA GPU here: astra importable, ``astra.use_cuda()``
    and ``torch.cuda.is_available()``. Cached; never raises and never touches ASTRA 3D."""
    astra = _astra()
    if astra is None:
        return False
    try:
        return bool(astra.use_cuda()) and torch.cuda.is_available()
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# ASTRA quirks, one function each
# --------------------------------------------------------------------------------------------
def _voxel_unit_vectors(volume: Volume, geometry: Geometry) -> np.ndarray:
    """The geometry's vectors relative to the volume centre, in units of the voxel size.

    Why: ASTRA's handling of non-unit voxels differs between its 2D CPU projectors, its 2D and
    3D CUDA code and its versions (which factors of the voxel and detector pixel sizes end up
    in FP and BP). With the volume centred at the origin and unit voxels all of them agree:
    FP returns line integrals measured in voxel lengths. :func:`_physical_scale` turns that
    into physical units. Positions (source, detector centre) are shifted and scaled,
    displacements (u, v) only scaled, and the parallel-beam ray direction is normalised.
    """
    vec = np.array(geometry.vectors, dtype=np.float64)
    d, size = geometry.ndim, volume.voxel_size[0]
    center = np.asarray(volume.center[::-1], dtype=np.float64)  # array order -> (x, y[, z])
    first, det = vec[:, :d], vec[:, d : 2 * d]
    if geometry.kind == "parallel":
        first /= np.linalg.norm(first, axis=1, keepdims=True)
    else:
        first -= center
        first /= size
    det -= center
    det /= size
    vec[:, 2 * d :] /= size  # u (and v)
    return vec


def _physical_scale(volume: Volume) -> float:
    """Factor from ASTRA's voxel-unit line integrals to physical ones (attenuation × length).

    Why: :func:`_voxel_unit_vectors` makes ASTRA measure lengths in voxels, so its FP is
    ``A / voxel_size`` for the physical transform ``A``. The exact transpose of ``A`` is then
    the same factor times ASTRA's transpose, so forward and adjoint share it.
    """
    return float(volume.voxel_size[0])


def _lift_to_3d(vectors: np.ndarray) -> np.ndarray:
    """2D vectors ``(s, d, u)`` as 3D vectors of a one-slice, one-row problem in ``z = 0``.

    Why: ASTRA's zero-copy GPU path (``direct_FP3D``/``direct_BP3D``) is 3D only. A 2D
    parallel slice is the 3D problem with volume ``(1, ny, nx)``, one detector row and
    ``v = (0, 0, 1)`` (one voxel, in voxel units). The ray samples the slice centre exactly,
    and ASTRA's 3D parallel BP weight ``1 / |u × v|`` equals the 2D one ``1 / |u|``.
    (Not used for fan beams: ASTRA's cone BP weights by the ray density of a 3D cone,
    which differs from the 2D fan density by a position-dependent factor.)
    """
    n = vectors.shape[0]
    zero, one = np.zeros((n, 1)), np.ones((n, 1))
    s, d, u = vectors[:, 0:2], vectors[:, 2:4], vectors[:, 4:6]
    return np.hstack([s, zero, d, zero, u, zero, zero, zero, one])


def _astra_sino_to_ours(sino: torch.Tensor) -> torch.Tensor:
    """``(B, rows, angles, cols)`` (ASTRA's 3D order) to ``(B, angles, rows, cols)``."""
    return sino.permute(0, 2, 1, 3).contiguous()


def _our_sino_to_astra(sino: torch.Tensor) -> torch.Tensor:
    """``(B, angles, rows, cols)`` to ASTRA's 3D order ``(B, rows, angles, cols)``."""
    return sino.permute(0, 2, 1, 3).contiguous()


@contextlib.contextmanager
def _astra_cuda(device: torch.device) -> Iterator[None]:
    """Run ASTRA GPU work on ``device`` (a CUDA device with an index).

    Why: ASTRA selects its GPU through process-global state (``astra.set_gpu_index``, which
    also switches the thread's current device: ``torch.cuda.device`` restores torch's) and
    ignores torch's streams. Work queued on the current torch stream must be finished before
    ASTRA reads its inputs, and ASTRA's own work before torch reads the outputs.
    """
    astra = _astra()
    with _CUDA_LOCK, torch.cuda.device(device):
        astra.set_gpu_index(device.index)
        torch.cuda.current_stream(device).synchronize()
        try:
            yield
        finally:
            torch.cuda.synchronize(device)


def _check_written(out: torch.Tensor, inp: torch.Tensor, what: str) -> None:
    """Raise if ASTRA left the NaN-prefilled output ``out`` unwritten.

    Why: in ASTRA 2.5, ``direct_FP3D``/``direct_BP3D`` build the error for a failed GPU
    projection but never raise it, and ``direct_FP2D`` ignores the result of its CUDA
    algorithm, so a failure (no memory, bad geometry, driver trouble) returns silently with
    the output untouched. Outputs are therefore filled with NaN first; NaN left over while
    the input is NaN-free means the projection did not run.
    """
    if bool(torch.isnan(out).any()) and not bool(torch.isnan(inp).any()):
        raise RuntimeError(
            f"ASTRA {what} on {out.device} failed without an error (output left unwritten); "
            "see ASTRA's log output above, or use backend='torch'"
        )


def _unwritten(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A float32 output buffer filled with NaN, for :func:`_check_written`."""
    return torch.full(shape, float("nan"), dtype=torch.float32, device=device)


def _vdot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``<a, b>`` accumulated in float64 (without float64 copies of large volumes)."""
    return float(torch.sum(a * b, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------------
class AstraBackend:
    """Ray transform through the ASTRA Toolbox (2D on CPU or GPU, 3D on CUDA GPUs).

    ``forward`` maps ``(B, *volume.shape)`` to ``(B, *geometry.sino_shape)``: line integrals
    in physical units (attenuation × length) on the same device and in the same dtype;
    ``adjoint`` maps back with the scaling of the exact transpose.

    Paths and models:

    * 2D, CPU tensor (or no ASTRA CUDA): ASTRA's CPU projectors on the tensor's memory
      (zero-copy, ``direct_FP2D``/``direct_BP2D``), one batch item at a time. Parallel beam
      uses ``linear`` (Joseph's method: linear interpolation between the two pixels a ray
      crosses in each row or column, weighted by the step length); fan beam uses
      ``line_fanflat`` (exact ray–pixel intersection lengths), the only ASTRA 2.5 CPU
      projector that accepts ``fanflat_vec``. FP and BP are an **exact adjoint pair**
      (relative ``<Ax, y>`` vs ``<x, Aᵀy>`` mismatch about 1e-6, float32 rounding).
    * 2D parallel, CUDA tensor: a one-slice 3D problem (see :func:`_lift_to_3d`) through
      ``direct_FP3D``/``direct_BP3D`` on the tensor's memory (zero-copy).
    * 2D fan, CUDA tensor: ASTRA's 2D CUDA projector on host copies (2D data are small).
    * 3D, CUDA tensor: ``direct_FP3D``/``direct_BP3D`` on the tensor's memory; CPU tensors
      are moved to the current CUDA device and back.

    On CUDA, FP is Joseph-type ray marching with hardware (tri)linear interpolation and BP is
    voxel-driven with linear interpolation on the detector: **not an exact adjoint** (about
    5e-3 relative mismatch reported for cone beam by others). The BP is rescaled by one scalar
    per operator and path, calibrated once by a dot-product test with seeded random vectors
    (:meth:`adjoint_scale`; ``calibrate_adjoint=False`` keeps ASTRA's own scale), so only the
    interpolation mismatch remains.

    Requirements: isotropic voxels (ASTRA's GPU code needs cubic voxels), and a CUDA GPU for
    3D geometries. ASTRA projector objects are freed by :meth:`close` or garbage collection.

    Args:
        volume: the reconstruction grid.
        geometry: the scan geometry (same dimension as ``volume``).
        calibrate_adjoint: rescale the CUDA back projection to match the forward projection
            in a dot-product test (no effect on the exact CPU path).

    Raises:
        ValueError: when ASTRA cannot serve this problem here (message says why and what to
            use instead).
    """

    name = "astra"

    def __init__(self, volume: Volume, geometry: Geometry, calibrate_adjoint: bool = True) -> None:
        astra = _astra()
        if astra is None:
            raise ValueError(
                "the ASTRA backend needs the astra-toolbox package, which cannot be imported; "
                "install astra-toolbox or use backend='torch'"
            )
        if not isinstance(volume, Volume) or not isinstance(geometry, Geometry):
            raise ValueError(
                f"AstraBackend needs a Volume and a Geometry, got {type(volume).__name__} and "
                f"{type(geometry).__name__}"
            )
        if volume.ndim != geometry.ndim:
            raise ValueError(
                f"volume is {volume.ndim}D {volume.shape} but geometry is {geometry.ndim}D "
                f"(det_shape={geometry.det_shape})"
            )
        if not volume.is_isotropic:
            raise ValueError(
                f"the ASTRA backend needs isotropic voxels, got voxel_size={volume.voxel_size}; "
                "resample the volume or use backend='torch'"
            )
        if geometry.ndim == 3 and not astra_cuda_available():
            if not _astra_use_cuda(astra):
                raise ValueError(
                    "ASTRA 3D projection needs a CUDA GPU (astra.use_cuda() is False); "
                    "use backend='torch'"
                )
            raise ValueError(
                "ASTRA 3D projection needs a CUDA GPU visible to PyTorch "
                "(torch.cuda.is_available() is False); use backend='torch'"
            )
        self.volume = volume
        self.geometry = geometry
        self.calibrate_adjoint = bool(calibrate_adjoint)
        self._scale = _physical_scale(volume)
        self._vectors = _voxel_unit_vectors(volume, geometry)
        self._projectors: dict[str, int] = {}
        self._calibration: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()
        if geometry.ndim == 2:
            self._projector("cpu2d")  # fail now, not at the first projection

    # ---------------------------------------------------------------------------- public
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Line integrals: ``(B, *volume.shape)`` -> ``(B, *geometry.sino_shape)``."""
        x, dtype = self._prepare(x, self.volume.shape, "forward input")
        if self.geometry.ndim == 3:
            out = self._on_cuda(x, self._fp3d)
        elif x.device.type == "cuda" and astra_cuda_available():
            out = self._fp2d_cuda(x)
        else:
            out = self._on_cpu(x, self._fp2d_cpu)
        return out.mul_(self._scale).to(dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Back projection: ``(B, *geometry.sino_shape)`` -> ``(B, *volume.shape)``."""
        y, dtype = self._prepare(y, self.geometry.sino_shape, "adjoint input")
        if self.geometry.ndim == 3:
            out = self._on_cuda(y, lambda t: self._calibrated(self._bp3d, "3d", t))
        elif y.device.type == "cuda" and astra_cuda_available():
            out = self._calibrated(self._bp2d_cuda, "2d", y)
        else:
            out = self._on_cpu(y, self._bp2d_cpu)
        return out.mul_(self._scale).to(dtype)

    def adjoint_scale(self, device: torch.device | str | None = None) -> float:
        """The calibrated factor applied to ASTRA's CUDA BP on ``device`` (1.0 on the CPU path).

        Computed (once per device) on first use; see :meth:`_adjoint_scale`.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        on_gpu = device.type == "cuda" and astra_cuda_available()
        if self.geometry.ndim == 2 and not on_gpu:
            return 1.0
        if not on_gpu or device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        probe = torch.empty(0, device=device)
        return self._adjoint_scale("3d" if self.geometry.ndim == 3 else "2d", probe)

    def close(self) -> None:
        """Free the ASTRA projector objects (safe to call twice; the backend is unusable after)."""
        projectors, self._projectors = getattr(self, "_projectors", {}), {}
        astra = _astra()
        if astra is None:
            return
        for key, pid in projectors.items():
            with contextlib.suppress(Exception):
                if key == "cuda3d":
                    astra.projector3d.delete(pid)
                else:
                    astra.projector.delete(pid)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __reduce__(self):
        # copies (deepcopy of a module holding the backend, pickling) build their own ASTRA
        # objects instead of sharing (and double-freeing) projector ids
        return (type(self), (self.volume, self.geometry, self.calibrate_adjoint))

    def __repr__(self) -> str:
        return f"AstraBackend({self.volume!r}, {self.geometry!r})"

    # ---------------------------------------------------------------------------- helpers
    @staticmethod
    def _prepare(
        t: torch.Tensor, shape: tuple[int, ...], what: str
    ) -> tuple[torch.Tensor, torch.dtype]:
        if not isinstance(t, torch.Tensor) or tuple(t.shape[1:]) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{what} must have shape (B, {', '.join(map(str, shape))}), got {got}")
        return t.detach().to(torch.float32).contiguous(), t.dtype

    def _projector(self, key: str) -> int:
        """The ASTRA projector for ``key`` (created on first use, freed by :meth:`close`).

        ``cpu2d``: 2D CPU projector; ``cuda2d``: 2D CUDA projector (fan beam on the GPU);
        ``cuda3d``: 3D CUDA projector (3D, and 2D parallel lifted by :func:`_lift_to_3d`).
        """
        with self._lock:
            if key in self._projectors:
                return self._projectors[key]
            astra, g = _astra(), self.geometry
            if key == "cuda3d":
                if not astra_cuda_available():  # never reach ASTRA 3D without CUDA (SIGFPE)
                    raise RuntimeError("internal error: ASTRA 3D requested without CUDA")
                if g.ndim == 3:
                    vectors, det_shape, vol_shape = self._vectors, g.det_shape, self.volume.shape
                else:
                    vectors, det_shape = _lift_to_3d(self._vectors), (1, *g.det_shape)
                    vol_shape = (1, *self.volume.shape)
                proj_geom = VectorGeometry(vectors, det_shape, g.kind).to_astra()
                vol_geom = Volume(vol_shape).to_astra()
                pid = astra.create_projector("cuda3d", proj_geom, vol_geom)
            else:
                # 2D: Geometry.to_astra mirrors y (ASTRA's 2D row 0 sits at the largest y)
                proj_geom = VectorGeometry(self._vectors, g.det_shape, g.kind).to_astra()
                vol_geom = Volume(self.volume.shape).to_astra()
                kind = _CPU_PROJECTOR[g.kind] if key == "cpu2d" else "cuda"
                pid = astra.create_projector(kind, proj_geom, vol_geom)
            self._projectors[key] = pid
            return pid

    @staticmethod
    def _on_cpu(t: torch.Tensor, fn) -> torch.Tensor:
        return fn(t.cpu()).to(t.device)

    @staticmethod
    def _on_cuda(t: torch.Tensor, fn) -> torch.Tensor:
        if t.device.type == "cuda":
            return fn(t)
        return fn(t.to(torch.device("cuda", torch.cuda.current_device()))).to(t.device)

    # ---------------------------------------------------------------------------- 2D CPU
    def _fp2d_cpu(self, x: torch.Tensor) -> torch.Tensor:
        fp2d, pid = _astra().experimental.direct_FP2D, self._projector("cpu2d")
        out = torch.empty((x.shape[0], *self.geometry.sino_shape), dtype=torch.float32)
        for b in range(x.shape[0]):
            fp2d(pid, x[b], out[b])
        return out

    def _bp2d_cpu(self, y: torch.Tensor) -> torch.Tensor:
        bp2d, pid = _astra().experimental.direct_BP2D, self._projector("cpu2d")
        out = torch.empty((y.shape[0], *self.volume.shape), dtype=torch.float32)
        for b in range(y.shape[0]):
            bp2d(pid, out[b], y[b])
        return out

    # ---------------------------------------------------------------------------- CUDA
    def _fp3d(self, x: torch.Tensor) -> torch.Tensor:
        """3D FP of ``(B, nz, ny, nx)`` CUDA data; returns our sinogram layout."""
        fp3d, pid = _astra().experimental.direct_FP3D, self._projector("cuda3d")
        rows, cols = self.geometry.det_shape
        shape = (x.shape[0], rows, self.geometry.n_angles, cols)
        out = _unwritten(shape, x.device)
        with _astra_cuda(x.device):
            for b in range(x.shape[0]):
                fp3d(pid, x[b], out[b])
        _check_written(out, x, "forward projection")
        return _astra_sino_to_ours(out)

    def _bp3d(self, y: torch.Tensor) -> torch.Tensor:
        """3D BP of ``(B, angles, rows, cols)`` CUDA data (ASTRA's own scale)."""
        bp3d, pid = _astra().experimental.direct_BP3D, self._projector("cuda3d")
        sino = _our_sino_to_astra(y)
        out = _unwritten((y.shape[0], *self.volume.shape), y.device)
        with _astra_cuda(y.device):
            for b in range(y.shape[0]):
                bp3d(pid, out[b], sino[b])
        _check_written(out, sino, "back projection")
        return out

    def _fp2d_cuda(self, x: torch.Tensor) -> torch.Tensor:
        if self.geometry.kind == "parallel":
            fp3d, pid = _astra().experimental.direct_FP3D, self._projector("cuda3d")
            batch, (n_angles, cols) = x.shape[0], self.geometry.sino_shape
            out = _unwritten((batch, 1, n_angles, cols), x.device)
            with _astra_cuda(x.device):
                for b in range(batch):
                    fp3d(pid, x[b].unsqueeze(0), out[b])
            _check_written(out, x, "forward projection")
            return out.view(batch, n_angles, cols)
        # fan beam: ASTRA's 2D CUDA projector, on host copies
        fp2d, pid = _astra().experimental.direct_FP2D, self._projector("cuda2d")
        host = x.cpu()
        out = _unwritten((x.shape[0], *self.geometry.sino_shape), host.device)
        with _astra_cuda(x.device):
            for b in range(x.shape[0]):
                fp2d(pid, host[b], out[b])
        _check_written(out, host, "forward projection")
        return out.to(x.device)

    def _bp2d_cuda(self, y: torch.Tensor) -> torch.Tensor:
        """2D BP of ``(B, angles, cols)`` CUDA data (ASTRA's own scale)."""
        if self.geometry.kind == "parallel":
            bp3d, pid = _astra().experimental.direct_BP3D, self._projector("cuda3d")
            batch, (ny, nx) = y.shape[0], self.volume.shape
            out = _unwritten((batch, 1, ny, nx), y.device)
            with _astra_cuda(y.device):
                for b in range(batch):
                    bp3d(pid, out[b], y[b].unsqueeze(0))
            _check_written(out, y, "back projection")
            return out.view(batch, ny, nx)
        bp2d, pid = _astra().experimental.direct_BP2D, self._projector("cuda2d")
        host = y.cpu()
        out = _unwritten((y.shape[0], *self.volume.shape), host.device)
        with _astra_cuda(y.device):
            for b in range(y.shape[0]):
                bp2d(pid, out[b], host[b])
        _check_written(out, host, "back projection")
        return out.to(y.device)

    def _calibrated(self, back_project, path: str, y: torch.Tensor) -> torch.Tensor:
        scale = self._adjoint_scale(path, y)  # first: its test vectors are freed before the BP
        return back_project(y).mul_(scale)

    def _adjoint_scale(self, path: str, like: torch.Tensor) -> float:
        """One scalar ``c`` with ``<FP x, y> = c <x, BP y>`` for ASTRA's CUDA pair on a device.

        Why: ASTRA's CUDA BP is voxel-driven and only approximates the transpose of its FP;
        its overall scale relative to that transpose is not documented for every geometry
        (ASTRA applies ray-density weights that assume, e.g., a detector perpendicular to the
        rays). ``c`` comes from one dot-product test with seeded uniform random ``x`` and
        ``y`` (generator seed 0 on the device), computed once per operator and device and
        cached; what remains is the interpolation mismatch of the pair. A ``c`` far from 1
        signals a scaling problem and is warned about.
        """
        if not self.calibrate_adjoint:
            return 1.0
        key = (path, like.device.index if like.device.index is not None else -1)
        if key in self._calibration:
            return self._calibration[key]
        device = like.device
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.rand((1, *self.volume.shape), generator=gen, device=device, dtype=torch.float32)
        y = torch.rand(
            (1, *self.geometry.sino_shape), generator=gen, device=device, dtype=torch.float32
        )
        if path == "3d":
            ax, aty = self._fp3d(x), self._bp3d(y)
        else:
            ax, aty = self._fp2d_cuda(x), self._bp2d_cuda(y)
        scale = _vdot(ax, y) / _vdot(x, aty)
        del x, y, ax, aty
        if abs(scale - 1.0) > _CALIBRATION_WARN:
            warnings.warn(
                f"ASTRA CUDA back projection needed a scale factor of {scale:.4g} to match the "
                f"forward projection ({self.geometry!r}); check the geometry",
                RuntimeWarning,
                stacklevel=3,
            )
        _LOG.info("ASTRA %s adjoint calibrated on %s: factor %.6g", path, device, scale)
        self._calibration[key] = scale
        return scale


def _astra_use_cuda(astra: ModuleType) -> bool:
    try:
        return bool(astra.use_cuda())
    except Exception:
        return False
