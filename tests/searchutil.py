"""The tests' helper module: the `gpnas` command as a user runs it (in a subprocess, with the session's cache), a
small search config, a search's status, a copy of a shared search, and polling a live search without writing to it.

The session fixtures that run a real search once and share it (read-only) are in ``conftest.py``; the list of
tests whose budgets or steps changed when they started sharing, and why, is in ``docs/testing.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GPNAS = [sys.executable, "-m", "gpnas.experiments.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment (GPNAS_CACHE: the session's, see conftest), unbuffered, plus ``extra``."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def run_cli(work: Path | None, *args: str, env: Mapping[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``gpnas ARGS`` run in ``work`` (None: here), whatever its exit status."""
    return subprocess.run([*GPNAS, *args], capture_output=True, text=True, cwd=work, timeout=timeout,
                          env=dict(env) if env is not None else cli_env())


def cli_here(work: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``gpnas ARGS`` through the console entry point (``gpnas.experiments.cli.main``) in this process, run in
    ``work``: the same parsing, error printing and exit status as :func:`run_cli` without a new interpreter's
    start-up (seconds each). For commands that refuse their input or do light work; anything that needs its own
    process (signals, servers, Ray, the environment) goes through :func:`run_cli`. An exception that escapes
    ``main`` (a traceback the user would see) is returned as exit 1 with the traceback on stderr."""
    import io
    import traceback
    from contextlib import chdir, redirect_stderr, redirect_stdout
    from unittest import mock

    from gpnas.experiments.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int
    with chdir(work or Path.cwd()), redirect_stdout(out), redirect_stderr(err), \
            mock.patch.object(sys, "argv", ["gpnas", *args]):
        try:
            main()
            code = 0
        except SystemExit as ended:
            code = ended.code if isinstance(ended.code, int) else (0 if ended.code is None else 1)
        except Exception:  # what a user would see as a traceback
            err.write(traceback.format_exc())
            code = 1
    return subprocess.CompletedProcess([*GPNAS, *args], code, out.getvalue(), err.getvalue())


def gpnas(work: Path, *args: str, env: Mapping[str, str] | None = None,
          timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """``gpnas ARGS`` run in ``work``; it must succeed (its output is the failure message)."""
    out = run_cli(work, *args, env=env, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def status_json(work: Path, folder: Path) -> dict:
    return json.loads(gpnas(work, "status", str(folder), "--json").stdout)


def write_config(tmp_path: Path, name: str, trials: int, **extra: object) -> Path:
    cfg = {
        "name": name,
        "space": {"base": "yolor-csp-nano", "genes": {
            "block": {"choices": ["residual", "csp", "elan"]},
            "fusion": {"choices": ["both", "last"]},
            "width_multiple": {"choices": [0.0625, 0.01]},  # 0.01 leaves 0 channels: a recorded failure
        }},
        "sampler": {"seed": 3, "n_startup_trials": 10},
        "budget": {"num_trials": trials, "max_concurrent": 2, "cpu": 1},
        "data": {"n_train": 48, "n_val": 12},
        "train": {"steps": 3, "batch_size": 8},
        "latency": {"repeats": 2, "warmup": 1, "iters_per_repeat": 1},
        "storage": {"root": str(tmp_path / "runs")},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass(frozen=True)
class FinishedSearch:
    """A search run to its end by `gpnas search` (real Ray, SQLite study, MLflow store), shared by the tests that
    read it (conftest's ``finished_search``). A test that writes to it works on a :func:`copy_search`."""

    work: Path  # the working folder of the command that ran it
    folder: Path  # work/runs/<name>
    name: str


def copy_search(search: FinishedSearch, root: Path) -> Path:
    """A copy of ``search``'s folder as ``root/<name>``, for a test that writes to it; -> the copy's folder.

    MLflow keeps absolute paths: the artifact locations, and the runs' ``gpnas.folder`` / ``gpnas.folder_id``
    tags by which gpnas finds a folder's search run. The copy's store gets the copy's paths, so the copy is the
    same search at another place and nothing reaches the shared folder."""
    from gpnas.results.mlflow_store import folder_id  # the tag gpnas finds a search run by

    folder = Path(shutil.copytree(search.folder, root / search.name))
    with contextlib.closing(sqlite3.connect(folder / "mlflow.db")) as con, con:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                        (search.folder.as_uri(), folder.as_uri()))
        for key, old, new in (("gpnas.folder", str(search.folder), str(folder)),
                              ("gpnas.folder_id", folder_id(search.folder), folder_id(folder))):
            con.execute("UPDATE tags SET value = ? WHERE key = ? AND value = ?", (new, key, old))
    return folder


#: write_config's arguments of the search that conftest's ``finished_search`` runs once per session; a test that
#: runs "the same config" again writes it with these too. TPE proper after 2 startup trials; width 0.01 makes some
#: trials fail; objectives without latency (a wall-clock objective would make two runs' fronts differ).
SHARED_SEARCH: dict[str, Any] = {
    "trials": 4,
    "sampler": {"seed": 3, "n_startup_trials": 2},
    "objectives": ["ap", "gflops"],
    "train": {"steps": 4, "batch_size": 8},
}


# ---------------------------------------------------------------------------------------------- a live search
@dataclass
class Background:
    """A `gpnas` command running in its own process group. Its stdout and stderr go to files (a pipe nobody reads
    could fill and stall it); every failure message about it ends with their tails (:meth:`output`)."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def output(self, chars: int = 3000) -> str:
        return (f"\n--- gpnas exit status {self.proc.poll()}; stdout (tail):\n{self.stdout()[-chars:]}"
                f"\n--- stderr (tail):\n{self.stderr()[-chars:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self, *, group: bool = True) -> None:
        """SIGKILL to the whole process group (the driver and what it started) or the driver alone; then reap it."""
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        self.proc.wait()


def start_cli(work: Path, *args: str, env: Mapping[str, str] | None = None, log: str = "gpnas") -> Background:
    """``gpnas ARGS`` started in ``work`` in a new session (Ctrl-C and kill -9 reach its whole group); its output
    goes to ``work/<log>.out`` and ``work/<log>.err``."""
    out, err = work / f"{log}.out", work / f"{log}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([*GPNAS, *args], cwd=work, env=dict(env) if env is not None else cli_env(),
                                stdout=stdout, stderr=stderr, start_new_session=True)
    return Background(proc, out, err)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, driver: Background | None = None,
             every: float = 0.3) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); a deadline, or the end of ``driver``
    before the condition holds, fails with the driver's output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        if driver is not None and not driver.alive():
            raise AssertionError(f"gpnas ended before {what}" + driver.output())
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (driver.output() if driver is not None else ""))


def kill_when(driver: Background, condition: Callable[[], Any], timeout: float, what: str, *,
              group: bool = True) -> Any:
    """SIGKILL ``driver`` (its group, or the driver alone) in a state where ``condition`` holds; -> its last value.

    Checking and then killing races the search: the trial a test watched could end in between (the kill-timing
    flakes under load). So once the condition holds, the driver is frozen (SIGSTOP: the driver alone records
    trial states in the study and ends trial runs in MLflow), the condition is checked again on the frozen state,
    and the kill follows only if it still holds; otherwise the driver goes on (SIGCONT) and the wait continues. A
    read that meets the frozen driver's lock counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        wait_for(condition, max(deadline - time.monotonic(), 1.0), what, driver)
        os.kill(driver.proc.pid, signal.SIGSTOP)
        try:
            still = condition()
        except Exception:  # e.g. the study is locked by the frozen driver's write
            still = None
        if still:
            driver.kill(group=group)
            return still
        os.kill(driver.proc.pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (it held, but not once the "
                                 "driver was frozen)" + driver.output())


def study_ready(folder: Path, name: str) -> bool:
    """Whether the driver has created study ``name`` in ``folder``, read through a read-only SQLite connection.

    Why not just open the study: opening it with Optuna creates the schema when it is missing, and a driver that
    creates it at the same moment then fails (duplicate table or version row) and exits 2 -- the flake of the
    halving test under load. Once the study row exists, the schema is complete and Optuna only reads it."""
    db = folder / "study.db"
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(db.as_uri() + "?mode=ro", uri=True, timeout=30)) as con:
            return con.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.OperationalError:  # the driver has not created the tables yet
        return False


def live_records(folder: Path, name: str) -> list[Any]:
    """The study's trial records of a search that may still be starting: [] until its study exists."""
    if not study_ready(folder, name):
        return []
    from gpnas.results.study import load_study, records

    return records(load_study(folder, name))
