"""The stages of scoring one architecture: build, size, structure, latency, proxy training, measured gradients.

Every trial (:func:`gpnas.experiments.evaluate.evaluate_candidate`), `gpnas train`, `gpnas describe`,
`gpnas latency` and the benchmarks call these same functions with the same config types, so a figure means the
same thing wherever it is printed. torch is imported lazily: the driver imports this module without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gpnas.errors import DataError
from gpnas.search_space.spec import ArchSpec

if TYPE_CHECKING:
    from torch import nn

    from gpnas.experiments.config import DataConfig, SearchConfig
    from gpnas.objectives.latency import LatencyProtocol, LatencyResult
    from gpnas.trainers.callbacks import Callback
    from gpnas.trainers.datasets import ProxyData
    from gpnas.trainers.proxy import FitResult
    from gpnas.trainers.train_config import TrainConfig

__all__ = ["build", "gradient_statistics", "gradient_structure", "latency", "latency_metrics", "load_data",
           "measure_size", "measured_gradients", "time_latency", "train"]

_DATA_CACHE: dict[str, Any] = {}


def load_data(data: DataConfig, img_size: int) -> ProxyData:
    """The proxy dataset at ``img_size`` with the section's augmentation and cache, cached per process (Ray reuses
    actors across trials)."""
    from gpnas.trainers.datasets import ProxyData

    key = json.dumps([data.model_dump(), img_size])
    if key not in _DATA_CACHE:
        augment = data.augment()
        if data.kind == "digits":
            loaded = ProxyData.digits(img_size=img_size, seed=data.seed, n_train=data.n_train, n_val=data.n_val,
                                      augment=augment, cache=data.cache)
        else:
            loaded = ProxyData.coco(data.train_ann, data.train_images, data.val_ann,  # type: ignore[arg-type]
                                    data.val_images, img_size=img_size,  # type: ignore[arg-type]
                                    augment=augment, cache=data.cache)
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = loaded
    return _DATA_CACHE[key]


def build(spec: ArchSpec, *, seed: int) -> nn.Module:
    """The detector of ``spec`` with its initial weights drawn from ``seed`` (part of what a seed reproduces)."""
    import torch

    from gpnas.search_space.builder import build_detector

    torch.manual_seed(seed)
    return build_detector(spec)


def measure_size(spec: ArchSpec, model: nn.Module | None = None, *, img: int | None = None) -> dict[str, float]:
    """params, params_m, params_fused, gflops (at ``img``, default the spec's) and gflops_640 (paper units)."""
    from gpnas.objectives.complexity import measure_complexity

    size = measure_complexity(spec, img=img, model=model)  # type: ignore[arg-type]
    return {"params": float(size.params), "params_m": size.params / 1e6, "params_fused": float(size.params_fused),
            "gflops": size.gflops, "gflops_640": size.gflops_640}


def gradient_structure(model: nn.Module, *, input_size: int = 64) -> tuple[dict[str, float], list[dict[str, Any]],
                                                                            float]:
    """Structural gradient-path metrics: (gp_* aggregates, per-layer table, seconds taken)."""
    from gpnas.objectives.gradient_path import analyze

    report = analyze(model, input_shape=(1, 3, input_size, input_size))
    return dict(report.aggregates), report.table(), report.seconds


def time_latency(model: nn.Module, protocol: LatencyProtocol) -> LatencyResult:
    """Latency of the fused model measured end to end under ``protocol`` (serialised per machine)."""
    from gpnas.objectives.latency import measure_latency

    return measure_latency(model, protocol)


def latency(model: nn.Module, protocol: LatencyProtocol, mode: str = "measured") -> dict[str, Any]:
    """Latency under ``protocol``: ``predicted`` from the machine's per-layer table, ``measured`` end to end, or
    ``both``. -> {"mode", "protocol", "latency_ms" (the objective: the prediction when there is one),
    "predicted": {...} or None, "measured": {...} or None}."""
    from dataclasses import asdict

    from gpnas.objectives.latency_table import LatencyTable

    out: dict[str, Any] = {"mode": mode, "protocol": asdict(protocol), "predicted": None, "measured": None}
    if mode in ("predicted", "both"):
        table = LatencyTable.load(protocol)
        out["predicted"] = {**asdict(table.predict(model)), "table": str(table.path)}
    if mode in ("measured", "both"):
        out["measured"] = time_latency(model, protocol).to_dict()
    out["latency_ms"] = out["predicted"]["ms"] if out["predicted"] else out["measured"]["median_ms"]
    return out


def latency_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The metrics of a :func:`latency` record: latency_ms, and latency_pred_ms / latency_measured_ms, IQR, CV."""
    metrics = {"latency_ms": float(record["latency_ms"])}
    if record["predicted"]:
        metrics["latency_pred_ms"] = float(record["predicted"]["ms"])
    if record["measured"]:
        m = record["measured"]
        metrics.update(latency_measured_ms=m["median_ms"], latency_iqr_ms=m["iqr_ms"], latency_cv=m["cv"])
    return metrics


def train(model: nn.Module, data: ProxyData, config: TrainConfig, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Proxy-train ``model`` under ``config`` (its budget included), scoring val AP at every evaluation point."""
    from gpnas.objectives.accuracy import val_evaluation
    from gpnas.trainers.proxy import ProxyTrainer

    num_classes = getattr(model, "num_classes", data.num_classes)
    if data.num_classes != num_classes:
        raise DataError(f"the dataset has {data.num_classes} classes but the spec builds {num_classes}; "
                        "set num_classes in space.genes (fixed) or use a matching dataset")
    return ProxyTrainer(config, [val_evaluation(data, config), *callbacks]).fit(model, data)


def gradient_statistics(model: nn.Module, data: ProxyData) -> dict[str, dict[str, float]]:
    """Per-layer gradient statistics of ``model`` on one val batch of 8 images (the same batch every time), in
    the model's own mode (a fresh model: train mode, batch statistics; the trained EMA copy: eval mode). The
    model is not changed (a copy is measured)."""
    import copy

    from gpnas.objectives.gradient_path import measure_gradients

    model = copy.deepcopy(model)  # the EMA copy has frozen parameters
    for p in model.parameters():
        p.requires_grad_(True)
    images, loss_fn = _fixed_batch(model, data)
    return measure_gradients(model, images, loss_fn=loss_fn)


def _fixed_batch(model: nn.Module, data: ProxyData) -> tuple[Any, Any]:
    """The first 8 val images (file order, the same every time) on the CPU, and the detection loss of ``model``'s
    outputs against their boxes: what the gradient statistics and the zero-cost proxies measure on."""
    from gpnas.trainers.data import make_loader, to_model_input
    from gpnas.trainers.loss import YoloLoss

    batch, targets, _ = next(iter(make_loader(data.val, batch_size=8, shuffle=False, seed=0)))
    loss = YoloLoss(num_classes=data.num_classes, anchors=model.anchors, strides=model.strides,  # type: ignore[arg-type]
                    img_size=data.img_size)
    return to_model_input(batch, "cpu"), lambda out: loss(out[:3], targets)[0]


def measured_gradients(model: nn.Module, data: ProxyData) -> dict[str, float]:
    """Gradient statistics of a trained model on one val batch of 8 images: the gp_* measured aggregates."""
    from gpnas.objectives.gradient_path import gradient_aggregates

    return gradient_aggregates(gradient_statistics(model, data))


def init_features(model: nn.Module, spec: ArchSpec, cfg: SearchConfig, rows: list[dict[str, Any]]
                  ) -> dict[str, float]:
    """The features known before training, beyond the structural aggregates: gradient statistics of the fresh
    model (``gradient_path.at_init``: merged into ``rows``, the per-layer table, in place; network aggregates
    ``gp_init_*``), stage-level aggregates ``gp_stage_*`` of the table, and the zero-cost proxies ``zc_*``
    (``gradient_path.zero_cost``). Deterministic: a fixed val batch, the seeded fresh model, which is not
    changed (the proxies work on copies), so training afterwards is the same as without them."""
    from gpnas.objectives.gp_features import merge_measured, stage_aggregates
    from gpnas.objectives.gradient_path import gradient_aggregates

    out: dict[str, float] = {}
    gp = cfg.gradient_path
    data = load_data(cfg.data, spec.img_size) if gp.at_init or gp.zero_cost else None
    if gp.at_init and data is not None:
        measured = gradient_statistics(model, data)
        out.update({k.replace("gp_", "gp_init_", 1): v for k, v in gradient_aggregates(measured).items()})
        if rows:
            rows[:] = merge_measured(rows, measured, when="init")
    if rows:
        out.update(stage_aggregates(rows))
    if gp.zero_cost and data is not None:
        out.update(zero_cost(model, data))
    return out


def zero_cost(model: nn.Module, data: ProxyData) -> dict[str, float]:
    """The zero-cost proxies ``zc_*`` of the fresh ``model`` on the fixed val batch (see
    :mod:`gpnas.objectives.zero_cost`)."""
    from gpnas.objectives.zero_cost import zero_cost_scores

    images, loss_fn = _fixed_batch(model, data)
    return zero_cost_scores(model, images, tuple(images.shape[1:]), loss_fn=loss_fn)

