"""evaluate_candidate(spec, cfg, reporter) -> TrialResult: the one function every backend calls.

build -> cheap objectives (params, GFLOPs, gradient-path structure, latency) -> constraints (an infeasible
candidate is not trained) -> proxy training with per-epoch AP reports -> final AP -> measured gradient
statistics. Invalid spec, infeasible, diverged, out of memory, data error: each is a recorded state with its
reason, never an exception out of here.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from gpnas.experiments.config import SearchConfig
from gpnas.search_space.errors import (
    DataError,
    GpnasError,
    InfeasibleCandidate,
    OutOfMemory,
    SpecError,
    TrainingDiverged,
    TrialTimeout,
)
from gpnas.search_space.spec import ArchSpec

State = Literal["complete", "pruned", "infeasible", "failed", "timeout"]
STATES: tuple[State, ...] = ("complete", "pruned", "infeasible", "failed", "timeout")


class Reporter(Protocol):
    """Receives intermediate metrics (one dict per evaluated epoch). Tune's reporter may end the trial."""

    def __call__(self, metrics: dict[str, float]) -> None: ...


def _no_report(metrics: dict[str, float]) -> None:
    return None


@dataclass
class TrialResult:
    """Everything recorded about one candidate (the study, MLflow and exports read this)."""

    arch_id: str
    state: State
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    gp_layers: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, Any] | None = None
    evaluate_seconds: float = 0.0
    weights_path: str | None = None
    reused_from: int | None = None

    def objective_values(self, objectives: tuple[str, ...] | list[str]) -> list[float]:
        return [float(self.metrics.get(o, math.nan)) for o in objectives]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# ------------------------------------------------------------------------------------------ data (cached)
_DATA_CACHE: dict[str, Any] = {}


def load_data(cfg: SearchConfig, img_size: int) -> Any:
    """The proxy dataset at ``img_size``, cached per process (Ray reuses actors across trials)."""
    from gpnas.trainers.datasets import ProxyData

    d = cfg.data
    key = json.dumps([d.model_dump(), img_size])
    if key not in _DATA_CACHE:
        if d.kind == "digits":
            data = ProxyData.digits(img_size=img_size, seed=d.seed, n_train=d.n_train, n_val=d.n_val)
        else:
            data = ProxyData.coco(d.train_ann, d.train_images, d.val_ann, d.val_images,  # type: ignore[arg-type]
                                  img_size=img_size)
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = data
    return _DATA_CACHE[key]


# ------------------------------------------------------------------------------------------ stages
def constraint_values(cfg: SearchConfig, metrics: dict[str, float]) -> dict[str, float]:
    """Constraint name -> (value − limit); > 0 is a violation. Only configured constraints appear."""
    c = cfg.constraints
    pairs = {"max_gflops": ("gflops", c.max_gflops), "max_params_m": ("params_m", c.max_params_m),
             "max_latency_ms": ("latency_ms", c.max_latency_ms)}
    out = {}
    for name, (metric, limit) in pairs.items():
        if limit is not None and metric in metrics:
            out[name] = float(metrics[metric]) - float(limit)
    return out


def _cheap_objectives(spec: ArchSpec, model: Any, cfg: SearchConfig, result: TrialResult) -> None:
    from gpnas.objectives.complexity import measure_complexity

    size = measure_complexity(spec, model=model)
    result.metrics.update(
        params=float(size.params), params_m=size.params / 1e6, params_fused=float(size.params_fused),
        gflops=size.gflops, gflops_640=size.gflops_640,
    )
    if cfg.gradient_path.structural:
        from gpnas.objectives.gradient_path import analyze

        report = analyze(model, input_shape=(1, 3, 64, 64))
        result.metrics.update(report.aggregates)
        result.gp_layers = report.table()
    if cfg.latency.enabled:
        from gpnas.objectives.latency import LatencyProtocol, measure_latency

        lat = cfg.latency
        protocol = LatencyProtocol(
            device=lat.device, batch=lat.batch, dtype=lat.dtype, img_size=spec.img_size, warmup=lat.warmup,
            repeats=lat.repeats, iters_per_repeat=lat.iters_per_repeat, channels_last=lat.channels_last,
            threads=lat.threads,
        )
        measured = measure_latency(model, protocol)
        result.latency = measured.to_dict()
        result.metrics.update(latency_ms=measured.median_ms, latency_iqr_ms=measured.iqr_ms,
                              latency_cv=measured.cv)


def _train(spec: ArchSpec, model: Any, cfg: SearchConfig, reporter: Reporter, result: TrialResult,
           weights_dir: Path | None) -> None:
    import torch
    from gpnas.trainers.callbacks import Callback
    from gpnas.trainers.proxy import ProxyTrainer, TrainBudget, TrainConfig

    t = cfg.train
    data = load_data(cfg, spec.img_size)
    if data.num_classes != spec.num_classes:
        raise DataError(f"the dataset has {data.num_classes} classes but the spec builds {spec.num_classes}; "
                        "set num_classes in space.genes (fixed) or use a matching dataset")

    class _Report(Callback):
        def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
            reporter({**{k: v for k, v in result.metrics.items() if not k.startswith("gp_")}, **metrics})

    threads = t.threads or max(1, int(cfg.budget.cpu))
    trainer = ProxyTrainer(
        TrainConfig(batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr, ema=t.ema, amp=t.amp,
                    device=t.device, threads=threads, seed=t.seed),
        [_Report()],
    )
    budget = TrainBudget(epochs=t.epochs, steps=t.steps, seconds=t.seconds, max_seconds=t.max_seconds)
    fit = trainer.fit(model, data, budget)
    result.history = fit.history
    result.metrics.update({k: v for k, v in fit.metrics.items() if k not in ("epoch", "step")})
    result.metrics.update(train_seconds=fit.train_seconds, images_per_second=fit.images_per_second,
                          epochs=float(fit.epochs), steps=float(fit.steps))
    if weights_dir is not None and fit.model is not None:
        weights_dir.mkdir(parents=True, exist_ok=True)
        path = weights_dir / f"{spec.arch_id}.pt"
        torch.save(fit.model.state_dict(), path)
        result.weights_path = str(path)
    if fit.timed_out:
        raise TrialTimeout(f"hit the wall-clock cap train.max_seconds={t.max_seconds:g} after {fit.steps} steps "
                           f"(budget: {t.budget_label()}); the AP recorded ({fit.ap:.4f}) is partial. Raise "
                           "train.max_seconds or lower the budget")
    if cfg.gradient_path.measured and fit.model is not None:
        _measured_gradients(fit.model, data, result)


def _measured_gradients(model: Any, data: Any, result: TrialResult) -> None:
    import copy

    from gpnas.objectives.gradient_path import gradient_aggregates, measure_gradients
    from gpnas.trainers.data import make_loader
    from gpnas.trainers.loss import YoloLoss

    model = copy.deepcopy(model)  # the EMA copy has frozen parameters
    for p in model.parameters():
        p.requires_grad_(True)
    images, targets, _ = next(iter(make_loader(data.val, batch_size=8, shuffle=False, seed=0)))
    loss_fn = YoloLoss(num_classes=data.num_classes, anchors=model.anchors, strides=model.strides,
                       img_size=data.img_size)
    measured = measure_gradients(model, images, loss_fn=lambda out: loss_fn(out[:3], targets)[0])
    result.metrics.update(gradient_aggregates(measured))


def evaluate_candidate(
    spec: ArchSpec | dict[str, Any],
    cfg: SearchConfig,
    reporter: Reporter = _no_report,
    *,
    weights_dir: Path | None = None,
) -> TrialResult:
    """Score one candidate; the returned result's ``state`` says how it ended and ``reason`` why."""
    start = time.perf_counter()
    arch_id = spec.arch_id if isinstance(spec, ArchSpec) else "invalid"
    result = TrialResult(arch_id=arch_id, state="failed")
    try:
        if not isinstance(spec, ArchSpec):
            spec = ArchSpec.from_dict(spec, source="candidate")
        result.arch_id, result.spec = spec.arch_id, spec.to_dict()
        import torch
        from gpnas.search_space.builder import build_detector

        torch.manual_seed(cfg.train.seed)  # the initial weights are part of what a seed reproduces
        model = build_detector(spec)
        _cheap_objectives(spec, model, cfg, result)
        violated = {k: v for k, v in constraint_values(cfg, result.metrics).items() if v > 0}
        if violated:
            raise InfeasibleCandidate(", ".join(f"{k} exceeded by {v:.4g}" for k, v in violated.items()))
        _train(spec, model, cfg, reporter, result, weights_dir)
        result.state = "complete"
    except InfeasibleCandidate as err:
        result.state, result.reason = "infeasible", str(err)
    except TrialTimeout as err:
        result.state, result.reason = "timeout", str(err)
    except (SpecError, TrainingDiverged, DataError, OutOfMemory) as err:
        result.state, result.reason = "failed", f"{type(err).__name__}: {err}"
    except GpnasError as err:
        result.state, result.reason = "failed", f"{type(err).__name__}: {err}"
    except RuntimeError as err:
        if "out of memory" not in str(err).lower():
            raise
        result.state, result.reason = "failed", f"OutOfMemory: {str(err).splitlines()[0]}"
    result.evaluate_seconds = time.perf_counter() - start
    return result


def failure_result(spec: dict[str, Any] | None, exc: BaseException, seconds: float,
                   arch_id: str = "unknown") -> TrialResult:
    """An unexpected exception inside a trial, recorded with its type, message and last frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return TrialResult(arch_id=arch_id, state="failed",
                       reason=f"{type(exc).__name__}: {exc}{where}", spec=spec or {}, evaluate_seconds=seconds)
