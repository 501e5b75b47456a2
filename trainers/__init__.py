"""Proxy training of one candidate: COCO-format data and annotation files, the YOLO loss, NMS, anchors, the
training loop with its budget and config, and its callbacks (EMA, early stopping, progress).

Scoring (COCO AP on the val split) is a callback from the floor above, ``gpnas.objectives.accuracy``; nothing
here imports ``gpnas.objectives``.

The public API is ``__all__``; each name is imported on first use (``from gpnas.trainers import X``).
"""

from __future__ import annotations

from gpnas.search_space._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "ProxyTrainer": "proxy",
    "TrainConfig": "train_config",
    "TrainBudget": "train_config",
    "FitResult": "proxy",
    "PROXY_HYP": "train_config",
    "PROXY_STEPS": "train_config",
    "TRIAL_MAX_SECONDS": "train_config",
    "budget_label": "train_config",
    "Callback": "callbacks",
    "EarlyStopping": "callbacks",
    "ProgressBar": "callbacks",
    "EMA": "ema",
    "ModelEMA": "ema",
    "ProxyData": "datasets",
    "CocoDetection": "data",
    "ImageMeta": "data",
    "build_digits_dataset": "digits",
    "make_loader": "data",
    "read_coco_json": "coco_files",
    "validate_coco_dict": "coco_files",
    "quiet_coco": "coco_files",
    "LossHyp": "loss",
    "YoloLoss": "loss",
    "non_max_suppression": "postprocess",
    "fit_anchors": "anchors",
})
