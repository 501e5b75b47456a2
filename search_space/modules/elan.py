"""ELAN (YOLOv7 form) with the "stack in computational block" knob (ARCH_SPEC §2.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gpnas.search_space.modules.common import ConvUnit
from gpnas.search_space.modules.registry import STAGE_BLOCKS, register_example

if TYPE_CHECKING:
    from gpnas.search_space.spec import ArchSpec


@STAGE_BLOCKS.register("elan")
class ELAN(nn.Module):
    """A = 1×1 (c_in -> w_x) across; B = 1×1 (c_in -> w_x) feeding a chain of blocks·depth 3×3 convs
    (first w_x -> w, then w -> w); the last conv of every computational block is tapped; one transition
    1×1 over concat [tap_n, …, tap_1, B, A] (2·w_x + blocks·w channels) -> c_out.

    depth is the paper's stack count (a for the backbone, b for the neck).
    x: Tensor[B, c_in, H, W] -> Tensor[B, c_out, H, W].
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, cross: int, width: int, blocks: int, depth: int
    ) -> None:
        super().__init__()
        if blocks < 1 or depth < 1:
            raise ValueError(f"ELAN needs at least one block of depth 1; got blocks={blocks}, depth={depth}")
        self.cross = ConvUnit(in_channels, cross, 1)
        self.base = ConvUnit(in_channels, cross, 1)
        convs = [ConvUnit(cross if i == 0 else width, width, 3) for i in range(blocks * depth)]
        self.convs = nn.ModuleList(convs)
        self.depth = depth
        self.transition = ConvUnit(2 * cross + blocks * width, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.cross(x)
        y = self.base(x)
        parts = [y, a]
        for i, conv in enumerate(self.convs):
            y = conv(y)
            if (i + 1) % self.depth == 0:
                parts.insert(0, y)
        return self.transition(torch.cat(parts, dim=1))

    @classmethod
    def from_stage(cls, spec: ArchSpec, stage: int, in_channels: int, out_channels: int) -> ELAN:
        hidden = out_channels // 4
        return cls(
            in_channels,
            out_channels,
            cross=hidden,
            width=hidden,
            blocks=spec.elan_blocks[stage],
            depth=spec.backbone_stacks[stage],
        )

    @classmethod
    def neck(cls, in_channels: int, out_channels: int, *, blocks: int, depth: int) -> ELAN:
        """yolov7 neck form: w_x = c_out, w = c_out / 2."""
        return cls(in_channels, out_channels, cross=out_channels, width=out_channels // 2, blocks=blocks, depth=depth)


register_example("elan-2x2", lambda: ELAN(8, 16, cross=4, width=4, blocks=2, depth=2), 8)
register_example("elan-neck-4x1", lambda: ELAN.neck(16, 8, blocks=4, depth=1), 16)
