"""A search's life through the CLI, as a user drives it: one live owner per folder, Ray on loopback only, Ctrl-C
and resume, starts that fail cleanly (marked slow: real Ray, real study, real MLflow; run in CI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from searchutil import gpnas, live_records, run_cli, start_cli, status_json, wait_for, write_config

pytestmark = pytest.mark.slow


def _refused(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, no traceback, and the message names what it should."""
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    for needle in needles:
        assert needle in text, (needle, text[-3000:])


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _listening(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every listening TCP socket the processes hold (from /proc/net/tcp{,6})."""
    listen: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A":  # TCP_LISTEN
                listen[cols[9]] = cols[1]
    found = []
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        found += [(pid, listen[link[8:-1]]) for link in links if link.startswith("socket:[") and link[8:-1] in listen]
    return found


_LOOPBACK = ("0100007F:", "0000000000000000FFFF00000100007F:", "00000000000000000000000001000000:")


def _ray_workers(pid: int) -> bool:
    """Whether a Ray worker process (title ``ray::...``) runs below ``pid``."""
    for child in _descendants(pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"ray::"):
                return True
        except OSError:
            continue
    return False


#: trial steps of the live search: its one trained candidate keeps it running while the refusals are checked
LIVE_STEPS = 60


def test_a_live_search_owns_its_folder_and_listens_on_loopback_only(tmp_path: Path) -> None:
    """Items 1, 2, 7, 8, 12: resume and a second search of a live folder refuse without touching it; every
    listening socket of the search's processes is on 127.0.0.1; a storage root with a quote works with MLflow;
    status lists every trial's state and reason (the GFLOPs constraint makes the first candidate infeasible)."""
    root = tmp_path / "team's runs"
    path = write_config(tmp_path, "live", 4, storage={"root": str(root)}, objectives=["ap", "gflops"],
                        train={"steps": LIVE_STEPS, "batch_size": 8}, constraints={"max_gflops": 0.021})
    driver = start_cli(tmp_path, "search", "--config", str(path), log="live")
    folder = root / "live"
    try:
        wait_for(lambda: (folder / "ray_pids.json").is_file(), 300, "Ray to start", driver)
        wait_for(lambda: _ray_workers(driver.proc.pid), 300, "a Ray worker process", driver)
        sockets = _listening(_descendants(driver.proc.pid))
        assert sockets, "the search's processes listen on nothing?"
        assert all(addr.startswith(_LOOPBACK) for _, addr in sockets), sockets
        _refused(run_cli(tmp_path, "resume", str(folder)), "in use", str(driver.proc.pid))
        _refused(run_cli(tmp_path, "search", "--config", str(path)), "in use")
        assert driver.wait(timeout=400) == 0, driver.output()
    finally:
        if driver.alive():
            driver.kill()
    info = status_json(tmp_path, folder)
    counted = [t for t in info["per_trial"] if t["state"] != "duplicate"]  # re-asked proposals: no budget
    assert info["finished"] == 4 and len(counted) == 4
    assert all(t["state"] in ("complete", "failed", "infeasible") for t in counted)
    assert any(t["state"] == "infeasible" for t in counted), counted
    assert all(t["reason"] for t in info["per_trial"] if t["state"] in ("failed", "infeasible"))
    for t in counted:
        assert (folder / "trials" / f"{t['number']:04d}" / "result.json").is_file(), t
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    assert sum(r.data.tags.get("gpnas.role") == "search" for r in runs) == 1 and len(runs) == 5
    for run in runs:  # the infeasible trial's run too: ended, with its state and reason
        assert run.info.status in ("FINISHED", "FAILED"), (run.info.status, run.data.tags)
        if run.data.tags.get("gpnas.state") in ("failed", "infeasible"):
            assert run.data.tags.get("gpnas.reason"), run.data.tags


#: trial steps of the interrupted search: long enough that the trial running at Ctrl-C is still training then
STOPPED_STEPS = 40


def test_ctrl_c_is_an_interruption_and_resume_finishes_the_budget(tmp_path: Path) -> None:
    """Item 6: SIGINT exits 130 with the remedy; no trial is left 'running'; resume runs exactly the rest."""
    from gpnas.results.study import finished

    path = write_config(tmp_path, "stopped", 4, train={"steps": STOPPED_STEPS, "batch_size": 8},
                        budget={"num_trials": 4, "max_concurrent": 1, "cpu": 1})
    driver = start_cli(tmp_path, "search", "--config", str(path), "--no-mlflow", log="stopped")
    folder = tmp_path / "runs" / "stopped"
    try:  # Ctrl-C once a trial has finished and the next one runs
        wait_for(lambda: (recs := live_records(folder, "stopped")) and finished(recs) >= 1
                 and any(r.state == "running" for r in recs), 300, "a finished trial and a running one", driver)
        os.killpg(driver.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        assert driver.wait(timeout=120) == 130, driver.output()
    finally:
        if driver.alive():
            driver.kill()
    err = driver.stderr()
    assert "interrupted" in err and "gpnas resume" in err and "Traceback" not in err, err[-2000:]
    info = status_json(tmp_path, folder)
    assert info["trials"]["running"] == 0 and 1 <= info["finished"] < 4, info["trials"]
    gpnas(tmp_path, "resume", str(folder), "--no-mlflow")
    assert status_json(tmp_path, folder)["finished"] == 4


def test_failed_starts_leave_nothing_that_blocks_a_retry(tmp_path: Path) -> None:
    """Items 4, 6, 7: a bad base, an unschedulable GPU request and a dead cluster address fail before the study
    exists; a corrupt study gives a clear error; a search whose every trial fails exits 3."""
    path = write_config(tmp_path, "retry", 2, space={"base": "yolor-nope", "genes": {}})
    _refused(run_cli(tmp_path, "search", "--config", str(path), "--no-mlflow"), "yolor-nope")
    _refused(run_cli(tmp_path, "status", str(tmp_path / "runs" / "retry")), "retry")
    start = time.time()
    _refused(run_cli(tmp_path, "search", "--config", str(path), "--no-mlflow", "--address", "127.0.0.1:9",
                  "space.base=yolor-csp-nano"), "127.0.0.1:9")
    assert time.time() - start < 60
    _refused(run_cli(tmp_path, "search", "--config", str(path), "--no-mlflow", "space.base=yolor-csp-nano",
                  "budget.gpu=1", "train.device=cuda"), "budget.gpu")
    failing = {"base": "yolor-csp-nano", "genes": {"width_multiple": {"choices": [0.01]}}}
    path = write_config(tmp_path, "retry", 2, space=failing)  # the same name: nothing of the failures remains
    out = run_cli(tmp_path, "search", "--config", str(path), "--no-mlflow", timeout=300)
    assert out.returncode == 3 and "no trial completed" in out.stderr and "Traceback" not in out.stderr, out.stderr
    study = tmp_path / "runs" / "retry" / "study.db"
    study.write_bytes(b"this is not a database" * 100)
    _refused(run_cli(tmp_path, "status", str(study.parent)), "study.db", "not a readable")
    assert json.loads((tmp_path / "runs" / "retry" / ".owner").read_text())["pid"]  # the owner record is kept
