"""The child runs of a search's trials, linked to the search run by ``mlflow.parentRunId``: made RUNNING when the
trial starts (params = genes + arch_id, the spec YAML), per-evaluation AP logged live as steps, ended once when
the trial ends (metrics = every registered objective and bounded figure, ap50, params, the ``gp_`` aggregates;
tags = state, failure reason, node; artifacts = what the trial's node did not log itself). A run that has ended
already is left as it is, so logging a trial twice changes nothing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpnas.objectives.definitions import metric_names
from gpnas.results.folder import SPEC_FILE
from gpnas.results.mlflow_store import PARAM_LIMIT, MlflowStore
from gpnas.results.records import TrialRecord, TrialResult
from gpnas.results.trial_artifacts import WEIGHTS_DIR, local_weights, weights_artifact, write_trial_files

if TYPE_CHECKING:
    from mlflow.entities import Metric

__all__ = ["NO_RUN_STATES", "RUN_STATUS", "TrialRuns", "logged_metric", "trial_params"]

#: the detail figures the stages write beside the registered ones (AP breakdown, size at 640, latency protocol)
_DETAIL_METRICS = ("ap50", "ap75", "ap_small", "ap_medium", "ap_large", "gflops_640", "params", "params_fused",
                   "latency_pred_ms", "latency_measured_ms", "latency_iqr_ms", "latency_cv", "train_seconds",
                   "images_per_second", "epochs")
#: a trial state -> the status its run ends with
RUN_STATUS = {"complete": "FINISHED", "infeasible": "FINISHED", "pruned": "KILLED", "failed": "FAILED",
              "timeout": "KILLED", "interrupted": "KILLED"}
#: the states of trials that have not ended (or never will be trained): no ended run to log
NO_RUN_STATES = ("running", "waiting", "duplicate", "screened")


def logged_metric(key: str) -> bool:
    """Which result metrics become MLflow metrics: every registered figure (objectives and bounded metrics:
    :func:`gpnas.objectives.definitions.metric_names`), the details above, the gp_* aggregates."""
    return key in metric_names() or key in _DETAIL_METRICS or key.startswith("gp_")


def trial_params(params: dict[str, Any], arch_id: str | None) -> dict[str, str]:
    """A trial's genes (and arch_id) as MLflow param values."""
    out = {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in params.items()
           if not k.startswith("gpnas_")}
    out["arch_id"] = arch_id or "unknown"
    return {k: v[:PARAM_LIMIT] for k, v in out.items()}


def final_metrics(result: TrialResult) -> list[Metric]:
    """An ended trial's metrics: its logged figures (step 0), the evaluation history as ``epoch_ap`` /
    ``epoch_ap50`` at steps 1.. (the steps the live logging used), and the successive-halving rungs."""
    from mlflow.entities import Metric

    metrics = [Metric(key, float(value), 0, 0) for key, value in result.metrics.items()
               if logged_metric(key) and isinstance(value, (int, float))]
    for i, epoch in enumerate(result.history):
        for key in ("ap", "ap50"):
            if key in epoch:
                metrics.append(Metric(f"epoch_{key}", float(epoch[key]), 0, i + 1))
    for rung in result.rungs:  # successive halving: AP at each rung reached, at the rung's budget
        metrics.append(Metric("rung_ap", float(rung["ap"]), 0, int(rung["budget"])))
    if result.rungs:
        metrics.append(Metric("rungs_reached", float(len(result.rungs)), 0, 0))
    return metrics


class TrialRuns:
    """The trials' runs under the search run of ``store`` (``store.parent_id``: the search run is started)."""

    def __init__(self, store: MlflowStore) -> None:
        self.store = store

    def _started(self) -> tuple[str, str]:
        assert self.store.experiment_id is not None and self.store.parent_id is not None, "start_search first"
        return self.store.experiment_id, self.store.parent_id

    def run_index(self) -> dict[int, tuple[str, str]]:
        """Trial number -> (child run id, run status), for the runs already in MLflow under this search's parent."""
        experiment_id, parent_id = self._started()
        runs = self.store.client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                             max_results=50_000)
        return {int(r.data.tags["gpnas.trial"]): (r.info.run_id, r.info.status)
                for r in runs if "gpnas.trial" in r.data.tags}

    def run_ids(self) -> dict[int, str]:
        """Trial number -> child run id, for the runs already in MLflow under this search's parent."""
        return {number: run_id for number, (run_id, _) in self.run_index().items()}

    def _tags(self, number: int, state: str, arch_id: str | None) -> dict[str, str]:
        _, parent_id = self._started()
        return {"mlflow.parentRunId": parent_id, "gpnas.role": "trial", "gpnas.trial": str(number),
                "gpnas.state": state, "arch_id": arch_id or "unknown", "is_pareto": "false"}

    # ------------------------------------------------------------------------------------------- live trials
    def start_trial(self, number: int, arch_id: str, params: dict[str, Any], spec_yaml: str | None) -> str:
        """The run of a trial that starts now: state RUNNING, its genes as params, its spec YAML as an artifact.
        :meth:`log_evaluation` adds the evaluations as they happen, :meth:`log_trial` ends it."""
        from mlflow.entities import Param

        experiment_id, _ = self._started()
        client = self.store.client
        run = client.create_run(experiment_id, run_name=f"trial {number:04d} {arch_id}",
                                tags=self._tags(number, "running", arch_id))
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in trial_params(params, arch_id).items()])
        if spec_yaml is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / SPEC_FILE
                path.write_text(spec_yaml)
                client.log_artifact(run_id, str(path))
        return run_id

    def start_trial_safe(self, number: int, arch_id: str, params: dict[str, Any], spec_yaml: str | None
                         ) -> str | None:
        """:meth:`start_trial`; an MLflow failure is a warning (the run is made when the trial ends, or by sync)."""
        try:
            return self.start_trial(number, arch_id, params, spec_yaml)
        except Exception as err:  # any tracking failure: the study keeps the trial, sync backfills
            self.store.warn(err)
            return None

    def log_evaluation(self, run_id: str, index: int, evaluation: dict[str, float]) -> None:
        """One evaluation of a running trial, as it happens: ``epoch_ap`` / ``epoch_ap50`` at step ``index``
        (1 for the first; the same points :meth:`log_trial` writes from the history, so they are not doubled)."""
        from mlflow.entities import Metric

        metrics = [Metric(f"epoch_{key}", float(evaluation[key]), 0, index) for key in ("ap", "ap50")
                   if key in evaluation]
        if "train_seconds" in evaluation:
            metrics.append(Metric("epoch_train_seconds", float(evaluation["train_seconds"]), 0, index))
        if metrics:
            self.store.client.log_batch(run_id, metrics=metrics)

    def log_evaluation_safe(self, run_id: str, index: int, evaluation: dict[str, float]) -> None:
        try:
            self.log_evaluation(run_id, index, evaluation)
        except Exception as err:  # any tracking failure: the history reaches MLflow when the trial ends
            self.store.warn(err)

    # ------------------------------------------------------------------------------------------- ended trials
    def log_trial(self, rec: TrialRecord, existing: dict[int, tuple[str, str]] | None = None) -> str:
        """End the child run of one trial: the run made when it started (still RUNNING) gets its state, final
        metrics and the artifacts its node did not log, then FINISHED / KILLED / FAILED; a trial without a run
        gets a new one. A run that has already ended is left as it is (logging twice changes nothing)."""
        experiment_id, _ = self._started()
        existing = self.run_index() if existing is None else existing
        if rec.number in existing:
            run_id, status = existing[rec.number]
            if status == "RUNNING":
                self._end(run_id, rec, new=False)
            return run_id
        run = self.store.client.create_run(experiment_id, run_name=f"trial {rec.number:04d} {rec.arch_id}",
                                           tags=self._tags(rec.number, rec.state, rec.arch_id))
        self._end(run.info.run_id, rec, new=True)
        return run.info.run_id

    def log_trial_safe(self, rec: TrialRecord) -> str | None:
        """Log one trial; an MLflow failure is a warning (the study keeps it; `gpnas sync` backfills)."""
        try:
            return self.log_trial(rec)
        except Exception as err:  # any tracking failure: the study keeps the trial, sync backfills
            self.store.warn(err)
            return None

    def _end(self, run_id: str, rec: TrialRecord, *, new: bool) -> None:
        from mlflow.entities import Param, RunTag

        tags = [RunTag("gpnas.state", rec.state), RunTag("arch_id", rec.arch_id or "unknown")]
        if rec.reason:
            tags.append(RunTag("gpnas.reason", rec.reason[:5000]))
        result = rec.result
        if result is not None and result.node:
            tags += [RunTag(f"gpnas.node_{k}", str(v)) for k, v in result.node.items()]
        metrics = final_metrics(result) if result is not None else []
        params = [Param(k, v) for k, v in trial_params(rec.params, rec.arch_id).items()] if new else []
        self.store.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        self._log_artifacts(run_id, rec, spec=new)
        self.store.client.set_terminated(run_id, status=RUN_STATUS.get(rec.state, "FINISHED"))

    def _log_artifacts(self, run_id: str, rec: TrialRecord, *, spec: bool) -> None:
        """What the trial's node did not log itself, from this machine's copy: the spec (on a new run), the
        per-layer table, the latency protocol, and the weights when they are here."""
        client, folder = self.store.client, self.store.folder
        done = set(rec.result.artifacts) if rec.result is not None else set()
        spec_file = folder.trial_spec(rec.number)
        if spec and spec_file.is_file():
            client.log_artifact(run_id, str(spec_file))
        data = folder.read_trial(rec.number)
        with tempfile.TemporaryDirectory() as tmp:
            files = write_trial_files(Path(tmp), gp_layers=data.get("gp_layers") or [], latency=data.get("latency"))
            for path in files:
                if path.name not in done:
                    client.log_artifact(run_id, str(path))
        weights = local_weights(folder, rec)
        if weights is not None and weights_artifact(rec.arch_id or "") not in done and rec.result is not None \
                and rec.result.reused_from is None and not (rec.reason or "").startswith("same arch_id"):
            client.log_artifact(run_id, str(weights), artifact_path=WEIGHTS_DIR)
