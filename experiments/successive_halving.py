"""Asynchronous successive halving by Pareto rank (MO-ASHA): the decisions, without Ray.

A trial reports its objectives at each rung budget (AP measured there; GFLOPs and latency do not change with
training). The trial continues when, among every trial seen at that rung so far (itself included), it is in
the top ``max(1, n // eta)`` by this order:

1. feasible before infeasible, infeasible by total constraint violation (constraints count before rank);
2. non-dominated rank on the objectives (``mode="mo"``), or the score alone (``mode="score"``: the first objective
   measured in training, ``val_loss`` or ``ap``; single-metric ASHA);
3. within one rank, larger hypervolume contribution first (then arrival order).

Why hypervolume contribution and not crowding distance: the search is judged by the hypervolume of its front,
and a front member's contribution is exactly what the front loses without it. Crowding distance gives the two
extremes of every rank an infinite distance, so the cheapest candidate (often AP ~0 at an early rung) would be
promoted at every rung whatever it learns; its hypervolume contribution is ~0 when its AP is ~0. The reference
point is :func:`gpnas.results.pareto.reference_point` over the rung's feasible entries (AP 0; cost × 1.1).

The stopping variant of ASHA (Li et al. 2020; as Ray's ASHAScheduler): decisions are taken when a trial arrives
at a rung, never revised; early arrivals meet fewer rivals. Decisions are keyed by arch_id, so a candidate run
again (re-queued after an interruption) gets the decision already taken for it instead of a second one.
:meth:`SuccessiveHalving.restore` rebuilds the table from the study on resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gpnas.objectives.definitions import Direction, directions, score_objective
from gpnas.results.pareto import hypervolume_contributions, non_dominated_sort, reference_point

__all__ = ["RungEntry", "SuccessiveHalving"]

Decision = Literal["promote", "stop"]


@dataclass
class RungEntry:
    """One trial at one rung: the values it was ranked by, its constraint violation and the decision."""

    key: str
    values: tuple[float, ...]
    violation: float
    decision: Decision
    order: int
    position: int = 0  # its place (0 = best) among the ``seen`` entries when it was decided
    seen: int = 1

    def to_dict(self) -> dict[str, object]:
        return {"values": list(self.values), "violation": self.violation, "decision": self.decision,
                "position": self.position, "seen": self.seen}


class SuccessiveHalving:
    """Rung tables and decisions. ``objectives`` name the values a trial reports (one measured in training,
    ``val_loss`` or ``ap``, among them)."""

    def __init__(self, budgets: Sequence[float], eta: int, objectives: Sequence[str],
                 mode: Literal["mo", "score"] = "mo") -> None:
        if list(budgets) != sorted(set(budgets)) or not budgets:
            raise ValueError(f"rung budgets {list(budgets)} must be increasing")
        score = score_objective(objectives)
        if score is None:
            raise ValueError(f"successive halving ranks by a figure measured in training at each rung (ap, "
                             f"val_loss), but the objectives are {list(objectives)}")
        self.score = score
        self.budgets = tuple(budgets)
        self.eta = eta
        self.objectives = tuple(objectives)
        self.mode = mode
        self.rungs: list[dict[str, RungEntry]] = [{} for _ in budgets]
        self._arrivals = 0

    def rung_of(self, budget: float) -> int | None:
        """The rung whose budget is exactly ``budget`` (reports between rungs are not decision points)."""
        return self.budgets.index(budget) if budget in self.budgets else None

    def keep(self, n: int) -> int:
        """How many of ``n`` trials seen at a rung continue."""
        return max(1, n // self.eta)

    def decided(self, key: str, rung: int) -> RungEntry | None:
        return self.rungs[rung].get(key)

    def decide(self, key: str, rung: int, values: Sequence[float], violation: float = 0.0) -> RungEntry:
        """The decision for ``key`` arriving at ``rung`` with ``values`` (one per objective); taken once."""
        table = self.rungs[rung]
        if key in table:  # already decided (a re-run of the same candidate): the decision stands
            return table[key]
        entry = RungEntry(key, tuple(float(v) for v in values), float(violation), "stop", self._next())
        table[key] = entry
        order = self.order(rung)
        entry.position, entry.seen = order.index(key), len(order)
        entry.decision = "promote" if entry.position < self.keep(len(order)) else "stop"
        return entry

    def restore(self, key: str, rung: int, values: Sequence[float], violation: float, decision: Decision,
                position: int = 0, seen: int = 1) -> None:
        """Put back a decision taken before (from the study, on resume)."""
        self.rungs[rung].setdefault(key, RungEntry(key, tuple(float(v) for v in values), float(violation),
                                                   decision, self._next(), position, seen))

    def _next(self) -> int:
        self._arrivals += 1
        return self._arrivals

    # ------------------------------------------------------------------------------------------- ranking
    def _ranked(self) -> tuple[list[str], list[Direction]]:
        names = [self.score] if self.mode == "score" else list(self.objectives)
        return names, directions(names)

    def order(self, rung: int) -> list[str]:
        """The keys at ``rung``, best first (see the module docstring)."""
        entries = list(self.rungs[rung].values())
        names, dirs = self._ranked()
        cols = [self.objectives.index(n) for n in names]
        values = np.array([[e.values[c] for c in cols] for e in entries], dtype=float).reshape(len(entries), -1)
        feasible = np.array([e.violation <= 0 for e in entries])
        ranks = np.zeros(len(entries), dtype=int)
        contrib = np.zeros(len(entries))
        idx = np.flatnonzero(feasible & ~np.isnan(values).any(axis=1))
        if idx.size:
            ranks[idx] = non_dominated_sort(values[idx], dirs)
            ref = reference_point(values[idx], dirs, names)
            for r in np.unique(ranks[idx]):
                members = idx[ranks[idx] == r]
                contrib[members] = hypervolume_contributions(values[members], dirs, ref)
        finite = np.zeros(len(entries), dtype=bool)
        finite[idx] = True

        def sort_key(i: int) -> tuple[float, ...]:
            e = entries[i]
            if not finite[i]:  # infeasible (by violation) or a missing value: after every feasible trial
                return (1.0, e.violation if e.violation > 0 else np.inf, 0.0, 0.0, e.order)
            return (0.0, 0.0, float(ranks[i]), -float(contrib[i]), e.order)

        return [entries[i].key for i in sorted(range(len(entries)), key=sort_key)]
