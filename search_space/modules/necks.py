"""Necks (ARCH_SPEC §3): YOLOv3 FPN, CSP-PAN (YOLOR-CSP), ELAN-PAN (yolov7).

Each takes the backbone's (P3, P4, P5) features and returns the three head inputs, ``head_widths`` wide.
The neck widths are half the head widths (n_i = h_i / 2), as in every reference layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from gpnas.search_space.modules.common import ConvUnit
from gpnas.search_space.modules.csp import CSPB
from gpnas.search_space.modules.elan import ELAN
from gpnas.search_space.modules.registry import NECKS, SPP_BLOCKS, register_example
from gpnas.search_space.modules.residual import Bottleneck
from gpnas.search_space.modules.spp import MPDown

if TYPE_CHECKING:
    from gpnas.search_space.spec import ArchSpec

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _up() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode="nearest")


class _FPNLevel(nn.Module):
    """Bottleneck(c_in -> h) + (n-1) × Bottleneck(h -> h) + route 1×1 (h -> h/2) + out 3×3 (h/2 -> h)."""

    def __init__(self, in_channels: int, width: int, repeats: int) -> None:
        super().__init__()
        blocks = [Bottleneck(in_channels, width)]
        blocks += [Bottleneck(width, width) for _ in range(repeats - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.route = ConvUnit(width, width // 2, 1)
        self.out = ConvUnit(width // 2, width, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        route = self.route(self.blocks(x))
        return route, self.out(route)


@NECKS.register("fpn")
class FPNNeck(nn.Module):
    """YOLOv3-SPP top-down FPN (§3.1); the SPP block sits in the P5 branch."""

    def __init__(self, in_channels: Sequence[int], head_widths: Sequence[int], *, spp: str, repeats: int) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        h3, h4, h5 = head_widths
        self.p5_in = nn.Sequential(*(Bottleneck(c5 if i == 0 else h5, h5) for i in range(max(1, repeats - 1))))
        self.spp = SPP_BLOCKS.get(spp)(h5, h5 // 2)
        self.p5_mid = ConvUnit(h5 // 2, h5, 3)
        self.p5_route = ConvUnit(h5, h5 // 2, 1)
        self.p5_out = ConvUnit(h5 // 2, h5, 3)
        self.lat4 = ConvUnit(h5 // 2, h4 // 2, 1)
        self.p4 = _FPNLevel(h4 // 2 + c4, h4, repeats)
        self.lat3 = ConvUnit(h4 // 2, h3 // 2, 1)
        self.p3 = _FPNLevel(h3 // 2 + c3, h3, repeats)
        self.up = _up()
        self.out_channels = (h3, h4, h5)

    def forward(self, features: Features) -> list[torch.Tensor]:
        x3, x4, x5 = features
        r5 = self.p5_route(self.p5_mid(self.spp(self.p5_in(x5))))
        o5 = self.p5_out(r5)
        r4, o4 = self.p4(torch.cat([self.up(self.lat4(r5)), x4], dim=1))
        _, o3 = self.p3(torch.cat([self.up(self.lat3(r4)), x3], dim=1))
        return [o3, o4, o5]

    @classmethod
    def from_spec(cls, spec: ArchSpec, in_channels: Sequence[int], head_widths: Sequence[int]) -> FPNNeck:
        repeats = max(1, round(spec.neck_repeats * spec.depth_multiple))
        return cls(in_channels, head_widths, spp=spec.spp, repeats=repeats)


class _PAN(nn.Module):
    """Shared PAN wiring: SPP on P5, two top-down merges, two bottom-up merges, 3×3 head convs."""

    def __init__(self, in_channels: Sequence[int], head_widths: Sequence[int], spp: str) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        h3, h4, h5 = head_widths
        n3, n4, n5 = h3 // 2, h4 // 2, h5 // 2
        self.widths = (n3, n4, n5)
        self.spp = SPP_BLOCKS.get(spp)(c5, n5)
        self.reduce5 = ConvUnit(n5, n4, 1)
        self.lat4 = ConvUnit(c4, n4, 1)
        self.reduce4 = ConvUnit(n4, n3, 1)
        self.lat3 = ConvUnit(c3, n3, 1)
        self.up = _up()
        self.head3 = ConvUnit(n3, h3, 3)
        self.head4 = ConvUnit(n4, h4, 3)
        self.head5 = ConvUnit(n5, h5, 3)
        self.out_channels = (h3, h4, h5)

    def _merge(self, x: torch.Tensor, lateral: torch.Tensor, reduce: nn.Module, lat: nn.Module) -> torch.Tensor:
        return torch.cat([lat(lateral), self.up(reduce(x))], dim=1)


@NECKS.register("csp-pan")
class CSPPANNeck(_PAN):
    """YOLOR-CSP neck (§3.3): SPPCSPC, CSP-B merges (n repeats), 3×3 stride-2 convs bottom-up."""

    def __init__(self, in_channels: Sequence[int], head_widths: Sequence[int], *, spp: str, repeats: int) -> None:
        super().__init__(in_channels, head_widths, spp)
        n3, n4, n5 = self.widths
        self.td4 = CSPB(2 * n4, n4, repeats=repeats)
        self.td3 = CSPB(2 * n3, n3, repeats=repeats)
        self.down4 = ConvUnit(n3, n4, 3, 2)
        self.bu4 = CSPB(2 * n4, n4, repeats=repeats)
        self.down5 = ConvUnit(n4, n5, 3, 2)
        self.bu5 = CSPB(2 * n5, n5, repeats=repeats)

    def forward(self, features: Features) -> list[torch.Tensor]:
        x3, x4, x5 = features
        s5 = self.spp(x5)
        t4 = self.td4(self._merge(s5, x4, self.reduce5, self.lat4))
        t3 = self.td3(self._merge(t4, x3, self.reduce4, self.lat3))
        b4 = self.bu4(torch.cat([self.down4(t3), t4], dim=1))
        b5 = self.bu5(torch.cat([self.down5(b4), s5], dim=1))
        return [self.head3(t3), self.head4(b4), self.head5(b5)]

    @classmethod
    def from_spec(cls, spec: ArchSpec, in_channels: Sequence[int], head_widths: Sequence[int]) -> CSPPANNeck:
        repeats = max(1, round(spec.neck_repeats * spec.depth_multiple))
        return cls(in_channels, head_widths, spp=spec.spp, repeats=repeats)


@NECKS.register("elan-pan")
class ELANPANNeck(_PAN):
    """yolov7 neck (§3.4): SPPCSPC, neck ELANs (blocks × depth b), MP transitions bottom-up."""

    def __init__(
        self, in_channels: Sequence[int], head_widths: Sequence[int], *, spp: str, blocks: int, depth: int
    ) -> None:
        super().__init__(in_channels, head_widths, spp)
        n3, n4, n5 = self.widths
        self.td4 = ELAN.neck(2 * n4, n4, blocks=blocks, depth=depth)
        self.td3 = ELAN.neck(2 * n3, n3, blocks=blocks, depth=depth)
        self.down4 = MPDown(n3, 2 * n3)
        self.bu4 = ELAN.neck(self.down4.out_channels + n4, n4, blocks=blocks, depth=depth)
        self.down5 = MPDown(n4, 2 * n4)
        self.bu5 = ELAN.neck(self.down5.out_channels + n5, n5, blocks=blocks, depth=depth)

    def forward(self, features: Features) -> list[torch.Tensor]:
        x3, x4, x5 = features
        s5 = self.spp(x5)
        t4 = self.td4(self._merge(s5, x4, self.reduce5, self.lat4))
        t3 = self.td3(self._merge(t4, x3, self.reduce4, self.lat3))
        b4 = self.bu4(self.down4(t3, t4))
        b5 = self.bu5(self.down5(b4, s5))
        return [self.head3(t3), self.head4(b4), self.head5(b5)]

    @classmethod
    def from_spec(cls, spec: ArchSpec, in_channels: Sequence[int], head_widths: Sequence[int]) -> ELANPANNeck:
        return cls(in_channels, head_widths, spp=spec.spp, blocks=spec.neck_blocks, depth=spec.neck_stacks)


register_example("neck-fpn", lambda: FPNNeck((8, 16, 32), (16, 32, 64), spp="spp", repeats=2), [8, 16, 32])
register_example("neck-csp-pan", lambda: CSPPANNeck((8, 16, 32), (16, 32, 64), spp="sppcspc", repeats=1), [8, 16, 32])
register_example(
    "neck-elan-pan", lambda: ELANPANNeck((8, 16, 32), (16, 32, 64), spp="sppf", blocks=2, depth=2), [8, 16, 32]
)
