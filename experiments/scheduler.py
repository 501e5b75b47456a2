"""Successive halving as a Ray Tune scheduler: at each rung evaluation of a trial the driver's
:class:`~gpnas.experiments.recorder.Recorder` takes the decision (:mod:`gpnas.experiments.successive_halving`,
written to the study at once) and Tune continues or stops the trial. A stopped trial is recorded as ``pruned``
with its rung AP; every other result passes through as with Tune's FIFO scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpnas.experiments.recorder import Recorder

__all__ = ["rung_scheduler"]


def rung_scheduler(recorder: Recorder) -> Any:
    """The Tune scheduler of ``recorder``'s successive halving (built lazily: imports ray)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class RungScheduler(FIFOScheduler):
        """Tune's scheduler API (``on_trial_result`` -> CONTINUE / STOP; checked against ray 2.60.0)."""

        def __init__(self) -> None:
            super().__init__()
            self.recorder = recorder

        def __getstate__(self) -> dict[str, Any]:  # Tune may pickle it; the decisions live in the study
            return {}

        def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
            return True  # ranks by the search's own objectives, whatever Tune's single metric is

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            decision = self.recorder.rung_reached(trial.trial_id, result)
            return TrialScheduler.STOP if decision == "stop" else TrialScheduler.CONTINUE

        def debug_string(self) -> str:
            halving = self.recorder.halving
            if halving is None:
                return "successive halving: off"
            seen = ", ".join(f"{b:g}: {len(t)}" for b, t in zip(halving.budgets, halving.rungs, strict=True))
            return f"successive halving ({halving.mode}), trials seen per rung {{{seen}}}"

    return RungScheduler()
