"""Driver side of a search: every trial's ending goes to the study, the trial folder and MLflow (in that order:
the study is the source of truth), with a console line; and the stop of the whole search when a trial hit a bug
in gpnas.

:class:`Recorder` puts together the pieces, one job each: :class:`~gpnas.experiments.trial_tally.TrialTally`
(the results so far, reused by arch_id), :class:`~gpnas.experiments.rung_book.RungBook` (successive halving's
decisions), :class:`~gpnas.experiments.live_runs.LiveRuns` (MLflow, live) and
:mod:`~gpnas.experiments.search_console` (what is printed).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from gpnas.experiments.config import SearchConfig
from gpnas.experiments.live_runs import LiveRuns
from gpnas.experiments.rung_book import RungBook
from gpnas.experiments.search_console import progress_callback, trial_line
from gpnas.experiments.successive_halving import SuccessiveHalving
from gpnas.experiments.trial_tally import TrialTally
from gpnas.objectives.definitions import constraint_values
from gpnas.results import study as st
from gpnas.results.folder import SearchFolder
from gpnas.results.records import TrialRecord, TrialResult
from gpnas.search_space.spec import ArchSpec

if TYPE_CHECKING:
    from rich.console import Console

    from gpnas.results.tracking import MlflowTracker

__all__ = ["Recorder", "progress_callback", "stop_on_internal_error"]


class Recorder:
    """Writes each ending to the study, the trial folder and MLflow; keeps progress figures.

    ``internal_error`` holds the traceback of the first trial that failed by a bug in gpnas (not by its
    candidate), ``input_error`` the message of the first trial that met a bad input every trial shares (a
    ConfigError or DataError): either stops the search (:func:`stop_on_internal_error`); that trial is recorded
    as failed with the reason, and trials stopped with it stay unrecorded, so `gpnas resume` runs them again.
    """

    def __init__(self, cfg: SearchConfig, folder: SearchFolder, tracker: MlflowTracker | None,
                 console: Console) -> None:
        self.cfg, self.folder, self.tracker, self.console = cfg, folder, tracker, console
        self.tally = TrialTally(cfg.objectives, cfg.directions())
        self.rungs = RungBook(cfg)
        self.live = LiveRuns(tracker)
        self.running: dict[str, float] = {}
        self.internal_error: str | None = None
        self.input_error: str | None = None
        self.asked: dict[str, Any] = {}  # Tune trial id -> its open Optuna trial
        self.evaluations: dict[str, list[dict[str, float]]] = {}  # Tune trial id -> its reported evaluations

    def __getstate__(self) -> dict[str, Any]:  # never leaves the driver (holds a console and a tracker)
        return {}

    # ------------------------------------------------------------------------------------------- the figures
    @property
    def stopping(self) -> bool:
        """Whether a trial met a bug or a bad input, so the search stops."""
        return self.internal_error is not None or self.input_error is not None

    @property
    def ended(self) -> list[TrialResult]:
        """Every ending so far: the study's at the start (the first :attr:`loaded`), then this run's."""
        return self.tally.ended

    @property
    def loaded(self) -> int:
        return self.tally.loaded

    @property
    def best_score(self) -> tuple[str, float]:
        return self.tally.score, self.tally.best_score

    @property
    def halving(self) -> SuccessiveHalving | None:
        return self.rungs.halving

    def front_size(self) -> int:
        return self.tally.front_size()

    def cached(self, arch_id: str) -> TrialResult | None:
        return self.tally.cached(arch_id)

    def complete_metrics(self) -> list[dict[str, float]]:
        return self.tally.complete_metrics()

    # ------------------------------------------------------------------------------------------- the trials
    def load(self, recs: list[TrialRecord]) -> None:
        """What the study already holds: results to reuse, and the rung decisions taken (kept on resume)."""
        self.tally.load(recs)
        self.rungs.restore(recs)

    def rung_reached(self, trial_id: str, result: dict[str, Any]) -> str | None:
        """Successive halving: the decision ("promote" / "stop") when ``result`` is a rung evaluation, else None.
        The decision is written to the trial's study row at once, so a killed search keeps it."""
        return self.rungs.reached(trial_id, self.asked.get(trial_id), result)

    def started(self, trial_id: str, ot_trial: Any, params: dict[str, Any], spec_yaml: str | None) -> str | None:
        """A trial is about to run: its MLflow run is made now (RUNNING, genes, spec) and its id kept in the
        study, so the run is there to watch while the trial trains. -> the run id (None without MLflow)."""
        return self.live.started(trial_id, ot_trial, params, spec_yaml)

    def progress(self, trial_id: str, result: dict[str, Any]) -> None:
        self.running[trial_id] = time.time()
        if "ap" in result and not result.get("gpnas_result"):
            evaluations = self.evaluations.setdefault(trial_id, [])
            evaluations.append(_evaluation(result))
            self.live.evaluation(trial_id, len(evaluations), evaluations[-1])

    def finish(self, study: Any, ot_trial: Any, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        self.running.pop(trial_id, None)
        self.asked.pop(trial_id, None)
        run_id = self.live.take(trial_id)
        if not (result or {}).get("gpnas_result") and not error and self.rungs.stopped_at(trial_id) is None:
            # stopped before it reported its result, not by successive halving: the search is stopping (Ctrl-C,
            # or another trial hit a bug). Left RUNNING; the runner re-queues it (interrupted), so no half
            # result is told (its rung decisions stay in the study).
            return
        tr = self._parse(ot_trial, trial_id, result, error)
        tr.rungs = self.rungs.take(trial_id)
        self.evaluations.pop(trial_id, None)
        if (result or {}).get("gpnas_state") == "error" and self.internal_error is None:
            self.internal_error = f"trial {ot_trial.number} ({tr.arch_id}):\n{result['gpnas_traceback']}"
        if (result or {}).get("gpnas_state") == "input_error" and self.input_error is None:
            self.input_error = f"trial {ot_trial.number} ({tr.arch_id}) met a bad input: {result['gpnas_message']}"
        limits = self.cfg.constraints.model_dump()
        constraints = constraint_values(limits, tr.metrics) if tr.state in ("complete", "infeasible") else {}
        spec_yaml = ArchSpec(**tr.spec).to_yaml() if tr.spec and "invalid_params" not in tr.spec else None
        self.folder.write_trial(ot_trial.number, tr, spec_yaml)
        self.live.ended(ot_trial, tr, run_id)  # before tell: the run id can only be stored while the trial is open
        st.tell_result(study, ot_trial, tr, self.cfg.objectives, constraints)
        self.tally.add(tr)
        self.console.print(trial_line(ot_trial.number, tr, self.cfg.objectives), highlight=False)

    def _parse(self, ot_trial: Any, trial_id: str, result: dict[str, Any] | None, error: bool) -> TrialResult:
        arch_id = ot_trial.user_attrs.get("arch_id", "unknown")
        if result and result.get("gpnas_result"):
            tr = TrialResult.from_dict(json.loads(result["gpnas_result"]))
            if tr.arch_id in ("unknown", "invalid") and arch_id != "unknown":
                tr.arch_id = arch_id
            if result.get("gpnas_state") == "reused":
                tr.reason = f"same arch_id as an earlier trial; its result was reused ({tr.reason or 'ok'})"
            return tr
        if error:
            return TrialResult(arch_id=arch_id, state="failed",
                               reason="the trial's worker crashed (see the Ray trial folder for error.txt)")
        history = self.evaluations.get(trial_id, [])
        if result and (not history or history[-1].get("step") != result.get("step")):
            history = [*history, _evaluation(result)]
        return self.rungs.pruned(arch_id, trial_id, result or {}, history)


def _evaluation(result: dict[str, Any]) -> dict[str, float]:
    """The trainer's figures of one reported evaluation (epoch, step, train_seconds, ap, ap50, ...)."""
    return {k: float(v) for k, v in result.items() if k in ("epoch", "step", "train_seconds") or
            (k.startswith("ap") and isinstance(v, (int, float)))}


def stop_on_internal_error(recorder: Recorder) -> Any:
    """A Tune stopper that ends the whole search once a trial hit a bug in gpnas or a bad input."""
    from ray.tune import Stopper

    class StopOnInternalError(Stopper):
        def __getstate__(self) -> dict[str, Any]:  # Tune may pickle it; the recorder stays in the driver
            return {}

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return recorder.stopping

    return StopOnInternalError()
