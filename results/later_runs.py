"""What later commands log beside a search in MLflow: the run of a `gpnas fidelity` folder (found again on a
rerun; under the search's run when there is one: the rank statistics as metrics, the verdict as a tag, the table,
JSON and scatter plot as artifacts), and the files and headline figures of `gpnas analyze` on the search's run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpnas.results.mlflow_store import MlflowStore, flatten, folder_filter, folder_id
from gpnas.results.records import SearchInfo

__all__ = ["log_analysis", "log_fidelity"]


def _fidelity_tags(store: MlflowStore, out: Path, report: dict[str, Any], search_folder: Path | None
                   ) -> dict[str, str]:
    """The run's tags; ``mlflow.parentRunId`` when the search's run is in the store."""
    assert store.experiment_id is not None
    tags = {"gpnas.role": "fidelity", "gpnas.fidelity_folder": str(out), "gpnas.folder_id": folder_id(out),
            "gpnas.verdict": str(report.get("verdict", ""))[:5000]}
    if search_folder is not None:
        parents = store.client.search_runs(
            [store.experiment_id], filter_string=f"tags.`gpnas.role` = 'search' and {folder_filter(search_folder)}",
            max_results=1)
        if parents:
            tags["mlflow.parentRunId"] = parents[0].info.run_id
    return tags


def log_fidelity(store: MlflowStore, experiment: str, out: Path, report: dict[str, Any], artifacts: list[Path],
                 settings: dict[str, Any], search_folder: Path | None = None) -> str:
    """Log the fidelity folder ``out`` into ``experiment`` (which becomes ``store``'s experiment); -> its run id."""
    store.experiment_id = store.experiment(experiment)
    client = store.client
    tags = _fidelity_tags(store, out, report, search_folder)
    found = client.search_runs(
        [store.experiment_id], filter_string=f"tags.`gpnas.role` = 'fidelity' and {folder_filter(out)}",
        max_results=1)
    if found:
        run_id = found[0].info.run_id
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    else:
        run_id = client.create_run(store.experiment_id, run_name="fidelity", tags=tags).info.run_id
        store.log_params(run_id, flatten(settings))
    numbers = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numbers.update({f"baseline_rho_{k}": v for k, v in report.get("baselines", {}).items()})
    for key, value in numbers.items():
        if value == value:  # MLflow stores NaN, but the UI sorts it badly: leave undefined statistics out
            client.log_metric(run_id, key, float(value))
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def log_analysis(store: MlflowStore, search: SearchInfo, paths: list[Path], metrics: dict[str, float | None], *,
                 artifact_path: str = "analysis") -> str | None:
    """`gpnas analyze`: the report files under ``artifact_path`` of the search's own run, and the headline
    metrics (``analysis_surrogate_rho``, ``analysis_size_rho``, ``analysis_delta_rho``) on it. The run is found
    like a starting search finds it but never created nor reopened (a finished run takes artifacts and metrics
    through the client as it is). -> its run id, or None when the store holds no such run."""
    client = store.client
    exp = client.get_experiment_by_name(search.name)
    if exp is None:
        return None
    found = store.find_search_run(exp.experiment_id, search.folder.path)
    if found is None:
        return None
    run_id = found.info.run_id
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    for key, value in metrics.items():
        if value is not None and value == value:  # an undefined statistic stays out (the UI sorts NaN badly)
            client.log_metric(run_id, key, float(value))
    return run_id
