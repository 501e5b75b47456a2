"""Budgeted proxy training of one candidate, to COCO AP (STYLE.md 7).

One explicit loop with budget knobs (epochs, steps, seconds; a wall-clock cap as a safety) and no-op callback
hooks; evaluation, EMA, reporting and early stopping are callbacks. The loop decides *when* an evaluation point
happens; what is measured there is up to the callbacks' ``on_evaluate`` (COCO AP needs
``gpnas.objectives.accuracy.val_evaluation(data, config)`` among them: without it no AP is recorded and
``FitResult.ap`` is 0.0). A NaN or inf loss raises TrainingDiverged naming the step.

What is deterministic: on CPU, the same model initialisation, ``seed``, thread count and step/epoch budget give
bit-identical weights and AP whatever else runs on the machine (the batches follow ``seed``, the val order is
fixed, no kernel here picks its algorithm by timing). Different thread counts change the summation order, and so
the last bits; so do the speed settings (``amp``, ``channels_last``, ``fused_optimizer``: other kernels, the same
training), and bf16 autocast is only used on CPUs with native bf16, so two machines differing there differ too.
A ``seconds`` budget is not deterministic: how far a run gets depends on the machine's load.

The defaults are tuned for what proxy training is for: ranking candidates after a few hundred steps on a CPU,
not for the best final AP. See ``train_config.py`` (PROXY_HYP, TrainConfig) for the measurements behind them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from gpnas.errors import ConfigError, TrainingDiverged
from gpnas.trainers.callbacks import Callback
from gpnas.trainers.data import to_model_input
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.device_slot import TrainingSlot
from gpnas.trainers.ema import EMA
from gpnas.trainers.loss import YoloLoss
from gpnas.trainers.speedups import amp_dtype, input_format, release_layout, set_layout
from gpnas.trainers.train_config import (  # the config lives beside: re-exported, the trainer's own vocabulary
    TrainBudget,
    TrainConfig,
)


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


def lr_factor(step: int, total: int, warmup: int, final: float) -> float:
    """The LR multiplier at ``step`` (0-based) of ``total`` planned steps: linear warm-up over ``warmup`` steps,
    then a cosine down to ``final``. A pure function of the step, so a resumed run continues the same curve."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``model``'s parameters; weight decay on the weights only (biases and norm
    parameters, ndim <= 1, are not decayed). ``config.fused_optimizer``: torch's fused kernel (CPU and CUDA)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if config.fused_optimizer else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True, **fused)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999), **fused)


def train_step(
    model: nn.Module, loss_fn: YoloLoss, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    imgs: torch.Tensor, targets: torch.Tensor, *, config: TrainConfig, where: str,
) -> dict[str, float]:
    """One optimiser step (the forward under ``config.amp``'s autocast, see :func:`amp_dtype`; the loss in fp32;
    gradient clipping per ``config``); -> the per-image loss parts. ``where`` ("step 12 (epoch 0)") names the
    step if the loss is not finite. The loss parts are already on the host, so the finiteness check costs no
    extra device sync. ``scaler`` scales the fp16 loss on CUDA (disabled elsewhere)."""
    dtype = amp_dtype(config, imgs.device)
    with torch.autocast(imgs.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        preds = model(imgs)
    loss, parts = loss_fn([p.float() for p in preds[:3]], targets)
    if not math.isfinite(parts["total"]):
        raise TrainingDiverged(
            f"the loss became {parts['total']} at {where}; "
            f"lower train.lr (now {config.lr}) or raise train.warmup_fraction (now {config.warmup_fraction})"
        )
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=config.fused_optimizer or None)
    scaler.step(opt)
    scaler.update()
    return parts


class ProxyTrainer:
    """``ProxyTrainer(config, callbacks).fit(model, data, budget=None) -> FitResult``.

    Callbacks run in list order; with ``config.ema`` an :class:`~gpnas.trainers.ema.EMA` callback goes first
    (unless the list holds one), so the average follows each optimiser step before other callbacks see it.
    During a fit ``model`` is trained, ``eval_model`` is evaluated and returned as ``FitResult.model`` (``model``
    unless a callback such as EMA sets another), on ``device``. AP needs an evaluation callback,
    ``gpnas.objectives.accuracy.val_evaluation(data, config)``: without one ``FitResult.ap`` is 0.0.
    ``final_evaluation`` is True during the evaluation at the end of training (an evaluation callback scores
    the whole val split then, whatever ``config.val_subset`` says).
    """

    def __init__(self, config: TrainConfig | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.config = config or TrainConfig()
        self.callbacks = list(callbacks)
        if self.config.ema and not any(isinstance(cb, EMA) for cb in self.callbacks):
            self.callbacks.insert(0, EMA(self.config.ema_decay, self.config.ema_tau))
        self.model: nn.Module | None = None
        self.eval_model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.device = torch.device(self.config.device)
        self.should_stop = False
        self.final_evaluation = False
        self.step = 0
        self.epoch = 0
        self._clock = _Stopwatch()
        self._history: list[dict[str, float]] = []
        self._final_at: int | None = None

    # ------------------------------------------------------------------ hooks
    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ------------------------------------------------------------------ setup
    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.config)

    def _planned_steps(self, budget: TrainBudget, steps_per_epoch: int) -> int:
        """Steps the LR schedule spans: the step/epoch budget, or 0 (estimate from the time budget)."""
        candidates = []
        if budget.steps is not None:
            candidates.append(budget.steps)
        if budget.epochs is not None:
            candidates.append(budget.epochs * steps_per_epoch)
        return min(candidates) if candidates else 0

    # ------------------------------------------------------------------ loop
    def fit(self, model: nn.Module, data: ProxyData, budget: TrainBudget | None = None) -> FitResult:
        """Train ``model`` on ``data.train`` within ``budget`` (default: ``config.budget``)."""
        cfg = self.config
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is visible; set train.device to 'cpu' "
                              "(gpnas train: --device cpu)")
        old_threads, old_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        torch.manual_seed(cfg.seed)
        self.device = device
        self._slot = TrainingSlot()  # a latency measurement on this machine pauses the steps (device_slot.py)
        try:
            return self._fit(set_layout(model.to(device), cfg, device), data, cfg.budget if budget is None else budget)
        finally:
            self._slot.close()
            torch.set_num_threads(old_threads)
            torch.backends.cudnn.benchmark = old_benchmark
            for trained in {id(m): m for m in (model, self.eval_model) if m is not None}.values():
                release_layout(trained)  # the result is the model as built: NCHW, no training layout

    def _fit(self, model: nn.Module, data: ProxyData, budget: TrainBudget) -> FitResult:
        cfg, device = self.config, self.device
        options = cfg.loader_options()
        loader = data.train_loader(batch_size=cfg.batch_size, seed=cfg.seed, options=options)
        if len(loader) == 0:
            raise ConfigError(f"train.batch_size {cfg.batch_size} is larger than the {len(data.train)} training "
                              "images (incomplete batches are dropped); lower it")
        loss_fn = YoloLoss(num_classes=data.num_classes, anchors=model.anchors, strides=model.strides,  # type: ignore[arg-type]
                           img_size=data.img_size, hyp=cfg.hyp)
        opt = self.optimizer = self._optimizer(model)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
        planned = self._planned_steps(budget, len(loader))
        eval_at = frozenset(cfg.eval_steps)
        layout = input_format(cfg, device)
        self._start(model)
        images, timed_out, wall_start = 0, False, time.perf_counter()
        self._emit("on_fit_start")
        while not self._exhausted(budget):
            model.train()
            for imgs, targets, _ in loader:
                lr = cfg.lr * self._lr_factor(planned, budget, len(loader))
                for group in opt.param_groups:
                    group["lr"] = lr
                with self._in_slot():
                    inputs = to_model_input(imgs, device, non_blocking=options.pin_memory, memory_format=layout)
                    parts = self._train_step(model, loss_fn, opt, scaler, inputs, targets.to(device))
                    self.step += 1
                    images += imgs.shape[0]
                    self._emit("on_step_end", parts)
                if self.step in eval_at:
                    self._evaluate(final=self._exhausted(budget))
                    if self.should_stop:  # stopped at a rung: no more steps this epoch
                        break
                timed_out = budget.max_seconds is not None and time.perf_counter() - wall_start >= budget.max_seconds
                if timed_out or self._exhausted(budget):
                    break
            self.epoch += 1
            final = timed_out or self._exhausted(budget) or self.should_stop
            if final or self.epoch % cfg.eval_every == 0:
                self._evaluate(final=final)
            if self.should_stop or timed_out:
                break
        result = self._result(images, timed_out)
        self._emit("on_fit_end", result)
        return result

    def _start(self, model: nn.Module) -> None:
        self.model = self.eval_model = model
        self.step = self.epoch = 0
        self.should_stop = self.final_evaluation = False
        self._clock = _Stopwatch()
        self._history = []
        self._final_at = None

    @contextmanager
    def _in_slot(self) -> Iterator[None]:
        """The step's share of the machine; waiting for a latency measurement is not training time."""
        with self._clock.paused():
            self._slot.__enter__()
        try:
            yield
        finally:
            self._slot.__exit__()

    def _evaluate(self, *, final: bool = False) -> None:
        """One evaluation point, off the training clock: ``on_evaluate`` fills the metrics in (AP with a
        ValEvaluation), then ``on_epoch_end`` hands every callback the complete dict. At most one per step,
        except a final one after a val-subset evaluation of the same step (the last AP is the whole split's)."""
        if self._history and self._history[-1]["step"] == self.step:
            subset_before = bool(self.config.val_subset) and self._final_at != self.step
            if not (final and subset_before):
                return
        with self._clock.paused():
            metrics = {"epoch": float(self.epoch), "step": float(self.step), "train_seconds": self._clock.elapsed()}
            self.final_evaluation = final
            try:
                with self._slot:
                    self._emit("on_evaluate", self.eval_model, metrics)
            finally:
                self.final_evaluation = False
            if final:
                self._final_at = self.step
            self._history.append(metrics)
            self._emit("on_epoch_end", metrics)

    def _result(self, images: int, timed_out: bool) -> FitResult:
        train_time = self._clock.elapsed()
        metrics = self._history[-1] if self._history else {}
        return FitResult(
            ap=metrics.get("ap", 0.0),
            ap50=metrics.get("ap50", 0.0),
            metrics=metrics,
            history=self._history,
            epochs=self.epoch,
            steps=self.step,
            train_seconds=train_time,
            images_per_second=images / train_time if train_time > 0 else 0.0,
            stopped_early=self.should_stop,
            eval_seconds=self._clock.paused_seconds,
            timed_out=timed_out,
            model=self.eval_model,
        )

    def _train_step(
        self, model: nn.Module, loss_fn: YoloLoss, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
        imgs: torch.Tensor, targets: torch.Tensor,
    ) -> dict[str, float]:
        """One optimiser step (:func:`train_step`); -> the per-image loss parts."""
        return train_step(model, loss_fn, opt, scaler, imgs, targets, config=self.config,
                          where=f"step {self.step} (epoch {self.epoch})")

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
        return lr_factor(self.step, total, warmup, cfg.final_lr_fraction)

    def _estimate_total(self, budget: TrainBudget, steps_per_epoch: int) -> int:
        """For a pure time budget, the LR schedule spans the steps that the measured rate predicts."""
        elapsed = self._clock.elapsed()
        if self.step < 3 or elapsed <= 0 or budget.seconds is None:
            return max(steps_per_epoch * 10, 100)
        return max(self.step + 1, int(self.step * budget.seconds / elapsed))
