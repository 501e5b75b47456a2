"""COCO box AP through pycocotools' COCOeval, as a reset / process / evaluate evaluator, and val inference.

:func:`inference_on_dataset` runs a detector over a val loader into an evaluator (detectron2's function of the
same name); :class:`ValEvaluation` is the trainer callback that does it at each evaluation point. Ground truth
is read and validated by ``gpnas.trainers.coco_files``, the same code that reads the training annotations.

Box formats: COCO files and results hold ``bbox = [x, y, w, h]`` in original image pixels; detections
handed to :meth:`CocoEvaluator.process` are ``Tensor[n, 6]`` rows ``(x1, y1, x2, y2, score, class_index)`` in
original image pixels, ``class_index`` being the contiguous 0..nc-1 position of the category id in
``category_ids`` (sorted category ids, the same mapping as ``gpnas.trainers.data.CocoDetection``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, Subset

from gpnas.errors import ConfigError, DataError
from gpnas.trainers.callbacks import Callback
from gpnas.trainers.coco_files import quiet_coco, read_coco_json, validate_coco_dict
from gpnas.trainers.data import CocoDetection, ImageMeta, LoaderOptions, make_loader, to_model_input
from gpnas.trainers.loss import LossHyp, YoloLoss
from gpnas.trainers.postprocess import non_max_suppression

if TYPE_CHECKING:
    from gpnas.trainers.datasets import ProxyData
    from gpnas.trainers.proxy import ProxyTrainer
    from gpnas.trainers.train_config import TrainConfig

METRIC_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
#: The loss gains the ``val_loss`` score is computed with: YOLOv5's own (box 0.05, obj 1.0, cls 0.5), whatever gains
#: the run trained with, so the score of two recipes (or of two searches) measures the same thing.
SCORE_HYP = LossHyp()

#: ``loss_fn(raw_outputs, targets) -> (total, parts)``: a detection loss as :class:`YoloLoss` computes it.
LossFn = Callable[[list[torch.Tensor], torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


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


# ----------------------------------------------------------------------------------------- val inference
@torch.no_grad()
def inference_on_dataset(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor, list[ImageMeta]]],
    evaluator: CocoEvaluator,
    *,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 100,
    device: torch.device | str = "cpu",
    non_blocking: bool = False,
    loss_fn: LossFn | None = None,
) -> dict[str, float]:
    """COCO box AP of ``model`` over ``loader``: letterbox -> decode -> NMS -> original pixels -> ``evaluator``.

    ``loader`` yields ``(images: Tensor[B, 3, S, S] uint8 (or float32 in [0, 1]), targets, metas:
    list[ImageMeta])`` as ``gpnas.trainers.data.make_loader`` does; the images become float32 in [0, 1] on
    ``device`` (``to_model_input``; ``non_blocking`` for a pinned loader); ``model(images)`` is decoded by
    ``model.decode`` into
    ``Tensor[B, N, 5 + nc]`` (cx, cy, w, h in letterboxed pixels, probabilities). The evaluator is reset first,
    so it scores this pass only; the model runs in eval mode and gets its training mode back afterwards.
    ``loss_fn``: also ``val_loss``, the mean per-image detection loss of the same raw outputs against the val
    boxes (eval mode: BatchNorm uses its running statistics), from the same forward pass.
    """
    was_training = model.training
    model.eval()
    evaluator.reset()
    loss_sum, loss_images = 0.0, 0
    try:
        for imgs, targets, metas in loader:
            outputs = model(to_model_input(imgs, device, non_blocking=non_blocking))
            if loss_fn is not None:
                _, parts = loss_fn([p.float() for p in outputs[:3]], targets.to(device))
                loss_sum += float(parts["total"]) * imgs.shape[0]
                loss_images += imgs.shape[0]
            preds = model.decode(outputs)  # type: ignore[operator]
            dets = non_max_suppression(preds, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)
            batch = []
            for det, meta in zip(dets, metas, strict=True):
                det = det.cpu()
                det[:, :4] = meta.to_original(det[:, :4])
                batch.append((meta.image_id, det))
            evaluator.process(batch)
    finally:
        model.train(was_training)
    metrics = evaluator.evaluate()
    if loss_fn is not None:
        metrics["val_loss"] = loss_sum / max(loss_images, 1)
    return metrics


class ValEvaluation(Callback):
    """COCO box AP on a val set at each evaluation point of a :class:`~gpnas.trainers.proxy.ProxyTrainer`.

    ``val`` is the val split itself (a ``CocoDetection``, e.g. ``ProxyData.val``), not a ``ProxyData``: any
    COCO-format set can score a training, whatever it trains on. The evaluator (ground truth validated and
    indexed) is built once here; each evaluation runs :func:`inference_on_dataset` over the val images in file
    order on the trainer's device, with the trainer's evaluation model (the EMA copy when EMA is on), and adds
    ap, ap50, ap75, ap_small, ap_medium, ap_large, ``val_loss`` (the detection loss of the same outputs at the
    fixed gains :data:`SCORE_HYP`; ``val_loss=False`` leaves it out) and ``val_images`` (how many images were
    scored) to the metrics in place. :func:`val_evaluation` builds one with a ``TrainConfig``'s thresholds and loader.

    ``subset`` N > 0: every evaluation but the trainer's final one scores only the first N val images (image-id
    order, the same N each time; COCOeval over those images only); the final one, and every one with
    ``subset`` None or 0, scores the whole split. ``options``: the val loaders' workers and pinning; each loader
    is made once and reused, so persistent workers keep their image caches from one evaluation to the next.
    """

    def __init__(
        self, val: CocoDetection, *, conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int = 100,
        batch_size: int = 64, subset: int | None = None, options: LoaderOptions | None = None,
        val_loss: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"ValEvaluation batch_size must be a positive int (val images per forward pass), "
                              f"got {batch_size!r}")
        if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 0):
            raise ConfigError(f"train.val_subset must be an integer >= 0 (0 or null: all), got {subset!r}")
        self.val = val
        self.conf_thres, self.iou_thres, self.max_det, self.batch_size = conf_thres, iou_thres, max_det, batch_size
        self.subset = subset if subset and subset < len(val) else None
        self.options = options or LoaderOptions()
        self.evaluator = CocoEvaluator(val.coco, max_dets=max_det, category_ids=val.category_ids)
        self.subset_evaluator = CocoEvaluator(val.coco, max_dets=max_det, category_ids=val.category_ids,
                                              only_processed_images=True)
        self._loaders: dict[bool, DataLoader] = {}
        self.val_loss = val_loss
        self._loss_fn: YoloLoss | None = None

    def _loss(self, model: nn.Module) -> YoloLoss | None:
        """The scoring loss for ``model``'s anchors and strides (made at the first evaluation: one spec a run);
        None for a model without them (not a gpnas detector: it has no detection loss to score)."""
        if not self.val_loss or not all(hasattr(model, k) for k in ("anchors", "strides")):
            return None
        if self._loss_fn is None:
            self._loss_fn = YoloLoss(num_classes=int(getattr(model, "num_classes", len(self.val.category_ids))),
                                     anchors=model.anchors,  # type: ignore[arg-type]
                                     strides=model.strides, img_size=self.val.img_size,  # type: ignore[arg-type]
                                     hyp=SCORE_HYP)
        return self._loss_fn

    def _loader(self, full: bool) -> DataLoader:
        # Unshuffled and unaugmented, so one loader serves every pass: the val order (and so the AP) never
        # depends on history.
        if full not in self._loaders:
            images = self.val if full else Subset(self.val, range(self.subset or len(self.val)))
            self._loaders[full] = make_loader(images, batch_size=self.batch_size, shuffle=False, seed=0,
                                              options=self.options)
        return self._loaders[full]

    def on_evaluate(self, trainer: ProxyTrainer, model: nn.Module, metrics: dict[str, float]) -> None:
        full = self.subset is None or trainer.final_evaluation
        evaluator = self.evaluator if full else self.subset_evaluator
        metrics.update(inference_on_dataset(model, self._loader(full), evaluator, conf_thres=self.conf_thres,
                                            iou_thres=self.iou_thres, max_det=self.max_det, device=trainer.device,
                                            non_blocking=self.options.pin_memory, loss_fn=self._loss(model)))
        metrics["val_images"] = float(len(self.val) if full else self.subset)  # type: ignore[arg-type]


def val_evaluation(data: ProxyData, config: TrainConfig) -> ValEvaluation:
    """The :class:`ValEvaluation` of ``data.val`` with ``config``'s conf_thres, iou_thres, max_det, val_subset
    and loader options."""
    return ValEvaluation(data.val, conf_thres=config.conf_thres, iou_thres=config.iou_thres, max_det=config.max_det,
                         subset=config.val_subset, options=config.loader_options())
