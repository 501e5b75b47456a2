"""Helpers of the end-to-end search tests: a small search config, the CLI as a user runs it, its status."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

GPNAS = [sys.executable, "-m", "gpnas.experiments.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "GPNAS_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def gpnas(tmp_path: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*GPNAS, *args], capture_output=True, text=True, env=cli_env(tmp_path), timeout=timeout,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def status_json(tmp_path: Path, folder: Path) -> dict:
    return json.loads(gpnas(tmp_path, "status", str(folder), "--json").stdout)
