"""The forward model: the ray transform ``A`` of a scan, its backends and its analytic inverse.

* :class:`RayTransform` (:mod:`.ray_transform`) — ``A`` and its adjoint as a differentiable
  ``torch.nn.Module`` on the ``"torch"`` or ``"astra"`` backend (:mod:`.torch_backend`,
  :mod:`.astra_backend`).
* :func:`fbp` (:mod:`.analytic`) — FBP (parallel, fan) and FDK (cone), the operator's
  analytic inverse. It lives beside the operator, not among the iterative reconstructors,
  because ``RayTransform.fbp`` offers it and it needs nothing but the geometry.
* :class:`Operator` (:mod:`.operator`) — the protocol the reconstructors and the Laplace
  posterior ask of ``A``.
"""

from .analytic import FBPFilter, fbp
from .operator import Operator
from .ray_transform import BACKENDS, Backend, RayTransform

__all__ = ["BACKENDS", "Backend", "FBPFilter", "Operator", "RayTransform", "fbp"]
