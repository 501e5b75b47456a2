"""Real local Ray, real SQLite study, real MLflow store: small searches end to end (marked slow; run in CI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from searchutil import GPNAS, cli_env, free_port, gpnas, status_json, write_config

pytestmark = pytest.mark.slow

def test_four_trial_search_accounts_for_every_trial(tmp_path: Path) -> None:
    path = write_config(tmp_path, "four", 4, constraints={"max_gflops": 0.021})
    gpnas(tmp_path, "search", "--config", str(path))
    folder = tmp_path / "runs" / "four"
    status = status_json(tmp_path, folder)
    trials = status["trials"]
    assert status["finished"] == 4
    assert sum(trials[s] for s in ("complete", "pruned", "infeasible", "failed")) == 4
    assert trials["running"] == 0 and trials["interrupted"] == 0

    from gpnas.results.study import load_study, records

    recs = records(load_study(folder, "four"))
    for rec in recs:
        assert (folder / "trials" / f"{rec.number:04d}" / "result.json").is_file()
        if rec.state in ("failed", "infeasible"):
            assert rec.reason, rec
    pareto = json.loads(gpnas(tmp_path, "pareto", str(folder), "--json").stdout)
    assert sorted(r["trial_id"] for r in pareto) == sorted(status["pareto"])

    # MLflow: one parent, one child per trial (failed ones too), is_pareto == the listed front
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name("four")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("gpnas.role") == "search"]
    children = [r for r in runs if r.data.tags.get("gpnas.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    tagged = client.search_runs([exp.experiment_id], filter_string="tags.is_pareto = 'true'")
    assert sorted(int(r.data.tags["gpnas.trial"]) for r in tagged) == sorted(status["pareto"])
    for child in children:
        if child.data.tags["gpnas.state"] == "failed":
            assert child.data.tags.get("gpnas.reason")

    # export rebuilds the measured model; weights load strictly
    if pareto:
        _check_export(tmp_path, folder, pareto[0])


def _check_export(tmp_path: Path, folder: Path, row: dict) -> None:
    import torch

    from gpnas.objectives.complexity import measure_complexity
    from gpnas.search_space.builder import build_detector
    from gpnas.search_space.spec import load_spec

    out = tmp_path / "exported"
    gpnas(tmp_path, "export", str(folder), "--pick", "best-ap", "--out", str(out), "--weights")
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["architectures"][0]
    spec = load_spec(out / entry["spec"])
    assert spec.arch_id == entry["arch_id"]
    size = measure_complexity(spec)
    assert size.params == entry["metrics"]["params"]
    assert size.gflops == pytest.approx(entry["metrics"]["gflops"])
    model = build_detector(spec)
    model.load_state_dict(torch.load(out / entry["weights"], weights_only=True), strict=True)
    assert set(manifest["versions"]) >= {"torch", "optuna", "ray", "mlflow"}


def test_search_on_an_existing_ray_head(tmp_path: Path) -> None:
    port = free_port()
    # keep the head and the driver on loopback: Ray otherwise rewrites 127.0.0.1 to the node's network address
    env = {**cli_env(tmp_path), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        time.sleep(8)
        assert head.poll() is None, "ray head did not start"
        path = write_config(tmp_path, "cluster", 2)
        out = subprocess.run([*GPNAS, "search", "--config", str(path), "--address", f"127.0.0.1:{port}",
                              "--no-mlflow"], capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        status = status_json(tmp_path, tmp_path / "runs" / "cluster")
        assert status["finished"] == 2, out.stdout
        assert not (tmp_path / "runs" / "cluster" / "ray_pids.json").exists()  # the driver did not own Ray
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_killed_driver_resumes_exactly_the_remaining_budget(tmp_path: Path) -> None:
    path = write_config(tmp_path, "killed", 5, train={"steps": 12, "batch_size": 8})
    driver = subprocess.Popen([*GPNAS, "search", "--config", str(path), "--no-mlflow"], env=cli_env(tmp_path),
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    folder = tmp_path / "runs" / "killed"
    from gpnas.results.study import finished, load_study, records

    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(1)
        if (folder / "study.db").is_file() and (folder / "ray_pids.json").is_file():
            try:
                if finished(records(load_study(folder, "killed"))) >= 1:
                    break
            except Exception:
                continue
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    pids = json.loads((folder / "ray_pids.json").read_text())["ray"]
    before = records(load_study(folder, "killed"))
    done_before = {r.number for r in before if r.state in ("complete", "failed", "infeasible", "pruned")}
    assert 1 <= len(done_before) < 5

    gpnas(tmp_path, "resume", str(folder), "--no-mlflow")
    after = records(load_study(folder, "killed"))
    assert finished(after) == 5
    # finished trials were not run again: their rows are unchanged and the new ones are new numbers
    assert {r.number for r in after if r.state in ("complete", "failed", "infeasible", "pruned")} >= done_before
    interrupted = [r for r in after if r.state == "interrupted"]
    assert len([r for r in after if r.state != "duplicate"]) == 5 + len(interrupted)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_unreachable_tracking_server_fails_before_training(tmp_path: Path) -> None:
    path = write_config(tmp_path, "offline", 2)
    out = subprocess.run([*GPNAS, "search", "--config", str(path), "--tracking-uri",
                          f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, env=cli_env(tmp_path),
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert "unreachable" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs" / "offline" / "study.db").exists()


def test_mlflow_server_receives_the_search_and_sync_backfills(tmp_path: Path) -> None:
    import requests

    port = free_port()
    env = {**cli_env(tmp_path), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{uri}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        path = write_config(tmp_path, "served", 2)
        gpnas(tmp_path, "search", "--config", str(path), "--tracking-uri", uri)
        body = {"experiment_ids": [_experiment_id(uri, "served")], "max_results": 100}
        runs = requests.post(f"{uri}/api/2.0/mlflow/runs/search", json=body, timeout=10).json()["runs"]
        roles = sorted(t["value"] for r in runs for t in r["data"]["tags"] if t["key"] == "gpnas.role")
        assert roles == ["search", "trial", "trial"]

        # a search recorded without MLflow is backfilled by sync, idempotently
        quiet = write_config(tmp_path, "quiet", 2)
        gpnas(tmp_path, "search", "--config", str(quiet), "--no-mlflow")
        for _ in range(2):
            gpnas(tmp_path, "sync", str(tmp_path / "runs" / "quiet"), "--tracking-uri", uri)
        body = {"experiment_ids": [_experiment_id(uri, "quiet")], "max_results": 100}
        runs = requests.post(f"{uri}/api/2.0/mlflow/runs/search", json=body, timeout=10).json()["runs"]
        assert len(runs) == 3
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _experiment_id(uri: str, name: str) -> str:
    import requests

    got = requests.get(f"{uri}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}, timeout=10)
    return got.json()["experiment"]["experiment_id"]


def test_same_config_twice_gives_the_same_candidates_aps_and_front(tmp_path: Path) -> None:
    """Work budgets + seeded weights + proposals in rounds (sampler.reproducible): TPE proper (after 2 startup
    trials) proposes the same candidates in both runs, whichever trial of a round finished first."""
    from gpnas.results.study import load_study, records

    runs = []
    for name in ("first", "second"):
        path = write_config(tmp_path, name, 4, sampler={"seed": 3, "n_startup_trials": 2},
                       objectives=["ap", "gflops"], train={"steps": 4, "batch_size": 8})
        gpnas(tmp_path, "search", "--config", str(path), "--no-mlflow")
        folder = tmp_path / "runs" / name
        trials = {r.number: (r.arch_id, r.state, r.metric("ap")) for r in records(load_study(folder, name))}
        runs.append((trials, status_json(tmp_path, folder)["pareto"]))
    (first, front1), (second, front2) = runs
    assert sum(1 for _, state, _ in first.values() if state != "duplicate") == 4
    assert first == second, (first, second)
    assert front1 == front2


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
    env = {**cli_env(tmp_path), "PYTHONPATH": str(inject)}
    out = subprocess.run([*GPNAS, "search", "--config", str(path), "--no-mlflow"], capture_output=True, text=True,
                         env=env, timeout=400, cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stderr.count("gpnas bug") == 1 and "injected bug" in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr.split("gpnas bug")[0]  # the report is the only thing printed
    recs = records(load_study(tmp_path / "runs" / "buggy", "buggy"))
    ended = [r for r in recs if r.state not in ("running", "waiting")]
    assert len(ended) == 1 and ended[0].state == "failed", [(r.number, r.state) for r in recs]
    assert "internal error" in (ended[0].reason or "") and "ZeroDivisionError" in (ended[0].reason or "")
