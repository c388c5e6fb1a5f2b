"""The deep-image-prior U-Net (2D or 3D) and the structure the linearised Laplace needs.

Tensors are laid out ``(B, C, Y, X)`` in 2D and ``(B, C, Z, Y, X)`` in 3D. Scale ``s`` has the
spatial size ``ceil(n / 2**s)`` along every axis of size ``n`` (scale 0 is the input size).

Every convolution belongs to one *block*, the unit over which the linearised Laplace shares a
prior (one variance, one length scale):

* ``down_0``: the input convolution (3×3[×3], stride 1) at scale 0;
* ``down_s`` (``s >= 1``): a strided 3×3[×3] convolution from scale ``s-1`` to ``s``, then a
  3×3[×3] convolution at scale ``s``;
* ``skip_s``: the 1×1[×1] convolution that feeds a few channels of scale ``s`` to ``up_s``
  (only at scales whose skip channel count is positive);
* ``up_s`` (``s <= scales - 2``): the features of scale ``s+1``, interpolated (bilinear or
  trilinear) to the exact size of scale ``s`` and joined with ``skip_s``, pass two 3×3[×3]
  convolutions;
* ``out``: the final 1×1[×1] convolution to ``out_channels`` (no activation, no norm).

Each convolution except ``out`` is followed by GroupNorm (``norm="group"``) and LeakyReLU(0.2),
and, with ``dropout > 0``, channel dropout (MC dropout).
There is no BatchNorm and nothing is updated in place, so ``torch.func`` transforms work. Unlike
the published DIP U-Net there is no GroupNorm on the joined ``up_s`` input (both parts are
already normalised), no 1-channel dummy branch where a scale has no skip, and no output sigmoid
(attenuation images are not confined to [0, 1]).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvWeight", "Norm", "UNet", "onednn_convolutions"]

MIN_COARSEST = 4  # pixels the coarsest scale must keep along every axis
# PyTorch sends a CPU float32 convolution to oneDNN only for a batch of several images or an
# input with N·C·Z·Y above this many elements; below, it takes its vol2col convolution
_VOL2COL_LIMIT = 20480
_ONEDNN = contextvars.ContextVar("onednn_convolutions", default=False)


@contextmanager
def onednn_convolutions() -> Iterator[None]:
    """Within this block, 3D convolutions of a single CPU float32 image run through oneDNN,
    forward and backward, where PyTorch would take its vol2col convolution.

    PyTorch's heuristic keeps a batch of one image below ``N·C·Z·Y = 20480`` elements (32
    channels at 24³, 16 at 32³: every DIP volume of a laptop's size) on vol2col, which is
    several times slower than oneDNN there, so a DIP step of the default 3D U-Net at these
    sizes is much faster through oneDNN (``scripts/bench_dip.py speed --sizes laptop``
    measures it; docs/measurements.md). Results agree with the vol2col convolution to float32
    rounding, not bit for bit.

    For plain autograd only (the DIP's training steps): the oneDNN function has no
    forward-mode derivative and no batching rule, so do not enter it around ``torch.func``
    transforms (the linearisation's products are batched and reach oneDNN anyway).
    """
    token = _ONEDNN.set(True)
    try:
        yield
    finally:
        _ONEDNN.reset(token)


def _onednn_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: Sequence[int],
    stride: Sequence[int] = (1, 1, 1),
) -> torch.Tensor:
    return torch.mkldnn_convolution(
        x.contiguous(), weight.contiguous(), bias, padding, stride, (1, 1, 1), 1
    )


class _OneDNNConv3d(torch.autograd.Function):
    """A 3D convolution (groups 1, dilation 1, zero padding) whose forward and backward are
    oneDNN convolutions."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = tuple(stride), tuple(padding)
        return _onednn_conv(x, weight, bias, padding, stride)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad = grad.contiguous()
        if ctx.stride == (1, 1, 1):
            # the input's gradient correlates grad with the flipped, transposed kernel; the
            # kernel's correlates the input with grad, the channels taken as the batch
            kernel = weight.shape[2:]
            flipped = [k - 1 - p for k, p in zip(kernel, ctx.padding, strict=True)]
            grad_x = grad_weight = None
            if need_x:
                grad_x = _onednn_conv(grad, weight.flip(2, 3, 4).transpose(0, 1), None, flipped)
            if need_weight:
                grad_weight = _onednn_conv(
                    x.transpose(0, 1), grad.transpose(0, 1), None, ctx.padding
                ).transpose(0, 1)
        else:
            # strided (cheap: an eighth of the output): PyTorch's own backward, which takes
            # oneDNN for a batch of two (the second image all zeros, so it adds nothing)
            grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
                torch.cat([grad, torch.zeros_like(grad)]),
                torch.cat([x, torch.zeros_like(x)]),
                weight,
                None,
                ctx.stride,
                ctx.padding,
                (1, 1, 1),
                False,
                (0, 0, 0),
                1,
                (need_x, need_weight, False),
            )
            grad_x = None if grad_x is None else grad_x[:1]
        grad_bias = grad.sum((0, 2, 3, 4)) if need_bias else None
        return grad_x, grad_weight, grad_bias, None, None


class _Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that takes oneDNN for one image inside :func:`onednn_convolutions`."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            _ONEDNN.get()
            and input.device.type == "cpu"
            and input.dtype == torch.float32
            and input.shape[0] == 1
            and input.shape[1] * input.shape[2] * input.shape[3] <= _VOL2COL_LIMIT
            and self.groups == 1
            and self.dilation == (1, 1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and torch.backends.mkldnn.is_available()
        ):
            return _OneDNNConv3d.apply(input, weight, bias, self.stride, self.padding)
        return super()._conv_forward(input, weight, bias)


_CONV = {2: nn.Conv2d, 3: _Conv3d}
_UPSAMPLE = {2: "bilinear", 3: "trilinear"}
# Channel dropout (whole feature maps), not element dropout: neighbouring activations of a
# convolution are strongly correlated, so zeroing single voxels is largely undone by the next
# 3×3 filter (Tompson et al. 2015), while dropping a channel drops one filter's output — the
# Bernoulli distribution over filters of Gal & Ghahramani's Bayesian CNN.
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
# Defaults per dimension: (scales, channels). Skip channels default to 4 at the two finest
# scales only. Reasons are in the UNet docstring, measurements in docs/measurements.md.
_DEFAULTS = {2: (5, 32), 3: (4, 32)}


class Norm(str, Enum):
    """Normalisation after each convolution: ``"group"`` (GroupNorm) or ``"none"``."""

    GROUP = "group"
    NONE = "none"


@dataclass(frozen=True)
class ConvWeight:
    """One convolution weight of a :class:`UNet`.

    ``name`` is its key in ``named_parameters()`` (and in ``torch.func.functional_call``),
    ``block`` the prior group it belongs to (``"down_0"``, ``"skip_1"``, ``"up_2"``, ``"out"``,
    see :mod:`dip_uq.networks`), ``shape`` is ``(C_out, C_in, *kernel_size)`` and
    ``kernel_size`` is ``(k, k)`` in 2D or ``(k, k, k)`` in 3D.
    """

    name: str
    block: str
    shape: tuple[int, ...]
    kernel_size: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of weights."""
        return math.prod(self.shape)


def _num_groups(channels: int) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` that is at most 4 and leaves at
    least 4 channels per group, else 1 (4 groups for 16+ channels divisible by 4, one group
    for the 4-channel skip branches, as in the published DIP U-Net)."""
    return max(g for g in range(1, 5) if channels % g == 0 and (g == 1 or channels // g >= 4))


def _per_scale(name: str, value: int | Sequence[int], length: int, minimum: int) -> tuple[int, ...]:
    values = [value] * length if isinstance(value, int) else list(value)
    if len(values) != length or any(not isinstance(v, int) or v < minimum for v in values):
        raise ValueError(
            f"{name} must be an integer >= {minimum} or a sequence of {length} of them, "
            f"got {value!r}"
        )
    return tuple(values)


def _max_scales(shape: Sequence[int]) -> int:
    """Most scales for which every axis of ``shape`` keeps ``MIN_COARSEST`` pixels (0 if none)."""
    scales = 0
    while all(math.ceil(n / 2**scales) >= MIN_COARSEST for n in shape):
        scales += 1
    return scales


def _conv_layers(
    dim: int, c_in: int, c_out: int, kernel: int, stride: int, norm: Norm, dropout: float
) -> list[nn.Module]:
    layers = [_CONV[dim](c_in, c_out, kernel, stride=stride, padding=kernel // 2)]
    if norm is Norm.GROUP:
        layers.append(nn.GroupNorm(_num_groups(c_out), c_out))
    activation: nn.Module = nn.LeakyReLU(0.2)
    if dropout > 0:
        # Dropout shares the activation's slot, so the parameter names (and the weights a
        # seed draws) are the same for every dropout rate and state dicts load across them.
        activation = nn.Sequential(activation, _DROPOUT[dim](dropout))
    return [*layers, activation]


class UNet(nn.Module):
    """The U-Net of the deep image prior, mapping ``(B, in_channels, [Z,] Y, X)`` to
    ``(B, out_channels, [Z,] Y, X)`` (block layout in :mod:`dip_uq.networks`).

    Parameters
    ----------
    dim:
        2 for images ``(B, C, Y, X)``, 3 for volumes ``(B, C, Z, Y, X)``.
    scales:
        Number of resolutions, including the input's; ``scales - 1`` downsamplings by 2.
        Every spatial axis must keep at least 4 pixels at the coarsest scale
        (:meth:`default_for` picks ``scales`` from an image shape).
    channels:
        Feature channels per scale: one int for all scales or a sequence of ``scales`` ints.
    skip_channels:
        Channels of the skip branch at scales ``0 .. scales - 2``: one int or a sequence of
        ``scales - 1`` ints; 0 means no skip branch at that scale.
    norm:
        ``"group"`` or ``"none"`` (or :class:`Norm`). GroupNorm uses the largest divisor of the
        channel count that is at most 4 and leaves at least 4 channels per group, else 1 group:
        4 groups for 16+ channels divisible by 4, one group for the 4-channel skip branches.
    in_channels, out_channels:
        Channels of the input and output images.
    dropout:
        Probability ``p`` in ``[0, 1)`` of channel dropout (``Dropout2d``/``Dropout3d``) after
        the activation of every convolution except ``out``, active in training mode (MC
        dropout, :func:`dip_uq.baselines.mc_dropout`). It adds no parameters: the parameter
        names and the weights drawn for a seed are the same for every ``p``. ``0`` (the
        default) adds no module at all.
    seed:
        With an int, the weights are drawn from a local ``torch.Generator`` seeded with it, and
        the global RNG is left untouched; with ``None``, from the global RNG (as any torch
        module). Initialisation is PyTorch's default for convolutions (Kaiming-uniform weights,
        ``a = sqrt(5)``; uniform biases) and ones/zeros for GroupNorm.

    Defaults (``None``)
    -------------------
    * 2D: 5 scales, 32 channels, skip channels ``(4, 4, 0, 0)``; 0.15M parameters. The
      published CT setting (6 scales, 128 channels, skips only at the two finest scales; 2.97M
      parameters in this implementation) with one scale fewer, so images from 49 pixels up fit
      (a 501-pixel slice still reaches a 32-pixel coarsest grid), and a quarter of its width:
      on a CPU, 32 channels reached a much higher PSNR than 128 in less time, and the
      linearised Laplace std of 128-channel DIPs came out overconfident where that of 32
      channels was calibrated. ``channels=128`` (2.38M parameters) is the published width.
    * 3D: 4 scales, 32 channels, skip channels ``(4, 4, 0)``; 0.34M parameters. 3D
      convolutions cost 3x more per voxel and volumes hold far more voxels, so the width is
      cut to keep one forward+backward at 64³ within about a second on a small CPU, and the
      activations saved for backward at 128³ well inside one GPU's memory.

    The measurements behind these defaults, and forward+backward times of several widths and
    sizes, are in docs/measurements.md.

    The module is built on the CPU; move it with ``.to(device, dtype)``.
    """

    def __init__(
        self,
        dim: int = 2,
        scales: int | None = None,
        channels: int | Sequence[int] | None = None,
        skip_channels: int | Sequence[int] | None = None,
        norm: Norm | str = "group",
        in_channels: int = 1,
        out_channels: int = 1,
        seed: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim not in _DEFAULTS:
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        default_scales, default_channels = _DEFAULTS[dim]
        scales = default_scales if scales is None else scales
        if not isinstance(scales, int) or scales < 1:
            raise ValueError(f"scales must be a positive integer, got {scales!r}")
        try:
            norm = Norm(norm)
        except ValueError:
            accepted = ", ".join(repr(n.value) for n in Norm)
            raise ValueError(f"norm must be one of {accepted}, got {norm!r}") from None
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        ok = isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
        if not (ok and 0 <= dropout < 1):
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        if skip_channels is None:
            skip_channels = [4 if s < 2 else 0 for s in range(scales - 1)]
        self.dim = dim
        self.scales = scales
        self.channels = _per_scale(
            "channels", default_channels if channels is None else channels, scales, 1
        )
        self.skip_channels = _per_scale("skip_channels", skip_channels, scales - 1, 0)
        self.norm = norm
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dropout = float(dropout)

        c, k, p = self.channels, self.skip_channels, self.dropout
        # Built on "meta" (no memory, no draws from the global RNG); reset_parameters fills it.
        with torch.device("meta"):
            self.down = nn.ModuleList(
                [nn.Sequential(*_conv_layers(dim, in_channels, c[0], 3, 1, norm, p))]
                + [
                    nn.Sequential(
                        *_conv_layers(dim, c[s - 1], c[s], 3, 2, norm, p),
                        *_conv_layers(dim, c[s], c[s], 3, 1, norm, p),
                    )
                    for s in range(1, scales)
                ]
            )
            self.skip = nn.ModuleDict(
                {
                    str(s): nn.Sequential(*_conv_layers(dim, c[s], k[s], 1, 1, norm, p))
                    for s in range(scales - 1)
                    if k[s] > 0
                }
            )
            self.up = nn.ModuleList(
                nn.Sequential(
                    *_conv_layers(dim, c[s + 1] + k[s], c[s], 3, 1, norm, p),
                    *_conv_layers(dim, c[s], c[s], 3, 1, norm, p),
                )
                for s in range(scales - 1)
            )
            self.out = _CONV[dim](c[0], out_channels, 1)
        self.to_empty(device="cpu")
        self.reset_parameters(seed)

    @classmethod
    def default_for(cls, shape: Sequence[int], scales: int | None = None, **kwargs: Any) -> UNet:
        """The default U-Net for images of spatial shape ``([Z,] Y, X)``.

        ``dim = len(shape)``; ``scales`` (``None``) is the default for ``dim``, lowered where
        needed so every axis keeps at least 4 pixels at the coarsest scale (a 16×16 image gets
        3 scales); a given ``scales`` is used as it is. Other keyword arguments go to
        :class:`UNet`.
        """
        shape = tuple(shape)
        if len(shape) not in _DEFAULTS:
            raise ValueError(f"shape must be (Y, X) or (Z, Y, X), got {shape!r}")
        if scales is None:
            scales = min(_DEFAULTS[len(shape)][0], _max_scales(shape))
            if scales < 1:
                raise ValueError(f"shape {shape!r} has an axis below {MIN_COARSEST} pixels")
        return cls(dim=len(shape), scales=scales, **kwargs)

    def reset_parameters(self, seed: int | None = None) -> None:
        """Draw new weights: from a local generator seeded with ``seed``, or from the global
        RNG when ``seed`` is ``None`` (see the class docstring)."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.GroupNorm):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, _CONV[self.dim]):
                    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                    bound = 1 / math.sqrt(module.weight[0].numel())
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)

    def conv_weights(self) -> list[ConvWeight]:
        """The convolution weights (no biases, no norm parameters), in ``named_parameters()``
        order: ``down_0 .. down_{S-1}``, the ``skip_s``, ``up_0 .. up_{S-2}``, ``out``."""
        records = []
        for name, module in self.named_modules():
            if isinstance(module, _CONV[self.dim]):
                parts = name.split(".")
                block = parts[0] if parts[0] == "out" else f"{parts[0]}_{parts[1]}"
                records.append(
                    ConvWeight(
                        name=f"{name}.weight",
                        block=block,
                        shape=tuple(module.weight.shape),
                        kernel_size=tuple(module.kernel_size),
                    )
                )
        return records

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, [Z,] Y, X)`` to ``(B, out_channels, [Z,] Y, X)``.

        Any spatial size works as long as every axis keeps at least 4 pixels at the coarsest
        scale (``ValueError`` otherwise).
        """
        if x.ndim != self.dim + 2 or x.shape[1] != self.in_channels:
            axes = "(B, C, Y, X)" if self.dim == 2 else "(B, C, Z, Y, X)"
            raise ValueError(
                f"input must be {axes} with C = {self.in_channels}, got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if _max_scales(spatial) < self.scales:
            coarsest = tuple(math.ceil(n / 2 ** (self.scales - 1)) for n in spatial)
            raise ValueError(
                f"input of spatial shape {spatial} is too small for a U-Net with {self.scales} "
                f"scales: the coarsest scale would be {coarsest}, below {MIN_COARSEST} pixels "
                f"per axis; use at most {_max_scales(spatial)} scales "
                f"(UNet.default_for(shape) picks them)"
            )
        features = []
        for block in self.down:
            x = block(x)
            features.append(x)
        for s in reversed(range(self.scales - 1)):
            x = F.interpolate(x, size=features[s].shape[2:], mode=_UPSAMPLE[self.dim])
            if str(s) in self.skip:
                x = torch.cat([x, self.skip[str(s)](features[s])], dim=1)
            x = self.up[s](x)
        return self.out(x)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, scales={self.scales}, channels={self.channels}, "
            f"skip_channels={self.skip_channels}, norm={self.norm.value!r}, "
            f"in_channels={self.in_channels}, out_channels={self.out_channels}"
            + (f", dropout={self.dropout}" if self.dropout else "")
        )
