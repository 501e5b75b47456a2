"""COCO box AP through pycocotools' COCOeval, as a reset / process / evaluate evaluator.

Also home of the COCO annotation-file reading and validation shared with ``trainers/data.py``, so ground
truth is checked the same way whether it is trained on or scored against.

Box formats: COCO files and results hold ``bbox = [x, y, w, h]`` in original image pixels; detections
handed to :meth:`CocoEvaluator.process` are ``Tensor[n, 6]`` rows ``(x1, y1, x2, y2, score, class_index)`` in
original image pixels, ``class_index`` being the contiguous 0..nc-1 position of the category id in
``category_ids`` (sorted category ids, the same mapping as ``gpnas.trainers.data.CocoDetection``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpnas.search_space.errors import ConfigError, DataError
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox")


def read_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read a COCO annotation file; DataError if it is missing or not valid JSON (with the parse position)."""
    path = Path(ann_file)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}; pass the path of a COCO instances JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} (char {err.pos}); "
            "fix or regenerate the file"
        ) from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); pass a COCO instances JSON file") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object with images/annotations/categories")
    return data


def validate_coco_dict(
    data: dict[str, Any], source: str, *, image_keys: Sequence[str] = ("id",)
) -> dict[str, Any]:
    """Check the keys COCO tools rely on and return a copy with defaults filled in.

    Missing ``area`` becomes ``w * h`` of the bbox and missing ``iscrowd`` becomes 0 (COCOeval reads both).
    Raises DataError naming ``source`` (the file) and the missing key, list index and annotation id.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: missing key {key!r} (a list); a COCO instances file needs "
                            "'images', 'annotations' and 'categories'")
    for name, keys in (("images", tuple(image_keys)), ("categories", ("id",))):
        for i, entry in enumerate(data[name]):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise DataError(f"{source}: {name}[{i}] has no key {missing[0]!r}; each entry needs {keys}")
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    anns = []
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in _ANN_KEYS if not isinstance(ann, dict) or k not in ann]
        if missing:
            ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
            raise DataError(f"{source}: annotations[{i}] (id {ann_id}) has no key {missing[0]!r}; "
                            f"each annotation needs {_ANN_KEYS} with bbox = [x, y, w, h] in pixels")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and all(math.isfinite(v) for v in box)):
            raise DataError(f"{source}: annotation id {ann['id']} has bbox {box!r}; expected 4 finite "
                            "numbers [x, y, w, h] in pixels")
        if ann["image_id"] not in image_ids:
            raise DataError(f"{source}: annotation id {ann['id']} refers to image_id {ann['image_id']}, "
                            "which is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise DataError(f"{source}: annotation id {ann['id']} has category_id {ann['category_id']}, "
                            f"which is not in 'categories' {sorted(category_ids)}")
        if "area" not in ann or "iscrowd" not in ann:
            ann = {"area": float(box[2] * box[3]), "iscrowd": 0, **ann}
        anns.append(ann)
    return {**data, "annotations": anns}


def quiet_coco(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO index over an already-validated dict, without its stdout chatter."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_ground_truth(ground_truth: str | Path | dict[str, Any] | COCO) -> tuple[str, COCO]:
    """-> (source name for messages, validated and indexed COCO) from a file path, a dict or a COCO object."""
    if isinstance(ground_truth, COCO):
        source, data = "<COCO object ground truth>", ground_truth.dataset
    elif isinstance(ground_truth, dict):
        source, data = "<in-memory ground truth dict>", ground_truth
    elif isinstance(ground_truth, (str, Path)):
        source, data = str(ground_truth), read_coco_json(ground_truth)
    else:
        raise DataError(f"ground truth must be a COCO JSON path, a dict or a pycocotools COCO, "
                        f"got {type(ground_truth).__name__}")
    return source, quiet_coco(validate_coco_dict(data, source))


class CocoEvaluator:
    """COCO box AP of detections against a ground truth (detectron2-style reset / process / evaluate).

    ``evaluate()`` returns ``ap`` (AP@[.5:.95]), ``ap50``, ``ap75``, ``ap_small``, ``ap_medium``, ``ap_large``
    as floats in [0, 1], averaged over ``category_ids``. pycocotools reports -1 for an area range with no
    ground-truth box; those become 0.0 here, so a missing size range reads as "no AP", never as a negative
    number. No detections at all gives 0.0 everywhere. Every image of the ground truth counts (an image never
    processed is all misses) unless ``only_processed_images`` is set, which scores only the images handed to
    :meth:`process` (useful when a trial evaluates a subset of val batches). pycocotools' printout is kept in
    ``summary_text``, not printed.
    """

    def __init__(
        self,
        ground_truth: str | Path | dict[str, Any] | COCO,
        *,
        max_dets: int = 100,
        category_ids: list[int] | None = None,
        only_processed_images: bool = False,
    ) -> None:
        if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
            raise ConfigError(f"max_dets must be a positive int (detections scored per image), "
                              f"got {max_dets!r}")
        self.source, self.coco_gt = load_ground_truth(ground_truth)
        if not self.coco_gt.dataset["annotations"]:
            raise DataError(f"{self.source}: the ground truth has no annotations, so AP is undefined; "
                            "evaluate against a file with at least one box")
        gt_cats = sorted(self.coco_gt.getCatIds())
        self.category_ids: list[int] = gt_cats if category_ids is None else list(category_ids)
        unknown = sorted(set(self.category_ids) - set(gt_cats))
        if unknown or len(set(self.category_ids)) != len(self.category_ids):
            raise DataError(f"category_ids {self.category_ids} must be distinct ids of {self.source}, whose "
                            f"categories are {gt_cats} (unknown: {unknown})")
        self.max_dets = max_dets
        self.only_processed_images = only_processed_images
        self._image_ids = set(self.coco_gt.getImgIds())
        self.summary_text = ""
        self.reset()

    def reset(self) -> None:
        """Forget all processed detections (the ground truth is kept)."""
        self._results: list[dict[str, Any]] = []
        self._processed: set[int] = set()

    def process(self, detections: Iterable[tuple[int, torch.Tensor | np.ndarray]]) -> None:
        """Add a batch: ``(image_id, det)`` pairs, det Tensor/ndarray[n, 6] = (x1, y1, x2, y2, score, class).

        Coordinates are original-image pixels; boxes with x2 < x1 (or y2 < y1) get zero width (height).
        A batch with a bad entry raises DataError and adds nothing.
        """
        checked = [(self._check_image_id(image_id), det) for image_id, det in detections]
        checked_rows = [(image_id, self._check_rows(image_id, det)) for image_id, det in checked]
        for image_id, rows in checked_rows:
            self._processed.add(image_id)
            if not len(rows):
                continue
            cats = [self.category_ids[int(c)] for c in rows[:, 5]]
            xywh = np.stack([rows[:, 0], rows[:, 1], np.maximum(rows[:, 2] - rows[:, 0], 0.0),
                             np.maximum(rows[:, 3] - rows[:, 1], 0.0)], axis=1).tolist()
            self._results.extend({"image_id": image_id, "category_id": cat, "bbox": box, "score": score}
                                 for box, score, cat in zip(xywh, rows[:, 4].tolist(), cats, strict=True))

    def _check_image_id(self, image_id: Any) -> int:
        if isinstance(image_id, torch.Tensor) and image_id.numel() == 1:
            image_id = image_id.item()
        if isinstance(image_id, np.integer):
            image_id = int(image_id)
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in self._image_ids:
            raise DataError(f"detections given for image id {image_id!r}, which is not an image of "
                            f"{self.source}; pass the 'id' of an entry in its 'images'")
        return image_id

    def _check_rows(self, image_id: int, det: torch.Tensor | np.ndarray) -> np.ndarray:
        """-> ndarray[n, 6] float64, after checking shape, finiteness and class indices."""
        if isinstance(det, torch.Tensor):
            det = det.detach().cpu().double().numpy()
        rows = np.asarray(det, dtype=np.float64)
        if rows.size == 0:
            return np.zeros((0, 6))
        if rows.ndim != 2 or rows.shape[1] != 6:
            raise DataError(f"detections for image id {image_id} have shape {tuple(rows.shape)}; expected "
                            "[n, 6] rows (x1, y1, x2, y2, score, class_index)")
        if not np.isfinite(rows).all():
            raise DataError(f"detections for image id {image_id} contain NaN or inf boxes or scores; the "
                            "model diverged or its box decoding is broken")
        classes = rows[:, 5]
        n_classes = len(self.category_ids)
        if (classes != np.round(classes)).any() or classes.min() < 0 or classes.max() >= n_classes:
            raise DataError(f"detections for image id {image_id} have class indices {np.unique(classes)}; "
                            f"expected integers in 0..{n_classes - 1}")
        return rows

    def evaluate(self) -> dict[str, float]:
        """-> {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"} over everything processed so far."""
        if not self._results:  # pycocotools' loadRes([]) raises IndexError
            self.summary_text = "no detections: every AP is 0.0\n"
            return dict.fromkeys(METRIC_KEYS, 0.0)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            coco_dt = self.coco_gt.loadRes([dict(r) for r in self._results])  # loadRes mutates its input
            coco_eval = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
            coco_eval.params.catIds = self.category_ids
            coco_eval.params.maxDets = [1, 10, self.max_dets]
            if self.only_processed_images:
                coco_eval.params.imgIds = sorted(self._processed)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.summary_text = buffer.getvalue()
        stats = [float(v) for v in coco_eval.stats[: len(METRIC_KEYS)]]
        return {key: max(value, 0.0) for key, value in zip(METRIC_KEYS, stats, strict=True)}
