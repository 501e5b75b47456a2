"""MLflow layout of a search, the driver's side (the trial's node writes through ``trial_artifacts``, a full
training's run through ``train_tracking``).

One experiment per search name; one parent run per search (config as params and artifact, hypervolume history,
trial counts by state, the report); one child run per trial, linked by ``mlflow.parentRunId``, made RUNNING when
the trial starts, per-epoch AP logged live as steps, ended when the trial ends (metrics, state and reason, node,
``is_pareto``, ``pareto_rank``, the per-layer table, latency protocol and weights) or closed as KILLED when a
resumed search finds it left RUNNING by a killed driver.

The Optuna study is the source of truth: MLflow is written from it, a trial's run id is stored back in the
study, and ``sync`` backfills whatever MLflow missed (server down mid-search), idempotently.

:class:`MlflowTracker` is the one object the rest of gpnas holds; it puts together the pieces, one job each:
:class:`~gpnas.results.mlflow_store.MlflowStore` (the client, the experiment and its saved views, the UI link),
:class:`~gpnas.results.trial_runs.TrialRuns` (the trials' runs), :class:`~gpnas.results.search_run.SearchRun`
(the search's run: start, sync, front tags, report) and :mod:`~gpnas.results.later_runs` (fidelity, analysis).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpnas.results.folder import SearchFolder
from gpnas.results.later_runs import log_analysis, log_fidelity
from gpnas.results.mlflow_store import MlflowStore
from gpnas.results.records import SearchInfo, TrialRecord
from gpnas.results.search_run import SearchRun
from gpnas.results.trial_runs import RUN_STATUS, TrialRuns
from gpnas.results.trial_runs import logged_metric as _logged_metric  # noqa: F401  (its older home)

__all__ = ["RUN_STATUS", "MlflowTracker"]


class MlflowTracker:
    """Writes a search to MLflow (the tracking store ``uri``, the search folder ``folder``)."""

    def __init__(self, uri: str, folder: SearchFolder) -> None:
        self.store = MlflowStore(uri, folder)
        self.trials = TrialRuns(self.store)
        self.search = SearchRun(self.store, self.trials)

    @classmethod
    def open(cls, uri: str, folder: SearchFolder) -> MlflowTracker:
        """A tracker of ``uri``; a tracking server is checked reachable first (a clear error if not)."""
        tracker = cls(uri, folder)
        if tracker.store.is_server:
            tracker.check_reachable()
        return tracker

    @classmethod
    def connect(cls, search: SearchInfo) -> MlflowTracker:
        """The search's store (its tracking URI, or the folder's own), checked before anything is trained."""
        search.folder.path.mkdir(parents=True, exist_ok=True)
        return cls.open(search.tracking_uri or search.folder.mlflow_uri, search.folder)

    # ------------------------------------------------------------------------------------------- the store
    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def folder(self) -> SearchFolder:
        return self.store.folder

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` of the store."""
        return self.store.client

    @property
    def experiment_id(self) -> str | None:
        return self.store.experiment_id

    @property
    def parent_id(self) -> str | None:
        """The search's run (None before :meth:`start_search`)."""
        return self.store.parent_id

    def check_reachable(self) -> None:
        self.store.check_reachable()

    def how_to_open(self) -> str:
        return self.store.how_to_open()

    # ------------------------------------------------------------------------------------------- the search run
    def start_search(self, search: SearchInfo) -> None:
        self.search.start(search)

    def sync(self, search: SearchInfo) -> int:
        return self.search.sync(search)

    def restore_local(self, search: SearchInfo, *, weights: bool = False) -> list[Path]:
        return self.search.restore_local(search, weights=weights)

    def log_refined(self, search: SearchInfo) -> int:
        return self.search.log_refined(search)

    def finish_search(self, search: SearchInfo) -> None:
        self.search.finish(search)

    def log_analysis(self, search: SearchInfo, paths: list[Path], metrics: dict[str, float | None], *,
                     artifact_path: str = "analysis") -> str | None:
        return log_analysis(self.store, search, paths, metrics, artifact_path=artifact_path)

    def log_fidelity(self, experiment: str, out: Path, report: dict[str, Any], artifacts: list[Path],
                     settings: dict[str, Any], search_folder: Path | None = None) -> str:
        return log_fidelity(self.store, experiment, out, report, artifacts, settings, search_folder)

    # ------------------------------------------------------------------------------------------- trial runs
    def run_index(self) -> dict[int, tuple[str, str]]:
        return self.trials.run_index()

    def run_ids(self) -> dict[int, str]:
        return self.trials.run_ids()

    def start_trial(self, number: int, arch_id: str, params: dict[str, Any], spec_yaml: str | None) -> str:
        return self.trials.start_trial(number, arch_id, params, spec_yaml)

    def start_trial_safe(self, number: int, arch_id: str, params: dict[str, Any], spec_yaml: str | None
                         ) -> str | None:
        return self.trials.start_trial_safe(number, arch_id, params, spec_yaml)

    def log_evaluation(self, run_id: str, index: int, evaluation: dict[str, float]) -> None:
        self.trials.log_evaluation(run_id, index, evaluation)

    def log_evaluation_safe(self, run_id: str, index: int, evaluation: dict[str, float]) -> None:
        self.trials.log_evaluation_safe(run_id, index, evaluation)

    def log_trial(self, rec: TrialRecord, existing: dict[int, tuple[str, str]] | None = None) -> str:
        return self.trials.log_trial(rec, existing)

    def log_trial_safe(self, rec: TrialRecord) -> str | None:
        return self.trials.log_trial_safe(rec)
