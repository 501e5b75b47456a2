"""A search's trials forwarded to MLflow from the driver as they run: each trial's run made when it starts (so it
is there to watch while the trial trains), its evaluations logged as they are reported, the run ended with the
trial's result. Nothing is done when the search has no tracker; an MLflow failure is a warning (the study keeps
every result, and `gpnas sync` backfills)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpnas.results.records import TrialRecord, TrialResult

if TYPE_CHECKING:
    from gpnas.results.tracking import MlflowTracker

__all__ = ["LiveRuns"]


class LiveRuns:
    """The live MLflow runs of a search's trials (Tune trial id -> run id)."""

    def __init__(self, tracker: MlflowTracker | None) -> None:
        self.tracker = tracker
        self.run_of: dict[str, str] = {}

    def started(self, trial_id: str, ot_trial: Any, params: dict[str, Any], spec_yaml: str | None) -> str | None:
        """The trial's run, RUNNING, with its genes and spec; its id is kept in the study. -> the run id (None
        without MLflow)."""
        if self.tracker is None:
            return None
        run_id = self.tracker.start_trial_safe(ot_trial.number, ot_trial.user_attrs.get("arch_id", "unknown"),
                                               params, spec_yaml)
        if run_id:
            ot_trial.set_user_attr("mlflow_run_id", run_id)
            self.run_of[trial_id] = run_id
        return run_id

    def evaluation(self, trial_id: str, index: int, evaluation: dict[str, float]) -> None:
        """The trial's ``index``-th evaluation (1 for the first): the curve grows while the trial trains."""
        run_id = self.run_of.get(trial_id)
        if self.tracker is not None and run_id is not None:
            self.tracker.log_evaluation_safe(run_id, index, evaluation)

    def take(self, trial_id: str) -> str | None:
        """The trial's run id, forgotten here (the trial stopped)."""
        return self.run_of.pop(trial_id, None)

    def ended(self, ot_trial: Any, tr: TrialResult, run_id: str | None) -> None:
        """End the trial's run (``run_id``; a new run when None) with its result. Called before the result is
        told to the study: the run id can only be stored while the trial is open."""
        if self.tracker is None:
            return
        rec = TrialRecord(number=ot_trial.number, state=tr.state, reason=tr.reason, arch_id=tr.arch_id,
                          values=None, result=tr, mlflow_run_id=run_id, params=dict(ot_trial.params))
        logged = self.tracker.log_trial_safe(rec)
        if logged:
            ot_trial.set_user_attr("mlflow_run_id", logged)
