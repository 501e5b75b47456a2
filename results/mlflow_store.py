"""The MLflow store of a search, the driver's side: the client, the search's experiment (found or made, and kept
opening on gpnas' saved views), the lookup of a search's own run, and the link that opens it in the UI.

:class:`~gpnas.results.trial_runs.TrialRuns` (the trials' runs) and :class:`~gpnas.results.search_run.SearchRun`
(the search's run) write through one :class:`MlflowStore`; :class:`~gpnas.results.tracking.MlflowTracker` puts them
together.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from gpnas.errors import ConfigError
from gpnas.results.folder import REPORT_DIR, SearchFolder

__all__ = ["PARAM_LIMIT", "MlflowStore", "flatten", "folder_filter", "folder_id"]

#: MLflow's longest param value
PARAM_LIMIT = 6000


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as dotted param names and string values (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def folder_id(folder: Path) -> str:
    """A folder as a tag value any MLflow filter can quote (a path may hold quotes)."""
    return hashlib.sha256(str(folder).encode()).hexdigest()[:20]


def folder_filter(folder: Path) -> str:
    """The filter of the runs tagged with ``folder``."""
    return f"tags.`gpnas.folder_id` = '{folder_id(folder)}'"


class MlflowStore:
    """The tracking store ``uri`` of the search folder ``folder``, through ``MlflowClient`` (no fluent active-run
    state, safe next to Tune). ``experiment_id`` and ``parent_id``: the experiment and the search run in use."""

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

    @property
    def is_local(self) -> bool:
        """An embedded SQLite store (artifacts beside it), as opposed to a tracking server."""
        return self.uri.startswith("sqlite:")

    @property
    def is_server(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    def check_reachable(self) -> None:
        """A clear error, before anything is trained, when the tracking server does not answer."""
        import requests

        try:
            requests.get(self.uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=5)
        except requests.RequestException as err:
            raise ConfigError(
                f"MLflow tracking server {self.uri} is unreachable ({type(err).__name__}); start it, fix "
                "--tracking-uri, or run with --no-mlflow (the study keeps every result; `gpnas sync` logs later)"
            ) from None

    def warn(self, err: Exception) -> None:
        """An MLflow failure that the study outlives: said once per store."""
        if not self._warned:
            warnings.warn(f"MLflow logging failed ({type(err).__name__}: {err}); results stay in the study, "
                          "run `gpnas sync` once the tracking store is back", stacklevel=4)
            self._warned = True

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        for key, value in params.items():
            self.client.log_param(run_id, key, value[:PARAM_LIMIT])

    # ------------------------------------------------------------------------------------------- experiment
    def experiment(self, name: str, params: list[str] | None = None) -> str:
        """The experiment ``name``, made when missing; either way it opens on the runs table in gpnas' views
        (``params``: the run params shown as columns; None keeps those the views show)."""
        from gpnas.results import mlflow_view

        now_ms = int(time.time() * 1000)
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            self.update_experiment_view(exp.experiment_id, dict(exp.tags), now_ms, params)
            return exp.experiment_id
        location = self.folder.mlflow_artifacts.as_uri() if self.is_local else None
        return self.client.create_experiment(name, artifact_location=location,
                                             tags=mlflow_view.experiment_tags(created_ms=now_ms, params=params or ()))

    def update_experiment_view(self, experiment_id: str, tags: dict[str, str], now_ms: int,
                               params: list[str] | None = None) -> None:
        """An experiment made before gpnas set its kind and views (or with older views, or other genes) gets
        them; a no-op when it has them already."""
        from gpnas.results import mlflow_view

        for key, value in mlflow_view.missing_tags(tags, created_ms=now_ms, params=params).items():
            self.client.set_experiment_tag(experiment_id, key, value)

    def find_search_run(self, experiment_id: str, folder: Path) -> Any | None:
        """The search run of ``folder`` in the experiment, or None. A run logged before the ``gpnas.folder_id``
        tag existed is found by its folder path and gets the tag."""
        found = self.client.search_runs(
            [experiment_id], max_results=1,
            filter_string=f"tags.`gpnas.role` = 'search' and {folder_filter(folder)}")
        if not found and "'" not in str(folder):
            found = self.client.search_runs(
                [experiment_id], max_results=1,
                filter_string=f"tags.`gpnas.role` = 'search' and tags.`gpnas.folder` = '{folder}'")
            for run in found:
                self.client.set_tag(run.info.run_id, "gpnas.folder_id", folder_id(folder))
        return found[0] if found else None

    # ------------------------------------------------------------------------------------------- the UI
    def how_to_open(self) -> str:
        """How to see the search in the MLflow UI: the command (a local store) and the direct link to the runs
        table with the search's columns, the Pareto filter, and where the Pareto chart is."""
        from gpnas.results import mlflow_view

        base = "http://127.0.0.1:5000" if self.is_local else self.uri
        link = mlflow_view.runs_url(base, self.experiment_id) if self.experiment_id is not None else base
        where = f"gpnas ui {self.folder.path}   then open {link}" if self.is_local else f"open {link}"
        pareto = mlflow_view.VIEW_NAMES[mlflow_view.PARETO_VIEW]
        chart = f"{REPORT_DIR}/pareto.html"
        return (f"Pareto front in MLflow: {where}  (experiment '{self.experiment_name()}'; the Pareto trials: the "
                f"view '{pareto}' or the filter  {mlflow_view.PARETO_FILTER}  ; the chart: {chart} on "
                "the search run)")

    def experiment_name(self) -> str:
        if self.experiment_id is None:
            return "?"
        return self.client.get_experiment(self.experiment_id).name
