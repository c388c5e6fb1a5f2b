"""What the library tells its user about a computation that did not finish its job.

A solve, an EM or a search that stopped before it converged raises a
:class:`NotConvergedWarning` through :mod:`warnings`. It names, where more room would help,
the setting that gives it: a keyword of :func:`dip_uq.reconstruct` and
:class:`dip_uq.pipeline.Settings`, which the command line spells as its option
(``cg_iterations`` → ``--cg-iterations``).
"""

from __future__ import annotations

import warnings

__all__ = ["NotConvergedWarning", "warn_not_converged"]


class NotConvergedWarning(UserWarning):
    """A computation stopped before it converged; its result may be off.

    Attributes:
        message: what stopped where, and what it means for the std.
        setting: the setting to raise (``"cg_iterations"``, ``"em_steps"``), or None where
            more of anything would not help.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message, setting)
        self.message = message
        self.setting = setting

    def __str__(self) -> str:
        return self.message if self.setting is None else f"{self.message}: raise {self.setting}"


def warn_not_converged(message: str, setting: str | None = None, *, stacklevel: int = 3) -> None:
    """Issue a :class:`NotConvergedWarning` (``stacklevel`` counted from the caller's caller)."""
    warnings.warn(NotConvergedWarning(message, setting), stacklevel=stacklevel)
