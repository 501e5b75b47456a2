"""The trial runs in a real (SQLite) MLflow store: live from their start, ended once, KILLED when the driver died,
artifacts logged from the trial's node and fetched back when the local copy is missing."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from gpnas.results import study as st
from gpnas.results.folder import SearchFolder
from gpnas.results.records import SearchInfo, TrialRecord, TrialResult
from gpnas.results.tracking import MlflowTracker
from gpnas.results.trial_artifacts import fetch_artifact, log_trial_artifacts, logs_here, weights_artifact

LAYERS = [{"layer": "backbone.0", "type": "Conv", "sgp": 1, "lgp": 3, "out_channels": 16},
          {"layer": "head.m.0", "type": "Conv2d", "sgp": 1, "lgp": 1, "out_channels": 24}]
LATENCY = {"mode": "measured", "protocol": {"device": "cpu", "batch": 1}, "latency_ms": 1.5}


@pytest.fixture()
def search(tmp_path: Path) -> SearchInfo:
    return SearchInfo(name="tracked", folder=SearchFolder(tmp_path / "runs" / "tracked"), objectives=("ap", "gflops"))


@pytest.fixture()
def tracker(search: SearchInfo) -> MlflowTracker:
    tracker = MlflowTracker.connect(search)
    tracker.start_search(search)
    return tracker


def _result(arch: str = "arch001", history: int = 2) -> TrialResult:
    evals = [{"epoch": float(i), "step": 4.0 * (i + 1), "ap": 0.1 * (i + 1), "ap50": 0.2 * (i + 1)}
             for i in range(history)]
    return TrialResult(arch_id=arch, state="complete", metrics={"ap": evals[-1]["ap"], "gflops": 0.5},
                       history=evals, gp_layers=LAYERS, latency=LATENCY)


def test_a_trial_run_is_live_from_its_start_and_ended_once(tracker: MlflowTracker) -> None:
    run_id = tracker.start_trial(3, "arch001", {"block": "csp", "gpnas_run_id": "x"}, "name: a\n")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["gpnas.state"] == "running"
    assert run.data.params == {"block": "csp", "arch_id": "arch001"}  # gpnas' own keys are not genes
    assert [f.path for f in tracker.client.list_artifacts(run_id)] == ["spec.yaml"]

    result = _result()
    tracker.log_evaluation(run_id, 1, result.history[0])  # while the trial trains
    live = tracker.client.get_metric_history(run_id, "epoch_ap")
    assert [(m.step, m.value) for m in live] == [(1, pytest.approx(0.1))]
    assert tracker.client.get_run(run_id).info.status == "RUNNING"

    tracker.log_evaluation(run_id, 2, result.history[1])
    rec = TrialRecord(3, "complete", None, "arch001", None, result, run_id, {"block": "csp"})
    assert tracker.log_trial(rec) == run_id
    ended = tracker.client.get_run(run_id)
    assert ended.info.status == "FINISHED" and ended.data.tags["gpnas.state"] == "complete"
    assert ended.data.metrics["ap"] == pytest.approx(0.2)
    # the history logged at the end repeats the live points exactly: no doubled curve
    assert [m.step for m in tracker.client.get_metric_history(run_id, "epoch_ap")] == [1, 2]
    names = {f.path for f in tracker.client.list_artifacts(run_id)}
    assert names == {"spec.yaml"}  # the driver has no trial folder here: nothing else to log from this machine
    assert tracker.log_trial(rec) == run_id  # logging again changes nothing
    assert tracker.run_ids() == {3: run_id}


def test_the_trials_node_logs_its_artifacts_and_they_come_back(tracker: MlflowTracker, tmp_path: Path) -> None:
    run_id = tracker.start_trial(0, "arch002", {}, None)
    weights = tmp_path / "node" / "arch002.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"weights of arch002")
    assert logs_here(tracker.uri)
    logged = log_trial_artifacts(tracker.uri, run_id, arch_id="arch002", gp_layers=LAYERS, latency=LATENCY,
                                 weights=weights)
    assert logged == ["gradient_path_layers.csv", "gradient_path_layers.schema.json", "latency.json",
                      "weights/arch002.pt"]
    weights.unlink()  # the node's disk is gone: the run holds the copy
    got = fetch_artifact(tracker.uri, run_id, weights_artifact("arch002"), tmp_path / "cache" / "arch002.pt")
    assert got is not None and got.read_bytes() == b"weights of arch002"
    assert fetch_artifact(tracker.uri, run_id, weights_artifact("other"), tmp_path / "x.pt") is None
    table = tmp_path / "layers.csv"
    assert fetch_artifact(tracker.uri, run_id, "gradient_path_layers.csv", table) is not None
    assert table.read_text().splitlines()[0] == "layer,type,sgp,lgp,out_channels"

    # the driver ends the run without logging those files a second time
    result = _result("arch002")
    result.artifacts = logged
    tracker.log_trial(TrialRecord(0, "complete", None, "arch002", None, result, run_id, {}))
    assert {f.path for f in tracker.client.list_artifacts(run_id, "weights")} == {"weights/arch002.pt"}


def test_an_sqlite_store_is_written_only_where_its_file_is(tmp_path: Path) -> None:
    assert not logs_here(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert logs_here("http://127.0.0.1:5000")


def test_runs_left_running_by_a_killed_driver_end_as_killed(search: SearchInfo, tracker: MlflowTracker) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = st.open_storage(search.folder)
    study = optuna.create_study(storage=storage, study_name=search.name, directions=["maximize", "minimize"])
    trial = study.ask()
    trial.set_user_attr("arch_id", "arch003")
    run_id = tracker.start_trial(trial.number, "arch003", {}, None)
    trial.set_user_attr("mlflow_run_id", run_id)
    tracker.log_evaluation(run_id, 1, {"ap": 0.05, "ap50": 0.1})
    assert tracker.sync(search) == 0  # still running: nothing to end yet

    st.mark_interrupted(study, storage)  # what resume does first
    assert tracker.sync(search) == 1
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["gpnas.state"] == "interrupted"
    assert tracker.client.get_metric_history(run_id, "epoch_ap")[0].value == pytest.approx(0.05)
    assert tracker.sync(search) == 0
