"""Budgeted proxy training of one candidate, to COCO AP (STYLE.md 7).

One explicit loop with budget knobs (epochs, steps, seconds) and no-op callback hooks; reporting, early stopping
and EMA are callbacks or options, not branches spread through the loop. A NaN or inf loss raises
TrainingDiverged naming the step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from search_space.errors import ConfigError, TrainingDiverged
from trainers.callbacks import Callback
from trainers.datasets import ProxyData
from trainers.loss import LossHyp, YoloLoss


@dataclass(frozen=True)
class TrainBudget:
    """Stop at whichever comes first. At least one of epochs, steps, seconds must be set."""

    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None and self.seconds is None:
            raise ConfigError("train budget: set at least one of epochs, steps or seconds")
        for name in ("epochs", "steps", "seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"train budget: {name} must be positive, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and evaluation settings of proxy training."""

    batch_size: int = 32
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 0.004
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.05
    amp: bool = True
    ema: bool = True
    ema_decay: float = 0.999
    grad_clip: float = 10.0
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    eval_every: int = 1
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 100
    augment: bool = True
    hyp: LossHyp = field(default_factory=LossHyp)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"train.optimizer {self.optimizer!r}: choose 'sgd' or 'adamw'")
        if self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"train: batch_size ({self.batch_size}) and lr ({self.lr}) must be positive")


@dataclass
class FitResult:
    """What one proxy training produced. ``history`` holds one metrics dict per evaluated epoch."""

    ap: float
    ap50: float
    metrics: dict[str, float]
    history: list[dict[str, float]]
    epochs: int
    steps: int
    train_seconds: float
    images_per_second: float
    stopped_early: bool
    model: nn.Module | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("model")
        return data


class ModelEMA:
    """Exponential moving average of the weights, with the usual warm-up of the decay."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / 200))
        src = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
            else:
                v.copy_(src[k])


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
        """Steps the LR schedule spans: the step/epoch budget, or an estimate from the time budget."""
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
        loss_fn = YoloLoss(
            num_classes=data.num_classes,
            anchors=model.anchors,  # type: ignore[arg-type]
            strides=model.strides,  # type: ignore[arg-type]
            img_size=data.img_size,
            hyp=cfg.hyp,
        )
        opt = self._optimizer(model)
        ema = ModelEMA(model, cfg.ema_decay) if cfg.ema else None
        use_amp = cfg.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        planned = self._planned_steps(budget, len(loader))
        history: list[dict[str, float]] = []
        metrics: dict[str, float] = {}
        self._emit("on_fit_start")
        start = time.perf_counter()
        train_time, images = 0.0, 0
        self.step = self.epoch = 0
        while not self._exhausted(budget, start):
            model.train()
            t0 = time.perf_counter()
            for imgs, targets, _ in loader:
                total = planned or self._estimate_total(budget, start, len(loader))
                warmup = max(1, int(cfg.warmup_fraction * total))
                factor = _lr_factor(self.step, total, warmup, cfg.final_lr_fraction)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * factor
                imgs = imgs.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    preds = model(imgs)
                loss, parts = loss_fn(preds[:3], targets.to(device))
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {loss.item()} at step {self.step} (epoch {self.epoch}); "
                        f"lower train.lr (now {cfg.lr}) or enable warm-up"
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                self.step += 1
                images += imgs.shape[0]
                self._emit("on_step_end", parts)
                if self._exhausted(budget, start):
                    break
            train_time += time.perf_counter() - t0
            self.epoch += 1
            last = self._exhausted(budget, start) or self.should_stop
            if last or self.epoch % cfg.eval_every == 0:
                metrics = data.evaluate(ema.ema if ema else model, conf_thres=cfg.conf_thres,
                                        iou_thres=cfg.iou_thres, max_det=cfg.max_det, device=device)
                metrics = {**metrics, "epoch": float(self.epoch), "step": float(self.step)}
                history.append(metrics)
                self._emit("on_epoch_end", metrics)
            if self.should_stop:
                break
        final = ema.ema if ema else model
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
            model=final,
        )
        self._emit("on_fit_end", result)
        return result

    def _exhausted(self, budget: TrainBudget, start: float) -> bool:
        if budget.steps is not None and self.step >= budget.steps:
            return True
        if budget.epochs is not None and self.epoch >= budget.epochs:
            return True
        return budget.seconds is not None and time.perf_counter() - start >= budget.seconds

    def _estimate_total(self, budget: TrainBudget, start: float, steps_per_epoch: int) -> int:
        """For a pure time budget, the LR schedule spans the steps that the elapsed rate predicts."""
        elapsed = time.perf_counter() - start
        if self.step < 3 or elapsed <= 0 or budget.seconds is None:
            return max(steps_per_epoch * 10, 100)
        return max(self.step + 1, int(self.step * budget.seconds / elapsed))
