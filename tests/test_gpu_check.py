"""benchmarks/gpu_check.sh checks itself on a CPU machine: `--dry-run` parses every step's exact arguments (scripts,
gpnas command lines, config overrides, torchrun's) and its timeouts' sum, in under a minute; a bad argument fails
its step; the latency script it calls runs its eager path on a CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480


def _helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check_helper", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # every step's command parsed in a subprocess
def test_the_dry_run_checks_every_step_within_a_minute(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PY": sys.executable}
    start = time.perf_counter()
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=60, env=env, cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every step passed" in out.stdout and "failed" not in out.stdout and elapsed < 60
    total = int(re.search(r"timeouts: (\d+) s of (\d+) s", out.stdout).group(1))  # type: ignore[union-attr]
    assert total <= BUDGET_S
    for n in range(9):
        assert f"== {n}. " in out.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_a_bad_override_or_option_fails_to_parse(capsys: pytest.CaptureFixture[str]) -> None:
    helper = _helper()
    assert helper.parse(["config", "demo", "budget.gpus=0.5"]) == 1
    assert "did you mean 'gpu'" in capsys.readouterr().out.lower()
    assert helper.parse(["cli", "train", "yolor-elan-nano", "--epoch", "1", "--ouut", "x"]) == 1
    assert helper.parse(["cli", "nosuch"]) == 1
    assert helper.parse(["cli", "train", "yolor-elan-nano", "--epochs", "1", "---", "config", "demo",
                         "train.steps=100"]) == 0
    assert helper.imports(["json", "no_such_module_here"]) == helper.MISSING
    assert "no_such_module_here is not installed here" in capsys.readouterr().out


def test_the_latency_script_runs_its_eager_path_on_a_cpu(tmp_path: Path) -> None:
    result = tmp_path / "latency.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_latency.py"), "--presets", "yolor-v3-nano", "--device",
           "cpu", "--dtype", "fp32", "--img", "64", "--warmup", "1", "--repeats", "2", "--iters", "1",
           "--cuda-graph", "off", "--json", str(result)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(result.read_text())
    assert row["preset"] == "yolor-v3-nano" and row["launch"] == "eager" and row["median_ms"] > 0
    assert row["protocol"]["iters_per_repeat"] == 1 and row["protocol"]["cuda_graph"] is False
    assert "CV" in out.stdout and "goal <= 0.01" in out.stdout
    refused = subprocess.run([*cmd[:-4], "--cuda-graph", "on", "--parse-only"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "cuda_graph=True is not allowed on device='cpu'" in refused.stderr
