"""One stage of a run in a background thread, on its own share of the CPU threads.

Why: on a CPU the DIP's convolutions are too small for PyTorch's intra-op threads to pay,
while two independent stages side by side, one thread each, nearly double the work done
(``scripts/bench_background.py`` measures it; docs/measurements.md has the numbers). The
cross-validated prior scale's second DIP fit does not depend on the fit to all projections, so
:func:`dip_uq.reconstruct` fits both at once (:func:`beside`).

A job's result is that of the same job run alone with the same thread count: each thread
keeps its own count (OpenMP's is per thread) and the stages share no state. A job must not
use forward-mode AD (``torch.func.jvp``, the linearisation) while the block may: PyTorch
keeps its dual levels per process, and two threads entering them abort the process
("Nested forward mode AD is not supported").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import torch

__all__ = ["BackgroundJob", "Cancelled", "beside"]

T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside a background job whose caller gave up on it (:meth:`BackgroundJob.cancel`)."""


class BackgroundJob(Generic[T]):
    """``job(check)`` running in a daemon thread with ``threads`` intra-op threads.

    ``check()`` raises :class:`Cancelled` once :meth:`cancel` was called: the job calls it
    between its steps so that an interrupted run does not leave it computing.
    """

    def __init__(self, job: Callable[[Callable[[], None]], T], threads: int) -> None:
        self._cancelled = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(job, threads), name="dip-uq background", daemon=True
        )
        self._thread.start()

    def _check(self) -> None:
        if self._cancelled.is_set():
            raise Cancelled("the run that started this background job stopped")

    def _run(self, job: Callable[[Callable[[], None]], T], threads: int) -> None:
        torch.set_num_threads(threads)
        try:
            self._result = job(self._check)
        except BaseException as error:  # handed to the caller by result()
            self._error = error

    def result(self) -> T:
        """Wait for the job; its return value, or its exception raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def cancel(self) -> None:
        """Ask the job to stop at its next ``check()`` (it is not waited for)."""
        self._cancelled.set()


@contextmanager
def beside(
    job: Callable[[Callable[[], None]], T], *, enabled: bool = True
) -> Iterator[BackgroundJob[T] | None]:
    """Run ``job`` in the background on half of PyTorch's intra-op threads while the block
    runs on the other half; the block gets the job (``.result()`` to wait for it), or None
    when ``enabled`` is false or there is only one thread (then the caller runs the job
    itself). The thread count is restored after the block; a block that raises cancels the
    job.
    """
    total = torch.get_num_threads()
    if not enabled or total < 2:
        yield None
        return
    background = BackgroundJob(job, total // 2)
    torch.set_num_threads(total - total // 2)
    try:
        yield background
    except BaseException:
        background.cancel()
        raise
    finally:
        torch.set_num_threads(total)
