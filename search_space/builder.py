"""build_detector(spec, *, num_classes) -> Detector.

Channels and strides are derived analytically from the spec (each block reports ``out_channels``); nothing is
probed with a dummy forward pass (STYLE.md 4).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

import gpnas.search_space.modules  # noqa: F401  (registers every block family)
from gpnas.errors import SpecError
from gpnas.search_space.modules.common import ConvUnit
from gpnas.search_space.modules.heads import NUM_MASKS, PROTO_WIDTH, Detect, Proto
from gpnas.search_space.modules.registry import NECKS, STAGE_BLOCKS
from gpnas.search_space.modules.residual import ResidualBlock
from gpnas.search_space.modules.spp import MPDown
from gpnas.search_space.spec import ArchSpec

STRIDES = (8, 16, 32)
#: The most parameters a spec may build to. 500 M fp32 parameters are 2 GB of weights and about 8 GB with their
#: gradients and AdamW state, before activations; the paper's largest detectors have under 100 M. A spec above it
#: (e.g. a large width_multiple on a paper-scale preset) is refused before anything is allocated.
MAX_PARAMS = 500_000_000


def _scaled(width: int, spec: ArchSpec) -> int:
    return max(1, round(width * spec.width_multiple))


def build_stem(spec: ArchSpec) -> nn.Sequential:
    """Stride-2 stems: darknet (3×3 32, 3×3 s2 64, Res(64)), yolov7 (3×3 32, 3×3 s2 64, 3×3 64), yolov5 (6×6 s2 64)."""
    c32, c64 = _scaled(32, spec), _scaled(64, spec)
    if spec.stem == "darknet":
        mask = spec.mask_ratio[0] if spec.block != "elan" else 1.0
        layers = [ConvUnit(3, c32, 3), ConvUnit(c32, c64, 3, 2), ResidualBlock(c64, mask_ratio=mask)]
    elif spec.stem == "yolov7":
        layers = [ConvUnit(3, c32, 3), ConvUnit(c32, c64, 3, 2), ConvUnit(c64, c64, 3)]
    else:
        layers = [ConvUnit(3, c64, 6, 2, padding=2)]
    stem = nn.Sequential(*layers)
    stem.out_channels = c64  # type: ignore[assignment]
    return stem


class Stage(nn.Module):
    """Down-sampling transition (stride 2) followed by the stage's block."""

    def __init__(self, down: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.down = down
        self.block = block
        self.out_channels: int = block.out_channels  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.down(x))


def build_stage(spec: ArchSpec, stage: int, in_channels: int) -> Stage:
    """Stage P(stage+2). Residual/CSP stages go to ``widths[stage]`` in the transition; ELAN stages keep the
    incoming width through it (yolov7), except P2 whose transition doubles the stem width."""
    width = _scaled(spec.widths[stage], spec)
    if spec.block == "elan":
        down_width = in_channels if stage > 0 else 2 * in_channels
    else:
        down_width = width
    if stage == 0 or spec.downsample == "conv":
        down: nn.Module = ConvUnit(in_channels, down_width, 3, 2)
    else:
        down = MPDown(in_channels, down_width)
        down_width = down.out_channels
    block = STAGE_BLOCKS.get(spec.block).from_stage(spec, stage, down_width, width)
    return Stage(down, block)


class Detector(nn.Module):
    """Backbone (stem + 4 stages) -> neck -> Detect (+ Proto for the seg head).

    forward(images: Tensor[B, 3, S, S]) -> list of Tensor[B, na, S/s, S/s, no] raw logits for s in (8, 16, 32)
    (no = 5 + nc, + 32 mask coefficients with the seg head, whose mask prototypes Tensor[B, 32, S/4, S/4]
    follow as a 4th element).  ``decode`` turns the first three into boxes.
    """

    def __init__(self, spec: ArchSpec, *, num_classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.strides = STRIDES
        self.stem = build_stem(spec)
        stages, c = [], self.stem.out_channels
        for i in range(4):
            stages.append(build_stage(spec, i, c))
            c = stages[-1].out_channels
        self.stages = nn.ModuleList(stages)
        feats = tuple(s.out_channels for s in stages[1:])
        head_widths = tuple(_scaled(w, spec) for w in spec.head_widths)
        self.neck = NECKS.get(spec.neck).from_spec(spec, feats, head_widths)
        anchors = torch.tensor(spec.anchors, dtype=torch.float32)
        self.register_buffer("anchors", anchors)
        seg = spec.head == "seg"
        self.detect = Detect(
            self.neck.out_channels,
            num_classes=num_classes,
            num_anchors=anchors.shape[1],
            strides=STRIDES,
            num_masks=NUM_MASKS if seg else 0,
            implicit=spec.implicit,
        )
        self.proto = Proto(head_widths[0], width=_scaled(PROTO_WIDTH, spec)) if seg else None
        self.fused = False

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        heads = self.neck((feats[1], feats[2], feats[3]))
        out = self.detect(heads)
        if self.proto is not None:
            out.append(self.proto(heads[0]))
        return out

    @torch.no_grad()
    def decode(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Raw level maps -> Tensor[B, N, 5 + nc]: (cx, cy, w, h) in input pixels, objectness and class
        probabilities (sigmoid).  xy = (2σ − 0.5 + grid)·stride, wh = (2σ)²·anchor (ARCH_SPEC §4)."""
        rows = []
        for i, stride in enumerate(self.strides):
            p = outputs[i][..., : 5 + self.num_classes].float().sigmoid()
            _, na, h, w, _ = p.shape
            gy, gx = torch.meshgrid(
                torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij"
            )
            grid = torch.stack((gx, gy), dim=-1).view(1, 1, h, w, 2).float()
            xy = (p[..., :2] * 2 - 0.5 + grid) * stride
            wh = (p[..., 2:4] * 2) ** 2 * self.anchors[i].view(1, na, 1, 1, 2)
            rows.append(torch.cat([xy, wh, p[..., 4:]], dim=-1).flatten(1, 3))
        return torch.cat(rows, dim=1)

    @torch.no_grad()
    def fuse(self) -> Detector:
        """Fold BN into every conv and the implicit layers into the detect convs (in place); idempotent."""
        for m in self.modules():
            if isinstance(m, (ConvUnit, Detect)):
                m.fuse()
        self.fused = True
        return self


def build_detector(spec: ArchSpec, *, num_classes: int | None = None) -> Detector:
    """Build the detector a spec describes. ``num_classes`` defaults to ``spec.num_classes``.

    SpecError if the spec cannot be built, or if it would have more than :data:`MAX_PARAMS` parameters (counted
    first without allocating, see :func:`planned_params`)."""
    nc = spec.num_classes if num_classes is None else num_classes
    if nc < 1:
        raise SpecError(f"num_classes must be at least 1; got {nc}")
    if nc != spec.num_classes:
        spec = spec.replace(num_classes=nc)
    try:
        check_size(spec)
        return Detector(spec, num_classes=nc)
    except SpecError:
        raise
    except ValueError as err:
        raise SpecError(f"spec {spec.arch_id} ({spec.name or 'unnamed'}) cannot be built: {err}") from None


@functools.lru_cache(maxsize=256)
def planned_params(spec: ArchSpec) -> int:
    """The parameter count of ``build_detector(spec)``, from a build on the ``meta`` device: every shape is
    real, no memory is allocated and no weight is initialised with data (tens of ms for a paper-scale spec)."""
    with torch.device("meta"):
        return count_params(Detector(spec, num_classes=spec.num_classes))


def check_size(spec: ArchSpec) -> int:
    """-> the planned parameter count; SpecError naming the spec's scaling if it exceeds :data:`MAX_PARAMS`."""
    params = planned_params(spec)
    if params > MAX_PARAMS:
        raise SpecError(
            f"spec {spec.arch_id} ({spec.name or 'unnamed'}) would have {params:,} parameters "
            f"({params / 1e6:,.0f} M), over the limit of {MAX_PARAMS / 1e6:,.0f} M (MAX_PARAMS): width_multiple "
            f"{spec.width_multiple:g}, depth_multiple {spec.depth_multiple:g}, widths {list(spec.widths)}, head_widths "
            f"{list(spec.head_widths)}, num_classes {spec.num_classes}; lower width_multiple (or the widths)"
        )
    return params


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
