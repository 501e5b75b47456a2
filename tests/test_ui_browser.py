"""`gpnas ui` in a real headless browser: the link it prints opens the runs table (not the GenAI overview) with
AP, GFLOPs, latency, params and is_pareto as columns. The check itself is benchmarks/ui_check.py (also a script);
this test builds a tiny search through the real MlflowTracker, serves it with `gpnas ui`, opens the printed link
in headless Chromium and reads the rendered page."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ui_check.py"


def _ui_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpnas_ui_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_the_printed_link_opens_the_runs_table_with_the_search_columns(tmp_path: Path) -> None:
    check = _ui_check()
    if check.find_chromium() is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH (CI installs chromium in .ci/run)")
    shot = tmp_path / "gpnas-ui.png"
    found = check.check(shot, tmp_path / "work", bare=False)
    print(json.dumps(found, indent=2))  # shown by pytest on failure

    assert "#/experiments/" in found["link"] and "viewStateShareKey=gpnas-trials" in found["link"]
    assert found["runs_table"], "the link did not render the runs table"
    assert found["genai_markers"] == [], "the link opened the GenAI pages"
    assert found["missing"] == [], f"columns missing from the runs table: {found['missing']}"
    assert found["trial_rows"] == [f"trial {i:04d} {arch}" for i, (arch, *_) in enumerate(check.TRIALS)]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from mlflow.tracking import MlflowClient

    folder = tmp_path / "work" / "runs" / "uicheck"
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("uicheck")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    search_run = client.search_runs([experiment.experiment_id], "tags.`gpnas.role` = 'search'")[0]
    assert "report/pareto.html" in search_run.data.tags["mlflow.note.content"]
    pareto = {r.data.tags["arch_id"] for r in client.search_runs([experiment.experiment_id], "tags.is_pareto = 'true'")}
    assert pareto == {"arch-a", "arch-b", "arch-d"}  # arch-c is dominated by arch-b (less AP, more GFLOPs)
