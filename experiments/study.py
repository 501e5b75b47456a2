"""The Optuna study of a search: the single source of truth (DESIGN.md).

Every ended trial has a row: COMPLETE (values; infeasible ones carry a violated constraint), PRUNED or FAIL, with
user attributes ``gpnas_state`` (complete / pruned / infeasible / failed / timeout / interrupted), ``reason``,
``arch_id`` and ``result`` (the TrialResult without the per-layer table, which lives in the trial folder).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpnas.experiments.evaluate import TrialResult

STUDY_FILE = "study.db"
COUNTED_STATES = ("complete", "pruned", "infeasible", "failed", "timeout")


def storage_url(folder: Path) -> str:
    return f"sqlite:///{(folder / STUDY_FILE).resolve()}"


def open_storage(folder: Path) -> Any:
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(storage_url(folder), engine_kwargs={"connect_args": {"timeout": 60}})


def load_study(folder: Path, name: str) -> Any:
    """The existing study of a search folder (read-only use)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=open_storage(folder))


@dataclass(frozen=True)
class TrialRecord:
    """One row of the study as gpnas sees it."""

    number: int
    state: str
    reason: str | None
    arch_id: str | None
    values: tuple[float, ...] | None
    result: TrialResult | None
    mlflow_run_id: str | None
    params: dict[str, Any]

    def metric(self, name: str) -> float:
        if self.result is None:
            return math.nan
        return float(self.result.metrics.get(name, math.nan))


def trial_record(trial: Any) -> TrialRecord:
    import optuna

    attrs = trial.user_attrs
    state = attrs.get("gpnas_state")
    if state is None:
        state = {optuna.trial.TrialState.RUNNING: "running", optuna.trial.TrialState.WAITING: "waiting",
                 optuna.trial.TrialState.PRUNED: "pruned", optuna.trial.TrialState.FAIL: "failed",
                 optuna.trial.TrialState.COMPLETE: "complete"}[trial.state]
    raw = attrs.get("result")
    result = TrialResult.from_dict(json.loads(raw)) if raw else None
    return TrialRecord(
        number=trial.number, state=state, reason=attrs.get("reason"), arch_id=attrs.get("arch_id"),
        values=tuple(trial.values) if trial.values else None, result=result,
        mlflow_run_id=attrs.get("mlflow_run_id"), params=dict(trial.params),
    )


def records(study: Any) -> list[TrialRecord]:
    return [trial_record(t) for t in study.get_trials(deepcopy=False)]


def counts(recs: list[TrialRecord]) -> dict[str, int]:
    out = {s: 0 for s in (*COUNTED_STATES, "running", "interrupted")}
    for r in recs:
        key = r.state if r.state in out else "running"
        out[key] += 1
    return out


def finished(recs: list[TrialRecord]) -> int:
    """Trials that used up budget (interrupted ones are re-run, so they do not)."""
    return sum(1 for r in recs if r.state in COUNTED_STATES)


def tell_result(study: Any, ot_trial: Any, result: TrialResult, objectives: tuple[str, ...],
                constraints: dict[str, float]) -> None:
    """Write a trial's ending to the study: state, values, constraints and the result (per-layer table excluded)."""
    import optuna

    compact = result.to_dict()
    compact.pop("gp_layers", None)
    ot_trial.set_user_attr("gpnas_state", result.state)
    ot_trial.set_user_attr("arch_id", result.arch_id)
    ot_trial.set_user_attr("reason", result.reason)
    ot_trial.set_user_attr("result", json.dumps(compact, default=str))
    state = {"complete": optuna.trial.TrialState.COMPLETE, "infeasible": optuna.trial.TrialState.COMPLETE,
             "pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL,
             # a partial AP must not teach the sampler: the study keeps it in the result, not as a value
             "timeout": optuna.trial.TrialState.FAIL}[result.state]
    values = None
    if state == optuna.trial.TrialState.COMPLETE:
        values = [0.0 if (o == "ap" and result.state == "infeasible") else v
                  for o, v in zip(objectives, result.objective_values(objectives), strict=True)]
        if any(math.isnan(v) for v in values):
            state, values = optuna.trial.TrialState.FAIL, None
            ot_trial.set_user_attr("gpnas_state", "failed")
            ot_trial.set_user_attr("reason", f"an objective is missing from the result ({objectives})")
        for key, value in constraints.items():
            ot_trial.set_constraint(key, value)
    study.tell(ot_trial, values, state=state)


def mark_interrupted(study: Any) -> list[dict[str, Any]]:
    """Trials left RUNNING by a killed driver: mark them FAIL ('interrupted') and return their params so the
    resumed search evaluates them again. WAITING (enqueued) trials stay: the next ``ask`` takes them."""
    import optuna

    requeue = []
    storage = study._storage  # optuna has no public API to end a trial another process asked for
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.params:
            requeue.append(dict(t.params))
        storage.set_trial_user_attr(t._trial_id, "gpnas_state", "interrupted")
        storage.set_trial_user_attr(t._trial_id, "reason", "the search driver stopped before this trial ended; "
                                                            "its candidate was re-queued on resume")
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return requeue


def open_search(name_or_dir: str | Path, root: str | Path = "runs") -> tuple[Path, Any]:
    """A search folder (path) or a search name under ``root``; returns (folder, its saved SearchConfig)."""
    from gpnas.experiments.config import load_config
    from gpnas.search_space.errors import ConfigError

    path = Path(name_or_dir)
    candidates = [path, Path(root) / str(name_or_dir)]
    for folder in candidates:
        if (folder / "config.yaml").is_file():
            return folder.resolve(), load_config(folder / "config.yaml")
    raise ConfigError(f"no search '{name_or_dir}': neither {candidates[0]} nor {candidates[1]} holds a "
                      "config.yaml (give the search folder's path, or its name with --root)")


def search_status(folder: Path, cfg: Any) -> dict[str, Any]:
    """Counts by state, the budget, and the Pareto trial numbers (feasible complete trials only)."""
    from gpnas.results.front import front_summary

    recs = records(load_study(folder, cfg.name))
    summary = front_summary(recs, cfg)
    return {"name": cfg.name, "folder": str(folder), "total": cfg.budget.num_trials, "finished": finished(recs),
            "trials": counts(recs), "pareto": summary.front, "knee": summary.knee,
            "hypervolume": summary.hypervolume, "objectives": list(cfg.objectives)}
