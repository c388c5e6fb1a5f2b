"""Per-voxel moments of posterior samples, merged exactly and accumulated batch by batch.

The samples ``0, ..., n - 1`` are solved in batches of consecutive global indices,
``[0, batch)``, ``[batch, 2 batch)``, ..., each process taking a contiguous share of them
(:func:`batches`, :mod:`dip_uq.distributed`). A sample is the same bit for bit in
any batch and on any number of processes (:mod:`dip_uq.laplace.posterior` says how), given
the same device and number of threads per process.

Each batch's moments (:class:`Moments`: count, mean and the sum of squared deviations
``M2``, float64) are merged into the total (Chan et al.'s pairwise update, exact but for
float64 round-off), in index order within a process and by a sum over the processes, so
the result depends on how the samples were split by that round-off only
(docs/measurements.md).
With a checkpoint folder every finished batch is saved there
(:func:`dip_uq.checkpoint.save`, with the settings the samples depend on as fingerprint) and
a later run with the same settings reads it back instead of solving it again: an
interrupted run resumes and ends with the moments of an uninterrupted one.

The variance is the second moment about the known posterior mean, ``mean(ζ²)``, not the
centred sample variance: the samples are zero-mean by construction, and centring would spend
a degree of freedom on estimating a mean that is known (the sample mean is kept as a check).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .. import checkpoint
from ..distributed import shard

if TYPE_CHECKING:
    from ..distributed import DistContext

__all__ = ["Moments", "accumulate", "batches"]

KIND = "dip_uq.laplace moments batch 1"
# hyperparameters a batch checkpoint must match (an EM rerun differs by round-off only)
RTOL = 1e-6


@dataclass
class Moments:
    """Per-voxel moments of zero-mean image samples, accumulated in float64.

    Attributes:
        count: the number of samples.
        mean: their sample mean, shape ``(*volume)``; near 0 (the samples are zero-mean), a
            check of the solver, not the reconstruction.
        m2: the sum of squared deviations from ``mean``, shape ``(*volume)``.
        samples: when kept, this process's samples ``(len(indices), *volume)`` (image units,
            the images' dtype), else ``None``.
        indices: the global indices of ``samples`` (this process's share).
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor
    samples: torch.Tensor | None = None
    indices: range = range(0)

    @classmethod
    def of(cls, samples: torch.Tensor) -> Moments:
        """The moments of samples ``(n, *volume)``."""
        x = samples.detach().double()
        mean = x.mean(0)
        return cls(x.shape[0], mean, (x - mean).square().sum(0))

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of samples (Chan et al.'s pairwise update; exact)."""
        if other.count == 0 or self.count == 0:
            return other if self.count == 0 else self
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta.square() * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @property
    def variance(self) -> torch.Tensor:
        """``mean_k ζ_k²`` per voxel: the posterior variance estimate (image units squared),
        the second moment about the known mean 0 (see the module docstring)."""
        return self.m2 / self.count + self.mean.square()

    @property
    def std(self) -> torch.Tensor:
        """``sqrt(variance)``: the per-voxel posterior standard deviation (image units)."""
        return self.variance.sqrt()


def batches(
    n_samples: int, batch: int | None, group: DistContext | None = None
) -> list[tuple[int, int]]:
    """This process's batches ``(start, stop)`` of the global sample indices ``range(n_samples)``.

    The indices are cut into ``[0, batch)``, ``[batch, 2 batch)``, ... and each rank of
    ``group`` takes a contiguous share of those batches (all of them for one process);
    ``batch`` defaults to ``ceil(n_samples / world_size)``.
    """
    rank, world = (0, 1) if group is None else (group.rank, group.world_size)
    batch = -(-n_samples // world) if batch is None else batch
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    starts = range(0, n_samples, batch)
    share = shard(len(starts), rank, world)
    return [(s, min(s + batch, n_samples)) for s in starts[share.start : share.stop]]


def accumulate(
    draw: Callable[[int, int], torch.Tensor],
    mine: Sequence[tuple[int, int]],
    like: torch.Tensor,
    *,
    folder: str | Path | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    keep_samples: bool = False,
    progress: bool = False,
) -> Moments:
    """The moments of the samples of the batches ``mine``, merged in order.

    Args:
        draw: ``draw(n, start)`` returns the image samples ``(n, *volume)`` with global
            indices ``start, ..., start + n - 1``.
        mine: the batches ``(start, stop)`` to draw (:func:`batches`).
        like: an image ``(*volume)``: the shape of the moments and the device they live on.
        folder: where every finished batch is saved atomically (``moments-START-STOP.pt``)
            and read back from by a later call; ``None``: no checkpoints.
        fingerprint: what the samples depend on besides their indices (seed, solver,
            hyperparameters, shapes); a batch file with another one is refused
            (``ValueError``), floats compared to :data:`RTOL`.
        keep_samples: also return the samples (kept in the batch files too).
        progress: show a progress bar over the batches.

    Returns:
        The moments of these batches only, with ``samples`` (when kept) and ``indices``
        covering ``mine``.
    """
    folder = None if folder is None else Path(folder)
    fingerprint = dict(fingerprint or {})
    zeros = like.new_zeros(like.shape, dtype=torch.float64)
    total = Moments(0, zeros, zeros)
    kept = []
    for start, stop in tqdm(mine, desc="posterior samples", disable=not progress):
        path = None if folder is None else folder / f"moments-{start:07d}-{stop:07d}.pt"
        saved = None if path is None else _load_batch(path, fingerprint, keep_samples, like.device)
        if saved is None:
            samples = draw(stop - start, start)
            part = Moments.of(samples)
            if path is not None:
                _save_batch(path, fingerprint, part, samples if keep_samples else None)
        else:
            part, samples = saved
        total = total.merge(part)
        if keep_samples:
            kept.append(samples)
    total.indices = range(mine[0][0], mine[-1][1]) if mine else range(0)
    total.samples = torch.cat(kept) if kept else None
    return total


def _load_batch(
    path: Path, fingerprint: Mapping[str, Any], need_samples: bool, device: torch.device
) -> tuple[Moments, torch.Tensor | None] | None:
    """A finished batch's moments (and samples) from ``path``; ``None`` to solve it."""
    saved = checkpoint.load(path, KIND, fingerprint, rtol=RTOL, map_location=device)
    if saved is None or (need_samples and saved["samples"] is None):
        return None
    return Moments(saved["count"], saved["mean"], saved["m2"]), saved["samples"]


def _save_batch(
    path: Path, fingerprint: Mapping[str, Any], part: Moments, samples: torch.Tensor | None
) -> None:
    """Write a finished batch atomically: a crash leaves the old file or none, never half."""
    payload = {
        "count": part.count,
        "mean": part.mean.cpu(),
        "m2": part.m2.cpu(),
        "samples": None if samples is None else samples.cpu(),
    }
    checkpoint.save(path, KIND, fingerprint, payload)
