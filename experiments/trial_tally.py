"""What a search holds so far, in the driver: one result per architecture (a repeated one is reused, not trained
again), every ending in order, and the figures of the progress line (the best score, size of the front)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpnas.objectives.definitions import OBJECTIVES, Direction, score_objective
from gpnas.results.records import TrialRecord, TrialResult

__all__ = ["TrialTally"]

#: the states whose result stands for their architecture (reused by a later trial of it)
_REUSABLE = ("complete", "infeasible")


class TrialTally:
    """The endings of a search ranked on ``objectives`` (in ``directions``): those the study held at the start
    (:meth:`load`), then this run's (:meth:`add`)."""

    def __init__(self, objectives: Sequence[str], directions: Sequence[Direction]) -> None:
        self.objectives = tuple(objectives)
        self.directions = list(directions)
        self.by_arch: dict[str, TrialResult] = {}
        self.ended: list[TrialResult] = []
        self.loaded = 0
        #: what the progress line calls best: the search's score (the first objective measured in training:
        #: val_loss, ap), AP when it has none
        self.score = score_objective(self.objectives) or "ap"

    def load(self, recs: list[TrialRecord]) -> None:
        """The results the study already holds, to reuse."""
        for r in recs:
            if r.result is not None and r.state in _REUSABLE:
                self.by_arch.setdefault(r.result.arch_id, r.result)
                self.ended.append(r.result)
        self.loaded = len(self.ended)

    def add(self, tr: TrialResult) -> None:
        """A trial of this run ended."""
        if tr.state in _REUSABLE:
            self.by_arch.setdefault(tr.arch_id, tr)
        self.ended.append(tr)

    @property
    def best_score(self) -> float:
        """The best :attr:`score` of the complete trials so far (the study's, on resume, included); nan before."""
        values = [tr.metrics[self.score] for tr in self.ended
                  if tr.state == "complete" and math.isfinite(tr.metrics.get(self.score, math.nan))]
        if not values:
            return math.nan
        return max(values) if OBJECTIVES[self.score].direction == "maximize" else min(values)

    def cached(self, arch_id: str) -> TrialResult | None:
        return self.by_arch.get(arch_id)

    def complete_metrics(self) -> list[dict[str, float]]:
        """The metrics of every complete candidate with an AP so far (this run's and, on resume, the study's),
        in the order they ended: what the pre-screen's surrogate is fitted on."""
        return [dict(tr.metrics) for tr in self.by_arch.values() if tr.state == "complete" and "ap" in tr.metrics]

    def front_size(self) -> int:
        """How many complete trials are on the Pareto front of the objectives."""
        import numpy as np

        from gpnas.results.pareto import pareto_mask

        done = [r for r in self.ended if r.state == "complete"]
        if not done:
            return 0
        values = np.array([r.objective_values(self.objectives) for r in done], dtype=float)
        return int(pareto_mask(values, self.directions).sum())
