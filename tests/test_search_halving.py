"""Successive halving, refinement and resume in a real search (marked slow: real Ray, real study, real MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from searchutil import gpnas, kill_when, live_records, start_cli, status_json, write_config

pytestmark = pytest.mark.slow

GENES = {
    "block": {"choices": ["residual", "csp", "elan"]},
    "fusion": {"choices": ["both", "last"]},
    "mask_ratio": {"choices": [0.0, 0.5, 1.0]},
    "width_multiple": {"choices": [0.0625, 0.125]},
}


def test_mo_asha_prunes_promotes_survives_a_kill_and_refines_the_front(tmp_path: Path) -> None:
    from gpnas.results.study import load_study, records

    path = write_config(tmp_path, "halving", 6, train={"steps": 24, "batch_size": 8},
                        space={"base": "yolor-csp-nano", "genes": GENES},
                        early_stopping={"type": "mo-asha", "min_budget": 6, "reduction_factor": 2},
                        objectives=["ap", "gflops", "latency_ms"],
                        refine={"top": 1, "seeds": 2, "budget_multiplier": 1.5, "max_trials": 2})
    folder = tmp_path / "runs" / "halving"
    driver = start_cli(tmp_path, "search", "--config", str(path), log="halving")

    def killable() -> bool:
        """A trial was pruned and another one is running with rung decisions in the study. live_records reads
        the study only once the driver has created it: opening it earlier races the driver's own creation of the
        schema, and the driver lost that race under load (exit 2, 'not a readable Optuna study database')."""
        recs = live_records(folder, "halving")
        return any(r.state == "pruned" for r in recs) and any(r.state == "running" and r.rungs for r in recs)

    try:
        kill_when(driver, killable, 400, "a pruned trial and a running one with rung decisions")
    finally:
        if driver.alive():
            driver.kill()

    before = records(load_study(folder, "halving"))
    decided = {(r.arch_id, d["rung"]): d["decision"] for r in before for d in r.rungs}
    assert any(r.state == "pruned" for r in before), [(r.state, r.reason) for r in before]
    assert any(r.state == "running" for r in before), driver.output()  # the kill left a trial mid-way

    gpnas(tmp_path, "resume", str(folder), timeout=600)
    after = records(load_study(folder, "halving"))
    counted = [r for r in after if r.state not in ("interrupted", "duplicate")]
    assert len(counted) == 6 and all(r.state in ("complete", "pruned", "failed") for r in counted)
    # every decision taken before the kill stands (a re-run of an interrupted candidate got the same one)
    for r in after:
        for d in r.rungs:
            assert decided.get((r.arch_id, d["rung"]), d["decision"]) == d["decision"], (r.number, d)
    # the sampler continued: no candidate was trained twice (the interrupted ones were run once more)
    trained = [r.arch_id for r in counted]
    assert len(trained) == len(set(trained)), trained
    info = status_json(tmp_path, folder)
    rows = {row["number"]: row for row in info["per_trial"]}
    assert sum(info["trials"][s] for s in ("complete", "pruned", "failed")) == 6
    pruned = [row for row in rows.values() if row["state"] == "pruned"]
    assert pruned and all(row["reason"].startswith("stopped by mo-asha at rung") for row in pruned)
    assert all(row["ap"] is not None and row["rungs"][-1]["decision"] == "stop" for row in pruned)
    assert all(row["ap"] == row["rungs"][-1]["ap"] for row in pruned)
    top = [row for row in rows.values() if row["state"] == "complete" and len(row["rungs"]) == 2]
    assert top and all(d["decision"] == "promote" for row in top for d in row["rungs"])  # promoted to the top
    assert all(row["reason"] for row in rows.values() if row["state"] not in ("complete",))
    assert not set(info["pareto"]) & {row["number"] for row in pruned}

    # refined after the budget: the front shown and exported is the refined one, with >= 2 seeds
    front = json.loads(gpnas(tmp_path, "pareto", str(folder), "--json").stdout)
    assert front and all(r["refined"] and len(r["seeds"]) == 2 and "ap_proxy" in r for r in front)
    gpnas(tmp_path, "export", str(folder), "--pick", "pareto", "--out", str(tmp_path / "out"))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for arch in manifest["architectures"]:
        assert arch["refined"] and arch["seeds"] == [0, 1] and arch["metrics"]["refined"] == 1.0
        assert arch["ap"] == pytest.approx(sum(arch["ap_seeds"]) / 2)

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name("halving")
    runs = client.search_runs([exp.experiment_id], "tags.`gpnas.role` = 'trial'", max_results=100)
    states = {r.data.tags["gpnas.state"] for r in runs}
    assert "pruned" in states
    # the refined front's figure (AP ± sd over the seeds vs GFLOPs, a staircase) is on the search's own run
    (search_run,) = client.search_runs([exp.experiment_id], "tags.`gpnas.role` = 'search'", max_results=10)
    assert "report/refined_front.png" in {a.path for a in client.list_artifacts(search_run.info.run_id, "report")}
    for run in runs:
        if run.data.tags["gpnas.state"] == "pruned":
            history = client.get_metric_history(run.info.run_id, "rung_ap")
            assert history and run.data.tags["is_pareto"] == "false"
        if run.data.tags.get("refined") == "true":  # tagged as the refined front shown by `gpnas pareto`
            on_front = run.info.run_id in {r["run_id"] for r in front}
            assert run.data.tags["is_pareto"] == str(on_front).lower() and "ap_proxy" in run.data.metrics
