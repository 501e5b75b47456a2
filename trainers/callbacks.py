"""Callback hooks of the proxy trainer: every hook is a no-op unless a subclass overrides it (STYLE.md 7).

At an evaluation point the trainer pauses its training clock and calls ``on_evaluate`` on every callback (the
evaluations fill the metrics in), then ``on_epoch_end`` on every callback (the reporters read them): a reporter
sees the AP whatever its place in the list.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gpnas.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from gpnas.trainers.proxy import FitResult, ProxyTrainer


class Callback:
    """Override what you need. Set ``trainer.should_stop = True`` to end training after this epoch."""

    def on_fit_start(self, trainer: ProxyTrainer) -> None:
        """Before the first step."""

    def on_step_end(self, trainer: ProxyTrainer, losses: dict[str, float]) -> None:
        """After each optimiser step; ``losses`` holds per-image box, obj, cls, total."""

    def on_evaluate(self, trainer: ProxyTrainer, model: nn.Module, metrics: dict[str, float]) -> None:
        """At each evaluation point, with the model to score (``trainer.eval_model``: the EMA copy when EMA is
        on) and the metrics so far (epoch, step, train_seconds); an evaluation adds its figures in place."""

    def on_epoch_end(self, trainer: ProxyTrainer, metrics: dict[str, float]) -> None:
        """After each evaluation point, with the complete metrics: epoch, step, train_seconds and what the
        evaluations added (ap, ap50, ap75, … with a ``ValEvaluation``)."""

    def on_fit_end(self, trainer: ProxyTrainer, result: FitResult) -> None:
        """After training, with the final result."""


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved for ``patience`` evaluations.

    The metric must come from an evaluation callback (``ap`` needs a ``ValEvaluation``); a missing one is a
    ConfigError rather than a silent stop after ``patience`` evaluations.
    """

    def __init__(self, metric: str = "ap", patience: int = 3) -> None:
        self.metric, self.patience = metric, patience
        self.best, self.bad = float("-inf"), 0

    def on_epoch_end(self, trainer: ProxyTrainer, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            raise ConfigError(f"EarlyStopping(metric={self.metric!r}): the evaluation gave only {sorted(metrics)}; "
                              "add the evaluation that computes it to the callbacks (for ap: "
                              "gpnas.objectives.accuracy.val_evaluation(data, config))")
        value = metrics[self.metric]
        if value > self.best:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            trainer.should_stop = self.bad >= self.patience


class ProgressBar(Callback):
    """A rich progress line: epoch, step, loss, last AP, images/s."""

    def __init__(self, total_seconds: float | None = None, total_steps: int | None = None) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            transient=False,
        )
        self.total_seconds, self.total_steps = total_seconds, total_steps
        self.task: Any = None
        self.start = 0.0
        self.last_ap = float("nan")
        self.loss = float("nan")

    def on_fit_start(self, trainer: ProxyTrainer) -> None:
        self.progress.start()
        total = self.total_steps if self.total_steps else (self.total_seconds or 100.0)
        self.task = self.progress.add_task("", total=total)
        self.start = time.perf_counter()

    def on_step_end(self, trainer: ProxyTrainer, losses: dict[str, float]) -> None:
        self.loss = losses.get("total", float("nan"))
        done = trainer.step if self.total_steps else time.perf_counter() - self.start
        desc = f"epoch {trainer.epoch + 1} step {trainer.step} loss {self.loss:.4f} AP {self.last_ap:.3f}"
        self.progress.update(self.task, completed=done, description=desc)

    def on_epoch_end(self, trainer: ProxyTrainer, metrics: dict[str, float]) -> None:
        self.last_ap = metrics.get("ap", float("nan"))

    def on_fit_end(self, trainer: ProxyTrainer, result: FitResult) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[0].total)
        self.progress.stop()
