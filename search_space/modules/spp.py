"""Spatial pyramid pooling: SPP, SPPF, SPPCSPC (ARCH_SPEC §2.4), and the MP down-sampling transition (§2.5)."""

from __future__ import annotations

import torch
from torch import nn

from gpnas.search_space.modules.common import ConvUnit
from gpnas.search_space.modules.registry import SPP_BLOCKS, register_example

POOL_SIZES = (5, 9, 13)


@SPP_BLOCKS.register("spp")
class SPP(nn.Module):
    """1×1 (c_in -> c_in/2), parallel max-pools 5/9/13, concat [x, p5, p9, p13], 1×1 -> c_out."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = ConvUnit(in_channels, hidden, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in POOL_SIZES)
        self.cv2 = ConvUnit(hidden * (len(POOL_SIZES) + 1), out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *(pool(x) for pool in self.pools)], dim=1))


@SPP_BLOCKS.register("sppf")
class SPPF(nn.Module):
    """SPP with three chained 5×5 pools: numerically the same receptive fields, fewer pool FLOPs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = ConvUnit(in_channels, hidden, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = ConvUnit(hidden * 4, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.cv2(torch.cat([x, p1, p2, self.pool(p2)], dim=1))


@SPP_BLOCKS.register("sppcspc")
class SPPCSPC(nn.Module):
    """CSP-wrapped SPP (hidden c_ = c_out): block path 1×1, 3×3, 1×1, pools, 1×1, 3×3; cross 1×1; fuse 1×1."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        c = out_channels
        self.cv1 = ConvUnit(in_channels, c, 1)
        self.cv3 = ConvUnit(c, c, 3)
        self.cv4 = ConvUnit(c, c, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in POOL_SIZES)
        self.cv5 = ConvUnit(4 * c, c, 1)
        self.cv6 = ConvUnit(c, c, 3)
        self.cv2 = ConvUnit(in_channels, c, 1)
        self.cv7 = ConvUnit(2 * c, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv4(self.cv3(self.cv1(x)))
        y = self.cv6(self.cv5(torch.cat([y, *(pool(y) for pool in self.pools)], dim=1)))
        return self.cv7(torch.cat([y, self.cv2(x)], dim=1))


class MPDown(nn.Module):
    """yolov7 down-sampling transition: [1×1 -> 3×3 s2] ‖ [maxpool 2×2 -> 1×1], each c_out/2 wide.

    ``lateral`` tensors (the neck's bottom-up path) join the same concat.
    x: Tensor[B, c_in, H, W] -> Tensor[B, 2·(c_out // 2) + lateral, H/2, W/2].
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.pool = nn.MaxPool2d(2, 2)
        self.cv1 = ConvUnit(in_channels, half, 1)
        self.cv2 = ConvUnit(in_channels, half, 1)
        self.cv3 = ConvUnit(half, half, 3, 2)
        self.out_channels = 2 * half

    def forward(self, x: torch.Tensor, *lateral: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cv3(self.cv2(x)), self.cv1(self.pool(x)), *lateral], dim=1)


for _name, _cls in SPP_BLOCKS:
    register_example(_name, lambda c=_cls: c(16, 8), 16)
register_example("mp", lambda: MPDown(8, 8), 8)
