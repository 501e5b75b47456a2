"""MLflow layout of a search (the only module that imports mlflow).

One experiment per search name; one parent run per search (config as params and artifact, hypervolume history,
trial counts by state, the report); one child run per trial, linked by ``mlflow.parentRunId`` (params = genes +
arch_id; metrics = ap, ap50, gflops, params, latency_ms, per-epoch AP as steps, the ``gp_`` aggregates; tags =
state, failure reason, ``is_pareto``, ``pareto_rank``; artifacts = spec YAML, per-layer gradient-path CSV,
latency protocol JSON).

The Optuna study is the source of truth: MLflow is written from it, a trial's run id is stored back in the
study, and ``sync`` backfills whatever MLflow missed (server down mid-search), idempotently.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from gpnas.objectives.definitions import OBJECTIVES
from gpnas.results import study as st
from gpnas.results.folder import SearchFolder
from gpnas.results.front import front_summary
from gpnas.results.records import SearchInfo, TrialRecord
from gpnas.search_space.errors import ConfigError

__all__ = ["MlflowTracker", "serve_ui"]

_OTHER_METRICS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "gflops", "gflops_640", "params",
                  "params_m", "params_fused", "latency_ms", "latency_pred_ms", "latency_measured_ms", "latency_iqr_ms",
                  "latency_cv", "train_seconds", "images_per_second", "epochs")


def _logged_metric(key: str) -> bool:
    """Which result metrics become MLflow metrics: every objective, the figures above, the gp_* aggregates."""
    return key in OBJECTIVES or key in _OTHER_METRICS or key.startswith("gp_")
RUN_STATUS = {"complete": "FINISHED", "infeasible": "FINISHED", "pruned": "KILLED", "failed": "FAILED",
              "timeout": "KILLED", "interrupted": "FAILED"}


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

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = self.folder.mlflow_artifacts.as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def start_search(self, search: SearchInfo) -> None:
        """Find or create the experiment and the search's parent run (one per search folder)."""
        self.experiment_id = self._experiment(search.name)
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
    def log_trial_safe(self, rec: TrialRecord) -> str | None:
        """Log one trial; an MLflow failure is a warning (the study keeps it; `gpnas sync` backfills)."""
        try:
            return self.log_trial(rec)
        except Exception as err:
            if not self._warned:
                warnings.warn(f"MLflow logging failed ({type(err).__name__}: {err}); results stay in the study, "
                              "run `gpnas sync` once the tracking store is back", stacklevel=2)
                self._warned = True
            return None

    def run_ids(self) -> dict[int, str]:
        """Trial number -> child run id, for the runs already in MLflow under this search's parent."""
        assert self.experiment_id is not None and self.parent_id is not None, "start_search first"
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'",
                                       max_results=50_000)
        return {int(r.data.tags["gpnas.trial"]): r.info.run_id for r in runs if "gpnas.trial" in r.data.tags}

    def log_trial(self, rec: TrialRecord, existing: dict[int, str] | None = None) -> str:
        """The child run of one trial; a trial that already has a run under this parent is not logged again."""
        assert self.experiment_id is not None and self.parent_id is not None, "start_search first"
        existing = self.run_ids() if existing is None else existing
        if rec.number in existing:
            return existing[rec.number]
        tags = {"mlflow.parentRunId": self.parent_id, "gpnas.role": "trial", "gpnas.trial": str(rec.number),
                "gpnas.state": rec.state, "arch_id": rec.arch_id or "unknown", "is_pareto": "false"}
        if rec.reason:
            tags["gpnas.reason"] = rec.reason[:5000]
        run = self.client.create_run(self.experiment_id, run_name=f"trial {rec.number:04d} {rec.arch_id}", tags=tags)
        run_id = run.info.run_id
        self._log_trial_content(run_id, rec)
        self.client.set_terminated(run_id, status=RUN_STATUS.get(rec.state, "FINISHED"))
        return run_id

    def _log_trial_content(self, run_id: str, rec: TrialRecord) -> None:
        from mlflow.entities import Metric, Param

        params = {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in rec.params.items()}
        params["arch_id"] = rec.arch_id or "unknown"
        result = rec.result
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
        self.client.log_batch(run_id, metrics=metrics, params=[Param(k, v[:6000]) for k, v in params.items()])
        self._log_trial_artifacts(run_id, rec)

    def _log_trial_artifacts(self, run_id: str, rec: TrialRecord) -> None:
        spec = self.folder.trial_spec(rec.number)
        if spec.is_file():
            self.client.log_artifact(run_id, str(spec))
        data = self.folder.read_trial(rec.number)
        with tempfile.TemporaryDirectory() as tmp:
            layers = data.get("gp_layers") or []
            if layers:
                path = Path(tmp) / "gradient_path_layers.csv"
                with path.open("w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(layers[0]))
                    writer.writeheader()
                    for row in layers:
                        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                                         for k, v in row.items()})
                self.client.log_artifact(run_id, str(path))
            if data.get("latency"):
                path = Path(tmp) / "latency.json"
                path.write_text(json.dumps(data["latency"], indent=2))
                self.client.log_artifact(run_id, str(path))

    # ------------------------------------------------------------------------------------------- end
    def sync(self, search: SearchInfo) -> int:
        """Backfill child runs for every ended trial without one; returns how many were logged."""
        if self.parent_id is None:
            self.start_search(search)
        existing = self.run_ids()
        logged = 0
        for rec in st.records(st.load_study(search.folder, search.name)):
            if rec.state in ("running", "waiting", "duplicate") or rec.number in existing:
                continue
            existing[rec.number] = self.log_trial(rec, existing)
            logged += 1
        return logged

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

    def how_to_open(self) -> str:
        if self.uri.startswith("sqlite:"):
            where = f"gpnas ui {self.folder.path}    (serves the MLflow UI on http://127.0.0.1:5000)"
        else:
            where = f"open {self.uri}"
        return (f"Pareto front in MLflow: {where}; experiment '{self._experiment_name()}', "
                "filter the runs with  tags.is_pareto = 'true'  (charts: report/pareto.html on the search run)")

    def _experiment_name(self) -> str:
        if self.experiment_id is None:
            return "?"
        return self.client.get_experiment(self.experiment_id).name


def serve_ui(folder: SearchFolder, port: int = 5000) -> int:
    """Serve the MLflow UI for a search's local store on 127.0.0.1 (blocks until the server ends).

    The server runs in its own process group: SIGTERM and SIGINT to this process are passed to the server (which
    passes them once to its web worker; a second SIGINT would make the worker force-quit with a traceback), and
    whatever is left of the group is ended on the way out, so stopping ``gpnas ui`` frees the port. Returns the
    server's exit status (128 + the signal number when a signal ended it)."""
    import contextlib
    import signal
    import subprocess
    import sys
    import threading
    import time

    if not folder.mlflow_db.is_file():
        raise ConfigError(f"{folder.path} has no local MLflow store (mlflow.db); was it run with --tracking-uri?")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", folder.mlflow_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    print(f"MLflow UI for {folder.name}: http://127.0.0.1:{port}  (Ctrl-C to stop)", flush=True)
    child = subprocess.Popen(cmd, env=env, start_new_session=True)  # Ctrl-C reaches it only through us

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    def to_group(signum: int) -> bool:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:  # the whole group has ended
            return False
        return True

    handled = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, forward) for signum in handled}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if to_group(signal.SIGTERM):  # a worker that outlived the server, or the server when we leave on an error
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and to_group(0):
                time.sleep(0.1)
            to_group(signal.SIGKILL)
            child.wait()
    return 128 - code if code < 0 else code
