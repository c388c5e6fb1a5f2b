"""Posterior sampling over several processes with ``torch.distributed`` (one GPU per rank).

Every posterior sample is identified by its global index and depends on it, the seed and
the hyperparameters only, bit for bit (:mod:`dip_uq.laplace.posterior` says how), so the
set of samples does not depend on how many processes ran. Each rank solves its contiguous
share (:func:`shard`); the per-voxel moments are merged across ranks
(:func:`all_reduce_moments`), and the EM statistics are all-reduced so that every rank
holds the same hyperparameters after each step, the same as one process's. The DIP is
fitted on rank 0 only; the other ranks receive its :meth:`dip_uq.DIP.state_dict` by broadcast
(:func:`broadcast_params`; :func:`dip_uq.stages.share_fit` does both).
Every rank should run as many threads as the one-process run it is compared with (one,
under ``torchrun`` with several processes): the products round differently otherwise.

Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``)::

    ctx = init_from_env()                    # None when not launched by torchrun
    rec = DIP(A, device=ctx.device, ...)     # same arguments on every rank
    if ctx.is_main:
        rec.fit(y)
    state = broadcast_params(rec.state_dict() if ctx.is_main else None, ctx)
    rec.load_state_dict(state)               # rank != 0: θ*, network input and scale
    lap = LinearisedLaplace(rec, y=y, group=ctx)  # y: rec.y is rank 0's only
    lap.fit_hyperparameters(...)             # identical history on every rank
    std = lap.moments(n, checkpoint=...).std # identical on every rank; write it on rank 0
    ctx.close()

A rank that dies or stalls makes the others stop at their next collective with a
``RuntimeError`` that says so (after at most ``timeout`` seconds); a rerun with the same
checkpoint directory skips the sample batches already finished.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "all_reduce_moments",
    "broadcast_params",
    "init_from_env",
    "shard",
]


def shard(n: int, rank: int, world_size: int) -> range:
    """The contiguous share of ``range(n)`` that ``rank`` of ``world_size`` processes handles.

    The first ``n % world_size`` ranks get one item more; the shares cover ``range(n)`` in
    rank order, so the split depends on ``(n, rank, world_size)`` only.

    >>> [shard(5, r, 2) for r in range(2)]
    [range(0, 3), range(3, 5)]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    size, extra = divmod(n, world_size)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


@dataclass
class DistContext:
    """This process's place in an initialised process group, and its device.

    Attributes:
        rank: global rank, 0 to ``world_size - 1``; rank 0 writes the outputs.
        world_size: number of processes.
        local_rank: rank on this machine; the index of this rank's GPU.
        device: where this rank computes (``cuda:local_rank``, or the CPU without CUDA).
        backend: ``"nccl"`` or ``"gloo"``.
        timeout: seconds a collective waits for the other ranks before failing.
        comm_seconds: wall time spent in collectives so far (including waiting for slower
            ranks), for benchmarks.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout: float
    comm_seconds: float = 0.0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Time a collective, and turn a backend failure into a message that says what to do.

        Why: a dead peer shows up as a timeout or a closed connection deep inside gloo/NCCL,
        with a message that does not say which step failed or that the run can be resumed.
        """
        started = time.perf_counter()
        try:
            yield
        except RuntimeError as err:  # DistBackendError and gloo's errors derive from it
            raise RuntimeError(
                f"rank {self.rank} of {self.world_size}: {what} failed: another rank stopped "
                f"or did not answer within {self.timeout:g} s. Finished sample batches are kept "
                f"in the checkpoint directory; rerun the same command to resume. ({err})"
            ) from err
        finally:
            self.comm_seconds += time.perf_counter() - started

    def all_reduce_sum(self, tensor: torch.Tensor, what: str = "all-reduce") -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all ranks (a new tensor, same device)."""
        buffer = tensor.detach().to(self.device, copy=True).contiguous()
        with self._collective(what):
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer.to(tensor.device)

    def broadcast(self, tensor: torch.Tensor, src: int = 0, what: str = "broadcast") -> None:
        """Overwrite ``tensor`` (on :attr:`device`, contiguous) with rank ``src``'s, in place."""
        with self._collective(what):
            dist.broadcast(tensor, src=src)

    def broadcast_object(self, obj: Any, src: int = 0, what: str = "broadcast") -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank (``obj`` is ignored elsewhere)."""
        box = [obj]
        with self._collective(what):
            dist.broadcast_object_list(box, src=src, device=self.device)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank."""
        with self._collective("barrier"):
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (call once, at the end, on every rank)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(*, backend: str | None = None, timeout: float = 1800.0) -> DistContext | None:
    """Join the process group that ``torchrun`` describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus ``MASTER_ADDR``/``MASTER_PORT``,
    read by ``torch.distributed``). With CUDA, each rank pins ``cuda:LOCAL_RANK`` (the ASTRA
    projector selects the GPU of the tensors it is given) and the backend is ``nccl``;
    without CUDA, the CPU and ``gloo``.

    Args:
        backend: ``"nccl"`` or ``"gloo"`` to override the choice above.
        timeout: seconds a collective waits for a missing rank before the job stops. It must
            cover the longest stretch between collectives that one rank can run ahead: the DIP
            fit on rank 0 (the others wait for its broadcast) and one rank's share of a
            sampling run.

    Returns:
        The context, or ``None`` when ``RANK``/``WORLD_SIZE`` are not set (a plain run).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    if not dist.is_available():
        raise RuntimeError("RANK and WORLD_SIZE are set but this torch has no torch.distributed")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"unknown backend {backend!r}; use 'nccl' or 'gloo'")
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
    return DistContext(rank, world_size, local_rank, device, backend, timeout)


def all_reduce_moments(
    count: int, mean: torch.Tensor, m2: torch.Tensor, ctx: DistContext
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Merge per-rank moments ``(count, mean, M2)`` exactly; every rank gets the result.

    ``M2`` is the sum of squared deviations from ``mean``. The k-way form of Chan et al.'s
    pairwise merge, ``n = Σ n_r``, ``μ = Σ n_r μ_r / n``, ``M2 = Σ (M2_r + n_r (μ_r - μ)²)``,
    needs two sum all-reduces of one volume each (float64) whatever the number of ranks.
    A rank with ``count == 0`` contributes nothing.
    """
    shape = mean.shape
    head = torch.cat([mean.new_tensor([count]), (count * mean).reshape(-1)])
    head = ctx.all_reduce_sum(head, "all-reduce of the sample means")
    total = round(float(head[0]))
    grand = (head[1:] / max(total, 1)).reshape(shape)
    spread = ctx.all_reduce_sum(m2 + count * (mean - grand).square(), "all-reduce of the M2")
    return total, grand, spread


def broadcast_params(
    params: Mapping[str, torch.Tensor] | None, ctx: DistContext, src: int = 0
) -> dict[str, torch.Tensor]:
    """Rank ``src``'s named tensors on every rank, on :attr:`DistContext.device`.

    ``params`` is read on ``src`` only (other ranks may pass ``None``): names, shapes and
    dtypes travel first, so the receivers need no template.
    """
    layout = None
    if ctx.rank == src:
        if params is None:
            raise ValueError(f"rank {src} sends the parameters; params must not be None there")
        layout = [(k, v.shape, str(v.dtype).removeprefix("torch.")) for k, v in params.items()]
    layout = ctx.broadcast_object(layout, src, "broadcast of the parameter names")
    out = {}
    for name, shape, dtype in layout:
        if ctx.rank == src:
            tensor = params[name].detach().to(ctx.device, copy=True).contiguous()
        else:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=ctx.device)
        ctx.broadcast(tensor, src, f"broadcast of {name}")
        out[name] = tensor
    return out
