"""The stages that measure a candidate's objectives, by the key an objective's ``measured_by`` names.

A :class:`Stage` is a function of a :class:`StageContext` (the spec, its seeded model, the search config, the
result so far) that returns the metrics it measured, with its cost (stages run cheapest first) and whether it
runs before training (its metrics then exist for an infeasible candidate and may be bounded by constraints).
:func:`gpnas.experiments.evaluate.evaluate_candidate` runs :func:`stages_for` the config instead of a fixed list,
so a new objective needs its definition (:func:`gpnas.objectives.definitions.register_objective`) and its stage
(:func:`register_stage`) — nothing else. The measurements themselves are in :mod:`gpnas.experiments.stages`;
torch is imported lazily.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpnas.errors import ConfigError, TrialTimeout
from gpnas.experiments import stages
from gpnas.objectives.definitions import CONSTRAINTS, OBJECTIVES
from gpnas.results.folder import weights_name
from gpnas.results.records import TrialResult
from gpnas.search_space.spec import ArchSpec

if TYPE_CHECKING:
    from gpnas.experiments.config import SearchConfig

__all__ = ["STAGES", "Stage", "StageContext", "check_config", "get_stage", "known_before_training", "register_stage",
           "stages_for", "unregister_stage"]


def _no_report(metrics: dict[str, float]) -> None:
    return None


@dataclass
class StageContext:
    """What a stage reads: ``model`` is the seeded, untrained detector of ``spec`` (stages before training must
    not change it); ``result`` holds the metrics of the stages that ran before (a stage may also fill its other
    fields: the per-layer table, the latency record, the history)."""

    spec: ArchSpec
    model: Any
    cfg: SearchConfig
    result: TrialResult
    reporter: Callable[[dict[str, float]], None] = _no_report
    weights_dir: Path | None = None


@dataclass(frozen=True)
class Stage:
    """One measurement step. ``enabled``: the config switch that turns it on (``switch`` names that key in
    messages); None: it runs when one of the search's objectives or set constraints is measured by it.
    ``screen``: what the pre-screen runs instead of ``run`` on proposals it may not train (None: ``run``)."""

    name: str
    cost: float
    before_training: bool
    run: Callable[[StageContext], dict[str, float]]
    enabled: Callable[[SearchConfig], bool] | None = None
    switch: str | None = None
    screen: Callable[[StageContext], dict[str, float]] | None = None


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add (or replace) a stage; returns it."""
    STAGES[stage.name] = stage
    return stage


def unregister_stage(name: str) -> None:
    STAGES.pop(name, None)


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; the registered stages are {sorted(STAGES)}") from None


def _needed(cfg: SearchConfig, name: str) -> bool:
    """Whether an objective of ``cfg`` or one of its set constraints is measured by the stage ``name``."""
    limits = cfg.constraints.model_dump()
    return (any(OBJECTIVES[o].measured_by == name for o in cfg.objectives)
            or any(CONSTRAINTS[k].measured_by == name for k, v in limits.items() if v is not None))


def stages_for(cfg: SearchConfig) -> list[Stage]:
    """The stages a trial of ``cfg`` runs, cheapest first."""
    chosen = [s for s in STAGES.values() if (s.enabled(cfg) if s.enabled is not None else _needed(cfg, s.name))]
    return sorted(chosen, key=lambda s: s.cost)


def known_before_training(names: tuple[str, ...] | list[str]) -> list[str]:
    """The objectives of ``names`` measured before training (a pre-screen can rank by them)."""
    return [n for n in names if n in OBJECTIVES and get_stage(OBJECTIVES[n].measured_by).before_training]


def check_config(cfg: SearchConfig) -> None:
    """ValueError (a config error) when an objective's stage is unknown or switched off, or a set constraint
    bounds a metric that is only known after training."""
    for name in cfg.objectives:
        if OBJECTIVES[name].measured_by not in STAGES:
            raise ValueError(f"objective {name!r} is measured by the stage {OBJECTIVES[name].measured_by!r}, "
                             f"which is not registered (stages: {', '.join(sorted(STAGES))})")
    for stage in STAGES.values():
        off = stage.enabled is not None and not stage.enabled(cfg)
        names = [o for o in cfg.objectives if OBJECTIVES[o].measured_by == stage.name]
        if off and names:
            raise ValueError(f"objectives include {', '.join(names)} but {stage.switch or stage.name} is false")
    for key, limit in cfg.constraints.model_dump().items():
        stage = STAGES.get(CONSTRAINTS[key].measured_by)
        if limit is not None and stage is not None and not stage.before_training:
            raise ValueError(f"constraints.{key} bounds {CONSTRAINTS[key].metric}, which is measured after "
                             f"training (stage {stage.name!r}); a constraint bounds a figure known before training")


# ------------------------------------------------------------------------------------------ built-in stages
def _size(ctx: StageContext) -> dict[str, float]:
    """params, params_m, GFLOPs; with ``gradient_path.structural`` the gp_* aggregates and the per-layer table."""
    metrics = stages.measure_size(ctx.spec, ctx.model)
    if ctx.cfg.gradient_path.structural:
        aggregates, ctx.result.gp_layers, _ = stages.gradient_structure(ctx.model)
        metrics.update(aggregates)
    return metrics


def _latency(ctx: StageContext) -> dict[str, float]:
    latency = ctx.cfg.latency
    ctx.result.latency = stages.latency(ctx.model, latency.protocol(img_size=ctx.spec.img_size), latency.mode)
    return stages.latency_metrics(ctx.result.latency)


def _screen_latency(ctx: StageContext) -> dict[str, float]:
    """The pre-screen predicts latency from the per-layer table when it ranks by it; it never times proposals."""
    latency = ctx.cfg.latency
    if latency.mode == "measured" or not any(OBJECTIVES[o].measured_by == "latency" for o in ctx.cfg.objectives):
        return {}
    return stages.latency_metrics(stages.latency(ctx.model, latency.protocol(img_size=ctx.spec.img_size),
                                                 "predicted"))


def _training(ctx: StageContext) -> dict[str, float]:
    """Proxy training with per-evaluation reports, then the measured gradient statistics. Writes its metrics
    into the result as it goes: a trial that hits the wall-clock cap keeps its partial AP."""
    from gpnas.trainers.callbacks import Callback

    cfg, result = ctx.cfg, ctx.result

    class _Report(Callback):
        def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
            ctx.reporter({**{k: v for k, v in result.metrics.items() if not k.startswith(("gp_", "zc_"))},
                          **metrics})

    data = stages.load_data(cfg.data, ctx.spec.img_size)
    config = dataclasses.replace(cfg.train, threads=cfg.train.threads or max(1, int(cfg.budget.cpu)))
    if cfg.early_stopping.enabled:
        unit, rungs = cfg.rungs()
        if unit == "steps":  # every rung is an evaluation point (epoch rungs are epoch ends already)
            config = dataclasses.replace(config, eval_steps=tuple(sorted({*config.eval_steps, *rungs})))
    fit = stages.train(ctx.model, data, config, [_Report()])
    result.history = fit.history
    result.metrics.update({k: v for k, v in fit.metrics.items() if k not in ("epoch", "step")})
    result.metrics.update(train_seconds=fit.train_seconds, images_per_second=fit.images_per_second,
                          epochs=float(fit.epochs), steps=float(fit.steps))
    _save_weights(ctx, fit.model)
    if fit.timed_out:
        raise TrialTimeout(f"hit the wall-clock cap train.max_seconds={config.max_seconds:g} after {fit.steps} steps "
                           f"(budget: {config.budget_label()}); the AP recorded ({fit.ap:.4f}) is partial. Raise "
                           "train.max_seconds or lower the budget")
    if config.repeats > 1:
        _repeat(ctx, data, config, fit.metrics)
    if not (cfg.gradient_path.measured and fit.model is not None):
        return {}
    from gpnas.objectives.gp_features import merge_measured
    from gpnas.objectives.gradient_path import gradient_aggregates

    measured = stages.gradient_statistics(fit.model, data)
    if result.gp_layers:
        result.gp_layers = merge_measured(result.gp_layers, measured, when="trained")
    return gradient_aggregates(measured)


#: the figures of a repeated trial that are the mean over its runs (each run's value kept as ``<name>_run<i>``)
_MEAN_OVER_RUNS = ("ap", "ap50", "ap75", "val_loss")


def _repeat(ctx: StageContext, data: Any, config: Any, first: dict[str, float]) -> None:
    """``train.repeats`` > 1: train the candidate again with seeds ``seed+1, ...`` (the first run's model, history,
    weights and gradient statistics stay the trial's) and score it on the mean over all runs."""
    import statistics

    runs = [first]
    for i in range(1, config.repeats):
        seed = config.seed + i
        fit = stages.train(stages.build(ctx.spec, seed=seed), data, dataclasses.replace(config, seed=seed), [])
        if fit.timed_out:
            raise TrialTimeout(f"run {i + 1} of train.repeats={config.repeats} (seed {seed}) hit the wall-clock cap "
                               f"train.max_seconds={config.max_seconds:g} after {fit.steps} steps; raise "
                               "train.max_seconds or lower the budget")
        runs.append(fit.metrics)
        ctx.result.metrics["train_seconds"] += fit.train_seconds
    metrics = ctx.result.metrics
    for name in _MEAN_OVER_RUNS:
        values = [r[name] for r in runs if name in r]
        if len(values) == len(runs):
            metrics.update({f"{name}_run{i}": v for i, v in enumerate(values)})
            metrics[name] = statistics.fmean(values)
    metrics["repeats"] = float(len(runs))


def _save_weights(ctx: StageContext, model: Any) -> None:
    if ctx.weights_dir is None or model is None:
        return
    import torch

    ctx.weights_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.weights_dir / weights_name(ctx.spec.arch_id)
    torch.save(model.state_dict(), path)
    ctx.result.weights_path = str(path)


register_stage(Stage("cheap", 10, True, _size, enabled=lambda cfg: True))
register_stage(Stage("latency", 50, True, _latency, enabled=lambda cfg: cfg.latency.enabled,
                     switch="latency.enabled", screen=_screen_latency))
register_stage(Stage("training", 1000, False, _training, enabled=lambda cfg: True))
