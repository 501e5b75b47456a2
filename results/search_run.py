"""The search's own run in MLflow (one per search folder, ``gpnas.role = search``), the parent of its trials' runs:
made or found again when a search starts (the config as params and artifact); at the end the trials' front tags
(``is_pareto``, ``pareto_rank``), the trial counts by state, the hypervolume history and the report.

The Optuna study is the source of truth: :meth:`SearchRun.sync` backfills from it whatever MLflow missed (a
server down mid-search, a killed driver), idempotently, and :meth:`SearchRun.restore_local` copies back what the
local search folder lacks (it is a cache of the runs).
"""

from __future__ import annotations

import json
from pathlib import Path

from gpnas.results import study as st
from gpnas.results.folder import REPORT_DIR, SPEC_FILE
from gpnas.results.front import FrontSummary, front_summary
from gpnas.results.mlflow_store import MlflowStore, flatten, folder_id
from gpnas.results.records import SearchInfo, TrialRecord
from gpnas.results.trial_artifacts import fetch_artifact, weights_artifact
from gpnas.results.trial_runs import NO_RUN_STATES, RUN_STATUS, TrialRuns

__all__ = ["SearchRun"]


def _param_columns(search: SearchInfo) -> list[str]:
    """The run params (genes, arch_id) that the search's views show as columns."""
    from gpnas.results.mlflow_view import param_columns
    from gpnas.search_space.spec import NUM_STAGES

    return param_columns((search.settings.get("space") or {}).get("genes") or {}, NUM_STAGES)


def _records(search: SearchInfo) -> list[TrialRecord]:
    return st.records(st.load_study(search.folder, search.name))


class SearchRun:
    """The search run of ``store``'s folder; ``trials`` are its children."""

    def __init__(self, store: MlflowStore, trials: TrialRuns) -> None:
        self.store = store
        self.trials = trials

    def start(self, search: SearchInfo) -> None:
        """Find or create the experiment and the search's parent run (one per search folder)."""
        store, client = self.store, self.store.client
        store.experiment_id = store.experiment(search.name, _param_columns(search))
        folder = search.folder.path
        found = store.find_search_run(store.experiment_id, folder)
        if found is not None:
            store.parent_id = found.info.run_id
            client.update_run(store.parent_id, status="RUNNING")
            return
        run = client.create_run(store.experiment_id, run_name=f"{search.name} (search)",
                                tags={"gpnas.role": "search", "gpnas.folder": str(folder),
                                      "gpnas.folder_id": folder_id(folder)})
        store.parent_id = run.info.run_id
        store.log_params(store.parent_id, flatten(dict(search.settings)))
        config = search.folder.config
        if config.is_file():
            client.log_artifact(store.parent_id, str(config))

    def _ensure_started(self, search: SearchInfo) -> None:
        if self.store.parent_id is None:
            self.start(search)

    # ------------------------------------------------------------------------------------------- the study
    def sync(self, search: SearchInfo) -> int:
        """Backfill child runs for every ended trial without one, and end the runs of trials that ended while
        nobody logged it (a killed driver: the trial is ``interrupted`` and its run KILLED); -> runs logged."""
        self._ensure_started(search)
        existing = self.trials.run_index()
        logged = 0
        for rec in _records(search):
            if rec.state in NO_RUN_STATES:
                continue
            known = existing.get(rec.number)
            if known is not None and known[1] != "RUNNING":
                continue
            run_id = self.trials.log_trial(rec, existing)
            existing[rec.number] = (run_id, RUN_STATUS.get(rec.state, "FINISHED"))
            logged += 1
        return logged

    def restore_local(self, search: SearchInfo, *, weights: bool = False) -> list[Path]:
        """Copy back from MLflow what this machine's search folder lacks: each trial's spec YAML, and with
        ``weights`` the trained weights of the complete trials (the local folder is a cache of the runs).
        -> the files written."""
        self._ensure_started(search)
        runs, written = self.trials.run_ids(), []
        for rec in _records(search):
            run_id = rec.mlflow_run_id or runs.get(rec.number)
            if run_id is None or rec.state in NO_RUN_STATES:
                continue
            wanted = [(search.folder.trial_spec(rec.number), SPEC_FILE)]
            if weights and rec.state == "complete" and rec.arch_id:
                wanted.append((search.folder.weights_file(rec.arch_id), weights_artifact(rec.arch_id)))
            for dst, artifact in wanted:
                got = None if dst.is_file() else fetch_artifact(self.store.uri, run_id, artifact, dst)
                if got is not None:
                    written.append(got)
        return written

    def log_refined(self, search: SearchInfo) -> int:
        """Refined trials: ``ap`` gets the refined mean (step 1; step 0 keeps the proxy value), with ``ap_proxy``,
        ``ap_sd``, ``refine_seeds`` and the tag ``refined=true``. -> how many runs were updated."""
        from mlflow.entities import Metric

        self._ensure_started(search)
        existing, updated = self.trials.run_ids(), 0
        for rec in _records(search):
            refined = rec.result.refined if rec.result else None
            if not refined or rec.number not in existing:
                continue
            run_id = existing[rec.number]
            metrics = [Metric("ap", refined["ap_mean"], 0, 1), Metric("ap_sd", refined["ap_sd"], 0, 0),
                       Metric("ap_proxy", refined["ap_proxy"], 0, 0),
                       Metric("refine_seeds", float(len(refined["seeds"])), 0, 0)]
            metrics += [Metric("refine_ap", ap, 0, seed) for ap, seed in zip(refined["ap"], refined["seeds"],
                                                                             strict=True)]
            self.store.client.log_batch(run_id, metrics=metrics)
            self.store.client.set_tag(run_id, "refined", "true")
            updated += 1
        return updated

    # ------------------------------------------------------------------------------------------- the end
    def finish(self, search: SearchInfo) -> None:
        """Backfill, tag the current front, log counts, hypervolume history and the report to the parent."""
        from gpnas.results.mlflow_view import search_run_note  # the run's description: where the front is

        self.sync(search)
        recs = _records(search)
        summary = front_summary(recs, search.objectives, search.constraints)
        self._tag_front(summary)
        self._log_summary(recs, summary)
        self._log_report(recs, search)
        parent_id = self.store.parent_id
        assert parent_id is not None
        self.store.client.set_tag(parent_id, "mlflow.note.content",
                                  search_run_note(str(self.store.experiment_id), parent_id))
        self.store.client.set_terminated(parent_id, status="FINISHED")

    def _tag_front(self, summary: FrontSummary) -> None:
        """Each trial's run: ``is_pareto`` and ``pareto_rank`` (its non-dominated rank, ``none`` if unranked)."""
        client = self.store.client
        for number, run_id in self.trials.run_ids().items():
            client.set_tag(run_id, "is_pareto", "true" if number in summary.front else "false")
            rank = summary.ranks.get(number)
            client.set_tag(run_id, "pareto_rank", str(rank) if rank is not None else "none")

    def _log_summary(self, recs: list[TrialRecord], summary: FrontSummary) -> None:
        client, parent_id = self.store.client, self.store.parent_id
        assert parent_id is not None
        for state, n in st.counts(recs).items():
            client.log_metric(parent_id, f"trials_{state}", n)
        for step, hv in enumerate(summary.hypervolume_history):
            client.log_metric(parent_id, "hypervolume", hv, step=step)
        client.set_tag(parent_id, "hypervolume_reference", json.dumps(summary.reference))
        client.set_tag(parent_id, "pareto_trials", json.dumps(summary.front))

    def _log_report(self, recs: list[TrialRecord], search: SearchInfo) -> None:
        from gpnas.results.report import write_report

        out = self.store.folder.report
        out.mkdir(exist_ok=True)
        paths = write_report(recs, list(search.objectives), search.directions(), out, named=dict(search.named))
        for path in paths.values():
            self.store.client.log_artifact(self.store.parent_id, str(path), artifact_path=REPORT_DIR)
