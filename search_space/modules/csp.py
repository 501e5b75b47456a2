"""CSP stage with a split ratio and the four fusion placements (ARCH_SPEC §2.3), and the neck's CSP-B."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gpnas.search_space.modules.common import ConvUnit
from gpnas.search_space.modules.registry import STAGE_BLOCKS, register_example
from gpnas.search_space.modules.residual import Bottleneck, ResidualBlock

if TYPE_CHECKING:
    from gpnas.search_space.spec import ArchSpec

FUSIONS = ("both", "first", "last", "none")


@STAGE_BLOCKS.register("csp")
class CSPStage(nn.Module):
    """Split the input; one part through ``repeats`` residual blocks (expansion 1.0), one across; fuse.

    fusion: ``both`` = transition (cv3) -> concat -> transition (cv4); ``first`` = concat -> cv4;
    ``last`` = cv3 -> concat; ``none`` = concat only.  split_mode ``conv`` splits with two 1×1 convs on the whole
    input (cv1: c_in -> c_b, cv2: c_in -> c_x with c_b = round(s·c_out)); ``channel`` slices the input
    (block part x[:, :k], cross part x[:, k:], k = round(s·c_in)).
    x: Tensor[B, c_in, H, W] -> Tensor[B, out_channels, H, W]; without cv4 the output is c_b + c_x wide.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        repeats: int,
        split_ratio: float = 0.5,
        fusion: str = "both",
        split_mode: str = "conv",
        mask_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {fusion!r}")
        self.split_mode = split_mode
        if split_mode == "conv":
            c_b = round(split_ratio * out_channels)
            c_x = out_channels - c_b
            self.cv1: nn.Module = ConvUnit(in_channels, c_b, 1)
            self.cv2: nn.Module = ConvUnit(in_channels, c_x, 1)
        elif split_mode == "channel":
            c_b = round(split_ratio * in_channels)
            c_x = in_channels - c_b
            self.cv1 = nn.Identity()
            self.cv2 = nn.Identity()
        else:
            raise ValueError(f"split_mode must be 'conv' or 'channel'; got {split_mode!r}")
        if c_b < 1 or c_x < 1:
            raise ValueError(f"split_ratio {split_ratio} leaves a part with 0 channels ({c_b} / {c_x})")
        self.split = c_b
        self.blocks = nn.Sequential(
            *(ResidualBlock(c_b, expansion=1.0, mask_ratio=mask_ratio) for _ in range(repeats))
        )
        self.cv3: nn.Module = ConvUnit(c_b, c_b, 1) if fusion in ("both", "last") else nn.Identity()
        has_cv4 = fusion in ("both", "first")
        self.cv4: nn.Module = ConvUnit(c_b + c_x, out_channels, 1) if has_cv4 else nn.Identity()
        self.out_channels = out_channels if has_cv4 else c_b + c_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_mode == "channel":
            block_in, cross = x[:, : self.split], x[:, self.split :]
        else:
            block_in, cross = self.cv1(x), self.cv2(x)
        return self.cv4(torch.cat([self.cv3(self.blocks(block_in)), cross], dim=1))

    @classmethod
    def from_stage(cls, spec: ArchSpec, stage: int, in_channels: int, out_channels: int) -> CSPStage:
        return cls(
            in_channels,
            out_channels,
            repeats=max(1, round(spec.repeats[stage] * spec.depth_multiple)),
            split_ratio=spec.split_ratio[stage],
            fusion=spec.fusion[stage],
            split_mode=spec.split_mode[stage],
            mask_ratio=spec.mask_ratio[stage],
        )


class CSPB(nn.Module):
    """Neck CSP-B (yolov7 BottleneckCSPB): shared 1×1 first, then split.

    x1 = 1×1(c_in -> c_out); block path n × Bottleneck(c_out -> c_out, hidden c_out); cross path 1×1 on x1;
    concat (2·c_out) -> 1×1 -> c_out.  x: Tensor[B, c_in, H, W] -> Tensor[B, c_out, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, *, repeats: int = 2) -> None:
        super().__init__()
        self.cv1 = ConvUnit(in_channels, out_channels, 1)
        self.blocks = nn.Sequential(
            *(Bottleneck(out_channels, out_channels, hidden=out_channels) for _ in range(repeats))
        )
        self.cv2 = ConvUnit(out_channels, out_channels, 1)
        self.cv3 = ConvUnit(2 * out_channels, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv1(x)
        return self.cv3(torch.cat([self.blocks(x1), self.cv2(x1)], dim=1))


for _fusion in FUSIONS:
    register_example(f"csp-{_fusion}", lambda f=_fusion: CSPStage(8, 8, repeats=2, fusion=f, mask_ratio=0.5), 8)
    register_example(
        f"csp-{_fusion}-channel",
        lambda f=_fusion: CSPStage(8, 8, repeats=1, fusion=f, split_mode="channel", split_ratio=0.25),
        8,
    )
register_example("csp-b", lambda: CSPB(12, 8, repeats=2), 12)
