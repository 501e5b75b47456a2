"""The shared vocabulary of a search's results: how a trial ended (:class:`TrialResult`), its row in the study
(:class:`TrialRecord`), the states, and :class:`SearchInfo` — what the results floor needs to know about a search
without depending on the search-config type of ``gpnas.experiments``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gpnas.objectives.definitions import Direction, directions
from gpnas.results.folder import SearchFolder

__all__ = ["COUNTED_STATES", "STATES", "SearchInfo", "State", "TrialRecord", "TrialResult"]

State = Literal["complete", "pruned", "infeasible", "failed", "timeout"]
#: How an evaluation can end. The study adds ``interrupted`` (the driver died; re-queued on resume) and
#: ``running`` / ``waiting`` for trials that have not ended.
STATES: tuple[State, ...] = ("complete", "pruned", "infeasible", "failed", "timeout")
#: Endings that use up budget (an interrupted trial is run again, so it does not).
COUNTED_STATES: tuple[str, ...] = STATES


@dataclass
class TrialResult:
    """Everything recorded about one candidate (the study, MLflow and exports read this)."""

    arch_id: str
    state: State
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    gp_layers: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, Any] | None = None
    evaluate_seconds: float = 0.0
    weights_path: str | None = None
    reused_from: int | None = None
    #: successive halving: one dict per rung reached (rung, budget, ap, values, violation, decision, position, seen)
    rungs: list[dict[str, Any]] = field(default_factory=list)
    #: refinement: {"ap_mean", "ap_sd", "ap": [...], "seeds": [...], "budget": {...}} once the trial was retrained
    refined: dict[str, Any] | None = None
    #: the Ray node that evaluated the trial (its IP address), when it ran under Ray
    node: str | None = None
    #: the artifact files the evaluating node logged to the trial's MLflow run itself (weights/<arch_id>.pt,
    #: gradient_path_layers.csv, latency.json); the driver logs the others it can from its own copy
    artifacts: list[str] = field(default_factory=list)

    def objective_values(self, objectives: tuple[str, ...] | list[str]) -> list[float]:
        return [float(self.metrics.get(o, math.nan)) for o in objectives]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TrialRecord:
    """One row of the study as gpnas sees it."""

    number: int
    state: str
    reason: str | None
    arch_id: str | None
    values: tuple[float, ...] | None
    result: TrialResult | None
    mlflow_run_id: str | None
    params: dict[str, Any]
    #: successive-halving decisions taken for this trial (kept for a trial that was interrupted, too)
    rungs: tuple[dict[str, Any], ...] = ()

    def metric(self, name: str) -> float:
        if self.result is None:
            return math.nan
        return float(self.result.metrics.get(name, math.nan))


@dataclass(frozen=True)
class SearchInfo:
    """A search as the results floor sees it: its name and folder, what it optimises and bounds, and its
    resolved settings as plain data (for MLflow params and export manifests)."""

    name: str
    folder: SearchFolder
    objectives: tuple[str, ...]
    constraints: Mapping[str, float | None] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    tracking_uri: str | None = None
    #: arch_id -> name of each point the search enqueued (a preset or spec file): labelled in the figures
    named: Mapping[str, str] = field(default_factory=dict)

    def directions(self) -> list[Direction]:
        return directions(self.objectives)
