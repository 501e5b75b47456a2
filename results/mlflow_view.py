"""How the MLflow UI opens a gpnas experiment: on the runs table, with the search's figures as columns.

Pure functions over the tags and URLs that MLflow 3.17's UI reads (no mlflow import; ``tracking`` writes them;
the metric columns are the registered figures, :func:`metric_columns`, so an added objective is a column):

- ``mlflow.experimentKind = custom_model_development`` marks the experiment as model training (MLflow's Python
  API has no call for it; the UI's kind selector writes this same experiment tag). A UI that reads it opens the
  experiment on the runs table, not on the GenAI overview (traces, sessions, token usage: empty for a search), and
  does not guess the kind. MLflow 3.17.2's UI, though, ships with its "GenAI / Model training" toggle on, and then
  takes the kind from the toggle instead: the URL's ``workflowType=machine_learning``, else the browser's last
  choice (local storage), else GenAI. So the links below carry ``workflowType=machine_learning``.
- ``mlflow.sharedViewState.<key>`` holds a saved view of the runs table (the UI's "Save view" / Views list): a
  JSON envelope ``{"name", "createdAt", "updatedAt", "state"}`` whose ``state`` is the JSON of the search facets
  (``searchFilter``, ``orderByKey``, ...) and the table state (``selectedColumns``, ...). The UI opens it from
  ``<base>/#/experiments/<id>/runs?viewStateShareKey=<key>`` (a URL that also holds a search facet, such as
  ``searchFilter``, ignores the view). A view cannot expand or pin runs, so the trial runs are shown by filtering
  out the search's own run (they are its children). A column is named ``<group>.`<key>```, the group one of
  ``attributes``, ``params``, ``metrics``, ``tags`` (e.g. ``metrics.`ap```); ``columnOrder`` orders them.

The views name metric and tag keys only, not run ids, so they are written when the experiment is made, before
any trial ran; a key that no run has yet is simply not shown until a run logs it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gpnas.objectives.definitions import metric_names
from gpnas.results.folder import REPORT_DIR

__all__ = ["DETAIL_COLUMNS", "KIND_TAG", "MODEL_TRAINING_KIND", "PARETO_FILTER", "PARETO_VIEW", "TAG_COLUMNS",
           "TRIALS_VIEW", "VIEW_NAMES", "VIEW_TAG_PREFIX", "column", "experiment_tags", "metric_columns",
           "missing_tags", "param_columns", "runs_url", "search_run_note", "view_envelope", "view_state"]

KIND_TAG = "mlflow.experimentKind"
#: the UI's "machine learning" experiment kind (the others are genai_development and the *_inferred guesses)
MODEL_TRAINING_KIND = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: the saved views gpnas writes: every trial, and the Pareto front only (the link gpnas prints opens the first)
TRIALS_VIEW = "gpnas-trials"
PARETO_VIEW = "gpnas-pareto"
PARETO_FILTER = "tags.is_pareto = 'true'"
#: the figures shown after the registered ones (:func:`metric_columns`)
DETAIL_COLUMNS = ("ap50",)
TAG_COLUMNS = ("is_pareto", "pareto_rank", "gpnas.state")
#: the names the UI lists them under (Views menu of the runs table)
VIEW_NAMES = {TRIALS_VIEW: "gpnas: all trials", PARETO_VIEW: "gpnas: Pareto front"}
#: kinds nobody chose (unset, or the UI's guess): gpnas replaces them; a kind a user picked is left alone
_UNCHOSEN_KINDS = ("", "no_inferred_type", "genai_development_inferred", "custom_model_development_inferred")


def column(group: str, key: str) -> str:
    """The runs table's name of a column, e.g. ``column("metrics", "ap") == "metrics.`ap`"``."""
    if group not in ("attributes", "params", "metrics", "tags"):
        raise ValueError(f"column group must be attributes, params, metrics or tags, got {group!r}")
    return f"{group}.`{key}`"


def metric_columns() -> tuple[str, ...]:
    """The metric columns of the views, in order: every registered figure (the objectives — AP@[.5:.95], GFLOPs,
    latency, any added one — then bounded metrics such as params_m; :func:`gpnas.objectives.definitions.
    metric_names`), then AP50."""
    return tuple(dict.fromkeys([*metric_names(), *DETAIL_COLUMNS]))


def view_state(*, pareto_only: bool = False, params: Sequence[str] = ()) -> dict[str, Any]:
    """The runs-table state of a gpnas view: the trial runs (the search's own run left out), best AP first, the
    figures, Pareto tags and the run params ``params`` (the genes, arch_id) as columns; with ``pareto_only`` only
    the current front (``tags.is_pareto``)."""
    search = PARETO_FILTER if pareto_only else "tags.`gpnas.role` = 'trial'"
    columns = [column("tags", k) for k in TAG_COLUMNS] + [column("metrics", k) for k in metric_columns()] + \
        [column("params", k) for k in params]
    return {
        "searchFilter": search,
        "orderByKey": column("metrics", "ap"),
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
        "runListHidden": False,
        "viewMaximized": False,
    }


def view_envelope(key: str, *, created_ms: int, params: Sequence[str] = ()) -> str:
    """The tag value of the saved view ``key`` (one of :data:`TRIALS_VIEW`, :data:`PARETO_VIEW`)."""
    if key not in VIEW_NAMES:
        raise ValueError(f"unknown gpnas view {key!r}; the views are {sorted(VIEW_NAMES)}")
    state = json.dumps(view_state(pareto_only=key == PARETO_VIEW, params=params), separators=(",", ":"))
    return json.dumps({"name": VIEW_NAMES[key], "createdAt": created_ms, "updatedAt": created_ms, "state": state},
                      separators=(",", ":"))


def _view_state_of(value: str | None) -> dict[str, Any] | None:
    """The state a saved-view tag holds, or None when it is missing or not a view envelope."""
    try:
        envelope = json.loads(value) if value else None
        return json.loads(envelope["state"]) if isinstance(envelope, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def experiment_tags(*, created_ms: int, params: Sequence[str] = ()) -> dict[str, str]:
    """The tags of a new gpnas experiment: the model-training kind and the two saved views (``params``: the run
    params shown as columns)."""
    tags = {KIND_TAG: MODEL_TRAINING_KIND}
    tags.update({VIEW_TAG_PREFIX + key: view_envelope(key, created_ms=created_ms, params=params)
                 for key in VIEW_NAMES})
    return tags


def _params_of(state: dict[str, Any] | None) -> list[str]:
    """The run params a saved view shows as columns."""
    prefix = "params.`"
    return [c[len(prefix):-1] for c in (state or {}).get("selectedColumns", []) if c.startswith(prefix)]


def missing_tags(existing: Mapping[str, str], *, created_ms: int, params: Sequence[str] | None = None
                 ) -> dict[str, str]:
    """What an existing experiment lacks of :func:`experiment_tags` (empty when it is up to date, so setting them
    again is a no-op): the kind unless a user chose one, and each gpnas view that is missing or out of date.
    ``params`` None: keep the param columns the trials view has (a caller that does not know the genes)."""
    out = {}
    if existing.get(KIND_TAG, "") in _UNCHOSEN_KINDS:
        out[KIND_TAG] = MODEL_TRAINING_KIND
    if params is None:
        params = _params_of(_view_state_of(existing.get(VIEW_TAG_PREFIX + TRIALS_VIEW)))
    for key in VIEW_NAMES:
        wanted = view_state(pareto_only=key == PARETO_VIEW, params=params)
        if _view_state_of(existing.get(VIEW_TAG_PREFIX + key)) != wanted:
            out[VIEW_TAG_PREFIX + key] = view_envelope(key, created_ms=created_ms, params=params)
    return out


def param_columns(genes: Mapping[str, Mapping[str, Any]], stages: int) -> list[str]:
    """The run params of a search's trials, from its ``space.genes`` config: ``arch_id``, then each gene (a
    per-stage gene as one param per stage, ``<gene>_p2`` ...)."""
    out = ["arch_id"]
    for name, gene in genes.items():
        out += [f"{name}_p{i + 2}" for i in range(stages)] if gene.get("per_stage") else [name]
    return out


def _route(experiment_id: str, tail: str = "", view: str | None = None) -> str:
    """The UI's address (after the ``#``) of an experiment's runs, or of ``tail`` under them, in model-training
    mode and, with ``view``, in that saved view."""
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={view}" if view else "")
    return f"#/experiments/{experiment_id}/runs{tail}?{query}"


def runs_url(base: str, experiment_id: str, view: str | None = TRIALS_VIEW) -> str:
    """The link that opens an experiment's runs table in the UI at ``base`` (``http://127.0.0.1:5000``), in
    model-training mode and in the saved view ``view`` (None: the table as this browser last left it)."""
    return f"{base.rstrip('/')}/{_route(experiment_id, view=view)}"


def search_run_note(experiment_id: str, run_id: str) -> str:
    """The description (markdown) of a search's own run: where its Pareto chart and Pareto trials are."""
    chart = _route(experiment_id, f"/{run_id}/artifacts/{REPORT_DIR}/pareto.html")
    trials = _route(experiment_id, view=PARETO_VIEW)
    return (f"**Pareto front** of this gpnas search: the chart is the artifact [`{REPORT_DIR}/pareto.html`]({chart}) "
            f"(Artifacts tab, with the other plots and tables under `{REPORT_DIR}/`); the Pareto trials are the runs "
            f"with `{PARETO_FILTER}` (the view [{VIEW_NAMES[PARETO_VIEW]}]({trials}) in the Views list).")
