"""Persistence shared by every long stage: atomic files and checkpoints that know their run.

* :func:`atomic_write` — write under a temporary name beside the target, ``fsync``, rename
  into place: an interrupted run leaves the old file or none, never half of one, and the
  temporary file is removed whatever happens.
* :func:`save` / :func:`load` — a checkpoint is a ``torch.save`` dict with a ``format`` tag
  and a ``fingerprint``: the settings and data it depends on. :func:`load` returns ``None``
  when there is no file and refuses, with a one-line ``ValueError`` naming the keys that
  differ, a file of another format or another run.

The DIP (per 100 iterations), the Laplace samples (per batch) and the pipeline's EM (per
step) all checkpoint through here, so one resume rule holds everywhere: same fingerprint,
same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write", "differences", "load", "save"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The parent folder is created. The temporary file is ``fsync``-ed before the rename and
    removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _same(a: Any, b: Any, rtol: float) -> bool:
    """Equal; floats to ``rtol`` relative (also inside dicts and lists)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rtol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v, rtol) for u, v in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=rtol)
    return a == b


def differences(saved: Mapping[str, Any], ours: Mapping[str, Any], rtol: float = 0.0) -> list[str]:
    """The keys of ``ours`` whose value in ``saved`` differs (floats compared to ``rtol``)."""
    return [key for key in ours if not _same(saved.get(key), ours[key], rtol)]


def save(
    path: str | os.PathLike,
    kind: str,
    fingerprint: Mapping[str, Any],
    payload: Mapping[str, Any],
) -> None:
    """Write a checkpoint atomically: ``payload`` with its ``kind`` tag and ``fingerprint``.

    Args:
        path: the file; its folder is created.
        kind: the format tag, e.g. ``"dip_uq.DIP checkpoint 1"``.
        fingerprint: JSON-like values (numbers, strings, lists, dicts) that a later run must
            match to reuse the file.
        payload: what to restore (tensors, numbers, lists, dicts); moved nowhere.
    """
    state = {"format": kind, "fingerprint": dict(fingerprint), **payload}
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load(
    path: str | os.PathLike,
    kind: str,
    fingerprint: Mapping[str, Any],
    *,
    rtol: float = 0.0,
    map_location: torch.device | str | None = None,
) -> dict[str, Any] | None:
    """Read a checkpoint written by :func:`save`; ``None`` when ``path`` does not exist.

    Raises:
        ValueError: the file is unreadable (truncated, foreign), of another ``kind``, or
            written by another run: its fingerprint differs from ``fingerprint`` in some key
            (floats compared to ``rtol`` relative). The message names the keys and the fix.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise ValueError(
            f"cannot read the checkpoint {str(path)!r} ({error}); delete it or use another "
            "checkpoint location"
        ) from None
    if not isinstance(state, dict) or state.get("format") != kind:
        raise ValueError(
            f"{str(path)!r} is not a {kind!r} file; delete it or use another checkpoint location"
        )
    saved = state.get("fingerprint", {})
    differ = differences(saved, fingerprint, rtol)
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} != {fingerprint[k]!r}" for k in differ)
        raise ValueError(
            f"the checkpoint {str(path)!r} belongs to another run ({details}); delete it or use "
            "another checkpoint location"
        )
    return state
