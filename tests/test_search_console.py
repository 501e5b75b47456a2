"""The search's progress line: the best score is the search's own (val_loss is minimised, AP maximised)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from gpnas.experiments.search_console import _status
from gpnas.experiments.trial_tally import TrialTally
from gpnas.objectives.definitions import directions
from gpnas.results.records import TrialResult


def _result(arch: str, state: str = "complete", **metrics: float) -> TrialResult:
    return TrialResult(arch_id=arch, state=state, metrics=metrics)  # type: ignore[arg-type]


def test_the_progress_line_names_the_searchs_score_and_its_best_value() -> None:
    objectives = ("val_loss", "gflops")
    tally = TrialTally(objectives, directions(objectives))
    assert tally.score == "val_loss" and math.isnan(tally.best_score)
    tally.add(_result("a", val_loss=0.30, ap=0.10, gflops=1.0))
    tally.add(_result("b", val_loss=0.20, ap=0.05, gflops=2.0))
    tally.add(_result("c", "failed", val_loss=0.01))  # a failed trial's figures are no score
    assert tally.best_score == 0.20  # the lowest loss, not the highest AP's trial
    source = SimpleNamespace(best_score=(tally.score, tally.best_score), front_size=lambda: 2)
    trials = [SimpleNamespace(status="TERMINATED"), SimpleNamespace(status="RUNNING")]
    line = _status(source, trials, total=10, already=1, start=0.0, now=60.0)  # type: ignore[arg-type]
    assert "2/10 done · 1 running · best val_loss 0.2000 · Pareto 2" in line

    by_ap = TrialTally(("ap", "gflops"), directions(("ap", "gflops")))
    by_ap.load([])
    by_ap.add(_result("a", ap=0.10, gflops=1.0))
    by_ap.add(_result("b", ap=0.30, gflops=2.0))
    assert (by_ap.score, by_ap.best_score) == ("ap", 0.30)
    assert TrialTally(("gflops", "latency_ms"), directions(("gflops", "latency_ms"))).score == "ap"
