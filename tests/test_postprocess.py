"""NMS and box helpers: checked against a brute-force greedy reference on random boxes."""

from __future__ import annotations

import pytest
import torch

from gpnas.trainers import postprocess
from gpnas.trainers.postprocess import box_iou, nms, nms_torch, non_max_suppression, xywh2xyxy


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _brute_force_nms(boxes: torch.Tensor, scores: torch.Tensor, thres: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept: list[int] = []
    for i in order:
        if all(_iou(boxes[i].tolist(), boxes[k].tolist()) <= thres for k in kept):
            kept.append(i)
    return kept


def _random_boxes(n: int, seed: int, size: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1).double(), torch.rand(n, generator=gen).double()


def test_xywh2xyxy_and_box_iou() -> None:
    boxes = xywh2xyxy(torch.tensor([[10.0, 10.0, 4.0, 2.0]]))
    assert boxes.tolist() == [[8.0, 9.0, 12.0, 11.0]]
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50 / 150, 0.0, 1.0]]))
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thres", [0.3, 0.6])
@pytest.mark.parametrize("block", [3, 128])
def test_nms_matches_brute_force(seed: int, thres: float, block: int) -> None:
    boxes, scores = _random_boxes(60, seed)
    kept = nms_torch(boxes, scores, thres, block=block)
    assert kept.tolist() == _brute_force_nms(boxes, scores, thres)
    assert nms(boxes, scores, thres).tolist() == kept.tolist()
    assert nms_torch(boxes, scores, thres, max_keep=5, block=block).tolist() == kept[:5].tolist()


def test_nms_empty() -> None:
    assert nms_torch(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)


def test_compiled_nms_is_used_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(boxes: torch.Tensor, scores: torch.Tensor, thres: float) -> torch.Tensor:
        calls.append(thres)
        return torch.arange(len(scores))

    monkeypatch.setattr(postprocess, "_torchvision_nms", lambda: fake)
    assert nms(torch.zeros(4, 4), torch.ones(4), 0.5, max_keep=2).tolist() == [0, 1]
    assert calls == [0.5]


def _pred(rows: list[list[float]], nc: int) -> torch.Tensor:
    """rows: (cx, cy, w, h, obj, class_index, class_prob) -> Tensor[1, n, 5 + nc]."""
    pred = torch.zeros(1, len(rows), 5 + nc)
    for i, (cx, cy, w, h, obj, cls, prob) in enumerate(rows):
        pred[0, i, :5] = torch.tensor([cx, cy, w, h, obj])
        pred[0, i, 5 + int(cls)] = prob
    return pred


def test_non_max_suppression_is_class_aware() -> None:
    pred = _pred([[50, 50, 20, 20, 0.9, 0, 1.0], [51, 50, 20, 20, 0.9, 1, 0.8], [52, 50, 20, 20, 0.9, 0, 0.5]], 3)
    (out,) = non_max_suppression(pred, iou_thres=0.5)
    assert out.shape == (2, 6)
    assert out[:, 5].tolist() == [0.0, 1.0]
    assert torch.allclose(out[:, 4], torch.tensor([0.9, 0.72]))  # obj × best class prob
    assert torch.allclose(out[0, :4], torch.tensor([40.0, 40.0, 60.0, 60.0]))


def test_non_max_suppression_limits_and_empty() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 500, 7, generator=gen)
    pred[..., :2] *= 640
    pred[..., 2:4] = pred[..., 2:4] * 10 + 1  # small boxes: few overlaps, so max_det is what limits
    outs = non_max_suppression(pred, max_det=17)
    assert [o.shape for o in outs] == [(17, 6), (17, 6)]
    assert all(bool((o[:-1, 4] >= o[1:, 4]).all()) for o in outs)
    assert [o.shape for o in non_max_suppression(torch.zeros(3, 0, 8))] == [(0, 6)] * 3
    assert non_max_suppression(pred, conf_thres=1.0)[0].shape == (0, 6)
    nan_pred = _pred([[float("nan"), 50, 20, 20, 0.9, 0, 1.0], [50, 50, 20, 20, 0.9, 0, 0.9]], 1)
    assert non_max_suppression(nan_pred)[0].shape == (1, 6)
    with pytest.raises(ValueError, match="5 \\+ nc"):
        non_max_suppression(torch.zeros(2, 5))
