"""gpnas fidelity: the rank statistics against closed forms, and the command end to end on a tiny real search
(real Ray, real SQLite study, real MLflow store), killed half-way and resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from searchutil import FinishedSearch, copy_search, gpnas, start_cli, wait_for

from gpnas.results.fidelity_report import analyze, candidate_table, markdown


def _rows(proxy0: list[float], proxy1: list[float], ref: list[float], gflops: list[float]) -> list[dict]:
    rows = []
    for i, (a, b, r, g) in enumerate(zip(proxy0, proxy1, ref, gflops, strict=True)):
        common = {"label": f"c{i}", "arch_id": f"a{i}", "state": "complete", "gflops": g, "params": g * 10,
                  "gp_max_sgp": float(i)}
        rows += [{**common, "kind": "proxy", "seed": 0, "ap": a, "ap_last2": a, "val_loss": 1 - a},
                 {**common, "kind": "proxy", "seed": 1, "ap": b, "ap_last2": b, "val_loss": 1 - b},
                 {**common, "kind": "reference", "seed": 0, "ap": r}]
    return rows


def test_perfect_proxy_ranks_like_the_reference_and_beats_size() -> None:
    ref = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    report = analyze(_rows([x / 2 for x in ref], [x / 3 for x in ref], ref, [6, 5, 4, 3, 2, 1]), (0, 1))
    assert report["spearman"] == pytest.approx(1.0) and report["kendall"] == pytest.approx(1.0)
    assert report["seed_spearman"] == pytest.approx(1.0)
    # the val loss falls as AP rises here: lower loss ranks higher
    assert report["spearman_val_loss"] == pytest.approx(1.0) and report["seed_spearman_val_loss"] == pytest.approx(1.0)
    assert report["baselines"]["gflops"] == pytest.approx(-1.0)  # here bigger is worse
    assert report["baselines"]["gp_max_sgp"] == pytest.approx(1.0)
    assert report["top_k"] == 1 and report["top_k_overlap"] == 1.0
    assert report["verdict"].startswith("the proxy ranks these candidates as the longer training does")


def test_reversed_proxy_is_called_out_against_the_size_baseline() -> None:
    ref = [0.1, 0.2, 0.3, 0.4, 0.5]
    report = analyze(_rows(ref[::-1], [0.3, 0.1, 0.5, 0.2, 0.4], ref, [1, 2, 3, 4, 5]), (0, 1))
    assert report["spearman"] == pytest.approx(-1.0)
    assert report["seed_spearman"] == pytest.approx(-0.3)  # closed form: 1 - 6·Σd²/(n(n²-1)), Σd² = 26
    assert report["best_size_spearman"] == pytest.approx(1.0)
    assert "does NOT rank these candidates better than GFLOPs/params" in report["verdict"]
    assert "| c0 |" in markdown(report, {"proxy": "3 steps"})


def test_a_failed_run_leaves_its_candidate_out_by_name() -> None:
    rows = _rows([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [1, 2, 3])
    rows[-1] = {**rows[-1], "state": "timeout", "ap": math.nan}
    report = analyze(rows, (0, 1))
    assert report["incomplete"] == ["c2"] and len(candidate_table(rows, (0, 1))) == 2
    assert "too few completed candidates" in report["verdict"]


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_the_study_panel_is_the_proxy_studys_and_its_size_band_holds() -> None:
    """`gpnas fidelity --panel study` trains the very candidates of benchmarks/proxy_study.py (its committed panel
    file), and the size-matched ones are within ±15 % of their median GFLOPs."""
    import statistics

    from gpnas.experiments.fidelity import STUDY_PANEL_FILE, panel
    from gpnas.objectives.complexity import measure_complexity

    specs = panel("study")
    saved = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "data" /
                        "proxy_study_panel.json").read_text())
    assert list(specs) == list(saved) and len(specs) == 20
    assert all(specs[name].to_dict() == saved[name] for name in saved)
    matched = json.loads(STUDY_PANEL_FILE.read_text())["size_matched"]
    gflops = {n: measure_complexity(specs[n]).gflops for n in matched}
    median = statistics.median(gflops.values())
    assert len(matched) >= 10 and all(abs(g / median - 1) <= 0.15 for g in gflops.values()), gflops


@pytest.mark.slow  # the session's real search, then trainings in a subprocess killed and resumed
def test_fidelity_of_a_tiny_search_writes_its_report_and_resumes_after_sigkill(finished_search: FinishedSearch,
                                                                              tmp_path: Path) -> None:
    """On a copy of the session's finished search (fidelity writes into the folder and its MLflow store), two of
    its candidates: killed once a run was trained, resumed, then shown again without training."""
    folder = copy_search(finished_search, tmp_path / "runs")
    runs = folder / "fidelity" / "runs.jsonl"
    # the reference budget 15 × 4 steps: 60 steps, as before the search was shared (20 × 3 then)
    args = ["fidelity", str(folder), "--factor", "15", "--workers", "1", "--candidates", "2"]

    # killed half-way: two search trials stand for the proxy runs of seed 0, plus at least one trained run
    proc = start_cli(tmp_path, *args, log="fidelity")
    try:
        wait_for(lambda: runs.is_file() and len(runs.read_text().splitlines()) >= 3, 300, "a trained fidelity run",
                 proc, every=0.1)
    finally:
        proc.kill()
    before = runs.read_text().splitlines()
    assert 3 <= len(before) < 6, proc.output()

    report = json.loads(gpnas(tmp_path, *args, "--json").stdout)
    after = runs.read_text().splitlines()
    assert after[: len(before)] == before  # nothing done before the kill was trained again
    keys = [f"{r['label']}|{r['kind']}|{r['seed']}" for r in map(json.loads, after)]
    assert len(keys) == len(set(keys)) == 6  # 2 candidates × (2 proxy seeds + 1 reference)
    recorded = [json.loads(line) for line in after if "recorded_from_trial" in line]
    assert len(recorded) == 2 and {r["seed"] for r in recorded} == {0}
    assert report["n_candidates"] == 2 and len(report["candidates"]) == 2
    assert {"spearman", "kendall", "seed_spearman", "baselines", "verdict"} <= report.keys()
    for name in ("fidelity.json", "fidelity.md", "scatter.png", "plan.json"):
        assert (folder / "fidelity" / name).is_file(), name

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(finished_search.name)
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`gpnas.role` = 'search'")[0]
    fid = client.search_runs([exp.experiment_id], filter_string="tags.`gpnas.role` = 'fidelity'")
    assert len(fid) == 1 and fid[0].info.run_id == report["mlflow_run_id"]
    assert fid[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    names = {a.path for a in client.list_artifacts(fid[0].info.run_id)}
    assert {"fidelity.json", "fidelity.md", "scatter.png"} <= names

    # the terminal table of a finished fidelity run comes back at once, without training
    table = gpnas(tmp_path, *args).stdout
    assert "proxy fidelity" in table and "verdict" in table and "0 to train" in table
