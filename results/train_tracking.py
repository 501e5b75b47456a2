"""MLflow of a full training (`gpnas train ARCH ... --out DIR`): one run in the experiment ``train-<name>``.

The run's params are the spec's genes and the train config (``train.<key>``); per-epoch figures are metrics
``epoch_<key>`` (``epoch_ap``, ``epoch_loss``, …) with step = epoch; at the end the best checkpoint's metrics
(``ap``, ``ap50``, …), ``report.json``, ``report.md`` and ``best.pt`` as artifacts. The checkpoint is the source
of truth: a resumed training reopens the run it names and logs the epochs the run lacks, so a run killed between
its checkpoint and its MLflow call, or trained with ``--no-mlflow`` at first, ends with each epoch exactly once.
Like ``tracking`` and ``trial_artifacts``, this module imports mlflow lazily.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpnas.errors import ConfigError

__all__ = ["TrainRunTracker"]

_BATCH = 100  # MLflow takes at most 100 params (and 1000 metrics) per log_batch call


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class TrainRunTracker:
    """One full training's run through ``MlflowClient`` (no fluent active-run state)."""

    def __init__(self, uri: str) -> None:
        import mlflow  # noqa: F401  (fail here, clearly, if missing)
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = ""
        self._warned = False

    @classmethod
    def open(cls, uri: str, *, experiment: str, run_name: str, params: dict[str, str], run_id: str | None,
             artifacts: Path | None = None) -> TrainRunTracker:
        """Reopen ``run_id`` (state RUNNING again) when the store has it; else a new run in ``experiment`` (made
        when missing, its artifacts under ``artifacts`` for a local store) with ``params``."""
        tracker = cls(uri)
        if uri.startswith(("http://", "https://")):
            tracker._check_reachable()
        if run_id and tracker._reopen(run_id):
            return tracker
        exp = tracker.client.get_experiment_by_name(experiment)
        location = artifacts.as_uri() if artifacts is not None and uri.startswith("sqlite:") else None
        exp_id = exp.experiment_id if exp is not None else tracker.client.create_experiment(
            experiment, artifact_location=location)
        run = tracker.client.create_run(exp_id, run_name=run_name, tags={"gpnas.role": "full-training"})
        tracker.run_id = run.info.run_id
        from mlflow.entities import Param

        for chunk in _chunks([Param(k, v[:6000]) for k, v in params.items()], _BATCH):
            tracker.client.log_batch(tracker.run_id, params=chunk)
        return tracker

    def _check_reachable(self) -> None:
        import requests

        try:
            requests.get(self.uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=5)
        except requests.RequestException as err:
            raise ConfigError(f"MLflow tracking server {self.uri} is unreachable ({type(err).__name__}); start it, "
                              "fix --tracking-uri, or train with --no-mlflow (a later --resume logs the epochs "
                              "the run lacks)") from None

    def _reopen(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False  # another store than the run was logged to: a new run gets the whole history
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        return True

    def log_epochs(self, history: list[dict[str, float]]) -> None:
        """The epochs of ``history`` that the run has no ``epoch_ap`` for, each figure as ``epoch_<key>`` at
        step = epoch; an MLflow failure is a warning (the next epoch, or a resume, logs what is missing)."""
        try:
            from mlflow.entities import Metric

            logged = {m.step for m in self.client.get_metric_history(self.run_id, "epoch_ap")}
            now = int(time.time() * 1000)
            metrics = [Metric(f"epoch_{key}", float(value), now, int(row["epoch"])) for row in history
                       if int(row["epoch"]) not in logged for key, value in row.items() if key != "epoch"]
            for chunk in _chunks(metrics, 10 * _BATCH):
                self.client.log_batch(self.run_id, metrics=chunk)
        except Exception as err:  # any tracking failure: the checkpoint keeps the history, a resume backfills
            self._warn(err)

    def finish(self, metrics: dict[str, float], files: list[Path]) -> None:
        """The final metrics and files; the run ends FINISHED."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def end(self, status: str) -> None:
        """End the run as ``status`` (KILLED, FAILED) after an interruption or an error; never raises over it."""
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as err:  # the training's own error is the one to report
            self._warn(err)

    def close_stale(self, run_id: str) -> None:
        """A run a previous start of the folder opened but never checkpointed (killed in its first epoch)."""
        try:
            self.client.set_terminated(run_id, "KILLED")
        except Exception as err:  # a run gone from the store needs no closing
            self._warn(err)

    def _warn(self, err: Exception) -> None:
        if not self._warned:
            warnings.warn(f"MLflow logging failed ({type(err).__name__}: {err}); the checkpoints keep every epoch "
                          "and a --resume logs what the run lacks", stacklevel=3)
            self._warned = True

    def how_to_open(self) -> str:
        """How to see the run in the MLflow UI."""
        if self.uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {self.uri}   (run {self.run_id})"
        return f"open {self.uri.rstrip('/')}  (run {self.run_id})"
