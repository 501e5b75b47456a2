"""MLflow layout of a search, the driver's side (the trial's node writes through ``trial_artifacts``; these two
and ``train_tracking``, a full training's run, are the only modules that import mlflow).

One experiment per search name; one parent run per search (config as params and artifact, hypervolume history,
trial counts by state, the report); one child run per trial, linked by ``mlflow.parentRunId``, made RUNNING when
the trial starts (params = genes + arch_id, the spec YAML), per-epoch AP logged live as steps, ended when the trial
ends (metrics = every registered objective and bounded figure, ap50, params, the ``gp_`` aggregates; tags =
state, failure reason, node, ``is_pareto``, ``pareto_rank``; artifacts = per-layer gradient-path CSV, latency
protocol JSON, weights) or closed as KILLED when a resumed search finds it left RUNNING by a killed driver.

The Optuna study is the source of truth: MLflow is written from it, a trial's run id is stored back in the
study, and ``sync`` backfills whatever MLflow missed (server down mid-search), idempotently.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from gpnas.objectives.definitions import metric_names
from gpnas.results import study as st
from gpnas.results.folder import SearchFolder
from gpnas.results.front import front_summary
from gpnas.results.records import SearchInfo, TrialRecord
from gpnas.results.trial_artifacts import (
    WEIGHTS_DIR,
    fetch_artifact,
    local_weights,
    weights_artifact,
    write_trial_files,
)
from gpnas.search_space.errors import ConfigError

__all__ = ["MlflowTracker"]

#: the detail figures the stages write beside the registered ones (AP breakdown, size at 640, latency protocol)
_DETAIL_METRICS = ("ap50", "ap75", "ap_small", "ap_medium", "ap_large", "gflops_640", "params", "params_fused",
                   "latency_pred_ms", "latency_measured_ms", "latency_iqr_ms", "latency_cv", "train_seconds",
                   "images_per_second", "epochs")


def _logged_metric(key: str) -> bool:
    """Which result metrics become MLflow metrics: every registered figure (objectives and bounded metrics:
    :func:`gpnas.objectives.definitions.metric_names`), the details above, the gp_* aggregates."""
    return key in metric_names() or key in _DETAIL_METRICS or key.startswith("gp_")
RUN_STATUS = {"complete": "FINISHED", "infeasible": "FINISHED", "pruned": "KILLED", "failed": "FAILED",
              "timeout": "KILLED", "interrupted": "KILLED"}
#: the artifact folder of a trial's run that holds its trained weights, ``weights/<arch_id>.pt``
def _params(params: dict[str, Any], arch_id: str | None) -> dict[str, str]:
    """A trial's genes (and arch_id) as MLflow param values."""
    out = {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in params.items()
           if not k.startswith("gpnas_")}
    out["arch_id"] = arch_id or "unknown"
    return {k: v[:6000] for k, v in out.items()}


def _param_columns(search: SearchInfo) -> list[str]:
    """The run params (genes, arch_id) that the search's views show as columns."""
    from gpnas.results.mlflow_view import param_columns
    from gpnas.search_space.spec import NUM_STAGES

    return param_columns((search.settings.get("space") or {}).get("genes") or {}, NUM_STAGES)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _folder_id(folder: Path) -> str:
    """A folder as a tag value any MLflow filter can quote (a path may hold quotes)."""
    return hashlib.sha256(str(folder).encode()).hexdigest()[:20]


def _folder_filter(folder: Path) -> str:
    return f"tags.`gpnas.folder_id` = '{_folder_id(folder)}'"


class MlflowTracker:
    """Writes a search to MLflow through ``MlflowClient`` (no fluent active-run state, safe next to Tune)."""

    def __init__(self, uri: str, folder: SearchFolder) -> None:
        import mlflow  # noqa: F401  (fail here, clearly, if missing)
        from mlflow.tracking import MlflowClient

        # a server store makes MLflow print two links on every ended run; gpnas prints the one link that matters
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        self.folder = folder
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self._warned = False

    # ------------------------------------------------------------------------------------------- set-up
    @classmethod
    def connect(cls, search: SearchInfo) -> MlflowTracker:
        """Check the store is reachable before anything is trained; a clear error if not."""
        search.folder.path.mkdir(parents=True, exist_ok=True)
        uri = search.tracking_uri or search.folder.mlflow_uri
        tracker = cls(uri, search.folder)
        if uri.startswith(("http://", "https://")):
            tracker.check_reachable()
        return tracker

    def check_reachable(self) -> None:
        import requests

        try:
            requests.get(self.uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=5)
        except requests.RequestException as err:
            raise ConfigError(
                f"MLflow tracking server {self.uri} is unreachable ({type(err).__name__}); start it, fix "
                "--tracking-uri, or run with --no-mlflow (the study keeps every result; `gpnas sync` logs later)"
            ) from None

    def _experiment(self, name: str, params: list[str] | None = None) -> str:
        """The experiment ``name``, made when missing; either way it opens on the runs table in gpnas' views
        (``params``: the run params shown as columns; None keeps those the views show)."""
        import time

        from gpnas.results import mlflow_view

        now_ms = int(time.time() * 1000)
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            self._update_experiment_view(exp.experiment_id, dict(exp.tags), now_ms, params)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = self.folder.mlflow_artifacts.as_uri()
        return self.client.create_experiment(name, artifact_location=location,
                                             tags=mlflow_view.experiment_tags(created_ms=now_ms, params=params or ()))

    def _update_experiment_view(self, experiment_id: str, tags: dict[str, str], now_ms: int,
                                params: list[str] | None = None) -> None:
        """An experiment made before gpnas set its kind and views (or with older views, or other genes) gets
        them; a no-op when it has them already."""
        from gpnas.results import mlflow_view

        for key, value in mlflow_view.missing_tags(tags, created_ms=now_ms, params=params).items():
            self.client.set_experiment_tag(experiment_id, key, value)

    def start_search(self, search: SearchInfo) -> None:
        """Find or create the experiment and the search's parent run (one per search folder)."""
        self.experiment_id = self._experiment(search.name, _param_columns(search))
        folder = search.folder.path
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`gpnas.role` = 'search' and {_folder_filter(folder)}",
            max_results=1,
        )
        if not found and "'" not in str(folder):  # a search run logged before the folder_id tag existed
            found = self.client.search_runs(
                [self.experiment_id], max_results=1,
                filter_string=f"tags.`gpnas.role` = 'search' and tags.`gpnas.folder` = '{folder}'")
            for run in found:
                self.client.set_tag(run.info.run_id, "gpnas.folder_id", _folder_id(folder))
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            return
        run = self.client.create_run(self.experiment_id, run_name=f"{search.name} (search)",
                                     tags={"gpnas.role": "search", "gpnas.folder": str(folder),
                                           "gpnas.folder_id": _folder_id(folder)})
        self.parent_id = run.info.run_id
        params = _flatten(dict(search.settings))
        for key, value in params.items():
            self.client.log_param(self.parent_id, key, value[:6000])
        config = search.folder.config
        if config.is_file():
            self.client.log_artifact(self.parent_id, str(config))

    # ------------------------------------------------------------------------------------------- trials
    def run_index(self) -> dict[int, tuple[str, str]]:
        """Trial number -> (child run id, run status), for the runs already in MLflow under this search's parent."""
        assert self.experiment_id is not None and self.parent_id is not None, "start_search first"
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'",
                                       max_results=50_000)
        return {int(r.data.tags["gpnas.trial"]): (r.info.run_id, r.info.status)
                for r in runs if "gpnas.trial" in r.data.tags}

    def run_ids(self) -> dict[int, str]:
        """Trial number -> child run id, for the runs already in MLflow under this search's parent."""
        return {number: run_id for number, (run_id, _) in self.run_index().items()}

    # ------------------------------------------------------------------------------------------- live trials
    def start_trial(self, number: int, arch_id: str, params: dict[str, Any], spec_yaml: str | None) -> str:
        """The run of a trial that starts now: state RUNNING, its genes as params, its spec YAML as an artifact.
        :meth:`log_evaluation` adds the evaluations as they happen, :meth:`log_trial` ends it."""
        from mlflow.entities import Param

        assert self.experiment_id is not None and self.parent_id is not None, "start_search first"
        run = self.client.create_run(self.experiment_id, run_name=f"trial {number:04d} {arch_id}",
                                     tags=self._trial_tags(number, "running", arch_id))
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in _params(params, arch_id).items()])
        if spec_yaml is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "spec.yaml"
                path.write_text(spec_yaml)
                self.client.log_artifact(run_id, str(path))
        return run_id

    def start_trial_safe(self, number: int, arch_id: str, params: dict[str, Any], spec_yaml: str | None
                         ) -> str | None:
        """:meth:`start_trial`; an MLflow failure is a warning (the run is made when the trial ends, or by sync)."""
        try:
            return self.start_trial(number, arch_id, params, spec_yaml)
        except Exception as err:  # any tracking failure: the study keeps the trial, sync backfills
            self._warn(err)
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
            self.client.log_batch(run_id, metrics=metrics)

    def log_evaluation_safe(self, run_id: str, index: int, evaluation: dict[str, float]) -> None:
        try:
            self.log_evaluation(run_id, index, evaluation)
        except Exception as err:  # any tracking failure: the history reaches MLflow when the trial ends
            self._warn(err)

    # ------------------------------------------------------------------------------------------- ended trials
    def _warn(self, err: Exception) -> None:
        if not self._warned:
            warnings.warn(f"MLflow logging failed ({type(err).__name__}: {err}); results stay in the study, "
                          "run `gpnas sync` once the tracking store is back", stacklevel=3)
            self._warned = True

    def log_trial_safe(self, rec: TrialRecord) -> str | None:
        """Log one trial; an MLflow failure is a warning (the study keeps it; `gpnas sync` backfills)."""
        try:
            return self.log_trial(rec)
        except Exception as err:  # any tracking failure: the study keeps the trial, sync backfills
            self._warn(err)
            return None

    def _trial_tags(self, number: int, state: str, arch_id: str | None) -> dict[str, str]:
        assert self.parent_id is not None
        return {"mlflow.parentRunId": self.parent_id, "gpnas.role": "trial", "gpnas.trial": str(number),
                "gpnas.state": state, "arch_id": arch_id or "unknown", "is_pareto": "false"}

    def log_trial(self, rec: TrialRecord, existing: dict[int, tuple[str, str]] | None = None) -> str:
        """End the child run of one trial: the run made when it started (still RUNNING) gets its state, final
        metrics and the artifacts its node did not log, then FINISHED / KILLED / FAILED; a trial without a run
        gets a new one. A run that has already ended is left as it is (logging twice changes nothing)."""
        assert self.experiment_id is not None and self.parent_id is not None, "start_search first"
        existing = self.run_index() if existing is None else existing
        if rec.number in existing:
            run_id, status = existing[rec.number]
            if status == "RUNNING":
                self._end_trial_run(run_id, rec, new=False)
            return run_id
        tags = self._trial_tags(rec.number, rec.state, rec.arch_id)
        run = self.client.create_run(self.experiment_id, run_name=f"trial {rec.number:04d} {rec.arch_id}", tags=tags)
        self._end_trial_run(run.info.run_id, rec, new=True)
        return run.info.run_id

    def _end_trial_run(self, run_id: str, rec: TrialRecord, *, new: bool) -> None:
        from mlflow.entities import Metric, Param, RunTag

        tags = [RunTag("gpnas.state", rec.state), RunTag("arch_id", rec.arch_id or "unknown")]
        if rec.reason:
            tags.append(RunTag("gpnas.reason", rec.reason[:5000]))
        result = rec.result
        if result is not None and result.node:
            tags += [RunTag(f"gpnas.node_{k}", str(v)) for k, v in result.node.items()]
        metrics = []
        if result is not None:
            for key, value in result.metrics.items():
                if _logged_metric(key) and isinstance(value, (int, float)):
                    metrics.append(Metric(key, float(value), 0, 0))
            for i, epoch in enumerate(result.history):
                for key in ("ap", "ap50"):
                    if key in epoch:
                        metrics.append(Metric(f"epoch_{key}", float(epoch[key]), 0, i + 1))
            for rung in result.rungs:  # successive halving: AP at each rung reached, at the rung's budget
                metrics.append(Metric("rung_ap", float(rung["ap"]), 0, int(rung["budget"])))
            if result.rungs:
                metrics.append(Metric("rungs_reached", float(len(result.rungs)), 0, 0))
        params = [Param(k, v) for k, v in _params(rec.params, rec.arch_id).items()] if new else []
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        self._log_trial_artifacts(run_id, rec, spec=new)
        self.client.set_terminated(run_id, status=RUN_STATUS.get(rec.state, "FINISHED"))

    def _log_trial_artifacts(self, run_id: str, rec: TrialRecord, *, spec: bool) -> None:
        """What the trial's node did not log itself, from this machine's copy: the spec (on a new run), the
        per-layer table, the latency protocol, and the weights when they are here."""
        done = set(rec.result.artifacts) if rec.result is not None else set()
        spec_file = self.folder.trial_spec(rec.number)
        if spec and spec_file.is_file():
            self.client.log_artifact(run_id, str(spec_file))
        data = self.folder.read_trial(rec.number)
        with tempfile.TemporaryDirectory() as tmp:
            files = write_trial_files(Path(tmp), gp_layers=data.get("gp_layers") or [], latency=data.get("latency"))
            for path in files:
                if path.name not in done:
                    self.client.log_artifact(run_id, str(path))
        weights = local_weights(self.folder, rec)
        if weights is not None and weights_artifact(rec.arch_id or "") not in done and rec.result is not None \
                and rec.result.reused_from is None and not (rec.reason or "").startswith("same arch_id"):
            self.client.log_artifact(run_id, str(weights), artifact_path=WEIGHTS_DIR)

    # ------------------------------------------------------------------------------------------- end
    def sync(self, search: SearchInfo) -> int:
        """Backfill child runs for every ended trial without one, and end the runs of trials that ended while
        nobody logged it (a killed driver: the trial is ``interrupted`` and its run KILLED); -> runs logged."""
        if self.parent_id is None:
            self.start_search(search)
        existing = self.run_index()
        logged = 0
        for rec in st.records(st.load_study(search.folder, search.name)):
            if rec.state in ("running", "waiting", "duplicate", "screened"):
                continue
            known = existing.get(rec.number)
            if known is not None and known[1] != "RUNNING":
                continue
            run_id = self.log_trial(rec, existing)
            existing[rec.number] = (run_id, RUN_STATUS.get(rec.state, "FINISHED"))
            logged += 1
        return logged

    def restore_local(self, search: SearchInfo, *, weights: bool = False) -> list[Path]:
        """Copy back from MLflow what this machine's search folder lacks: each trial's spec YAML, and with
        ``weights`` the trained weights of the complete trials (the local folder is a cache of the runs).
        -> the files written."""
        if self.parent_id is None:
            self.start_search(search)
        runs, written = self.run_ids(), []
        for rec in st.records(st.load_study(search.folder, search.name)):
            run_id = rec.mlflow_run_id or runs.get(rec.number)
            if run_id is None or rec.state in ("running", "waiting", "duplicate", "screened"):
                continue
            wanted = [(search.folder.trial_spec(rec.number), "spec.yaml")]
            if weights and rec.state == "complete" and rec.arch_id:
                wanted.append((search.folder.weights_file(rec.arch_id), weights_artifact(rec.arch_id)))
            for dst, artifact in wanted:
                got = None if dst.is_file() else fetch_artifact(self.uri, run_id, artifact, dst)
                if got is not None:
                    written.append(got)
        return written

    def log_refined(self, search: SearchInfo) -> int:
        """Refined trials: ``ap`` gets the refined mean (step 1; step 0 keeps the proxy value), with ``ap_proxy``,
        ``ap_sd``, ``refine_seeds`` and the tag ``refined=true``. -> how many runs were updated."""
        from mlflow.entities import Metric

        if self.parent_id is None:
            self.start_search(search)
        existing, updated = self.run_ids(), 0
        for rec in st.records(st.load_study(search.folder, search.name)):
            refined = rec.result.refined if rec.result else None
            if not refined or rec.number not in existing:
                continue
            run_id = existing[rec.number]
            metrics = [Metric("ap", refined["ap_mean"], 0, 1), Metric("ap_sd", refined["ap_sd"], 0, 0),
                       Metric("ap_proxy", refined["ap_proxy"], 0, 0),
                       Metric("refine_seeds", float(len(refined["seeds"])), 0, 0)]
            metrics += [Metric("refine_ap", ap, 0, seed) for ap, seed in zip(refined["ap"], refined["seeds"],
                                                                             strict=True)]
            self.client.log_batch(run_id, metrics=metrics)
            self.client.set_tag(run_id, "refined", "true")
            updated += 1
        return updated

    def finish_search(self, search: SearchInfo) -> None:
        """Backfill, tag the current front, log counts, hypervolume history and the report to the parent."""
        self.sync(search)
        recs = st.records(st.load_study(search.folder, search.name))
        summary = front_summary(recs, search.objectives, search.constraints)
        for number, run_id in self.run_ids().items():
            self.client.set_tag(run_id, "is_pareto", "true" if number in summary.front else "false")
            rank = summary.ranks.get(number)
            self.client.set_tag(run_id, "pareto_rank", str(rank) if rank is not None else "none")
        assert self.parent_id is not None
        for state, n in st.counts(recs).items():
            self.client.log_metric(self.parent_id, f"trials_{state}", n)
        for step, hv in enumerate(summary.hypervolume_history):
            self.client.log_metric(self.parent_id, "hypervolume", hv, step=step)
        self.client.set_tag(self.parent_id, "hypervolume_reference", json.dumps(summary.reference))
        self.client.set_tag(self.parent_id, "pareto_trials", json.dumps(summary.front))
        self._log_report(recs, search)
        from gpnas.results.mlflow_view import search_run_note  # the run's description: where the front is
        self.client.set_tag(self.parent_id, "mlflow.note.content",
                            search_run_note(str(self.experiment_id), self.parent_id))
        self.client.set_terminated(self.parent_id, status="FINISHED")

    def _log_report(self, recs: list[TrialRecord], search: SearchInfo) -> None:
        from gpnas.results.report import write_report

        out = self.folder.report
        out.mkdir(exist_ok=True)
        paths = write_report(recs, list(search.objectives), search.directions(), out)
        for path in paths.values():
            self.client.log_artifact(self.parent_id, str(path), artifact_path="report")

    # ------------------------------------------------------------------------------------------- fidelity
    def log_fidelity(self, experiment: str, out: Path, report: dict[str, Any], artifacts: list[Path],
                     settings: dict[str, Any], search_folder: Path | None = None) -> str:
        """One run per fidelity folder (found again on a rerun), under the search's run when there is one:
        the rank statistics as metrics, the verdict as a tag, the table, JSON and scatter plot as artifacts."""
        self.experiment_id = self._experiment(experiment)
        tags = {"gpnas.role": "fidelity", "gpnas.fidelity_folder": str(out), "gpnas.folder_id": _folder_id(out),
                "gpnas.verdict": str(report.get("verdict", ""))[:5000]}
        if search_folder is not None:
            parents = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`gpnas.role` = 'search' and {_folder_filter(search_folder)}",
                max_results=1)
            if parents:
                tags["mlflow.parentRunId"] = parents[0].info.run_id
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`gpnas.role` = 'fidelity' and {_folder_filter(out)}", max_results=1)
        if found:
            run_id = found[0].info.run_id
            for k, v in tags.items():
                self.client.set_tag(run_id, k, v)
        else:
            run_id = self.client.create_run(self.experiment_id, run_name="fidelity", tags=tags).info.run_id
            for key, value in _flatten(settings).items():
                self.client.log_param(run_id, key, value[:6000])
        numbers = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numbers.update({f"baseline_rho_{k}": v for k, v in report.get("baselines", {}).items()})
        for key, value in numbers.items():
            if value == value:  # MLflow stores NaN, but the UI sorts it badly: leave undefined statistics out
                self.client.log_metric(run_id, key, float(value))
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    # ------------------------------------------------------------------------------------------- analysis
    def log_analysis(self, search: SearchInfo, paths: list[Path], metrics: dict[str, float | None], *,
                     artifact_path: str = "analysis") -> str | None:
        """`gpnas analyze`: the report files under ``artifact_path`` of the search's own run, and the headline
        metrics (``analysis_surrogate_rho``, ``analysis_size_rho``, ``analysis_delta_rho``) on it. The run is
        found like :meth:`start_search` finds it but never created nor reopened (a finished run takes artifacts
        and metrics through the client as it is). -> its run id, or None when the store holds no such run."""
        exp = self.client.get_experiment_by_name(search.name)
        if exp is None:
            return None
        folder = search.folder.path
        found = self.client.search_runs(
            [exp.experiment_id], max_results=1,
            filter_string=f"tags.`gpnas.role` = 'search' and {_folder_filter(folder)}")
        if not found and "'" not in str(folder):  # a search run logged before the folder_id tag existed
            found = self.client.search_runs(
                [exp.experiment_id], max_results=1,
                filter_string=f"tags.`gpnas.role` = 'search' and tags.`gpnas.folder` = '{folder}'")
        if not found:
            return None
        run_id = found[0].info.run_id
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)
        for key, value in metrics.items():
            if value is not None and value == value:  # an undefined statistic stays out (the UI sorts NaN badly)
                self.client.log_metric(run_id, key, float(value))
        return run_id

    def how_to_open(self) -> str:
        """How to see the search in the MLflow UI: the command (a local store) and the direct link to the runs
        table with the search's columns, the Pareto filter, and where the Pareto chart is."""
        from gpnas.results import mlflow_view

        local = self.uri.startswith("sqlite:")
        base = "http://127.0.0.1:5000" if local else self.uri
        link = mlflow_view.runs_url(base, self.experiment_id) if self.experiment_id is not None else base
        where = f"gpnas ui {self.folder.path}   then open {link}" if local else f"open {link}"
        pareto = mlflow_view.VIEW_NAMES[mlflow_view.PARETO_VIEW]
        return (f"Pareto front in MLflow: {where}  (experiment '{self._experiment_name()}'; the Pareto trials: the "
                f"view '{pareto}' or the filter  {mlflow_view.PARETO_FILTER}  ; the chart: report/pareto.html on "
                "the search run)")

    def _experiment_name(self) -> str:
        if self.experiment_id is None:
            return "?"
        return self.client.get_experiment(self.experiment_id).name
