"""Detect / IDetect and the Segment head's Proto (ARCH_SPEC §4)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gpnas.search_space.modules.common import ConvUnit, ImplicitA, ImplicitM
from gpnas.search_space.modules.registry import register_example

NUM_MASKS = 32
PROTO_WIDTH = 256


class Detect(nn.Module):
    """One 1×1 conv with bias per level, c_i -> na·no, no = 5 + nc (+ masks for seg).

    implicit=True is YOLOR's IDetect (ImplicitA before, ImplicitM after; both fold into the conv on fuse).
    forward(list of Tensor[B, c_i, H_i, W_i]) -> list of Tensor[B, na, H_i, W_i, no] raw logits,
    per anchor [x, y, w, h, obj, cls…, masks…].
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        *,
        num_classes: int,
        num_anchors: int,
        strides: Sequence[int],
        num_masks: int = 0,
        implicit: bool = False,
    ) -> None:
        super().__init__()
        self.na = num_anchors
        self.nc = num_classes
        self.no = 5 + num_classes + num_masks
        self.convs = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in in_channels)
        self.ia = nn.ModuleList(ImplicitA(c) if implicit else nn.Identity() for c in in_channels)
        self.im = nn.ModuleList(ImplicitM(self.na * self.no) if implicit else nn.Identity() for _ in in_channels)
        self._init_bias(strides)

    @torch.no_grad()
    def _init_bias(self, strides: Sequence[int]) -> None:
        for conv, stride in zip(self.convs, strides, strict=True):
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / stride) ** 2)
            b[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99999))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for x, ia, conv, im in zip(features, self.ia, self.convs, self.im, strict=True):
            y = im(conv(ia(x)))
            out.append(y.unflatten(1, (self.na, self.no)).permute(0, 1, 3, 4, 2).contiguous())
        return out

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold ImplicitA/M into the convs (IDetect -> Detect)."""
        for i, conv in enumerate(self.convs):
            ia, im = self.ia[i], self.im[i]
            if isinstance(ia, ImplicitA):
                conv.bias += (conv.weight.sum(dim=(2, 3)) @ ia.implicit.view(-1, 1)).view(-1)
                self.ia[i] = nn.Identity()
            if isinstance(im, ImplicitM):
                scale = im.implicit.view(-1)
                conv.weight *= scale.view(-1, 1, 1, 1)
                conv.bias *= scale
                self.im[i] = nn.Identity()


class Proto(nn.Module):
    """Mask prototypes on the P3 input: 3×3 -> 256, nearest ×2, 3×3 256 -> 256, 1×1 -> 32 masks (stride 4)."""

    def __init__(self, in_channels: int, *, width: int = PROTO_WIDTH, num_masks: int = NUM_MASKS) -> None:
        super().__init__()
        self.cv1 = ConvUnit(in_channels, width, 3)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.cv2 = ConvUnit(width, width, 3)
        self.cv3 = ConvUnit(width, num_masks, 1)
        self.out_channels = num_masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(self.up(self.cv1(x))))


register_example(
    "detect",
    lambda: Detect([8, 16, 32], num_classes=3, num_anchors=3, strides=(8, 16, 32), implicit=True),
    [8, 16, 32],
)
register_example("proto", lambda: Proto(8, width=16, num_masks=4), 8)
