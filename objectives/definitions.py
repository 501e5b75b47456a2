"""What a search can optimise and bound: one :class:`Objective` per objective, one :class:`Constraint` per limit.

This registry is the one list of a search's figures. Config validation (the ``objectives`` and the generated
``constraints`` keys), the study's directions, the Pareto view, ``gpnas pareto`` / ``export``, MLflow metrics and
columns and the reports all iterate it, so adding an objective is one :func:`register_objective` call plus the
stage that measures it (named by ``measured_by``, registered in :mod:`gpnas.experiments.stage_registry`).
No torch import: the driver reads this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gpnas.errors import ConfigError

__all__ = [
    "CONSTRAINTS",
    "OBJECTIVES",
    "Constraint",
    "Direction",
    "Objective",
    "constraint_values",
    "directions",
    "format_value",
    "get_objective",
    "metric_names",
    "register_constraint",
    "register_objective",
    "score_objective",
    "unregister_objective",
]

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Objective:
    """One objective: ``name`` is its metric key in a trial's result and in MLflow.

    ``measured_by`` is the key of the stage that writes it (:mod:`gpnas.experiments.stage_registry`: ``cheap``,
    the built model's params and FLOPs; ``latency``, the timed fused model; ``training``, after proxy training).
    Whether it is cheap — known before training, so usable as a constraint — is its stage's ``before_training``.
    ``constraint`` is the search-config key under ``constraints`` that bounds it (``max_<name>`` for an upper
    bound, ``min_<name>`` for a lower one), if any. ``natural_bound`` is the worst value the metric can take when
    that is known (AP: 0.0); the hypervolume reference uses it, and an infeasible candidate (never trained) is told
    to the sampler with it. ``fmt`` formats its value in tables (``gpnas pareto``).
    """

    name: str
    direction: Direction
    unit: str
    label: str
    measured_by: str
    constraint: str | None = None
    natural_bound: float | None = None
    description: str = ""
    fmt: str = ".4f"

    @property
    def mode(self) -> Literal["max", "min"]:
        """Ray Tune's spelling of the direction."""
        return "max" if self.direction == "maximize" else "min"


@dataclass(frozen=True)
class Constraint:
    """A limit on a metric known before training: ``max_<metric>`` (``value > limit`` violates it) or
    ``min_<metric>`` (``value < limit`` violates it). ``measured_by`` is the stage that writes the metric."""

    key: str  # the key under ``constraints`` in a search config
    metric: str  # the result metric it bounds
    unit: str
    measured_by: str = "cheap"

    @property
    def bound(self) -> Literal["max", "min"]:
        return "max" if self.key.startswith("max_") else "min"

    def violation(self, value: float, limit: float) -> float:
        """How far ``value`` is beyond ``limit``; > 0 is a violation (the sign Optuna's constraints use)."""
        return value - limit if self.bound == "max" else limit - value


OBJECTIVES: dict[str, Objective] = {}
CONSTRAINTS: dict[str, Constraint] = {}


def register_constraint(constraint: Constraint) -> Constraint:
    """Add (or replace) a limit; one on an objective is registered by :func:`register_objective`, this is for a
    bounded metric that is not an objective (``params_m``). Returns it."""
    if constraint.key not in (f"max_{constraint.metric}", f"min_{constraint.metric}"):
        raise ConfigError(f"constraint {constraint.key!r} on {constraint.metric!r} must be named "
                          f"'max_{constraint.metric}' (an upper bound) or 'min_{constraint.metric}' (a lower bound)")
    CONSTRAINTS[constraint.key] = constraint
    return constraint


def register_objective(objective: Objective) -> Objective:
    """Add (or replace) an objective definition, and the constraint key that bounds it; returns it."""
    if objective.direction not in ("maximize", "minimize"):
        raise ConfigError(f"objective {objective.name!r}: direction {objective.direction!r} must be 'maximize' "
                          "or 'minimize'")
    if objective.constraint is not None:
        register_constraint(Constraint(objective.constraint, objective.name, objective.unit or objective.label,
                                       objective.measured_by))
    replaced = OBJECTIVES.get(objective.name)
    if replaced is not None and replaced.constraint not in (None, objective.constraint):
        CONSTRAINTS.pop(replaced.constraint, None)  # type: ignore[arg-type]  # its old key bounds nothing now
    OBJECTIVES[objective.name] = objective
    return objective


def unregister_objective(name: str) -> None:
    """Remove an objective and its constraint key (a plugin or a test that registered them)."""
    objective = OBJECTIVES.pop(name, None)
    if objective is not None and objective.constraint is not None:
        CONSTRAINTS.pop(objective.constraint, None)


register_objective(Objective("ap", "maximize", "", "AP@[.5:.95]", "training", natural_bound=0.0,
                             description="COCO box AP@[.5:.95] on the val split after proxy training"))
register_objective(Objective("val_loss", "minimize", "", "val loss", "training",
                             description="detection loss of the trained (EMA) model on the whole val split, at "
                                         "YOLOv5's gains (box 0.05, obj 1.0, cls 0.5) whatever gains the run "
                                         "trained with; lower is better. The default score: the proxy study's "
                                         "best one-run score at the default budget "
                                         "(benchmarks/proxy_study.py)"))
register_objective(Objective("gflops", "minimize", "GFLOPs", "GFLOPs", "cheap", constraint="max_gflops",
                             description="fused model, 2 × multiply-adds, at the spec's input size (fvcore)"))
register_constraint(Constraint("max_params_m", "params_m", "M parameters", "cheap"))
register_objective(Objective("latency_ms", "minimize", "ms", "latency (ms)", "latency", constraint="max_latency_ms",
                             description="median latency of the fused model under the search's latency protocol",
                             fmt=".3f"))


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}") from None


def score_objective(names: Sequence[str]) -> str | None:
    """The first of ``names`` measured by training (``val_loss``, ``ap``): what successive halving ranks by at a
    rung when it ranks by one figure, and the y axis of the front's plot. None when none is trained."""
    return next((n for n in names if get_objective(n).measured_by == "training"), None)


def directions(names: Sequence[str]) -> list[Direction]:
    """Optuna's directions for objectives given by name."""
    return [get_objective(n).direction for n in names]


def metric_names() -> list[str]:
    """Every registered figure, in registration order: the objectives, then the bounded metrics that are not
    objectives (``params_m``). What tables, manifests and MLflow columns show."""
    bounded = [c.metric for c in CONSTRAINTS.values()]
    return list(dict.fromkeys([*OBJECTIVES, *bounded]))


def format_value(name: str, value: float | None) -> str:
    """A figure as tables print it: the objective's ``fmt`` (4 decimals otherwise); ``-`` when not measured."""
    if value is None:
        return "-"
    fmt = OBJECTIVES[name].fmt if name in OBJECTIVES else ".4f"
    return format(float(value), fmt)


def constraint_values(limits: Mapping[str, float | None], metrics: Mapping[str, float]) -> dict[str, float]:
    """Constraint key -> violation (> 0: violated; see :meth:`Constraint.violation`). Only set limits whose
    metric was measured appear."""
    out = {}
    for key, limit in limits.items():
        constraint = CONSTRAINTS[key]
        if limit is not None and constraint.metric in metrics:
            out[key] = constraint.violation(float(metrics[constraint.metric]), float(limit))
    return out
