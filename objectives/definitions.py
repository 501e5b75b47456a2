"""What a search can optimise and bound: one :class:`Objective` per objective, one :class:`Constraint` per limit.

Config validation, evaluation, the Pareto view, the runner, MLflow tracking and the reports all read these
definitions, so adding an objective is one :func:`register_objective` call plus the measurement that writes its
metric into a trial's result (the stage named by ``measured_by``). No torch import: the driver reads this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gpnas.search_space.errors import ConfigError

__all__ = [
    "CONSTRAINTS",
    "OBJECTIVES",
    "Constraint",
    "Direction",
    "Objective",
    "constraint_values",
    "directions",
    "get_objective",
    "register_objective",
]

Direction = Literal["maximize", "minimize"]
Stage = Literal["cheap", "training", "latency"]


@dataclass(frozen=True)
class Objective:
    """One objective: ``name`` is its metric key in a trial's result and in MLflow.

    ``measured_by`` says which stage of an evaluation writes it: ``cheap`` (built model only: params, FLOPs,
    before any training), ``latency`` (the timed fused model), ``training`` (after proxy training).
    ``natural_bound`` is the worst value the metric can take when that is known (AP: 0.0); the hypervolume
    reference uses it, and an infeasible candidate (never trained) is told to the sampler with it.
    ``constraint`` names the search-config key under ``constraints`` that bounds it, if any.
    """

    name: str
    direction: Direction
    unit: str
    label: str
    measured_by: Stage
    constraint: str | None = None
    natural_bound: float | None = None
    description: str = ""

    @property
    def mode(self) -> Literal["max", "min"]:
        """Ray Tune's spelling of the direction."""
        return "max" if self.direction == "maximize" else "min"


@dataclass(frozen=True)
class Constraint:
    """A limit checked on a cheap or latency metric before training: ``value - limit > 0`` is a violation."""

    key: str  # the key under ``constraints`` in a search config
    metric: str  # the result metric it bounds
    unit: str


OBJECTIVES: dict[str, Objective] = {}
CONSTRAINTS: dict[str, Constraint] = {
    c.key: c for c in (
        Constraint("max_gflops", "gflops", "GFLOPs"),
        Constraint("max_params_m", "params_m", "M parameters"),
        Constraint("max_latency_ms", "latency_ms", "ms"),
    )
}


def register_objective(objective: Objective) -> Objective:
    """Add (or replace) an objective definition; returns it."""
    if objective.direction not in ("maximize", "minimize"):
        raise ConfigError(f"objective {objective.name!r}: direction {objective.direction!r} must be 'maximize' "
                          "or 'minimize'")
    if objective.constraint is not None and objective.constraint not in CONSTRAINTS:
        raise ConfigError(f"objective {objective.name!r}: constraint {objective.constraint!r} is not one of "
                          f"{sorted(CONSTRAINTS)}")
    OBJECTIVES[objective.name] = objective
    return objective


register_objective(Objective("ap", "maximize", "", "AP@[.5:.95]", "training", natural_bound=0.0,
                             description="COCO box AP@[.5:.95] on the val split after proxy training"))
register_objective(Objective("gflops", "minimize", "GFLOPs", "GFLOPs", "cheap", constraint="max_gflops",
                             description="fused model, 2 × multiply-adds, at the spec's input size (fvcore)"))
register_objective(Objective("latency_ms", "minimize", "ms", "latency (ms)", "latency", constraint="max_latency_ms",
                             description="median latency of the fused model under the search's latency protocol"))


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}") from None


def directions(names: Sequence[str]) -> list[Direction]:
    """Optuna's directions for objectives given by name."""
    return [get_objective(n).direction for n in names]


def constraint_values(limits: dict[str, float | None], metrics: dict[str, float]) -> dict[str, float]:
    """Constraint key -> (value − limit); > 0 is a violation. Only set limits whose metric was measured appear."""
    out = {}
    for key, limit in limits.items():
        metric = CONSTRAINTS[key].metric
        if limit is not None and metric in metrics:
            out[key] = float(metrics[metric]) - float(limit)
    return out
