"""Loss, target assignment and anchor fitting (ARCH_SPEC §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from gpnas.errors import ConfigError, DataError
from gpnas.trainers.anchors import DEFAULT_ANCHORS_V3, DEFAULT_ANCHORS_YOLOR, anchor_fitness, fit_anchors
from gpnas.trainers.loss import LossHyp, YoloLoss, bbox_ciou, build_targets

STRIDES = (8, 16, 32)


class TinyDetector(nn.Module):
    """A few convs with three detection levels in the head format [B, na, H, W, 5 + nc]."""

    def __init__(self, num_classes: int, anchors: Tensor, width: int = 16) -> None:
        super().__init__()
        self.num_classes, self.na = num_classes, anchors.shape[1]
        self.anchors, self.strides = anchors, STRIDES

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.SiLU())

        self.stem = nn.Sequential(down(3, width), down(width, width), down(width, width))
        self.p4, self.p5 = down(width, width), down(width, width)
        out = self.na * (5 + num_classes)
        self.heads = nn.ModuleList(nn.Conv2d(width, out, 1) for _ in STRIDES)

    def forward(self, images: Tensor) -> list[Tensor]:
        p3 = self.stem(images)
        p4 = self.p4(p3)
        feats = (p3, p4, self.p5(p4))
        outs = []
        for head, f in zip(self.heads, feats, strict=True):
            y = head(f)
            b, _, h, w = y.shape
            outs.append(y.view(b, self.na, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return outs


def _anchors(preset: tuple, scale: float = 1.0) -> Tensor:
    return torch.tensor(preset, dtype=torch.float32) * scale


def _random_preds(batch: int, img: int, nc: int, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, img // s, img // s, 5 + nc, generator=g) for s in STRIDES]


# --- CIoU -----------------------------------------------------------------------------------------


def test_ciou_identical_boxes_is_one() -> None:
    boxes = torch.tensor([[10.0, 10.0, 4.0, 6.0], [0.3, 0.7, 1.5, 0.2]])
    torch.testing.assert_close(bbox_ciou(boxes, boxes), torch.ones(2), atol=1e-5, rtol=0)


def test_ciou_of_disjoint_far_boxes_is_negative() -> None:
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    b = torch.tensor([50.0, 40.0, 2.0, 3.0])
    value = bbox_ciou(a, b)
    assert -1.0 < float(value) < 0.0


def test_ciou_equals_iou_for_concentric_boxes_of_same_aspect() -> None:
    a = torch.tensor([[1.0, 1.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(bbox_ciou(a, b), torch.tensor([0.25]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bbox_ciou(a, b), bbox_ciou(b, a))


# --- target assignment ----------------------------------------------------------------------------


def test_build_targets_hand_made_case() -> None:
    img = 64
    anchors = torch.tensor(
        [
            [[8, 8], [16, 16], [80, 80]],
            [[100, 100], [120, 120], [140, 140]],
            [[150, 150], [180, 180], [200, 200]],
        ],
        dtype=torch.float32,
    )
    # One 16×16 px box centred at (21, 42) px in image 1: P3 grid (2.625, 5.25), cell (gx=2, gy=5);
    # x is nearer the right edge (cell 3), y nearer the top edge (row 4).
    # Only P3 anchors 0 and 1 are within a factor 4.
    targets = torch.tensor([[1, 2, 21 / img, 42 / img, 16 / img, 16 / img]])
    grids = [(img // s, img // s) for s in STRIDES]
    levels = build_targets(targets, anchors=anchors, strides=STRIDES, grid_shapes=grids)

    assert [lt.num for lt in levels] == [6, 0, 0]
    p3 = levels[0]
    got = sorted(zip(p3.anchor.tolist(), p3.gy.tolist(), p3.gx.tolist(), strict=True))
    expected = sorted((a, gy, gx) for a in (0, 1) for gy, gx in ((5, 2), (5, 3), (4, 2)))
    assert got == expected
    assert set(p3.batch.tolist()) == {1} and set(p3.cls.tolist()) == {2} and set(p3.gt.tolist()) == {0}
    for a, gy, gx, box, awh in zip(p3.anchor, p3.gy, p3.gx, p3.box, p3.anchor_wh, strict=True):
        # the target centre, relative to its assigned cell, reconstructs the GT centre; wh in grid units
        torch.testing.assert_close(box[:2] + torch.stack([gx, gy]).float(), torch.tensor([2.625, 5.25]))
        torch.testing.assert_close(box[2:], torch.tensor([2.0, 2.0]))
        torch.testing.assert_close(awh, anchors[0, a] / 8)
    assert bool(((p3.box[:, :2] > -0.5) & (p3.box[:, :2] < 1.5)).all())


def test_build_targets_never_leaves_the_grid() -> None:
    anchors = _anchors(DEFAULT_ANCHORS_V3, 0.25)
    # centres in the corner cells, nearer the outer border (and one exactly on it): no neighbour cell exists
    targets = torch.tensor(
        [[0, 0, 0.02, 0.02, 0.2, 0.2], [0, 0, 0.98, 0.98, 0.2, 0.2], [0, 0, 1.0, 1.0, 0.2, 0.2]]
    )
    grids = [(160 // s, 160 // s) for s in STRIDES]
    levels = build_targets(targets, anchors=anchors, strides=STRIDES, grid_shapes=grids)
    assert sum(lt.num for lt in levels) > 0
    for lt, (h, w) in zip(levels, grids, strict=True):
        assert bool(((lt.gx >= 0) & (lt.gx < w) & (lt.gy >= 0) & (lt.gy < h)).all())
        assert bool(((lt.box[:, :2] >= 0) & (lt.box[:, :2] <= 1)).all())  # centre cells only
        pairs = set(zip(lt.gt.tolist(), lt.anchor.tolist(), strict=True))
        assert len(pairs) == lt.num  # one cell per matched (GT, anchor)


def test_build_targets_empty() -> None:
    levels = build_targets(
        torch.zeros(0, 6),
        anchors=_anchors(DEFAULT_ANCHORS_V3),
        strides=STRIDES,
        grid_shapes=[(8, 8), (4, 4), (2, 2)],
    )
    assert [lt.num for lt in levels] == [0, 0, 0]


# --- loss -----------------------------------------------------------------------------------------


def test_gains_follow_train_py_rescaling() -> None:
    assert LossHyp().gains(num_levels=3, num_classes=80, img_size=640) == pytest.approx((0.05, 1.0, 0.5))
    assert LossHyp().gains(num_levels=3, num_classes=10, img_size=320) == pytest.approx((0.05, 0.25, 0.0625))


def test_loss_hyp_validation() -> None:
    with pytest.raises(ConfigError, match="label_smoothing"):
        LossHyp(label_smoothing=1.5)
    with pytest.raises(ConfigError, match="balance"):
        YoloLoss(
            num_classes=3,
            anchors=_anchors(DEFAULT_ANCHORS_V3),
            strides=STRIDES,
            img_size=64,
            hyp=LossHyp(balance=(1.0, 1.0)),
        )


def test_loss_empty_targets_is_finite_objectness_only() -> None:
    loss_fn = YoloLoss(num_classes=3, anchors=_anchors(DEFAULT_ANCHORS_V3, 0.1), strides=STRIDES, img_size=64)
    preds = [p.requires_grad_() for p in _random_preds(2, 64, 3)]
    total, items = loss_fn(preds, torch.zeros(0, 6))
    assert total.ndim == 0 and math.isfinite(float(total.detach())) and float(total.detach()) > 0
    assert items["box"] == 0.0 and items["cls"] == 0.0 and items["obj"] > 0
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)


def test_loss_items_and_dtypes() -> None:
    loss_fn = YoloLoss(num_classes=3, anchors=_anchors(DEFAULT_ANCHORS_V3, 0.1), strides=STRIDES, img_size=64)
    targets = torch.tensor([[0, 1, 0.4, 0.5, 0.2, 0.3], [1, 2, 0.7, 0.2, 0.1, 0.1]])
    preds = _random_preds(2, 64, 3)
    total, items = loss_fn(preds, targets)
    assert set(items) == {"box", "obj", "cls", "total"}
    assert items["total"] == pytest.approx(items["box"] + items["obj"] + items["cls"], rel=1e-5)
    assert float(total) == pytest.approx(2 * items["total"], rel=1e-5)
    assert all(items[k] > 0 for k in ("box", "obj", "cls"))
    # half-precision inputs (as autocast produces) are scored in float32, to the same value
    total16, _ = loss_fn([p.to(torch.bfloat16) for p in preds], targets)
    assert total16.dtype == torch.float32
    assert float(total16) == pytest.approx(
        float(loss_fn([p.to(torch.bfloat16).float() for p in preds], targets)[0])
    )


def test_single_class_skips_cls_and_bad_class_index_raises() -> None:
    loss_fn = YoloLoss(num_classes=1, anchors=_anchors(DEFAULT_ANCHORS_V3, 0.1), strides=STRIDES, img_size=64)
    _, items = loss_fn(_random_preds(1, 64, 1), torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.3]]))
    assert items["cls"] == 0.0 and items["box"] > 0
    with pytest.raises(DataError, match="class indices"):
        loss_fn(_random_preds(1, 64, 1), torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3]]))
    with pytest.raises(DataError, match="batch indices"):
        loss_fn(_random_preds(1, 64, 1), torch.tensor([[1, 0, 0.5, 0.5, 0.3, 0.3]]))
    with pytest.raises(ValueError, match="prediction level 0"):
        loss_fn(_random_preds(1, 64, 2), torch.zeros(0, 6))


def test_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    img, nc = 64, 3
    anchors = _anchors(DEFAULT_ANCHORS_V3, img / 640)
    model = TinyDetector(nc, anchors)
    loss_fn = YoloLoss(num_classes=nc, anchors=model.anchors, strides=model.strides, img_size=img)
    images = torch.randn(2, 3, img, img)
    targets = torch.tensor(
        [[0, 0, 0.30, 0.40, 0.25, 0.20], [0, 2, 0.70, 0.65, 0.40, 0.50], [1, 1, 0.52, 0.33, 0.15, 0.30]]
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(50):
        opt.zero_grad()
        total, items = loss_fn(model(images), targets)
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        history.append(items["total"])
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.5 * history[0], history[::10]


def test_loss_runs_under_cpu_autocast() -> None:
    torch.manual_seed(0)
    anchors = _anchors(DEFAULT_ANCHORS_V3, 0.1)
    model = TinyDetector(2, anchors)
    loss_fn = YoloLoss(num_classes=2, anchors=anchors, strides=STRIDES, img_size=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model(torch.randn(1, 3, 64, 64))
        total, _ = loss_fn(preds, torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.2]]))
    assert preds[0].dtype == torch.bfloat16 and total.dtype == torch.float32
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loss_on_cuda_under_fp16_autocast_matches_cpu() -> None:
    torch.manual_seed(0)
    anchors = _anchors(DEFAULT_ANCHORS_V3, 0.1)
    model = TinyDetector(3, anchors).cuda()
    loss_fn = YoloLoss(num_classes=3, anchors=anchors, strides=STRIDES, img_size=64)
    targets = torch.tensor([[0, 1, 0.4, 0.5, 0.2, 0.3], [1, 2, 0.7, 0.2, 0.1, 0.1]])
    with torch.autocast("cuda", dtype=torch.float16):
        preds = model(torch.randn(2, 3, 64, 64, device="cuda"))
        total, _ = loss_fn(preds, targets)  # targets on the CPU are moved to the predictions' device
    assert preds[0].dtype == torch.float16 and total.dtype == torch.float32 and total.is_cuda
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    cpu_total, _ = loss_fn([p.detach().float().cpu() for p in preds], targets)
    assert float(total.detach()) == pytest.approx(float(cpu_total), rel=1e-4)


# --- anchors --------------------------------------------------------------------------------------


def _small_boxes(n: int = 2000, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(10, 64, size=(n, 2))


def test_default_anchor_presets() -> None:
    for preset in (DEFAULT_ANCHORS_V3, DEFAULT_ANCHORS_YOLOR):
        arr = np.asarray(preset)
        assert arr.shape == (3, 3, 2)
    assert DEFAULT_ANCHORS_V3[0][0] == (10, 13) and DEFAULT_ANCHORS_YOLOR[2][2] == (459, 401)


def test_fit_anchors_deterministic_sorted_and_better_than_defaults() -> None:
    wh = _small_boxes()
    a = fit_anchors(wh, img_size=160, seed=3, generations=100)
    b = fit_anchors(wh, img_size=160, seed=3, generations=100)
    assert a.shape == (3, 3, 2)
    np.testing.assert_array_equal(a, b)
    area = a.reshape(-1, 2).prod(axis=1)
    assert np.all(np.diff(area) >= 0)
    bpr, metric = anchor_fitness(a, wh)
    bpr_default, metric_default = anchor_fitness(DEFAULT_ANCHORS_V3, wh)
    assert bpr >= bpr_default and bpr == 1.0
    assert metric > metric_default
    # evolution never makes the k-means start worse
    assert metric >= anchor_fitness(fit_anchors(wh, img_size=160, seed=3, generations=0), wh)[1] - 1e-12


def test_anchor_fitness_values() -> None:
    wh = np.array([[10.0, 10.0], [100.0, 100.0]])
    bpr, metric = anchor_fitness([[10.0, 20.0]], wh)
    assert bpr == 0.5 and metric == pytest.approx((0.5 + 0.1) / 2)


def test_fit_anchors_errors() -> None:
    with pytest.raises(ValueError, match="at least n=9 boxes"):
        fit_anchors(_small_boxes(5), img_size=160)
    with pytest.raises(ValueError, match="normalised"):
        fit_anchors(np.full((20, 2), 0.2), img_size=160)
    with pytest.raises(ValueError, match="training size"):
        fit_anchors(_small_boxes() * 10, img_size=160)
