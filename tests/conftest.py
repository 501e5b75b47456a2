"""Shared fixtures: seeded, CPU, quiet."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
