"""The MLflow UI's view of a search: the experiment's kind and saved views (pure), written on a new experiment and
brought up to date on an existing one (a real SQLite store), and the links gpnas prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpnas.results import mlflow_view as mv
from gpnas.results.folder import SearchFolder
from gpnas.results.records import SearchInfo
from gpnas.results.tracking import MlflowTracker


def test_a_view_names_the_columns_as_the_runs_table_does() -> None:
    assert mv.column("metrics", "ap") == "metrics.`ap`"
    assert mv.column("tags", "gpnas.state") == "tags.`gpnas.state`"
    with pytest.raises(ValueError, match="column group"):
        mv.column("metric", "ap")
    state = mv.view_state()
    assert state["orderByKey"] == "metrics.`ap`" and state["orderByAsc"] is False
    for key in ("metrics.`ap`", "metrics.`gflops`", "metrics.`latency_ms`", "metrics.`params_m`", "tags.`is_pareto`"):
        assert key in state["selectedColumns"]
    assert state["columnOrder"] == state["selectedColumns"]
    assert state["searchFilter"] == "tags.`gpnas.role` = 'trial'"
    assert mv.view_state(pareto_only=True)["searchFilter"] == "tags.is_pareto = 'true'"


def test_a_saved_view_is_the_envelope_the_ui_lists_and_opens() -> None:
    envelope = json.loads(mv.view_envelope(mv.PARETO_VIEW, created_ms=123))
    assert envelope == {"name": "gpnas: Pareto front", "createdAt": 123, "updatedAt": 123,
                        "state": json.dumps(mv.view_state(pareto_only=True), separators=(",", ":"))}
    with pytest.raises(ValueError, match="unknown gpnas view"):
        mv.view_envelope("mine", created_ms=0)
    tags = mv.experiment_tags(created_ms=5)
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert set(tags) == {"mlflow.experimentKind", "mlflow.sharedViewState.gpnas-trials",
                         "mlflow.sharedViewState.gpnas-pareto"}
    assert all(len(v) < 20_000 for v in tags.values())  # MLflow's limit on an experiment tag


def test_only_what_is_missing_or_stale_is_written_again() -> None:
    tags = mv.experiment_tags(created_ms=5)
    assert mv.missing_tags(tags, created_ms=9) == {}
    assert mv.missing_tags({}, created_ms=9) == mv.experiment_tags(created_ms=9)
    chosen = {**tags, "mlflow.experimentKind": "genai_development"}  # a user's choice stays
    assert mv.missing_tags(chosen, created_ms=9) == {}
    guessed = {**tags, "mlflow.experimentKind": "genai_development_inferred"}
    assert mv.missing_tags(guessed, created_ms=9) == {"mlflow.experimentKind": "custom_model_development"}
    stale = {**tags, "mlflow.sharedViewState.gpnas-trials": "not json"}
    assert list(mv.missing_tags(stale, created_ms=9)) == ["mlflow.sharedViewState.gpnas-trials"]


def test_links_open_the_runs_table_in_model_training_mode() -> None:
    assert mv.runs_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=gpnas-trials")
    assert mv.runs_url("http://h:1", "7", view=None) == "http://h:1/#/experiments/7/runs?workflowType=machine_learning"
    note = mv.search_run_note("7", "abc")
    assert "(#/experiments/7/runs/abc/artifacts/report/pareto.html?workflowType=machine_learning)" in note
    assert "tags.is_pareto = 'true'" in note and "viewStateShareKey=gpnas-pareto" in note


@pytest.fixture()
def search(tmp_path: Path) -> SearchInfo:
    return SearchInfo(name="viewed", folder=SearchFolder(tmp_path / "runs" / "viewed"), objectives=("ap", "gflops"))


def test_a_new_experiment_gets_the_kind_and_views(search: SearchInfo) -> None:
    tracker = MlflowTracker.connect(search)
    tracker.start_search(search)
    assert tracker.experiment_id is not None
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(tags["mlflow.sharedViewState.gpnas-trials"])["name"] == "gpnas: all trials"
    text = tracker.how_to_open()
    assert f"#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=gpnas-trials" \
        in text and f"gpnas ui {search.folder.path}" in text and "tags.is_pareto = 'true'" in text


def test_an_existing_experiment_is_brought_up_to_date_once(search: SearchInfo) -> None:
    tracker = MlflowTracker.connect(search)
    old = tracker.client.create_experiment("viewed")  # made by a gpnas that wrote no kind or views
    tracker.client.set_experiment_tag(old, "mlflow.sharedViewState.mine", "{}")  # a user's own view stays
    tracker.start_search(search)  # a resume or sync
    assert tracker.experiment_id == old
    first = tracker.client.get_experiment(old).tags
    assert first["mlflow.experimentKind"] == "custom_model_development"
    assert first["mlflow.sharedViewState.mine"] == "{}"
    tracker.start_search(search)
    assert tracker.client.get_experiment(old).tags == first  # nothing rewritten (createdAt unchanged)


def test_the_genes_are_param_columns_and_a_caller_without_them_keeps_them() -> None:
    genes = {"block": {"choices": ["csp", "elan"]}, "mask_ratio": {"choices": [0.0, 0.5], "per_stage": True}}
    params = mv.param_columns(genes, stages=2)
    assert params == ["arch_id", "block", "mask_ratio_p2", "mask_ratio_p3"]
    tags = mv.experiment_tags(created_ms=5, params=params)
    state = json.loads(json.loads(tags["mlflow.sharedViewState.gpnas-trials"])["state"])
    assert state["selectedColumns"][-4:] == ["params.`arch_id`", "params.`block`", "params.`mask_ratio_p2`",
                                             "params.`mask_ratio_p3`"]
    assert mv.missing_tags(tags, created_ms=9) == {}  # gpnas ui, a fidelity run: the genes' columns stay
    assert set(mv.missing_tags(tags, created_ms=9, params=["arch_id"])) == {
        "mlflow.sharedViewState.gpnas-trials", "mlflow.sharedViewState.gpnas-pareto"}  # other genes: rewritten


def test_a_search_shows_its_genes_as_columns(tmp_path: Path) -> None:
    from gpnas.experiments.config import load_config

    cfg = load_config("demo", [f"storage.root={tmp_path / 'runs'}", "name=genes"])
    tracker = MlflowTracker.connect(cfg.info())
    tracker.start_search(cfg.info())
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    state = json.loads(json.loads(tags["mlflow.sharedViewState.gpnas-pareto"])["state"])
    assert {"params.`arch_id`", "params.`block`", "params.`width_multiple`"} <= set(state["selectedColumns"])
