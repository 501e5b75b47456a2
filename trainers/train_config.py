"""The configuration of proxy training: :class:`TrainConfig` (optimiser, schedule, evaluation, device and the
budget) — also the ``train`` section of every search config — :class:`TrainBudget`, and the defaults behind them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal

from gpnas.errors import ConfigError
from gpnas.search_space.sections import is_number, is_whole
from gpnas.trainers.data import LoaderOptions
from gpnas.trainers.loss import LossHyp

__all__ = ["MAX_AUTO_WORKERS", "PROXY_HYP", "PROXY_STEPS", "TRIAL_MAX_SECONDS", "TrainBudget", "TrainConfig",
           "budget_label"]

_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
#: ``num_workers: auto`` on CUDA: one loader worker per CPU the trial holds, at most this many.
MAX_AUTO_WORKERS = 8


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


#: The default proxy budget, in optimiser steps (a work budget: the same AP on a quiet or a loaded machine), for
#: searches and `gpnas train`; benchmarks/proxy_fidelity.py measures how far its ranking agrees with longer training.
PROXY_STEPS = 300
#: The default wall-clock cap of one trial's training (a safety: a trial past it is recorded as ``timeout``).
TRIAL_MAX_SECONDS = 1800.0

#: Loss gains for short proxy runs. YOLOv5's rescaling (cls × nc/80, obj × (img/640)²) keeps per-logit gradients
#: equal to a 640-px, 80-class run, but with AdamW only the *balance* between the terms reaches the shared
#: backbone, and at 10 classes the class term is then too weak: after ~600 steps yolor-elan-nano located digits
#: well (class-agnostic AP50 0.81–0.93) but named them poorly (class-aware AP50 0.09). Class gain 4.0 (an
#: effective 0.5 at 10 classes, YOLOv5's 80-class value) took it to AP50 0.36–0.40 at 600 steps (2.0: 0.12–0.30,
#: 8.0: 0.17; raising obj or box with it hurt: obj 4.0 0.21, box 0.1 0.11). Objectness stays YOLOv5's.
#: Box gain 0.15 (3x YOLOv5's) comes from the proxy study (benchmarks/proxy_study.py, setting ``p300-box.15``): at
#: 300 steps the runs that scored low had not started to localise (the box term flat for ~200 steps); with 0.15
#: every panel run took off (median step 85, 40 of 40), and the val loss after it ranked candidates like 2,400-step
#: training best of the one-run settings at that cost (Spearman 0.69 against 0.64 for AP at box 0.05; GFLOPs alone
#: 0.62: within the noise of 20 candidates). AP itself ranks no better than with 0.05.
PROXY_HYP = LossHyp(cls=4.0, box=0.15)


@dataclass(frozen=True)
class TrainBudget:
    """Stop at whichever comes first. At least one of epochs, steps, seconds must be set. The budget keys of
    :class:`TrainConfig` (which extends this class with the rest of the ``train`` section).

    ``steps`` and ``epochs`` are work budgets: the same spec, seed and budget give the same weights (and AP) on a
    quiet or a loaded machine. ``seconds`` counts training time (data loading, steps, callbacks), not the
    evaluations of the val split — "AP at equal compute", which depends on the machine and its load.
    ``max_seconds`` is a safety, not a budget: wall time (evaluations included) after which the run stops,
    evaluates what it has and reports ``timed_out`` (default :data:`TRIAL_MAX_SECONDS`; ``None``: no cap).
    """

    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None
    max_seconds: float | None = TRIAL_MAX_SECONDS

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None and self.seconds is None:
            raise ConfigError("no training budget: set at least one of train.steps, train.epochs or train.seconds")
        # The keys are spelled out, not built from the field name, so a test can check each names a real field.
        for key, whole in (("train.epochs", True), ("train.steps", True), ("train.seconds", False),
                           ("train.max_seconds", False)):
            value = getattr(self, key.removeprefix("train."))
            ok = is_whole(value, 1) if whole else is_number(value) and value > 0
            if value is not None and not ok:
                rule, fix = ("a whole number >= 1", "one") if whole else ("positive", "a positive number")
                raise ConfigError(f"{key} must be {rule}, got {value!r}; give {fix}, or null to leave this limit "
                                  "out")

    @property
    def budget(self) -> TrainBudget:
        """The budget keys alone, as a :class:`TrainBudget`."""
        return TrainBudget(**{f.name: getattr(self, f.name) for f in fields(TrainBudget)})


def budget_label(*, steps: float | None = None, epochs: float | None = None, seconds: float | None = None,
                 **_: Any) -> str:
    """A training budget in words: ``300 steps``, ``2 epochs or 60 seconds``."""
    parts = [f"{v:g} {k}" for k, v in (("steps", steps), ("epochs", epochs), ("seconds", seconds)) if v is not None]
    return " or ".join(parts)


@dataclass(frozen=True)
class TrainConfig(TrainBudget):
    """Budget, optimiser, schedule and evaluation settings of proxy training: the ``train`` section of a search
    config (read by :func:`gpnas.search_space.sections.from_mapping`, which refuses unknown keys; every value is
    checked here, and messages name the keys as ``train.<key>``).

    Budget: ``steps``, ``epochs``, ``seconds``, whichever comes first (the fields of :class:`TrainBudget`, which
    :attr:`budget` returns alone); with none of the three the budget is :data:`PROXY_STEPS` steps, so giving only
    ``epochs`` or ``seconds`` replaces the default step budget rather than adding to it. ``max_seconds`` is the
    wall-clock cap (default :data:`TRIAL_MAX_SECONDS`; ``None``: no cap). ``dataclasses.replace`` keeps the
    other budget fields: ``replace(cfg, epochs=3)`` still holds ``steps``, so clear it there if meant.

    The LR follows a linear warm-up over ``warmup_fraction`` of the planned steps, then a cosine down to
    ``final_lr_fraction`` × ``lr``; for a pure time budget the plan is re-estimated from the measured step
    rate. ``ema_tau`` is the number of updates over which the EMA decay ramps up to ``ema_decay``.

    Measured on yolor-elan-nano, digits, 2 CPU cores (AP50 after the same number of images, ~5 epochs):
    batch 16 beats 32 (0.089 vs 0.061 with the old gains; 16 runs at ~115 img/s vs ~123, so about twice the
    updates per second), and 8 loses per second (~84 img/s: 0.45 vs 0.54 in 90 s). AdamW beats SGD (lr 0.02:
    0.03). lr 0.008 ≈ 0.004 (0.41 vs 0.40). EMA on or off makes no measurable difference at this length
    (0.089 vs 0.093). Gradient clipping at 10 matters: without it 0.16 instead of 0.40. torch's default
    threads (2 here) run at ~120 img/s against ~77 for one thread. These are single runs: at 90 s the seed
    alone moves AP50 by up to ~0.1, so smaller differences above are not resolved.
    lr 0.002 with 15 % warm-up was worse on all three seeds of yolor-csp-nano (AP50 0.33/0.39/0.22 vs 0.47 for
    seed 0 at the defaults). Per-step time is the model's (the loss is ~3 % and the cached loader ~1 %).

    Evaluation points: the end of every ``eval_every``-th epoch, every step count in ``eval_steps`` (the
    rungs of successive halving, set by the search), and the end of training; never twice at one step, except
    that the end of training is always scored on the whole val split (again, when a stop at a rung came right
    after a ``val_subset`` evaluation of the same step). ``val_subset``: N > 0 scores the evaluation points
    before the end on the first N val images (image-id order, the same N each time); ``None`` or 0: every
    image at every point (the default: the digits set's 300 val images cost little).

    Loader (throughput; what is read and how it is augmented is the search config's ``data`` section):
    ``num_workers`` worker processes (``"auto"``: 0 on CPU — the default, where the digits images are cached
    in memory and a worker would only add start-up time and memory — and on CUDA one per CPU the trial holds,
    ``threads`` or else the CPUs this process may use, at most :data:`MAX_AUTO_WORKERS`); ``pin_memory``
    (``"auto"``: on CUDA) makes the host-to-GPU copy non-blocking; ``persistent_workers`` keeps workers, and
    their image caches, across epochs; ``prefetch_factor`` batches queued per worker (``None``: torch's 2).
    An explicit value always wins. The batches are the same for a seed whatever the worker count.

    Speed (``gpnas.trainers.speedups`` has the measurements; each is on by default and ``false`` turns it off,
    none changes what is trained): ``amp`` autocasts the model's forward — fp16 with gradient scaling on CUDA,
    bf16 on a CPU with native bf16 (AVX512-BF16, AMX), fp32 on other CPUs; ``channels_last`` runs the convs in
    the channels-last memory format (on CPUs; on CUDA it is not applied, since there it halved the images/s of the
    nano models); ``fused_optimizer`` uses the optimiser's fused kernel and clips all
    gradients in one call; ``cudnn_benchmark`` lets cuDNN pick its fastest algorithms (CUDA only). Together, on
    2 EPYC cores with AVX512-BF16: 1.45–1.61× the images/s of the trainer without them (yolor-elan-nano),
    1.51–1.53× (yolor-csp-nano); AP after 300 steps within the seed-to-seed spread.

    ``conf_thres``, ``iou_thres`` and ``max_det`` are read by ``gpnas.objectives.accuracy.val_evaluation``;
    ``ema`` makes :class:`ProxyTrainer` add the :class:`~gpnas.trainers.ema.EMA` callback.
    """

    batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 0.004
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.05
    amp: bool = True
    channels_last: bool = True
    fused_optimizer: bool = True
    cudnn_benchmark: bool = True
    ema: bool = True
    ema_decay: float = 0.999
    ema_tau: float = 200.0
    grad_clip: float | None = 10.0
    device: str = "cpu"
    threads: int | None = None
    # ``| str``, not ``| Literal["auto"]``: any other word then reaches _rules, whose message states the rule
    num_workers: int | str = "auto"
    pin_memory: bool | str = "auto"
    persistent_workers: bool = True
    prefetch_factor: int | None = None
    seed: int = 0
    #: a search trial trains its candidate this many times (seeds seed, seed+1, ...) and is scored on the mean of
    #: the runs' final figures (val_loss, ap, ...): the proxy study's two-seed mean ranked like 8x longer training
    #: at rho 0.89 against 0.69 for one run, at twice the cost. `gpnas train` and refine/fidelity train once per seed.
    repeats: int = 1
    eval_every: int = 1
    eval_steps: tuple[int, ...] = ()
    val_subset: int | None = None
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 100
    hyp: LossHyp = PROXY_HYP

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None and self.seconds is None:
            object.__setattr__(self, "steps", PROXY_STEPS)  # frozen: the default budget is filled in once
        super().__post_init__()  # the budget keys
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"train.optimizer {self.optimizer!r}: choose 'sgd' or 'adamw'")
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise ConfigError(f"train.device must be 'cpu', 'cuda' or 'cuda:N' (N a GPU index), got "
                              f"{self.device!r}")
        if not isinstance(self.hyp, LossHyp):
            raise ConfigError(f"train.hyp must be a mapping of loss gains (box, cls, obj, anchor_t, "
                              f"label_smoothing, balance, gr), got {self.hyp!r}; leave it out for the defaults")
        for key, ok, rule in self._rules():
            if not ok:
                default = TrainConfig.__dataclass_fields__[key].default
                raise ConfigError(f"train.{key} must be {rule}, got {getattr(self, key)!r} (the default is "
                                  f"{default!r})")
        object.__setattr__(self, "eval_steps", tuple(self.eval_steps))  # a YAML list, kept hashable

    def _rules(self) -> Iterator[tuple[str, bool, str]]:
        """(key, value is allowed, the rule in words) for every key of the section but the budget, optimizer,
        device and hyp (checked above), in field order."""
        num, whole = is_number, is_whole

        yield "batch_size", whole(self.batch_size, 1), ">= 1 (images per step)"
        yield "lr", num(self.lr) and self.lr > 0, "positive"
        yield "momentum", num(self.momentum) and 0 <= self.momentum < 1, "in [0, 1) (SGD momentum, AdamW beta1)"
        yield "weight_decay", num(self.weight_decay) and self.weight_decay >= 0, ">= 0"
        yield "warmup_fraction", num(self.warmup_fraction) and 0 <= self.warmup_fraction < 1, \
            "in [0, 1) (the share of the planned steps spent warming up)"
        yield "final_lr_fraction", num(self.final_lr_fraction) and 0 <= self.final_lr_fraction <= 1, \
            "in [0, 1] (the last LR as a share of train.lr)"
        yield "ema_decay", num(self.ema_decay) and 0 <= self.ema_decay < 1, "in [0, 1)"
        yield "ema_tau", num(self.ema_tau) and self.ema_tau > 0, "> 0 (updates)"
        yield "grad_clip", self.grad_clip is None or (num(self.grad_clip) and self.grad_clip > 0), \
            "a positive gradient norm, or null for no clipping"
        yield "threads", self.threads is None or whole(self.threads, 1), \
            "an integer >= 1, or null for the search's budget.cpu (torch's default outside a search)"
        yield "num_workers", self.num_workers == "auto" or whole(self.num_workers, 0), \
            "'auto' or an integer >= 0 (DataLoader worker processes; 0 loads in the training process)"
        yield "pin_memory", self.pin_memory == "auto" or isinstance(self.pin_memory, bool), \
            "'auto' (on CUDA only), true or false"
        yield "persistent_workers", isinstance(self.persistent_workers, bool), "true or false"
        for key in ("amp", "channels_last", "fused_optimizer", "cudnn_benchmark", "ema"):
            yield key, isinstance(getattr(self, key), bool), "true or false"
        yield "prefetch_factor", self.prefetch_factor is None or whole(self.prefetch_factor, 1), \
            "an integer >= 1 (batches queued per worker), or null for torch's default (2)"
        yield "seed", isinstance(self.seed, int) and not isinstance(self.seed, bool), "an integer (the training seed)"
        yield "repeats", whole(self.repeats, 1), \
            "an integer >= 1 (trainings per search trial, seeds seed, seed+1, ...; scored on their mean)"
        yield "eval_every", whole(self.eval_every, 1), ">= 1 (epochs)"
        yield "eval_steps", isinstance(self.eval_steps, (tuple, list)) and all(whole(s, 1) for s in self.eval_steps), \
            "a list of step counts >= 1 (extra evaluation points, e.g. successive-halving rungs)"
        yield "val_subset", self.val_subset is None or whole(self.val_subset, 0), \
            "an integer >= 0 (val images scored before the end of training; 0 or null: all)"
        yield "conf_thres", num(self.conf_thres) and 0 < self.conf_thres <= 1, "in (0, 1] (a score threshold)"
        yield "iou_thres", num(self.iou_thres) and 0 < self.iou_thres <= 1, "in (0, 1] (the NMS IoU threshold)"
        yield "max_det", whole(self.max_det, 1), "an integer >= 1 (detections kept per image)"

    def loader_options(self) -> LoaderOptions:
        """The loader keys resolved for ``device`` (see the class docstring: ``auto`` differs on CPU and CUDA)."""
        cuda = self.device.startswith("cuda")
        workers = self.num_workers
        if workers == "auto":
            workers = min(MAX_AUTO_WORKERS, self.threads or _usable_cpus()) if cuda else 0
        pin = cuda if self.pin_memory == "auto" else self.pin_memory
        return LoaderOptions(num_workers=int(workers), pin_memory=bool(pin),
                             persistent_workers=self.persistent_workers, prefetch_factor=self.prefetch_factor)

    def budget_label(self) -> str:
        """The budget in words: ``300 steps``, ``2 epochs or 60 seconds``."""
        return budget_label(steps=self.steps, epochs=self.epochs, seconds=self.seconds)
