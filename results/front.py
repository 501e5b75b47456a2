"""The Pareto view of a search's records: front, ranks, reference point and hypervolume history.

Only complete, feasible trials compete (infeasible ones were never trained; pruned and failed have no final
values); after a refinement (`gpnas refine`), only the refined ones, on their mean AP over the refinement
seeds. The hypervolume reference is ``gpnas.results.pareto.reference_point`` (AP 0; the constraint bound, or
1.1 × the worst observed value, for minimised objectives) and is logged with the figures it produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gpnas.objectives.definitions import directions as directions_of
from gpnas.results.pareto import hypervolume, hypervolume_history, knee_point, non_dominated_sort, reference_point
from gpnas.results.records import TrialRecord

__all__ = ["FrontSummary", "competing", "front_summary"]


@dataclass
class FrontSummary:
    front: list[int] = field(default_factory=list)  # trial numbers on the front
    ranks: dict[int, int] = field(default_factory=dict)  # trial number -> non-dominated rank
    reference: list[float] = field(default_factory=list)
    hypervolume: float = 0.0
    hypervolume_history: list[float] = field(default_factory=list)
    knee: int | None = None  # trial number


def competing(recs: list[TrialRecord], objectives: Sequence[str]) -> list[TrialRecord]:
    """The trials that compete for the front: complete and feasible; once some were refined (retrained at a
    larger budget with several seeds), only those, on their refined AP (the others were never retrained, so
    their proxy AP is not comparable)."""
    done = [r for r in recs if r.state == "complete" and r.result is not None
            and all(np.isfinite(r.metric(o)) for o in objectives)]
    refined = [r for r in done if r.result is not None and r.result.refined]
    return refined or done


def front_summary(recs: list[TrialRecord], objectives: Sequence[str],
                  constraints: Mapping[str, float | None] | None = None) -> FrontSummary:
    """The front of the complete, feasible trials on ``objectives``; ``constraints`` (key -> limit) place the
    hypervolume reference of a bounded objective at its bound."""
    objectives, directions = list(objectives), directions_of(objectives)
    done = sorted(competing(recs, objectives), key=lambda r: r.number)
    if not done:
        return FrontSummary()
    values = np.array([[r.metric(o) for o in objectives] for r in done], dtype=float)
    ranks = non_dominated_sort(values, directions)
    ref = reference_point(values, directions, objectives, constraints)
    return FrontSummary(
        front=[r.number for r, k in zip(done, ranks, strict=True) if k == 0],
        ranks={r.number: int(k) for r, k in zip(done, ranks, strict=True)},
        reference=[float(x) for x in ref],
        hypervolume=float(hypervolume(values, directions, ref)),
        hypervolume_history=[float(h) for h in hypervolume_history(values, directions, ref)],
        knee=done[knee_point(values, directions)].number,
    )
