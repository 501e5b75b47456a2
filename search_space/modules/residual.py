"""Darknet residual blocks with PRN masking (ARCH_SPEC §2.1, §2.2), and the plain bottleneck of the necks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gpnas.search_space.modules.common import ConvUnit, MaskedAdd
from gpnas.search_space.modules.registry import STAGE_BLOCKS, register_example

if TYPE_CHECKING:
    from gpnas.search_space.spec import ArchSpec


class ResidualBlock(nn.Module):
    """1×1 (channels -> hidden) then 3×3 (hidden -> channels), plus a masked identity.

    hidden = round(expansion · channels); expansion 0.5 is Darknet's, 1.0 the CSP inner block's.
    mask_ratio 1 = ResNet add, 0.5 = PRN, 0 = plain.  x: Tensor[B, C, H, W] -> Tensor[B, C, H, W].
    """

    def __init__(self, channels: int, *, expansion: float = 0.5, mask_ratio: float = 1.0) -> None:
        super().__init__()
        hidden = max(1, round(channels * expansion))
        self.cv1 = ConvUnit(channels, hidden, 1)
        self.cv2 = ConvUnit(hidden, channels, 3)
        self.add = MaskedAdd(channels, channels, mask_ratio)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(self.cv2(self.cv1(x)), x)


class Bottleneck(nn.Module):
    """Plain bottleneck without shortcut: 1×1 in -> hidden, 3×3 hidden -> out (the necks' building unit)."""

    def __init__(self, in_channels: int, out_channels: int, *, hidden: int | None = None) -> None:
        super().__init__()
        hidden = out_channels // 2 if hidden is None else hidden
        self.cv1 = ConvUnit(in_channels, hidden, 1)
        self.cv2 = ConvUnit(hidden, out_channels, 3)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


@STAGE_BLOCKS.register("residual")
class ResidualStage(nn.Sequential):
    """A backbone stage of ``repeats`` Darknet residual blocks (expansion 0.5) with mask ratio r."""

    def __init__(self, channels: int, repeats: int, mask_ratio: float) -> None:
        super().__init__(*(ResidualBlock(channels, mask_ratio=mask_ratio) for _ in range(repeats)))
        self.out_channels = channels

    @classmethod
    def from_stage(cls, spec: ArchSpec, stage: int, in_channels: int, out_channels: int) -> ResidualStage:
        if in_channels != out_channels:
            raise ValueError(f"a residual stage keeps its width: {in_channels} != {out_channels}")
        repeats = max(1, round(spec.repeats[stage] * spec.depth_multiple))
        return cls(in_channels, repeats, spec.mask_ratio[stage])


register_example("residual", lambda: ResidualStage(8, 2, 1.0), 8)
register_example("prn", lambda: ResidualStage(8, 2, 0.5), 8)
register_example("bottleneck", lambda: Bottleneck(8, 12), 8)
