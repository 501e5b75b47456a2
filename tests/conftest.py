"""Shared fixtures: seeded, CPU, quiet; and the real searches that several tests read (run once per session)."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def gpnas_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's GPNAS_CACHE and CPU timing lock, for this process and every `gpnas` command the tests start.

    One cache (digits sets, the CPU latency table): the first user builds and calibrates it, the others reuse it,
    as a user's ~/.cache/gpnas. Tests of the cache itself set their own.

    Its own timing lock (GPNAS_LATENCY_LOCK): the machine-wide default is shared with every gpnas process on the
    machine, and a background training at nice 19 holding it for a latency measurement, starved of CPU by the
    tests, stalled the tests' trials for minutes (a trial's evaluation took 200 s instead of 10 s)."""
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPNAS_CACHE", str(base / "cache"))
        mp.setenv("GPNAS_LATENCY_LOCK", str(base / "gpnas-latency.lock"))
        yield base / "cache"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory: pytest.TempPathFactory) -> FinishedSearch:
    """The search of searchutil.SHARED_SEARCH (4 trials: complete and failed ones), run once per session, with
    MLflow; the tests that only read a finished search share it."""
    work = tmp_path_factory.mktemp("finished-search")
    gpnas(work, "search", "--config", str(write_config(work, "shared", **SHARED_SEARCH)), timeout=600)
    return FinishedSearch(work, work / "runs" / "shared", "shared")
