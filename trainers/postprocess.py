"""Turning raw detector outputs into final boxes: box conversions, IoU and class-aware NMS.

torchvision's compiled NMS is used when torchvision imports cleanly and registers its operator; otherwise a
pure-torch greedy NMS gives the same result (it is the default here: gpnas does not depend on torchvision).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

NmsFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def xywh2xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """boxes: Tensor[..., 4] (cx, cy, w, h) -> Tensor[..., 4] (x1, y1, x2, y2), same units."""
    half = boxes[..., 2:4] / 2
    return torch.cat([boxes[..., 0:2] - half, boxes[..., 0:2] + half], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """boxes: Tensor[N, 4] xyxy -> Tensor[N]; inverted boxes have area 0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a: Tensor[N, 4] xyxy, b: Tensor[M, 4] xyxy -> Tensor[N, M] IoU (0 where both boxes are empty)."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def _greedy_within(overlap: torch.Tensor) -> torch.Tensor:
    """overlap: Tensor[n, n] bool, [i, j] = "i (scored higher, i < j) suppresses j" -> Tensor[n] bool kept.

    Greedy NMS has exactly one fixed point of ``kept[j] = not any(kept[i] and overlap[i, j] for i < j)``;
    iterating it from "all kept" reaches it in at most n steps (usually a handful), each one vectorised.
    """
    kept = torch.ones(overlap.shape[0], dtype=torch.bool, device=overlap.device)
    for _ in range(overlap.shape[0]):
        new = ~(overlap & kept[:, None]).any(dim=0)
        if torch.equal(new, kept):
            break
        kept = new
    return kept


def nms_torch(
    boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, *, max_keep: int | None = None, block: int = 128
) -> torch.Tensor:
    """Exact greedy NMS in pure torch. boxes: Tensor[N, 4] xyxy, scores: Tensor[N] -> Tensor[k] int64 indices.

    Indices come by decreasing score; a box is dropped when its IoU with a kept, higher-scoring box exceeds
    ``iou_thres``. Candidates go in blocks of ``block`` (by score): greedy NMS is resolved inside the block
    with matrix ops, then the block's kept boxes remove what they overlap among the rest. This is a few dozen
    torch ops per block instead of per kept box. ``max_keep`` stops early (the first k kept are the k best).
    """
    order = scores.argsort(descending=True, stable=True)
    rest, rest_idx = boxes[order], order
    keep: list[torch.Tensor] = []
    limit = len(order) if max_keep is None else max_keep
    n_kept = 0
    while rest_idx.numel() and n_kept < limit:
        head, head_idx = rest[:block], rest_idx[:block]
        alive = _greedy_within((box_iou(head, head) > iou_thres).triu_(diagonal=1))
        keep.append(head_idx[alive])
        n_kept += len(keep[-1])
        rest, rest_idx = rest[block:], rest_idx[block:]
        if rest_idx.numel():
            survive = ~(box_iou(head[alive], rest) > iou_thres).any(dim=0)
            rest, rest_idx = rest[survive], rest_idx[survive]
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return torch.cat(keep)[:limit]


@functools.cache
def _torchvision_nms() -> NmsFn | None:
    """torchvision's compiled NMS, or None when torchvision is absent or its operators did not load."""
    try:
        import torchvision  # noqa: F401  (importing registers torch.ops.torchvision.*)
    except (ImportError, OSError, RuntimeError):  # absent, or built against another torch
        return None
    try:
        return torch.ops.torchvision.nms
    except (AttributeError, RuntimeError):
        return None


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, *, max_keep: int | None = None
) -> torch.Tensor:
    """boxes: Tensor[N, 4] xyxy, scores: Tensor[N] -> Tensor[k] int64 kept indices, by decreasing score."""
    compiled = _torchvision_nms()
    if compiled is None:
        return nms_torch(boxes, scores, iou_thres, max_keep=max_keep)
    keep = compiled(boxes, scores, iou_thres)
    return keep if max_keep is None else keep[:max_keep]


def non_max_suppression(
    pred: torch.Tensor,
    *,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """Class-aware NMS over a batch of decoded predictions.

    pred: Tensor[B, N, 5 + nc] rows (cx, cy, w, h in pixels, objectness prob, nc class probs), already
    sigmoided. Each box gets its single best class (no multi-label rows) and score = objectness × that class
    prob; boxes with score <= ``conf_thres`` or non-finite coordinates are dropped, the ``max_nms`` best go
    to NMS, which suppresses only within a class (boxes are offset by class_index × a span larger than any
    coordinate). Returns B tensors Tensor[n, 6] rows (x1, y1, x2, y2, score, class_index) in the same
    pixels, score descending, n <= ``max_det``.
    """
    if pred.dim() != 3 or pred.shape[-1] < 6:
        raise ValueError(f"non_max_suppression expects pred of shape [B, N, 5 + nc] with nc >= 1, "
                         f"got {tuple(pred.shape)}")
    out: list[torch.Tensor] = []
    for x in pred:
        best_prob, best_class = x[:, 5:].max(dim=1)
        score = x[:, 4] * best_prob
        mask = (score > conf_thres) & torch.isfinite(x[:, :4]).all(dim=1)
        boxes, score, cls = xywh2xyxy(x[mask, :4]), score[mask], best_class[mask]
        if score.numel() > max_nms:
            top = score.topk(max_nms).indices
            boxes, score, cls = boxes[top], score[top], cls[top]
        if not score.numel():
            out.append(x.new_zeros((0, 6)))
            continue
        span = boxes.abs().max() * 2 + 1  # wider than any box, so offset classes never overlap
        keep = nms(boxes + cls[:, None].to(boxes.dtype) * span, score, iou_thres, max_keep=max_det)
        keep = keep[:max_det]
        out.append(torch.cat([boxes[keep], score[keep, None], cls[keep, None].to(boxes.dtype)], dim=1))
    return out
