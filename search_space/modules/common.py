"""Primitive layers shared by every block family.

Conventions (ARCH_SPEC §1): a conv unit is Conv2d(bias=False, padding=k//2) -> BatchNorm2d(eps=1e-3,
momentum=0.03) -> SiLU. ``fuse()`` folds the BN into the conv, which then gains a bias. The gradient-path
analysis treats one ConvUnit as one weighted layer; MaskedAdd, Implicit* and parameter-free torch ops are
channel maps (ARCH_SPEC §7.1).
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class _ToMemoryFormat(torch.autograd.Function):
    """``x.contiguous(memory_format=fmt)`` whose gradient goes back in ``x``'s own format, so the layers before
    it see one memory format forward and backward (mixed formats send elementwise kernels down a slow path)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor,  # type: ignore[override]
                fmt: torch.memory_format) -> torch.Tensor:
        ctx.back = _format_of(x)  # type: ignore[attr-defined]
        return x.contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,  # type: ignore[override]
                 grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.contiguous(memory_format=ctx.back), None  # type: ignore[attr-defined]


class _GradInFormat(torch.autograd.Function):
    """Identity forward; the gradient is made dense in ``fmt`` on its way back (a gradient assembled from
    channel slices or a concat arrives strided, and BN's backward on strided input is several times slower)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, y: torch.Tensor,  # type: ignore[override]
                fmt: torch.memory_format) -> torch.Tensor:
        ctx.fmt = fmt  # type: ignore[attr-defined]
        return y.view_as(y)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,  # type: ignore[override]
                 grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.contiguous(memory_format=ctx.fmt), None  # type: ignore[attr-defined]


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


def to_memory_format(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``x`` in memory format ``fmt`` (itself when it already is); its gradient returns in ``x``'s format."""
    if x.is_contiguous(memory_format=fmt):
        return x
    return _ToMemoryFormat.apply(x, fmt) if x.requires_grad else x.contiguous(memory_format=fmt)


class ConvUnit(nn.Module):
    """Conv -> BN -> SiLU.  x: Tensor[B, in_channels, H, W] -> Tensor[B, out_channels, H/stride, W/stride].

    ``layout`` (a training speed setting, see ``gpnas.trainers.speedups``; the math is the same): ``None`` runs
    on whatever memory format arrives; ``"channels_last"`` converts the input to channels-last, so conv, BN and
    SiLU run there; ``"conv_channels_last"`` runs only the conv in channels-last and hands BN and SiLU an NCHW
    tensor (channels-last BatchNorm is slow on a handful of channels).
    """

    layout: str | None = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        *,
        groups: int = 1,
        padding: int | None = None,
        act: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"ConvUnit needs positive channels, got {in_channels} -> {out_channels}")
        pad = kernel_size // 2 if padding is None else padding
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout is None:
            return self.act(self.bn(self.conv(x)))
        fmt = torch.contiguous_format if self.layout == "conv_channels_last" else torch.channels_last
        y = self.act(self.bn(to_memory_format(self.conv(to_memory_format(x, torch.channels_last)), fmt)))
        return _GradInFormat.apply(y, fmt) if y.requires_grad else y

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold BN into the conv (the conv gains a bias); idempotent."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn = self.bn
        conv = self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=True,
        ).to(conv.weight.device, conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv = fused
        self.bn = nn.Identity()


class MaskedAdd(nn.Module):
    """PRN masked (and asymmetric) residual: y = F(x) + M_k ⊙ identity (ARCH_SPEC §2.2).

    Only the first ``k`` channels of the identity are added; every channel of F(x) is kept, so the output has
    F(x)'s width. k = round(mask_ratio · C) where C is the identity width, clipped to min(C_identity, C_out).
    mask_ratio 1 is a ResNet add, 0 a plain net. Parameter-free; fvcore counts it as 0 FLOPs.

    forward(fx: Tensor[B, C_out, H, W], identity: Tensor[B, C_id, H, W]) -> Tensor[B, C_out, H, W]
    """

    def __init__(self, identity_channels: int, out_channels: int, mask_ratio: float) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1], got {mask_ratio}")
        self.mask_ratio = float(mask_ratio)
        self.identity_channels = identity_channels
        self.out_channels = out_channels
        self.k = min(round(mask_ratio * identity_channels), identity_channels, out_channels)

    def forward(self, fx: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        k = self.k
        if k == 0:
            return fx
        if k == fx.shape[1] and k == identity.shape[1]:
            return fx + identity
        if k == fx.shape[1]:
            return fx + identity[:, :k]
        return torch.cat([fx[:, :k] + identity[:, :k], fx[:, k:]], dim=1)

    def extra_repr(self) -> str:
        return f"k={self.k}, identity={self.identity_channels}, out={self.out_channels}"


class ImplicitA(nn.Module):
    """YOLOR implicit add (before the detect conv); folds into the conv bias on fuse.  Channel identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channels, 1, 1))
        nn.init.normal_(self.implicit, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.implicit


class ImplicitM(nn.Module):
    """YOLOR implicit multiply (after the detect conv); folds into the conv on fuse.  Channel identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.implicit


#: Modules the gradient-path graph treats as one weighted layer (ARCH_SPEC §7.1).
WEIGHTED_LEAVES: tuple[type[nn.Module], ...] = (ConvUnit, nn.Conv2d, nn.Linear)
#: Parameterised modules that are channel-wise identities for gradient routing.
IDENTITY_LEAVES: tuple[type[nn.Module], ...] = (ImplicitA, ImplicitM)
