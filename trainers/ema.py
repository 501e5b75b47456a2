"""Exponential moving average of the weights, as a trainer callback (STYLE.md 7: EMA is not a branch in the loop).

:class:`EMA` keeps a :class:`ModelEMA` of ``trainer.model``, updates it after every optimiser step and makes it
the trainer's evaluation model, so the evaluations score it and ``FitResult.model`` is it. ``ProxyTrainer``
puts one first in its callbacks when ``TrainConfig.ema`` is true: the update then runs right after the optimiser
step and before any other callback's ``on_step_end`` sees the step.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from gpnas.errors import ConfigError
from gpnas.trainers.callbacks import Callback

if TYPE_CHECKING:
    from gpnas.trainers.proxy import ProxyTrainer

__all__ = ["EMA", "ModelEMA"]


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


class EMA(Callback):
    """Train ``trainer.model``, evaluate and return its moving average (``decay``, ramped over ``tau`` updates).

    A fresh average is started at each fit; ``self.model_ema`` holds the last one.
    """

    def __init__(self, decay: float = 0.999, tau: float = 200.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay!r} (train.ema_decay in a search config)")
        if not tau > 0:
            raise ConfigError(f"EMA tau must be > 0 updates, got {tau!r} (train.ema_tau in a search config)")
        self.decay, self.tau = decay, tau
        self.model_ema: ModelEMA | None = None

    def on_fit_start(self, trainer: ProxyTrainer) -> None:
        assert trainer.model is not None, "the trainer sets its model before on_fit_start"
        self.model_ema = ModelEMA(trainer.model, self.decay, self.tau)
        trainer.eval_model = self.model_ema.ema

    def on_step_end(self, trainer: ProxyTrainer, losses: dict[str, float]) -> None:
        assert self.model_ema is not None, "on_fit_start creates the average"
        self.model_ema.update()
