"""evaluate_candidate(spec, cfg, reporter) -> TrialResult: the one function every backend calls.

build -> size and gradient-path structure -> latency -> constraints (an infeasible candidate is not trained) ->
features of the fresh model (gradient statistics at init, zero-cost proxies) ->
proxy training with per-epoch AP reports -> final AP -> measured gradient statistics, each through the shared
stages of :mod:`gpnas.experiments.stages`. The declared trial failures (invalid spec, infeasible, diverged, out of
memory, data error, timeout) are recorded states with their reason; anything else is a bug in gpnas and is raised.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

from gpnas.experiments import stages
from gpnas.experiments.config import SearchConfig
from gpnas.objectives.definitions import constraint_values
from gpnas.results.records import TrialResult
from gpnas.search_space.errors import GpnasError, InfeasibleCandidate, TrialTimeout
from gpnas.search_space.spec import ArchSpec

__all__ = ["Reporter", "evaluate_candidate", "failure_result"]


class Reporter(Protocol):
    """Receives intermediate metrics (one dict per evaluated epoch). Tune's reporter may end the trial."""

    def __call__(self, metrics: dict[str, float]) -> None: ...


def _no_report(metrics: dict[str, float]) -> None:
    return None


def _before_training(spec: ArchSpec, model: Any, cfg: SearchConfig, result: TrialResult) -> None:
    """Size, gradient-path structure and latency: everything measured on the untrained model."""
    result.metrics.update(stages.measure_size(spec, model))
    if cfg.gradient_path.structural:
        aggregates, result.gp_layers, _ = stages.gradient_structure(model)
        result.metrics.update(aggregates)
    if cfg.latency.enabled:
        result.latency = stages.latency(model, cfg.latency.protocol(img_size=spec.img_size), cfg.latency.mode)
        result.metrics.update(stages.latency_metrics(result.latency))


def _train(spec: ArchSpec, model: Any, cfg: SearchConfig, reporter: Reporter, result: TrialResult,
           weights_dir: Path | None) -> None:
    import torch

    from gpnas.trainers.callbacks import Callback

    class _Report(Callback):
        def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
            reporter({**{k: v for k, v in result.metrics.items() if not k.startswith(("gp_", "zc_"))}, **metrics})

    data = stages.load_data(cfg.data, spec.img_size)
    config = dataclasses.replace(cfg.train, threads=cfg.train.threads or max(1, int(cfg.budget.cpu)))
    if cfg.early_stopping.enabled:
        unit, rungs = cfg.rungs()
        if unit == "steps":  # every rung is an evaluation point (epoch rungs are epoch ends already)
            config = dataclasses.replace(config, eval_steps=tuple(sorted({*config.eval_steps, *rungs})))
    fit = stages.train(model, data, config, [_Report()])
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
        raise TrialTimeout(f"hit the wall-clock cap train.max_seconds={config.max_seconds:g} after {fit.steps} steps "
                           f"(budget: {config.budget_label()}); the AP recorded ({fit.ap:.4f}) is partial. Raise "
                           "train.max_seconds or lower the budget")
    if cfg.gradient_path.measured and fit.model is not None:
        from gpnas.objectives.gp_features import merge_measured
        from gpnas.objectives.gradient_path import gradient_aggregates

        measured = stages.gradient_statistics(fit.model, data)
        result.metrics.update(gradient_aggregates(measured))
        if result.gp_layers:
            result.gp_layers = merge_measured(result.gp_layers, measured, when="trained")


def _declared_failure(err: BaseException) -> tuple[str, str] | None:
    """(state, reason) when ``err`` is a declared way for a trial to fail; None for a bug."""
    import torch

    if isinstance(err, InfeasibleCandidate):
        return "infeasible", str(err)
    if isinstance(err, TrialTimeout):
        return "timeout", str(err)
    if isinstance(err, GpnasError):  # invalid spec, diverged, data error, out of memory, config error
        return "failed", f"{type(err).__name__}: {err}"
    if isinstance(err, torch.cuda.OutOfMemoryError) or (
            isinstance(err, RuntimeError) and "can't allocate memory" in str(err)):  # CPU allocator
        return "failed", f"OutOfMemory: {str(err).splitlines()[0]}"
    return None


def evaluate_candidate(
    spec: ArchSpec | dict[str, Any],
    cfg: SearchConfig,
    reporter: Reporter = _no_report,
    *,
    weights_dir: Path | None = None,
) -> TrialResult:
    """Score one candidate; the returned result's ``state`` says how it ended and ``reason`` why."""
    start = time.perf_counter()
    result = TrialResult(arch_id=spec.arch_id if isinstance(spec, ArchSpec) else "invalid", state="failed")
    try:
        if not isinstance(spec, ArchSpec):
            spec = ArchSpec.from_dict(spec, source="candidate")
        result.arch_id, result.spec = spec.arch_id, spec.to_dict()
        model = stages.build(spec, seed=cfg.train.seed)
        _before_training(spec, model, cfg, result)
        violated = {k: v for k, v in constraint_values(cfg.constraints.model_dump(), result.metrics).items() if v > 0}
        if violated:
            raise InfeasibleCandidate(", ".join(f"{k} exceeded by {v:.4g}" for k, v in violated.items()))
        result.metrics.update(stages.init_features(model, spec, cfg, result.gp_layers))  # only when trained
        _train(spec, model, cfg, reporter, result, weights_dir)
        result.state = "complete"
    except Exception as err:
        declared = _declared_failure(err)
        if declared is None:
            raise
        result.state, result.reason = declared  # type: ignore[assignment]
    result.evaluate_seconds = time.perf_counter() - start
    return result


def failure_result(spec: dict[str, Any] | None, exc: BaseException, seconds: float,
                   arch_id: str = "unknown") -> TrialResult:
    """An unexpected exception inside a trial, recorded with its type, message and last frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return TrialResult(arch_id=arch_id, state="failed",
                       reason=f"{type(exc).__name__}: {exc}{where}", spec=spec or {}, evaluate_seconds=seconds)
