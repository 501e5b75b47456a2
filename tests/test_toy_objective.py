"""An objective added in two places — its definition and its stage — reaches every layer without further edits.

The toy ``energy_mj`` (a deterministic function of GFLOPs, minimised, measured by its own stage before training)
is registered by each test that needs it (and unregistered after) and runs through the real code paths: config
validation and its generated ``max_energy_mj`` constraint, ``evaluate_candidate`` (the stage runs in cost order,
the constraint stops an oversized candidate before training), the pre-screen, the study (directions, values,
constraints), the front, ``gpnas pareto``, ``gpnas export`` (manifest and a ``--pick`` condition on it), MLflow
(metrics, saved views) and the report.
A real Ray search is not used: its workers are other processes, which do not see a registration made here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from gpnas.errors import ConfigError
from gpnas.experiments.config import SearchConfig, load_config, save_config
from gpnas.experiments.evaluate import evaluate_candidate
from gpnas.experiments.stage_registry import Stage, StageContext, register_stage, stages_for, unregister_stage
from gpnas.objectives.definitions import (
    CONSTRAINTS,
    Objective,
    constraint_values,
    metric_names,
    register_objective,
    unregister_objective,
)
from gpnas.results import study as st
from gpnas.results.records import TrialRecord
from gpnas.search_space.presets import get_preset

ENERGY_PER_GFLOP = 2.0  # mJ: the toy's whole model
LIMIT_MJ = 0.1  # feasible: the two width-0.0625 nanos (~0.05 mJ); infeasible: the full csp-nano (~0.17 mJ)


@contextlib.contextmanager
def toy_objective(name: str = "energy_mj", stage: str = "energy") -> Iterator[None]:
    """Register ``name`` (minimised, bounded by ``max_<name>``) and the stage that measures it; undo both."""

    def measure(ctx: StageContext) -> dict[str, float]:
        return {name: ENERGY_PER_GFLOP * ctx.result.metrics["gflops"]}  # the size stage ran before (cost order)

    register_stage(Stage(stage, cost=20, before_training=True, run=measure))
    register_objective(Objective(name, "minimize", "mJ", "energy (mJ)", stage, constraint=f"max_{name}",
                                 fmt=".3f", description="toy: a fixed energy per GFLOP"))
    try:
        yield
    finally:
        unregister_objective(name)
        unregister_stage(stage)


@dataclass
class ToySearch:
    cfg: SearchConfig
    records: list[TrialRecord]
    study: optuna.Study


def _tiny_config(root: Path) -> SearchConfig:
    return load_config(None, [
        "name=toy", f"storage.root={root}", "objectives=[ap, gflops, energy_mj]",
        f"constraints.max_energy_mj={LIMIT_MJ}",
        "data.n_train=24", "data.n_val=8", "train.steps=2", "train.batch_size=8", "train.seconds=null",
        "latency.enabled=false", "gradient_path.at_init=false", "gradient_path.zero_cost=false",
        "gradient_path.measured=false"])


@pytest.fixture(scope="module")
def toy_search(tmp_path_factory: pytest.TempPathFactory) -> ToySearch:
    """Three candidates evaluated and recorded as the searcher's recorder records them: trial folder, study."""
    tmp = tmp_path_factory.mktemp("toy")
    with pytest.MonkeyPatch.context() as mp, toy_objective():  # registered while it runs; each test registers again
        mp.setenv("GPNAS_CACHE", str(tmp / "cache"))
        cfg = _tiny_config(tmp / "runs")
        folder = cfg.folder()
        save_config(cfg, folder.path)
        study = optuna.create_study(storage=st.open_storage(folder), study_name=cfg.name,
                                    directions=cfg.directions())
        specs = [get_preset("yolor-csp-nano").replace(width_multiple=0.0625),
                 get_preset("yolor-prn-nano").replace(width_multiple=0.0625), get_preset("yolor-csp-nano")]
        for spec in specs:
            result = evaluate_candidate(spec, cfg)
            trial = study.ask()
            limits = constraint_values(cfg.constraints.model_dump(), result.metrics)
            folder.write_trial(trial.number, result, spec.to_yaml())
            st.tell_result(study, trial, result, cfg.objectives, limits)
    return ToySearch(cfg, st.records(st.load_study(folder, cfg.name)), study)


def test_the_config_reads_the_objective_and_generates_its_constraint_key() -> None:
    with toy_objective():
        cfg = load_config(None, ["objectives=[ap, energy_mj]", "constraints.max_energy_mj=0.5"])
        assert cfg.directions() == ["maximize", "minimize"] and cfg.modes() == ["max", "min"]
        assert cfg.constraints.max_energy_mj == 0.5 and "max_energy_mj" in cfg.constraints.model_dump()
        assert "energy_mj" in metric_names()
        assert [s.name for s in stages_for(cfg)] == ["cheap", "energy", "latency", "training"]  # by cost
        with pytest.raises(ConfigError, match=r"unknown key 'constraints\.max_energy_m'; did you mean "
                                              r"'max_energy_mj'\?"):
            load_config(None, ["constraints.max_energy_m=1"])
        with pytest.raises(ConfigError, match=r"constraints\.max_energy_mj = 'lots' is invalid"):
            load_config(None, ["constraints.max_energy_mj=lots"])
    assert "max_energy_mj" not in CONSTRAINTS  # unregistered: the key and the stage are gone again
    with pytest.raises(ConfigError, match="energy_mj"):
        load_config(None, ["objectives=[ap, energy_mj]"])


def test_a_lower_bound_is_a_min_constraint() -> None:
    register_objective(Objective("score_x", "maximize", "", "score", "cheap", constraint="min_score_x"))
    try:
        assert constraint_values({"min_score_x": 0.5}, {"score_x": 0.2}) == {"min_score_x": pytest.approx(0.3)}
        assert constraint_values({"min_score_x": 0.5}, {"score_x": 0.9})["min_score_x"] < 0
        with pytest.raises(ConfigError, match="max_score_x"):  # a key that does not name its metric
            register_objective(Objective("score_x", "maximize", "", "score", "cheap", constraint="cap"))
    finally:
        unregister_objective("score_x")
    assert "min_score_x" not in CONSTRAINTS


def test_the_prescreen_measures_it_and_ranks_by_it(tmp_path: Path) -> None:
    from gpnas.experiments.prescreen import Prescreen

    with toy_objective():
        screen = Prescreen(_tiny_config(tmp_path))
        metrics = screen.measure(get_preset("yolor-csp-nano").replace(width_multiple=0.0625))
    assert screen.costs == ["gflops", "energy_mj"]  # the objectives known before training
    assert metrics["energy_mj"] == pytest.approx(ENERGY_PER_GFLOP * metrics["gflops"])


def test_evaluation_runs_the_stage_and_the_constraint_stops_training(toy_search: ToySearch) -> None:
    by_state = {r.state: r for r in toy_search.records}
    assert [r.state for r in toy_search.records] == ["complete", "complete", "infeasible"], \
        [r.reason for r in toy_search.records]
    for rec in toy_search.records:
        m = rec.result.metrics  # type: ignore[union-attr]
        assert m["energy_mj"] == pytest.approx(ENERGY_PER_GFLOP * m["gflops"])
    infeasible = by_state["infeasible"]
    assert "max_energy_mj exceeded" in (infeasible.reason or "")
    assert "ap" not in infeasible.result.metrics and not infeasible.result.history  # type: ignore[union-attr]


def test_the_study_is_told_the_objective_and_its_constraint(toy_search: ToySearch) -> None:
    study = toy_search.study
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]
    trials = study.get_trials(deepcopy=False)
    for trial, rec in zip(trials, toy_search.records, strict=True):
        assert trial.values[2] == pytest.approx(rec.result.metrics["energy_mj"])  # type: ignore[union-attr]
    assert trials[2].values[0] == 0.0  # infeasible: AP told at its natural bound
    assert trials[2].constraints["max_energy_mj"] > 0
    assert all(t.constraints["max_energy_mj"] <= 0 for t in trials[:2])


def test_pareto_and_export_show_it(toy_search: ToySearch, tmp_path: Path) -> None:
    from gpnas.results.export import export, pareto_rows

    cfg = toy_search.cfg
    with toy_objective():
        rows = pareto_rows(cfg.info())
        assert rows and all(r["energy_mj"] == pytest.approx(ENERGY_PER_GFLOP * r["gflops"]) for r in rows)
        smallest = min(rows, key=lambda r: r["energy_mj"])
        manifest = export(cfg.info(), f"energy_mj<{smallest['energy_mj'] + 1e-9}", tmp_path / "out")
        assert manifest["objectives"] == ["ap", "gflops", "energy_mj"]
        [entry] = manifest["architectures"]
        assert entry["arch_id"] == smallest["arch_id"] and entry["energy_mj"] == smallest["energy_mj"]
        assert json.loads((tmp_path / "out" / "manifest.json").read_text())["architectures"][0]["energy_mj"] > 0
        assert (tmp_path / "out" / f"{entry['arch_id']}.yaml").is_file()
        with pytest.raises(ConfigError, match="energy_mj"):  # the hint lists the registered figures
            export(cfg.info(), "joules<1", tmp_path / "none")


def test_the_pareto_command_has_a_column_for_it(toy_search: ToySearch, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpnas.experiments import cli_output
    from gpnas.experiments.cli import app

    # the command prints through a console made when cli_output was first imported (by whichever test came first),
    # which read the terminal's width then: COLUMNS below cannot widen it any more
    monkeypatch.setattr(cli_output.console, "width", 200)
    with toy_objective():
        out = CliRunner().invoke(app, ["pareto", str(toy_search.cfg.folder().path)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    header = next(line for line in out.output.splitlines() if "arch_id" in line)
    assert "energy_mj" in header and "gflops" in header


def test_mlflow_logs_it_shows_it_in_the_views_and_the_report(toy_search: ToySearch) -> None:
    from gpnas.results.tracking import MlflowTracker

    info = toy_search.cfg.info()
    with toy_objective():
        tracker = MlflowTracker.connect(info)
        tracker.start_search(info)
        for rec in toy_search.records:
            tracker.log_trial(rec)
        tracker.finish_search(info)
        experiment = tracker.client.get_experiment(str(tracker.experiment_id))
        for view in ("gpnas-trials", "gpnas-pareto"):
            state = json.loads(json.loads(experiment.tags[f"mlflow.sharedViewState.{view}"])["state"])
            assert "metrics.`energy_mj`" in state["selectedColumns"], view
        runs = tracker.run_ids()
        logged = tracker.client.get_run(runs[0]).data.metrics
        assert logged["energy_mj"] == pytest.approx(toy_search.records[0].result.metrics["energy_mj"])  # type: ignore[union-attr]
    report = info.folder.report
    assert "energy (mJ)" in (report / "pareto.html").read_text()
    assert "energy_mj (minimize)" in (report / "gp_correlations.md").read_text()
