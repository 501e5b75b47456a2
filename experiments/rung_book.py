"""Successive halving as the driver records it: each rung evaluation of a trial gets its decision (promote /
stop, from :mod:`gpnas.experiments.successive_halving`), written to the trial's study row at once so a killed
search keeps it; a trial stopped at a rung ends as ``pruned``, its reason saying where and why."""

from __future__ import annotations

import json
import math
from typing import Any

from gpnas.experiments.config import SearchConfig
from gpnas.experiments.successive_halving import SuccessiveHalving
from gpnas.objectives.definitions import constraint_values
from gpnas.results.records import TrialRecord, TrialResult

__all__ = ["RungBook"]


def _partial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The figures a trial reported before it was stopped (Tune's bookkeeping keys left out)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not k.startswith(("gpnas_", "time_", "timestamp", "training_iteration", "pid"))}


class RungBook:
    """The rung decisions of a search's trials (Tune trial id -> its decisions so far); ``halving`` is None
    when early stopping is off."""

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self.logs: dict[str, list[dict[str, Any]]] = {}
        self.halving: SuccessiveHalving | None = None
        self.unit = "step"
        if cfg.early_stopping.enabled:
            unit, budgets = cfg.rungs()
            self.unit = unit.removesuffix("s")  # the key of the reported metrics: step / epoch
            self.halving = SuccessiveHalving(budgets, cfg.early_stopping.reduction_factor, cfg.objectives,
                                             mode="score" if cfg.early_stopping.type == "asha" else "mo")

    def restore(self, recs: list[TrialRecord]) -> None:
        """The decisions the study holds (kept on resume), where the rungs are still the same."""
        if self.halving is None:
            return
        budgets = self.halving.budgets
        for r in recs:
            if not r.arch_id:
                continue
            for d in r.rungs:
                if d["rung"] < len(budgets) and d["budget"] == budgets[d["rung"]]:
                    self.halving.restore(r.arch_id, d["rung"], d["values"], d["violation"], d["decision"],
                                         d.get("position", 0), d.get("seen", 1))

    def reached(self, trial_id: str, ot_trial: Any | None, result: dict[str, Any]) -> str | None:
        """The decision ("promote" / "stop") when ``result`` is a rung evaluation of the open Optuna trial
        ``ot_trial``, else None; written to the trial's study row at once."""
        if self.halving is None or self.halving.score not in result or result.get("gpnas_result"):
            return None
        rung = self.halving.rung_of(result.get(self.unit, -1.0))
        if rung is None or ot_trial is None:
            return None
        arch_id = ot_trial.user_attrs.get("arch_id", trial_id)
        values = [float(result.get(o, float("nan"))) for o in self.cfg.objectives]
        violated = constraint_values(self.cfg.constraints.model_dump(), result)
        violation = sum(v for v in violated.values() if v > 0)
        entry = self.halving.decide(arch_id, rung, values, violation)
        log = self.logs.setdefault(trial_id, [])
        score = self.halving.score
        log.append({"rung": rung, "budget": self.halving.budgets[rung], "ap": float(result.get("ap", math.nan)),
                    score: float(result[score]), **entry.to_dict()})
        ot_trial.set_user_attr("rungs", json.dumps(log))
        return entry.decision

    def stopped_at(self, trial_id: str) -> dict[str, Any] | None:
        """The rung decision that stopped the trial, or None (it goes on, or was not stopped by a rung)."""
        log = self.logs.get(trial_id) or []
        return log[-1] if log and log[-1]["decision"] == "stop" else None

    def take(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's decisions, forgotten here (it ended: they go into its result)."""
        return self.logs.pop(trial_id, [])

    def pruned(self, arch_id: str, trial_id: str, result: dict[str, Any],
               history: list[dict[str, float]]) -> TrialResult:
        """The result of a trial stopped at its last rung: what it reported, and why it stopped."""
        assert self.halving is not None
        rung = self.stopped_at(trial_id) or {}
        unit, n, score = self.unit + "s", len(self.halving.budgets), self.halving.score
        return TrialResult(
            arch_id=arch_id, state="pruned", metrics=_partial_metrics(result), history=history,
            reason=f"stopped by {self.cfg.early_stopping.type} at rung {rung.get('rung', 0) + 1} of {n} "
                   f"({rung.get('budget', 0):g} {unit}): place {rung.get('position', 0) + 1} of "
                   f"{rung.get('seen', 1)} there, the top {self.halving.keep(rung.get('seen', 1))} continue; AP "
                   f"at the rung {rung.get('ap', float('nan')):.4f}"
                   + ("" if score == "ap" else f", {score} {rung.get(score, float('nan')):.4f}"))
