"""Target assignment and the YOLOv5 r6.2 detection loss (ARCH_SPEC §4).

Conventions shared with the detector and the data collate:

- ``preds``: list of ``nl`` raw tensors, level i of shape ``[B, na, H_i, W_i, 5 + nc]``, per anchor
  ``[x, y, w, h, obj, cls...]`` as logits (no sigmoid), for strides such as (8, 16, 32).
- ``anchors``: ``Tensor[nl, na, 2]`` (w, h) in **pixels** of the training image; divided by the stride here.
- ``targets``: ``Tensor[M, 6]`` rows ``(batch_index, class_index, cx, cy, w, h)``, box normalised to [0, 1]
  of the square training image.
- Decode: ``xy = 2σ − 0.5 + cell`` and ``wh = (2σ)² · anchor``, in grid units here (× stride gives pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from gpnas.errors import ConfigError, DataError
from gpnas.search_space.sections import is_number

__all__ = ["LevelTargets", "LossHyp", "YoloLoss", "bbox_ciou", "build_targets"]

# Per-positive candidate cells: centre, left, up, right, down (dx, dy).
_CELL_SHIFTS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


@dataclass(frozen=True)
class LossHyp:
    """Loss gains before YOLOv5's training-script rescaling (``hyp.scratch-low`` values by default); ``train.hyp`` in a
    search config (its keys are read like the ``train`` section's; messages name ``train.hyp.<key>``).

    ``balance`` weighs the objectness loss of each level, P3 first; it needs one entry per detection level.
    ``gr`` mixes the objectness target between 1 (gr=0) and the positive's detached CIoU (gr=1).
    """

    box: float = 0.05
    cls: float = 0.5
    obj: float = 1.0
    anchor_t: float = 4.0
    label_smoothing: float = 0.0
    balance: tuple[float, ...] = (4.0, 1.0, 0.4)
    gr: float = 1.0

    def __post_init__(self) -> None:
        for name in ("box", "cls", "obj"):
            value = getattr(self, name)
            if not (is_number(value) and value >= 0):
                raise ConfigError(f"train.hyp.{name} must be a finite gain >= 0, got {value!r}; "
                                  "0 switches that loss term off")
        if not (is_number(self.anchor_t) and self.anchor_t > 1.0):
            raise ConfigError(f"train.hyp.anchor_t must be > 1 (a max(r, 1/r) bound on the box/anchor size "
                              f"ratio), got {self.anchor_t!r}; YOLOv5 uses 4.0")
        if not (is_number(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0):
            raise ConfigError(f"train.hyp.label_smoothing must be in [0, 1), got {self.label_smoothing!r}; "
                              "0 is no smoothing")
        if not (is_number(self.gr) and 0.0 <= self.gr <= 1.0):
            raise ConfigError(f"train.hyp.gr must be in [0, 1], got {self.gr!r}")
        weights = self.balance if isinstance(self.balance, (list, tuple)) else ()
        if not weights or any(not (is_number(b) and b > 0) for b in weights):
            raise ConfigError(f"train.hyp.balance must be positive weights, one per detection level (P3 first), "
                              f"got {self.balance!r}; e.g. [4.0, 1.0, 0.4] for three levels")
        object.__setattr__(self, "balance", tuple(float(b) for b in weights))

    def gains(self, *, num_levels: int, num_classes: int, img_size: int) -> tuple[float, float, float]:
        """(box, obj, cls) gains after YOLOv5's training-script rescaling: ×3/nl, ×(img/640)²·3/nl, ×nc/80·3/nl."""
        level_scale = 3.0 / num_levels
        return (
            self.box * level_scale,
            self.obj * (img_size / 640.0) ** 2 * level_scale,
            self.cls * num_classes / 80.0 * level_scale,
        )


@dataclass(frozen=True)
class LevelTargets:
    """Positives of one level; P = number of (GT, anchor, cell) assignments.

    Index fields are ``Tensor[P]`` int64: ``batch``, ``anchor``, ``gy`` (row), ``gx`` (column), ``cls``
    and ``gt`` (row of the input targets). ``box``: ``Tensor[P, 4]`` (x, y, w, h) in grid units, with x, y
    relative to the assigned cell, in (−0.5, 1.5) for offset 0.5. ``anchor_wh``: ``Tensor[P, 2]``, grid units.
    """

    batch: Tensor
    anchor: Tensor
    gy: Tensor
    gx: Tensor
    cls: Tensor
    gt: Tensor
    box: Tensor
    anchor_wh: Tensor

    @property
    def num(self) -> int:
        return int(self.batch.numel())


def bbox_ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of (cx, cy, w, h) boxes: ``Tensor[..., 4]`` and ``Tensor[..., 4]`` -> ``Tensor[...]``.

    The two inputs broadcast against each other.

    CIoU = IoU − ρ²/c² − α·v, with ρ the centre distance, c the diagonal of the enclosing box,
    v = 4/π² (atan(w2/h2) − atan(w1/h1))² and α = v / (1 − IoU + v) held constant (no gradient).
    Identical boxes give 1; the value lies in (−1, 1].
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    w1, h1, w2, h2 = w1.clamp(min=0), h1.clamp(min=0), w2.clamp(min=0), h2.clamp(min=0)
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2

    inter_w = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(min=0)
    inter_h = (torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)).clamp(min=0)
    inter = inter_w * inter_h
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union

    enclose_w = torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)
    enclose_h = torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)
    diag2 = enclose_w**2 + enclose_h**2 + eps
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    # Edge arithmetic can put the IoU of identical boxes a hair above 1; keep 0/0 out of alpha.
    alpha = (v / (v - iou + (1 + eps)).clamp(min=eps)).detach()
    return iou - (rho2 / diag2 + v * alpha)


def build_targets(
    targets: Tensor,
    *,
    anchors: Tensor,
    strides: Sequence[int],
    grid_shapes: Sequence[tuple[int, int]],
    anchor_t: float = 4.0,
    offset: float = 0.5,
) -> list[LevelTargets]:
    """Assign GT boxes to (level, anchor, cell) positives, YOLOv5 style (ARCH_SPEC §4).

    targets: ``Tensor[M, 6]`` (batch, class, cx, cy, w, h), box normalised to [0, 1].
    anchors: ``Tensor[nl, na, 2]`` in pixels; strides: one per level; grid_shapes: (H_i, W_i) per level.

    An anchor matches a GT when max(r, 1/r) < anchor_t for both w and h (r = gt / anchor). Each match goes
    to its centre cell plus the horizontal and the vertical neighbour whose shared edge lies within
    ``offset`` of the centre (the nearer one for offset 0.5; an exact tie at 0.5 takes neither), never
    outside the grid.
    Returns one :class:`LevelTargets` per level, on the device of ``targets``.
    """
    if targets.ndim != 2 or targets.shape[1] != 6:
        raise DataError(
            f"targets must be Tensor[M, 6] (batch, class, cx, cy, w, h), got shape {tuple(targets.shape)}"
        )
    if not (
        anchors.ndim == 3 and anchors.shape[0] == len(strides) == len(grid_shapes) and anchors.shape[2] == 2
    ):
        raise ConfigError(
            f"anchors must be Tensor[nl, na, 2] with nl = len(strides) = len(grid_shapes); got anchors "
            f"{tuple(anchors.shape)}, {len(strides)} strides, {len(grid_shapes)} grid shapes"
        )
    anchors = anchors.to(device=targets.device, dtype=targets.dtype)
    return [
        _assign_level(targets, anchors[i] / stride, h, w, anchor_t=anchor_t, offset=offset)
        for i, (stride, (h, w)) in enumerate(zip(strides, grid_shapes, strict=True))
    ]


def _assign_level(
    targets: Tensor, anchors_grid: Tensor, height: int, width: int, *, anchor_t: float, offset: float
) -> LevelTargets:
    """One level of :func:`build_targets`; ``anchors_grid``: ``Tensor[na, 2]`` in grid units."""
    scale = targets.new_tensor([width, height, width, height])
    box = targets[:, 2:6] * scale  # M, 4 in grid units
    ratio = box[None, :, 2:4] / anchors_grid[:, None, :]  # na, M, 2
    match = torch.maximum(ratio, 1.0 / ratio).amax(dim=-1) < anchor_t
    anchor_idx, gt_idx = match.nonzero(as_tuple=True)

    gxy = box[gt_idx, :2]
    size = targets.new_tensor([width, height])
    # A centre exactly on the far border (cx = 1) belongs to the last cell, at offset 1.
    cell = torch.minimum(gxy.floor().clamp(min=0), size - 1)
    frac = gxy - cell
    lower = (frac < offset) & (cell >= 1)  # left / up neighbour exists and is nearer
    upper = (frac > 1.0 - offset) & (cell <= size - 2)  # right / down
    keep = torch.cat([torch.ones_like(lower[:, :1]), lower, upper], dim=1)  # P0, 5 in _CELL_SHIFTS order
    pos, shift_idx = keep.nonzero(as_tuple=True)
    shifts = targets.new_tensor(_CELL_SHIFTS)[shift_idx]

    cells = cell[pos] + shifts
    gt = gt_idx[pos]
    anchor = anchor_idx[pos]
    rows = targets[gt]
    return LevelTargets(
        batch=rows[:, 0].long(),
        anchor=anchor,
        gy=cells[:, 1].long(),
        gx=cells[:, 0].long(),
        cls=rows[:, 1].long(),
        gt=gt,
        box=torch.cat([gxy[pos] - cells, box[gt, 2:4]], dim=1),
        anchor_wh=anchors_grid[anchor],
    )


class YoloLoss:
    """YOLOv5 r6.2 loss: CIoU box loss, BCE objectness (CIoU targets, level balance), BCE classification.

    ``loss(preds, targets) -> (total, items)``: ``total`` is a scalar tensor
    ``(lbox·box + lobj·obj + lcls·cls) × batch_size`` in float32 (float64 if the predictions are float64),
    computed outside autocast. ``items`` holds detached per-image floats ``box``, ``obj``, ``cls``
    (gain-weighted) and ``total = box + obj + cls`` (= total tensor / batch_size), comparable across batch
    sizes. lbox and lcls are means over each level's positives, summed over levels; lobj is a mean over every
    anchor-cell of each level, weighted by ``hyp.balance``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        anchors: Tensor,
        strides: Sequence[int],
        img_size: int,
        hyp: LossHyp | None = None,
    ) -> None:
        hyp = hyp or LossHyp()
        anchors = torch.as_tensor(anchors, dtype=torch.float32).detach().clone()
        strides = tuple(int(s) for s in strides)
        if num_classes < 1:
            raise ConfigError(f"YoloLoss needs num_classes >= 1, got {num_classes}")
        if img_size < 1:
            raise ConfigError(f"YoloLoss needs img_size >= 1 (pixels), got {img_size}")
        if anchors.ndim != 3 or anchors.shape[2] != 2 or anchors.shape[0] != len(strides):
            raise ConfigError(
                f"anchors must be Tensor[nl, na, 2] (pixels) with nl = len(strides) = {len(strides)}, "
                f"got shape {tuple(anchors.shape)}"
            )
        if not bool((anchors > 0).all()) or any(s < 1 for s in strides):
            raise ConfigError(f"anchors and strides must be positive, got strides {strides}")
        if len(hyp.balance) != len(strides):
            raise ConfigError(
                f"train.hyp.balance has {len(hyp.balance)} weights but the detector has {len(strides)} levels; "
                f"give one weight per level, P3 first"
            )
        self.num_classes = num_classes
        self.anchors = anchors
        self.strides = strides
        self.img_size = img_size
        self.hyp = hyp
        self.num_levels, self.num_anchors = int(anchors.shape[0]), int(anchors.shape[1])
        self.box_gain, self.obj_gain, self.cls_gain = hyp.gains(
            num_levels=self.num_levels, num_classes=num_classes, img_size=img_size
        )
        self._anchors_on: dict[torch.device, Tensor] = {}

    def _check_preds(self, preds: Sequence[Tensor]) -> None:
        if len(preds) != self.num_levels:
            raise ValueError(f"YoloLoss expects {self.num_levels} prediction levels, got {len(preds)}")
        channels = 5 + self.num_classes
        for i, p in enumerate(preds):
            if p.ndim != 5 or p.shape[1] != self.num_anchors or p.shape[4] != channels:
                raise ValueError(
                    f"prediction level {i} must be [B, {self.num_anchors}, H, W, {channels}] "
                    f"(na anchors, 5 + num_classes), got {tuple(p.shape)}"
                )

    def assign(self, preds: Sequence[Tensor], targets: Tensor) -> list[LevelTargets]:
        """:func:`build_targets` with this loss' anchors, strides and anchor_t, on the grids of ``preds``."""
        self._check_preds(preds)
        dtype = torch.promote_types(preds[0].dtype, torch.float32)
        device = preds[0].device
        targets = targets.detach().to(device=device, dtype=dtype)
        if targets.ndim == 2 and targets.shape[0] and targets.shape[1] == 6:
            # One host sync per step: out-of-range indices would otherwise be a device-side assert on CUDA.
            b_lo, b_hi, c_lo, c_hi = torch.cat([targets[:, :2].amin(0), targets[:, :2].amax(0)])[
                [0, 2, 1, 3]
            ].tolist()
            batch_size = int(preds[0].shape[0])
            if c_lo < 0 or c_hi >= self.num_classes:
                raise DataError(
                    f"target class indices must be in [0, {self.num_classes - 1}], "
                    f"got range [{c_lo:g}, {c_hi:g}]; check the dataset's category mapping against "
                    f"num_classes={self.num_classes}"
                )
            if b_lo < 0 or b_hi >= batch_size:
                raise DataError(
                    f"target batch indices must be in [0, {batch_size - 1}] for a batch of {batch_size} "
                    f"images, got range [{b_lo:g}, {b_hi:g}]; targets and images come from different batches"
                )
        if device not in self._anchors_on:
            self._anchors_on[device] = self.anchors.to(device)
        return build_targets(
            targets,
            anchors=self._anchors_on[device].to(dtype),
            strides=self.strides,
            grid_shapes=[(int(p.shape[2]), int(p.shape[3])) for p in preds],
            anchor_t=self.hyp.anchor_t,
        )

    def __call__(self, preds: Sequence[Tensor], targets: Tensor) -> tuple[Tensor, dict[str, float]]:
        level_targets = self.assign(preds, targets)
        device = preds[0].device
        dtype = torch.promote_types(preds[0].dtype, torch.float32)
        # Half-precision CIoU and BCE lose too much; the loss always runs in float32 whatever autocast says.
        with torch.autocast(device_type=device.type, enabled=False):
            lbox, lobj, lcls = (torch.zeros((), device=device, dtype=dtype) for _ in range(3))
            for i, (pred, lt) in enumerate(zip(preds, level_targets, strict=True)):
                pred = pred.to(dtype)
                obj_target = torch.zeros(pred.shape[:4], device=device, dtype=dtype)
                if lt.num:
                    box_loss, cls_loss = self._positives_loss(pred, lt, obj_target)
                    lbox = lbox + box_loss
                    lcls = lcls + cls_loss
                lobj = lobj + self.hyp.balance[i] * F.binary_cross_entropy_with_logits(
                    pred[..., 4], obj_target
                )
            lbox, lobj, lcls = lbox * self.box_gain, lobj * self.obj_gain, lcls * self.cls_gain
            per_image = lbox + lobj + lcls
            total = per_image * preds[0].shape[0]
        box, obj, cls, tot = torch.stack([lbox, lobj, lcls, per_image]).detach().cpu().tolist()
        return total, {"box": box, "obj": obj, "cls": cls, "total": tot}

    def _positives_loss(self, pred: Tensor, lt: LevelTargets, obj_target: Tensor) -> tuple[Tensor, Tensor]:
        """Box and class losses of one level's positives; writes their objectness targets in place."""
        ps = pred[lt.batch, lt.anchor, lt.gy, lt.gx]  # P, 5 + nc
        pxy = ps[:, :2].sigmoid() * 2 - 0.5
        pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * lt.anchor_wh
        ciou = bbox_ciou(torch.cat([pxy, pwh], dim=1), lt.box)
        box_loss = (1.0 - ciou).mean()

        gr = self.hyp.gr
        score = (1.0 - gr) + gr * ciou.detach().clamp(min=0).to(obj_target.dtype)
        _, na, height, width = obj_target.shape
        flat = ((lt.batch * na + lt.anchor) * height + lt.gy) * width + lt.gx
        # Several positives can share one anchor-cell: keep the best score, deterministically.
        obj_target.view(-1).scatter_reduce_(0, flat, score, reduce="amax")

        if self.num_classes == 1:
            return box_loss, pred.new_zeros(())
        eps = self.hyp.label_smoothing
        cls_target = torch.full_like(ps[:, 5:], 0.5 * eps)
        cls_target[torch.arange(lt.num, device=pred.device), lt.cls] = 1.0 - 0.5 * eps
        return box_loss, F.binary_cross_entropy_with_logits(ps[:, 5:], cls_target)
