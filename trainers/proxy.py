"""Budgeted proxy training of one candidate, to COCO AP (STYLE.md 7).

One explicit loop with budget knobs (epochs, steps, seconds; a wall-clock cap as a safety) and no-op callback
hooks; reporting and early stopping are callbacks. A NaN or inf loss raises TrainingDiverged naming the step.

What is deterministic: on CPU, the same model initialisation, ``seed``, thread count and step/epoch budget give
bit-identical weights and AP whatever else runs on the machine (the batches follow ``seed``, the val order is
fixed, no kernel here picks its algorithm by timing). Different thread counts change the summation order, and so
the last bits. A ``seconds`` budget is not deterministic: how far a run gets depends on the machine's load.

The defaults are tuned for what proxy training is for: ranking candidates after a few hundred steps on a CPU,
not for the best final AP. See :data:`PROXY_HYP` and :class:`TrainConfig` for the measurements behind them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from gpnas.search_space.errors import ConfigError, TrainingDiverged
from gpnas.trainers.callbacks import Callback
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.loss import LossHyp, YoloLoss
from torch import nn

#: Loss gains for short proxy runs. YOLOv5's rescaling (cls × nc/80, obj × (img/640)²) keeps per-logit gradients
#: equal to a 640-px, 80-class run, but with AdamW only the *balance* between the terms reaches the shared
#: backbone, and at 10 classes the class term is then too weak: after ~600 steps yolor-elan-nano located digits
#: well (class-agnostic AP50 0.81–0.93) but named them poorly (class-aware AP50 0.09). Class gain 4.0 (an
#: effective 0.5 at 10 classes, YOLOv5's 80-class value) took it to AP50 0.36–0.40 at 600 steps (2.0: 0.12–0.30,
#: 8.0: 0.17; raising obj or box with it hurt: obj 4.0 0.21, box 0.1 0.11). Box and objectness stay YOLOv5's.
PROXY_HYP = LossHyp(cls=4.0)


@dataclass(frozen=True)
class TrainBudget:
    """Stop at whichever comes first. At least one of epochs, steps, seconds must be set.

    ``steps`` and ``epochs`` are work budgets: the same spec, seed and budget give the same weights (and AP) on a
    quiet or a loaded machine. ``seconds`` counts training time (data loading, steps, callbacks), not the
    evaluations of the val split — "AP at equal compute", which depends on the machine and its load.
    ``max_seconds`` is a safety, not a budget: wall time (evaluations included) after which the run stops,
    evaluates what it has and reports ``timed_out``.
    """

    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None and self.seconds is None:
            raise ConfigError("train budget: set at least one of epochs, steps or seconds")
        for name in ("epochs", "steps", "seconds", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"train budget: {name} must be positive, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and evaluation settings of proxy training.

    The LR follows a linear warm-up over ``warmup_fraction`` of the planned steps, then a cosine down to
    ``final_lr_fraction`` × ``lr``; for a pure time budget the plan is re-estimated from the measured step
    rate. ``ema_tau`` is the number of updates over which the EMA decay ramps up to ``ema_decay``.

    Measured on yolor-elan-nano, digits, 2 CPU cores (AP50 after the same number of images, ~5 epochs):
    batch 16 beats 32 (0.089 vs 0.061 with the old gains; 16 runs at ~115 img/s vs ~123, so about twice the
    updates per second), and 8 loses per second (~84 img/s: 0.45 vs 0.54 in 90 s). AdamW beats SGD (lr 0.02:
    0.03). lr 0.008 ≈ 0.004 (0.41 vs 0.40). EMA on or off makes no measurable difference at this length
    (0.089 vs 0.093). Gradient clipping at 10 matters: without it 0.16 instead of 0.40. torch's default
    threads (2 here) run at ~120 img/s against ~77 for one thread; channels-last is slower (~101). These are
    single runs: at 90 s the seed alone moves AP50 by up to ~0.1, so smaller differences above are not resolved.
    lr 0.002 with 15 % warm-up was worse on all three seeds of yolor-csp-nano (AP50 0.33/0.39/0.22 vs 0.47 for
    seed 0 at the defaults). Per-step time is the model's (the loss is ~3 % and the cached loader ~1 %).
    """

    batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 0.004
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.05
    amp: bool = True
    ema: bool = True
    ema_decay: float = 0.999
    ema_tau: float = 200.0
    grad_clip: float | None = 10.0
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    eval_every: int = 1
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 100
    hyp: LossHyp = PROXY_HYP

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"train.optimizer {self.optimizer!r}: choose 'sgd' or 'adamw'")
        if self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"train: batch_size ({self.batch_size}) and lr ({self.lr}) must be positive")
        if self.eval_every < 1:
            raise ConfigError(f"train.eval_every must be >= 1 (epochs), got {self.eval_every}")
        if not 0.0 <= self.ema_decay < 1.0 or self.ema_tau <= 0:
            raise ConfigError(f"train: ema_decay must be in [0, 1) and ema_tau > 0, got {self.ema_decay}, "
                              f"{self.ema_tau}")


@dataclass
class FitResult:
    """What one proxy training produced. ``history`` holds one metrics dict per evaluated epoch.

    ``train_seconds`` is the training time the budget counts; ``eval_seconds`` the time spent evaluating.
    """

    ap: float
    ap50: float
    metrics: dict[str, float]
    history: list[dict[str, float]]
    epochs: int
    steps: int
    train_seconds: float
    images_per_second: float
    stopped_early: bool
    eval_seconds: float = 0.0
    timed_out: bool = False
    model: nn.Module | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("model")
        return data


class ModelEMA:
    """Exponential moving average of the weights and float buffers; decay ramps as d·(1 − exp(−n/tau)).

    The tensor lists are collected once, so an update is two fused foreach calls, not a state_dict walk.
    """

    def __init__(self, model: nn.Module, decay: float, tau: float = 200.0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau = decay, tau
        self.updates = 0
        src, dst = model.state_dict(), self.ema.state_dict()
        floats = [k for k, v in dst.items() if v.dtype.is_floating_point]
        others = [k for k, v in dst.items() if not v.dtype.is_floating_point]
        self._src_f, self._dst_f = [src[k] for k in floats], [dst[k] for k in floats]
        self._src_o, self._dst_o = [src[k] for k in others], [dst[k] for k in others]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        torch._foreach_lerp_(self._dst_f, self._src_f, 1.0 - d)
        for dst, src in zip(self._dst_o, self._src_o, strict=True):
            dst.copy_(src)


class _Stopwatch:
    """Training time: wall time since start minus the spans spent inside :meth:`paused`."""

    def __init__(self) -> None:
        self._start, self._paused = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start - self._paused

    @property
    def paused_seconds(self) -> float:
        return self._paused

    @contextmanager
    def paused(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t0


def _lr_factor(step: int, total: int, warmup: int, final: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class ProxyTrainer:
    """``ProxyTrainer(config, callbacks).fit(model, data, budget) -> FitResult``."""

    def __init__(self, config: TrainConfig | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.config = config or TrainConfig()
        self.callbacks = list(callbacks)
        self.should_stop = False
        self.step = 0
        self.epoch = 0
        self._clock = _Stopwatch()

    # ------------------------------------------------------------------ hooks
    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ------------------------------------------------------------------ setup
    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))

    def _planned_steps(self, budget: TrainBudget, steps_per_epoch: int) -> int:
        """Steps the LR schedule spans: the step/epoch budget, or 0 (estimate from the time budget)."""
        candidates = []
        if budget.steps is not None:
            candidates.append(budget.steps)
        if budget.epochs is not None:
            candidates.append(budget.epochs * steps_per_epoch)
        return min(candidates) if candidates else 0

    # ------------------------------------------------------------------ loop
    def fit(self, model: nn.Module, data: ProxyData, budget: TrainBudget) -> FitResult:
        cfg = self.config
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is visible; use --device cpu")
        old_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        try:
            return self._fit(model.to(device), data, budget, device)
        finally:
            torch.set_num_threads(old_threads)

    def _fit(self, model: nn.Module, data: ProxyData, budget: TrainBudget, device: torch.device) -> FitResult:
        cfg = self.config
        loader = data.train_loader(batch_size=cfg.batch_size, seed=cfg.seed)
        if len(loader) == 0:
            raise ConfigError(f"train.batch_size {cfg.batch_size} is larger than the {len(data.train)} training "
                              "images (incomplete batches are dropped); lower it")
        loss_fn = YoloLoss(
            num_classes=data.num_classes,
            anchors=model.anchors,  # type: ignore[arg-type]
            strides=model.strides,  # type: ignore[arg-type]
            img_size=data.img_size,
            hyp=cfg.hyp,
        )
        opt = self._optimizer(model)
        ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
        planned = self._planned_steps(budget, len(loader))
        history: list[dict[str, float]] = []
        metrics: dict[str, float] = {}
        images = 0
        self.step = self.epoch = 0
        self.should_stop = False
        self._clock = clock = _Stopwatch()
        wall_start = time.perf_counter()
        timed_out = False
        self._emit("on_fit_start")
        while not self._exhausted(budget):
            model.train()
            for imgs, targets, _ in loader:
                lr = cfg.lr * self._lr_factor(planned, budget, len(loader))
                for group in opt.param_groups:
                    group["lr"] = lr
                parts = self._train_step(model, loss_fn, opt, scaler, imgs.to(device), targets.to(device))
                if ema is not None:
                    ema.update()
                self.step += 1
                images += imgs.shape[0]
                self._emit("on_step_end", parts)
                timed_out = budget.max_seconds is not None and time.perf_counter() - wall_start >= budget.max_seconds
                if timed_out or self._exhausted(budget):
                    break
            self.epoch += 1
            if timed_out or self._exhausted(budget) or self.should_stop or self.epoch % cfg.eval_every == 0:
                with clock.paused():
                    metrics = self._evaluate(ema.ema if ema else model, data, device)
                    history.append(metrics)
                    self._emit("on_epoch_end", metrics)
            if self.should_stop or timed_out:
                break
        train_time = clock.elapsed()
        result = FitResult(
            ap=metrics.get("ap", 0.0),
            ap50=metrics.get("ap50", 0.0),
            metrics=metrics,
            history=history,
            epochs=self.epoch,
            steps=self.step,
            train_seconds=train_time,
            images_per_second=images / train_time if train_time > 0 else 0.0,
            stopped_early=self.should_stop,
            eval_seconds=clock.paused_seconds,
            timed_out=timed_out,
            model=ema.ema if ema else model,
        )
        self._emit("on_fit_end", result)
        return result

    def _train_step(
        self, model: nn.Module, loss_fn: YoloLoss, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
        imgs: torch.Tensor, targets: torch.Tensor,
    ) -> dict[str, float]:
        """One optimiser step; -> the per-image loss parts. The loss parts are already on the host, so the
        finiteness check costs no extra device sync."""
        cfg = self.config
        with torch.autocast(imgs.device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
            preds = model(imgs)
        loss, parts = loss_fn(preds[:3], targets)
        if not math.isfinite(parts["total"]):
            raise TrainingDiverged(
                f"the loss became {parts['total']} at step {self.step} (epoch {self.epoch}); "
                f"lower train.lr (now {cfg.lr}) or raise train.warmup_fraction (now {cfg.warmup_fraction})"
            )
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        return parts

    def _evaluate(self, model: nn.Module, data: ProxyData, device: torch.device) -> dict[str, float]:
        cfg = self.config
        trained = self._clock.elapsed()
        metrics = data.evaluate(model, conf_thres=cfg.conf_thres, iou_thres=cfg.iou_thres, max_det=cfg.max_det,
                                device=device)
        return {**metrics, "epoch": float(self.epoch), "step": float(self.step),
                "train_seconds": trained}

    def _exhausted(self, budget: TrainBudget) -> bool:
        if budget.steps is not None and self.step >= budget.steps:
            return True
        if budget.epochs is not None and self.epoch >= budget.epochs:
            return True
        return budget.seconds is not None and self._clock.elapsed() >= budget.seconds

    def _lr_factor(self, planned: int, budget: TrainBudget, steps_per_epoch: int) -> float:
        cfg = self.config
        total = planned or self._estimate_total(budget, steps_per_epoch)
        warmup = max(1, int(cfg.warmup_fraction * total))
        return _lr_factor(self.step, total, warmup, cfg.final_lr_fraction)

    def _estimate_total(self, budget: TrainBudget, steps_per_epoch: int) -> int:
        """For a pure time budget, the LR schedule spans the steps that the measured rate predicts."""
        elapsed = self._clock.elapsed()
        if self.step < 3 or elapsed <= 0 or budget.seconds is None:
            return max(steps_per_epoch * 10, 100)
        return max(self.step + 1, int(self.step * budget.seconds / elapsed))
