"""Real local Ray, real SQLite study, real MLflow store: small searches end to end (marked slow; run in CI).

Tests that only read a finished search share conftest's ``finished_search`` (run once per session)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from searchutil import (
    SHARED_SEARCH,
    FinishedSearch,
    cli_env,
    free_port,
    gpnas,
    kill_when,
    live_records,
    run_cli,
    start_cli,
    status_json,
    write_config,
)

pytestmark = pytest.mark.slow


def test_a_finished_search_accounts_for_every_trial(finished_search: FinishedSearch, tmp_path: Path) -> None:
    folder, name = finished_search.folder, finished_search.name
    status = status_json(tmp_path, folder)
    trials = status["trials"]
    assert status["finished"] == 4
    assert sum(trials[s] for s in ("complete", "pruned", "infeasible", "failed")) == 4
    assert trials["running"] == 0 and trials["interrupted"] == 0

    from gpnas.results.study import load_study, records

    recs = records(load_study(folder, name))
    for rec in recs:
        assert (folder / "trials" / f"{rec.number:04d}" / "result.json").is_file()
        if rec.state in ("failed", "infeasible"):
            assert rec.reason, rec
    pareto = json.loads(gpnas(tmp_path, "pareto", str(folder), "--json").stdout)
    assert sorted(r["trial_id"] for r in pareto) == sorted(status["pareto"])

    # MLflow: one parent, one child per trial (failed ones too), is_pareto == the listed front
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("gpnas.role") == "search"]
    children = [r for r in runs if r.data.tags.get("gpnas.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    tagged = client.search_runs([exp.experiment_id], filter_string="tags.is_pareto = 'true'")
    assert sorted(int(r.data.tags["gpnas.trial"]) for r in tagged) == sorted(status["pareto"])
    for child in children:
        assert child.info.status in ("FINISHED", "FAILED", "KILLED")
        if child.data.tags["gpnas.state"] == "failed":
            assert child.data.tags.get("gpnas.reason")
        if child.data.tags["gpnas.state"] == "complete":  # logged by the trial's worker, next to its spec
            arch = child.data.tags["arch_id"]
            names = {f.path for f in client.list_artifacts(child.info.run_id)}
            assert {"spec.yaml", "gradient_path_layers.csv", "latency.json"} <= names, names
            assert [f.path for f in client.list_artifacts(child.info.run_id, "weights")] == [f"weights/{arch}.pt"]
            assert child.data.tags["gpnas.node_ip"] == "127.0.0.1"
            assert len(client.get_metric_history(child.info.run_id, "epoch_ap")) >= 1

    # export rebuilds the measured model; weights load strictly (export writes only into --out)
    if pareto:
        _check_export(tmp_path, folder)
    # four trials are too few to say which feature predicts AP: a clear refusal, no traceback
    refused = run_cli(tmp_path, "analyze", str(folder), timeout=120)
    assert refused.returncode == 2 and "at least 5" in refused.stderr and "Traceback" not in refused.stderr


def _check_export(tmp_path: Path, folder: Path, pick: str = "best-ap") -> None:
    import torch

    from gpnas.objectives.complexity import measure_complexity
    from gpnas.search_space.builder import build_detector
    from gpnas.search_space.spec import load_spec

    out = tmp_path / "exported"
    gpnas(tmp_path, "export", str(folder), "--pick", pick, "--out", str(out), "--weights", "--force",
          *(("--format", "onnx,torchscript") if pick == "best-ap" else ()))
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["architectures"][0]
    if pick == "best-ap":  # the searched candidate with its trained weights, as deployable graphs, checked
        assert entry["deploy"]["weights"] == "proxy-trained"
        for fmt in ("onnx", "torchscript"):
            assert (out / entry["deploy"][fmt]["file"]).is_file() and entry["deploy"][fmt]["check"]["images"] == 100
    spec = load_spec(out / entry["spec"])
    assert spec.arch_id == entry["arch_id"]
    size = measure_complexity(spec)
    assert size.params == entry["metrics"]["params"]
    assert size.gflops == pytest.approx(entry["metrics"]["gflops"])
    model = build_detector(spec)
    model.load_state_dict(torch.load(out / entry["weights"], weights_only=True), strict=True)
    assert set(manifest["versions"]) >= {"torch", "optuna", "ray", "mlflow"}


@contextlib.contextmanager
def _mlflow_server(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    """A real tracking server on 127.0.0.1 that stores and serves the artifacts (what a team runs)."""
    import requests

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
         "--artifacts-destination", str(tmp_path / "srv-artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{uri}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@contextlib.contextmanager
def _two_node_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A Ray head without CPUs and one worker node holding the custom resource ``trainer``, each with its own
    processes (ray.cluster_utils); -> (address, worker node id). Ended by PID, whatever Ray's shutdown leaves."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every node on loopback
    # no token auth on this test cluster, for every process: ray reads RAY_AUTH_MODE once per process, and this
    # pytest process may have imported ray (as 'disabled') long before this test; a head started with 'token'
    # then refused this process's own GCS client. The driver gets 'disabled' too (gpnas would present the token
    # of ~/.ray/auth_token otherwise): the README's setting for a cluster without token auth.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    from gpnas.experiments.ray_session import child_pids

    before = child_pids()  # both nodes' processes are started by this process: its new children
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2, resources={"trainer": 2}, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        yield cluster.address, worker.node_id
    finally:
        pids = child_pids() - before
        cluster.shutdown()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_multi_node_search_logs_artifacts_through_the_tracking_server(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials run on the worker node only (custom resource); their weights reach the driver through
    `mlflow server --serve-artifacts`, so export and sync work with no file of the trials on this disk."""
    import mlflow

    env = {**cli_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    with _mlflow_server(tmp_path, env) as uri, _two_node_cluster(monkeypatch) as (address, worker_id):
        path = write_config(tmp_path, "multi", 2, budget={"num_trials": 2, "max_concurrent": 2, "cpu": 1,
                                                          "resources": {"trainer": 1}})
        gpnas(tmp_path, "search", "--config", str(path), "--address", address, "--tracking-uri", uri, env=env)
        folder = tmp_path / "runs" / "multi"
        assert status_json(tmp_path, folder)["finished"] == 2
        assert not (folder / "ray_pids.json").exists()  # the driver did not own Ray

        client = mlflow.tracking.MlflowClient(uri)
        exp = client.get_experiment_by_name("multi")
        trials = client.search_runs([exp.experiment_id], filter_string="tags.`gpnas.role` = 'trial'")
        done = [r for r in trials if r.data.tags["gpnas.state"] == "complete"]
        assert done and len(trials) == 2
        for run in done:
            assert run.data.tags["gpnas.node_id"] == worker_id
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")
            assert client.list_artifacts(run.info.run_id, "weights")

        # the trials' files are gone from this machine: export and sync fetch them from the server
        shutil.rmtree(folder / "weights")
        for spec in (folder / "trials").glob("*/spec.yaml"):
            spec.unlink()
        _check_export(tmp_path, folder, "pareto")
        shutil.rmtree(folder / "weights")
        synced = gpnas(tmp_path, "sync", str(folder), "--weights").stdout
        assert "copied" in synced
        assert sorted(p.name for p in (folder / "weights").iterdir()) == \
            sorted(f"{r.data.tags['arch_id']}.pt" for r in done)
        assert len(list((folder / "trials").glob("*/spec.yaml"))) == len(done)


def _live_trial_runs(client: Any, experiment: str) -> dict[str, int]:
    """Trial runs still RUNNING in MLflow -> how many per-epoch AP points each has so far."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], "tags.`gpnas.role` = 'trial' and attributes.status = 'RUNNING'")
    return {r.info.run_id: len(client.get_metric_history(r.info.run_id, "epoch_ap")) for r in runs}


#: trial steps of the killed search. Its trials evaluate at step 2 and at the end only (eval_every is larger than
#: the run), so a live run with exactly one AP point has most of its steps ahead: it cannot end between the check
#: and the kill, which follows at once
KILLED_STEPS = 40


def test_killed_driver_resumes_exactly_the_remaining_budget(tmp_path: Path) -> None:
    """Kill -9 the driver while a trial's MLflow run is live (RUNNING, with per-epoch AP already logged) and
    another trial has finished; resume runs exactly the remaining budget and closes the orphaned runs as KILLED."""
    import mlflow

    from gpnas.results.study import finished, load_study, records

    path = write_config(tmp_path, "killed", 5, train={"steps": KILLED_STEPS, "batch_size": 8, "eval_steps": [2],
                                                      "eval_every": 100})
    folder = tmp_path / "runs" / "killed"
    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")

    def killable() -> dict[str, int]:
        """A finished trial in the study, then a live trial run with its step-2 AP point and not yet its final
        one in MLflow (both stores exist once the study does: the driver opens MLflow first). A finished trial is
        recorded when its round ends: the round's last run may then still be RUNNING with all its points for
        a moment, and killing on it raced the driver ending it."""
        if finished(live_records(folder, "killed")) < 1:
            return {}
        live = _live_trial_runs(client, "killed")
        return live if any(points == 1 for points in live.values()) else {}

    driver = start_cli(tmp_path, "search", "--config", str(path), log="killed")
    try:
        # the driver alone: resume must end the Ray processes it left
        watched = kill_when(driver, killable, 400, "a finished trial and a live trial run with a per-epoch AP point",
                            group=False)
    finally:
        if driver.alive():
            driver.kill()
    orphaned = set(_live_trial_runs(client, "killed"))  # RUNNING when the driver died
    pids = json.loads((folder / "ray_pids.json").read_text())["ray"]
    before = records(load_study(folder, "killed"))
    done_before = {r.number for r in before if r.state in ("complete", "failed", "infeasible", "pruned")}
    assert 1 <= len(done_before) < 5 and orphaned, (done_before, watched, orphaned, driver.output())

    gpnas(tmp_path, "resume", str(folder))
    after = records(load_study(folder, "killed"))
    assert finished(after) == 5
    # finished trials were not run again: their rows are unchanged and the new ones are new numbers
    assert {r.number for r in after if r.state in ("complete", "failed", "infeasible", "pruned")} >= done_before
    interrupted = [r for r in after if r.state == "interrupted"]
    assert len([r for r in after if r.state != "duplicate"]) == 5 + len(interrupted)
    for run_id in orphaned:  # closed on resume: KILLED, with the study's reason
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["gpnas.state"] == "interrupted", run.data.tags
    assert not _live_trial_runs(client, "killed")
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_unreachable_tracking_server_fails_before_training(tmp_path: Path) -> None:
    path = write_config(tmp_path, "offline", 2)
    out = run_cli(tmp_path, "search", "--config", str(path), "--tracking-uri", f"http://127.0.0.1:{free_port()}",
                  timeout=120)
    assert out.returncode == 2
    assert "unreachable" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs" / "offline" / "study.db").exists()


def test_sync_backfills_a_search_run_without_mlflow(tmp_path: Path) -> None:
    """The study is the source of truth: a search recorded with --no-mlflow reaches a tracking server through
    `gpnas sync`, once, whatever the number of syncs. The search pre-screens (2 proposals, 1 trained, by NASWOT):
    the proposals it did not train are in the study as screened, with their scores, and never reach MLflow."""
    import requests

    with _mlflow_server(tmp_path, cli_env()) as uri:
        quiet = write_config(tmp_path, "quiet", 2, prescreen={"candidates": 2, "keep": 1, "score": "naswot"})
        out = gpnas(tmp_path, "search", "--config", str(quiet), "--no-mlflow")
        assert "pre-screen: training" in out.stdout
        status = status_json(tmp_path, tmp_path / "runs" / "quiet")
        assert status["trials"]["screened"] == 2 and status["finished"] == 2
        reasons = [t["reason"] for t in status["per_trial"] if t["state"] == "screened"]
        assert all(r.startswith(("pre-screen: zc_naswot", "pre-screen: could not be measured")) for r in reasons), \
            reasons
        for _ in range(2):
            gpnas(tmp_path, "sync", str(tmp_path / "runs" / "quiet"), "--tracking-uri", uri)
        body = {"experiment_ids": [_experiment_id(uri, "quiet")], "max_results": 100}
        runs = requests.post(f"{uri}/api/2.0/mlflow/runs/search", json=body, timeout=10).json()["runs"]
        roles = sorted(t["value"] for r in runs for t in r["data"]["tags"] if t["key"] == "gpnas.role")
        assert roles == ["search", "trial", "trial"]
        assert all(r["info"]["status"] in ("FINISHED", "FAILED") for r in runs)


def _experiment_id(uri: str, name: str) -> str:
    import requests

    got = requests.get(f"{uri}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}, timeout=10)
    return got.json()["experiment"]["experiment_id"]


def test_same_config_twice_gives_the_same_candidates_aps_and_front(finished_search: FinishedSearch,
                                                                  tmp_path: Path) -> None:
    """Work budgets + seeded weights + proposals in rounds (sampler.reproducible): TPE proper (after 2 startup
    trials) proposes the same candidates in both runs, whichever trial of a round finished first. The first run
    is the session's finished search; the second runs its config again under another name."""
    from gpnas.results.study import load_study, records

    runs = []
    path = write_config(tmp_path, "second", **SHARED_SEARCH)
    gpnas(tmp_path, "search", "--config", str(path))
    for folder, name in ((finished_search.folder, finished_search.name), (tmp_path / "runs" / "second", "second")):
        trials = {r.number: (r.arch_id, r.state, r.metric("ap")) for r in records(load_study(folder, name))}
        runs.append((trials, status_json(tmp_path, folder)["pareto"]))
    (first, front1), (second, front2) = runs
    assert sum(1 for _, state, _ in first.values() if state != "duplicate") == 4
    assert first == second, (first, second)
    assert front1 == front2


def test_a_bad_input_found_inside_a_trial_stops_the_search_once_with_exit_2(tmp_path: Path) -> None:
    """A DataError raised inside a trial (here injected into proxy training through sitecustomize: the dataset does
    not match the spec) is the input's fault, the same for every trial: the search stops after the first one with
    exit 2 and the message, without a traceback, and resumes after the fix."""
    from gpnas.results.study import load_study, records

    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import gpnas.experiments.stages as stages\n"
        "from gpnas.errors import DataError\n"
        "def _mismatch(*args, **kwargs):\n"
        "    raise DataError('the dataset has 3 classes but the spec builds 10; set num_classes')\n"
        "stages.train = _mismatch\n")
    path = write_config(tmp_path, "badinput", 4, budget={"num_trials": 4, "max_concurrent": 1, "cpu": 1})
    env = {**cli_env(), "PYTHONPATH": str(inject)}
    out = run_cli(tmp_path, "search", "--config", str(path), "--no-mlflow", env=env, timeout=400)
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stderr.count("the dataset has 3 classes") == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "gpnas resume" in out.stderr and "gpnas bug" not in out.stderr, out.stderr[-3000:]
    folder = tmp_path / "runs" / "badinput"
    ended = [r for r in records(load_study(folder, "badinput")) if r.state not in ("running", "waiting")]
    assert len(ended) == 1 and ended[0].state == "failed", [(r.number, r.state) for r in ended]
    assert "bad input" in (ended[0].reason or "") and "DataError" in (ended[0].reason or "")
    fixed = run_cli(tmp_path, "resume", str(folder), "--no-mlflow", timeout=400)  # the fix: no injection
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    done = [r for r in records(load_study(folder, "badinput")) if r.state in ("complete", "failed", "infeasible")]
    assert len(done) == 4 and done[0].number == 0, [(r.number, r.state) for r in done]


def test_a_bug_in_gpnas_inside_a_trial_stops_the_search_once(tmp_path: Path) -> None:
    """A bug (here a ZeroDivisionError injected into the size stage of every process through sitecustomize) is not
    a failed candidate: the search stops after the first trial with exit 1 and one report, not N failed trials."""
    from gpnas.results.study import load_study, records

    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import gpnas.experiments.stages as stages\n"
        "def _broken(*args, **kwargs):\n"
        "    raise ZeroDivisionError('injected bug')\n"
        "stages.measure_size = _broken\n")
    path = write_config(tmp_path, "buggy", 4, budget={"num_trials": 4, "max_concurrent": 1, "cpu": 1},
                   space={"base": "yolor-csp-nano", "genes": {"block": {"choices": ["residual", "csp"]}}})
    env = {**cli_env(), "PYTHONPATH": str(inject)}
    out = run_cli(tmp_path, "search", "--config", str(path), "--no-mlflow", env=env, timeout=400)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stderr.count("gpnas bug") == 1 and "injected bug" in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr.split("gpnas bug")[0]  # the report is the only thing printed
    recs = records(load_study(tmp_path / "runs" / "buggy", "buggy"))
    ended = [r for r in recs if r.state not in ("running", "waiting")]
    assert len(ended) == 1 and ended[0].state == "failed", [(r.number, r.state) for r in recs]
    assert "internal error" in (ended[0].reason or "") and "ZeroDivisionError" in (ended[0].reason or "")
