"""CocoEvaluator on a tiny hand-made ground truth: golden AP values and every bad-input error; val inference
and the ValEvaluation callback on a tiny digits set."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from torch import nn

from gpnas.errors import DataError
from gpnas.objectives.accuracy import METRIC_KEYS, SCORE_HYP, CocoEvaluator, ValEvaluation, inference_on_dataset
from gpnas.search_space.builder import build_detector
from gpnas.search_space.presets import ANCHORS_DIGITS, get_preset
from gpnas.trainers.data import CocoDetection, make_loader, to_model_input
from gpnas.trainers.digits import build_digits_dataset
from gpnas.trainers.loss import LossHyp, YoloLoss
from gpnas.trainers.proxy import ProxyTrainer

# category ids 3 and 7 are not contiguous on purpose: class index 0 -> id 3, 1 -> id 7
GT_BOXES = {  # image id -> [(category id, x, y, w, h)]: one small, one medium and one large box at least
    1: [(3, 10, 10, 50, 50), (7, 100, 100, 20, 20)],
    2: [(7, 5, 5, 15, 18)],
    3: [(3, 0, 0, 120, 100)],
}


def _gt() -> dict[str, Any]:
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in GT_BOXES]
    anns = []
    for image_id, boxes in GT_BOXES.items():
        for cat, x, y, w, h in boxes:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
    cats = [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _perfect() -> list[tuple[int, torch.Tensor]]:
    dets = []
    for image_id, boxes in GT_BOXES.items():
        rows = [[x, y, x + w, y + h, 0.9, [3, 7].index(cat)] for cat, x, y, w, h in boxes]
        dets.append((image_id, torch.tensor(rows, dtype=torch.float32)))
    return dets


def _write(tmp_path: Path, data: Any, name: str = "gt.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_perfect_detections_give_ap_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sources = [_gt(), _write(tmp_path, _gt()), str(_write(tmp_path, _gt()))]
    coco = COCO()
    coco.dataset = _gt()
    coco.createIndex()
    capsys.readouterr()
    for source in [*sources, coco]:
        evaluator = CocoEvaluator(source)
        assert evaluator.category_ids == [3, 7]
        evaluator.process(_perfect()[:2])
        evaluator.process(_perfect()[2:])
        result = evaluator.evaluate()
        assert list(result) == list(METRIC_KEYS)
        assert result == pytest.approx(dict.fromkeys(METRIC_KEYS, 1.0))
        assert "Average Precision" in evaluator.summary_text
    assert capsys.readouterr().out == ""


def test_shifted_box_gives_known_ap(capsys: pytest.CaptureFixture[str]) -> None:
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100]}]}
    evaluator = CocoEvaluator(gt)  # area and iscrowd are filled in
    # shifted 20 px right: IoU = 80*100 / 12000 = 0.667, a hit at IoU 0.50..0.65 only: 4 of 10 thresholds
    evaluator.process([(1, np.array([[20.0, 0.0, 120.0, 100.0, 0.8, 0.0]]))])
    result = evaluator.evaluate()
    assert result == pytest.approx({"ap": 0.4, "ap50": 1.0, "ap75": 0.0, "ap_small": 0.0, "ap_medium": 0.0,
                                    "ap_large": 0.4})
    evaluator.reset()
    assert evaluator.evaluate()["ap"] == 0.0
    assert capsys.readouterr().out == ""


def test_no_detections_give_zero() -> None:
    evaluator = CocoEvaluator(_gt())
    assert evaluator.evaluate() == dict.fromkeys(METRIC_KEYS, 0.0)
    evaluator.process([(1, torch.zeros(0, 6)), (2, np.zeros((0, 6)))])
    assert evaluator.evaluate() == dict.fromkeys(METRIC_KEYS, 0.0)


def test_max_dets_and_processed_images_only() -> None:
    gt = _gt()
    gt["annotations"].append({"id": 99, "image_id": 3, "category_id": 3, "bbox": [150, 150, 40, 40]})
    dets = [*_perfect(), (3, torch.tensor([[150.0, 150.0, 190.0, 190.0, 0.8, 0.0]]))]
    full = CocoEvaluator(gt)
    full.process(dets)
    capped = CocoEvaluator(gt, max_dets=1)
    capped.process(dets)
    assert full.evaluate()["ap"] == pytest.approx(1.0)
    assert capped.evaluate()["ap"] < 0.9
    subset = CocoEvaluator(_gt(), only_processed_images=True)
    subset.process(_perfect()[:1])
    assert subset.evaluate()["ap"] == pytest.approx(1.0)


def test_ground_truth_errors(tmp_path: Path) -> None:
    empty = _gt()
    empty["annotations"] = []
    with pytest.raises(DataError, match=r"empty\.json.*no annotations"):
        CocoEvaluator(_write(tmp_path, empty, "empty.json"))
    with pytest.raises(DataError, match=r"bad.json is not valid JSON.*line 1, column"):
        CocoEvaluator(_write(tmp_path, '{"images": [', "bad.json"))
    with pytest.raises(DataError, match=r"annotation file not found.*nowhere\.json"):
        CocoEvaluator(tmp_path / "nowhere.json")
    for key in ("images", "annotations", "categories"):
        broken = _gt()
        del broken[key]
        with pytest.raises(DataError, match=f"nokey.json: missing key '{key}'"):
            CocoEvaluator(_write(tmp_path, broken, "nokey.json"))
    broken = _gt()
    del broken["annotations"][1]["bbox"]
    with pytest.raises(DataError, match=r"nobox.json: annotations\[1\] \(id 2\) has no key 'bbox'"):
        CocoEvaluator(_write(tmp_path, broken, "nobox.json"))
    broken = _gt()
    broken["annotations"][0]["category_id"] = 5
    with pytest.raises(DataError, match=r"category_id 5"):
        CocoEvaluator(broken)
    with pytest.raises(DataError, match=r"category_ids"):
        CocoEvaluator(_gt(), category_ids=[3, 4])


def test_detection_errors() -> None:
    evaluator = CocoEvaluator(_gt())
    with pytest.raises(DataError, match=r"image id 42"):
        evaluator.process([(42, torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.5, 0.0]]))])
    bad = copy.deepcopy(_perfect())
    bad[1][1][0, 2] = float("nan")
    with pytest.raises(DataError, match=r"image id 2 contain NaN"):
        evaluator.process(bad)
    with pytest.raises(DataError, match=r"image id 1 contain NaN or inf"):
        evaluator.process([(1, torch.tensor([[0.0, 0.0, 1.0, 1.0, float("inf"), 0.0]]))])
    with pytest.raises(DataError, match=r"class indices"):
        evaluator.process([(1, torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.5, 2.0]]))])
    with pytest.raises(DataError, match=r"shape"):
        evaluator.process([(1, torch.zeros(2, 5))])
    assert evaluator.evaluate()["ap"] == 0.0  # a rejected batch adds nothing


# ------------------------------------------------------------------------------ val inference and its callback
class OracleDetector(nn.Module):
    """Predicts the ground truth of the images in the order they come (a val loader's file order), in
    letterboxed pixels, optionally shifting every other box by ``shift`` × its width: with a shift, an AP
    strictly between 0 and 1 that any slip in the pipeline would change."""

    def __init__(self, ds: CocoDetection, shift: float = 0.0) -> None:
        super().__init__()
        self.ds, self.shift, self.seen = ds, shift, 0
        self.modes: list[bool] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        start, self.seen = self.seen, self.seen + len(images)
        return torch.arange(start, self.seen) % len(self.ds)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """-> Tensor[B, N, 5 + nc]: (cx, cy, w, h) letterboxed pixels, objectness, one-hot class; zero padding."""
        size, nc = self.ds.img_size, self.ds.num_classes
        width = max(len(self.ds.labels[i]) for i in indices.tolist())
        out = torch.zeros(len(indices), width, 5 + nc)
        for b, i in enumerate(indices.tolist()):
            labels = torch.from_numpy(self.ds.labels[i]).float()
            boxes = labels[:, 1:5] * size
            boxes[1::2, 0] += self.shift * boxes[1::2, 2]
            out[b, : len(labels), :4] = boxes
            out[b, : len(labels), 4] = 0.9
            out[b, torch.arange(len(labels)), 5 + labels[:, 0].long()] = 1.0
        return out


@pytest.fixture(scope="module")
def digits_val(tmp_path_factory: pytest.TempPathFactory) -> CocoDetection:
    paths = build_digits_dataset(tmp_path_factory.mktemp("digits"), seed=0, img_size=96, n_train=1, n_val=12)
    return CocoDetection(paths.val_images, paths.val_ann, img_size=64)  # 96 -> 64: a real rescale


def _loader(ds: CocoDetection) -> Any:
    return make_loader(ds, batch_size=5, shuffle=False, seed=0)  # 12 images: a short last batch


def test_inference_on_dataset_maps_boxes_back_and_restores_the_mode(digits_val: CocoDetection) -> None:
    model = OracleDetector(digits_val).train()
    evaluator = CocoEvaluator(digits_val.coco, category_ids=digits_val.category_ids)
    first = inference_on_dataset(model, _loader(digits_val), evaluator)
    assert first["ap"] > 0.99 and first["ap50"] > 0.99
    assert model.modes == [False] * 3 and model.training  # eval mode inside, training mode given back
    assert inference_on_dataset(model, _loader(digits_val), evaluator) == first  # the evaluator is reset first


def test_val_evaluation_gives_the_ap_of_inference_on_dataset(digits_val: CocoDetection) -> None:
    evaluator = CocoEvaluator(digits_val.coco, category_ids=digits_val.category_ids)
    direct = inference_on_dataset(OracleDetector(digits_val, shift=0.3), _loader(digits_val), evaluator)
    assert 0.0 < direct["ap"] < 0.99
    metrics = {"epoch": 1.0, "step": 4.0, "train_seconds": 0.5}
    ValEvaluation(digits_val, batch_size=5).on_evaluate(ProxyTrainer(), OracleDetector(digits_val, shift=0.3),
                                                          metrics)
    assert metrics == {"epoch": 1.0, "step": 4.0, "train_seconds": 0.5, **direct, "val_images": 12.0}
    assert set(direct) == set(METRIC_KEYS)


def test_val_loss_is_the_detection_loss_at_fixed_gains_of_the_same_pass(digits_val: CocoDetection) -> None:
    anchors = tuple(tuple((max(1, round(w * 64 / 160)), max(1, round(h * 64 / 160))) for w, h in level)
                    for level in ANCHORS_DIGITS)
    torch.manual_seed(0)
    model = build_detector(get_preset("yolor-v3-nano").replace(img_size=64, anchors=anchors, num_classes=10)).train()
    metrics: dict[str, float] = {}
    ValEvaluation(digits_val, batch_size=5).on_evaluate(ProxyTrainer(), model, metrics)
    assert model.training  # its mode given back
    # the same loss computed apart: eval mode, YOLOv5's gains (not the proxy's training gains), per-image mean
    loss = YoloLoss(num_classes=10, anchors=model.anchors, strides=model.strides, img_size=64, hyp=LossHyp())
    model.eval()
    total = 0.0
    with torch.no_grad():
        for imgs, targets, _ in _loader(digits_val):
            _, parts = loss(list(model(to_model_input(imgs, "cpu"))[:3]), targets)
            total += float(parts["total"]) * imgs.shape[0]
    assert LossHyp() == SCORE_HYP
    assert metrics["val_loss"] == pytest.approx(total / 12, rel=1e-6) and metrics["val_loss"] > 0
    without: dict[str, float] = {}
    ValEvaluation(digits_val, batch_size=5, val_loss=False).on_evaluate(ProxyTrainer(), model, without)
    assert "val_loss" not in without and without["ap"] == metrics["ap"]
