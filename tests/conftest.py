"""Shared fixtures: seeded, CPU, quiet; and the real searches that several tests read (run once per session)."""

from __future__ import annotations

import fcntl
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from searchutil import SHARED_SEARCH, FinishedSearch, gpnas, write_config

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# a Ray head waits ~20 s for its GCS by default; on 2 busy cores (the previous test's Ray still exiting) that was once
# too short in CI for the two-node cluster of test_search_integration: wait up to 60 s. Ray reads this setting when
# it is first imported, so it is set here, before any test imports ray.
os.environ.setdefault("RAY_NUM_REDIS_GET_RETRIES", "60")
warnings.filterwarnings("ignore", category=DeprecationWarning)

# Under pytest-xdist (`make test`: as many workers as this machine's 2 cores) each worker's own torch work (the
# in-process trainings, builds and exports) runs on one thread: torch's default of one thread per core in every
# worker oversubscribed the cores, and OpenMP's spinning threads then slowed such tests up to 3x whenever the other
# worker ran a search. The `gpnas` commands the tests start inherit OMP_NUM_THREADS=1 and set their own threads
# where the command takes them (a search's trials: budget.cpu). Serially (TEST_WORKERS=0), torch keeps its default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def gpnas_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's GPNAS_CACHE and CPU timing lock, for this process and every `gpnas` command the tests start.

    One cache (digits sets, the CPU latency table) for the whole run, xdist workers included: the first user builds
    and calibrates it, the others reuse it, as the processes of a user's searches share ~/.cache/gpnas. Tests of
    the cache itself set their own.

    Its own timing lock (GPNAS_LATENCY_LOCK): the machine-wide default is shared with every gpnas process on the
    machine, and a background training at nice 19 holding it for a latency measurement, starved of CPU by the
    tests, stalled the tests' trials for minutes (a trial's evaluation took 200 s instead of 10 s)."""
    cache = _session_root(tmp_path_factory) / "cache"  # one for all xdist workers
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPNAS_CACHE", str(cache))
        mp.setenv("GPNAS_LATENCY_LOCK", str(tmp_path_factory.getbasetemp() / "gpnas-latency.lock"))
        yield cache


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder shared by every process of this pytest run: under pytest-xdist the workers' base temps are
    siblings (``popen-gw0``, ``popen-gw1``) and this is their parent; in one process, the base temp itself."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory: pytest.TempPathFactory) -> FinishedSearch:
    """The search of searchutil.SHARED_SEARCH (4 trials: complete and failed ones), run once per pytest run (the
    first xdist worker that needs it runs it under a file lock, the other waits and reads the same), with
    MLflow; the tests that only read a finished search share it."""
    root = _session_root(tmp_path_factory)
    work = root / "finished-search"
    with open(root / "finished-search.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (work / "finished").is_file():  # not yet run, or a worker failed mid-way: run it (again)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            gpnas(work, "search", "--config", str(write_config(work, "shared", **SHARED_SEARCH)), timeout=600)
            (work / "finished").touch()
    return FinishedSearch(work, work / "runs" / "shared", "shared")
