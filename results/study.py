"""The Optuna study of a search: the single source of truth (DESIGN.md).

Every ended trial has a row: COMPLETE (values; infeasible ones carry a violated constraint), PRUNED or FAIL, with
user attributes ``gpnas_state`` (complete / pruned / infeasible / failed / timeout / interrupted; duplicate and
screened for proposals that were not trained), ``reason``,
``arch_id`` and ``result`` (the TrialResult without the per-layer table, which lives in the trial folder).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpnas.errors import ConfigError
from gpnas.objectives.definitions import get_objective
from gpnas.results.folder import SearchFolder
from gpnas.results.records import COUNTED_STATES, TrialRecord, TrialResult

if TYPE_CHECKING:
    import optuna

__all__ = ["counts", "finished", "load_study", "mark_interrupted", "open_storage", "records", "set_refined",
           "tell_result", "trial_record"]


def open_storage(folder: SearchFolder | Path) -> Any:
    """The study database of a search folder; a file that is not a readable Optuna database is a clear error."""
    import optuna
    import sqlalchemy.exc

    folder = SearchFolder(folder) if isinstance(folder, Path) else folder
    folder.path.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(folder.study_url, engine_kwargs={"connect_args": {"timeout": 60}})
    except (sqlalchemy.exc.DatabaseError, RuntimeError) as err:  # optuna wraps schema problems in RuntimeError
        detail = str(getattr(err, "orig", None) or err).splitlines()[0]
        raise ConfigError(f"{folder.study_db} is not a readable Optuna study database ({detail}); restore it from "
                          "a backup, or move the search folder away and start the search again") from None


def load_study(folder: SearchFolder | Path, name: str) -> Any:
    """The existing study of a search folder (read-only use)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(folder)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        where = SearchFolder(folder).study_db
        raise ConfigError(f"{where} holds no study '{name}': the search never started (a failed start leaves no "
                          "results); run `gpnas search` again") from None


def trial_record(trial: Any, refined: dict[str, Any] | None = None) -> TrialRecord:
    """The gpnas view of one study row; ``refined`` (the trial's entry of :func:`set_refined`) replaces its AP
    (and val loss) by the refined mean, keeping the search's own as ``ap_proxy`` (``val_loss_proxy``)."""
    import optuna

    attrs = trial.user_attrs
    state = attrs.get("gpnas_state")
    if state is None:
        state = {optuna.trial.TrialState.RUNNING: "running", optuna.trial.TrialState.WAITING: "waiting",
                 optuna.trial.TrialState.PRUNED: "pruned", optuna.trial.TrialState.FAIL: "failed",
                 optuna.trial.TrialState.COMPLETE: "complete"}[trial.state]
    raw = attrs.get("result")
    result = TrialResult.from_dict(json.loads(raw)) if raw else None
    if refined and result is not None:
        result.refined = refined
        result.metrics.update(ap_proxy=result.metrics.get("ap", math.nan), ap=refined["ap_mean"],
                              ap_sd=refined["ap_sd"], ap50_proxy=result.metrics.get("ap50", math.nan),
                              ap50=refined.get("ap50_mean", math.nan), refined=1.0)
        if "val_loss_mean" in refined:  # refined before val_loss was recorded: the proxy's stays
            result.metrics.update(val_loss_proxy=result.metrics.get("val_loss", math.nan),
                                  val_loss=refined["val_loss_mean"])
    return TrialRecord(
        number=trial.number, state=state, reason=attrs.get("reason"), arch_id=attrs.get("arch_id"),
        values=tuple(trial.values) if trial.values else None, result=result,
        mlflow_run_id=attrs.get("mlflow_run_id"), params=dict(trial.params),
        rungs=tuple(json.loads(attrs["rungs"])) if attrs.get("rungs") else (),
    )


def records(study: Any, *, refined: bool = True) -> list[TrialRecord]:
    """Every trial of the study; with ``refined``, refined trials carry their refined AP (:func:`set_refined`)."""
    done = json.loads(study.user_attrs.get("refined", "{}")) if refined else {}
    return [trial_record(t, done.get(str(t.number))) for t in study.get_trials(deepcopy=False)]


def set_refined(study: Any, number: int, refined: dict[str, Any]) -> None:
    """Record the refinement of trial ``number`` (mean and sd of AP over seeds at a larger budget). A finished
    trial's row cannot change in Optuna, so refinements live in one study attribute, by trial number."""
    done = json.loads(study.user_attrs.get("refined", "{}"))
    done[str(number)] = refined
    study.set_user_attr("refined", json.dumps(done))


def counts(recs: list[TrialRecord]) -> dict[str, int]:
    """Trials by state; ``waiting`` are queued candidates (enqueued, or re-queued after an interruption);
    ``duplicate`` are proposals of a candidate the study already held (the sampler was asked again);
    ``screened`` are proposals the pre-screen did not train (their scores and reason are in the study)."""
    out = {s: 0 for s in (*COUNTED_STATES, "running", "waiting", "interrupted", "duplicate", "screened")}
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
        values = [_told_value(o, v, result.state)
                  for o, v in zip(objectives, result.objective_values(objectives), strict=True)]
        if any(math.isnan(v) for v in values):
            state, values = optuna.trial.TrialState.FAIL, None
            ot_trial.set_user_attr("gpnas_state", "failed")
            ot_trial.set_user_attr("reason", f"an objective is missing from the result ({objectives})")
        for key, value in constraints.items():
            ot_trial.set_constraint(key, value)
    study.tell(ot_trial, values, state=state)


def _told_value(objective: str, value: float, state: str) -> float:
    """An infeasible candidate was never trained: its training objectives are told at their natural bound
    (AP 0), so the sampler learns that the region is poor without a made-up figure."""
    definition = get_objective(objective)
    if state == "infeasible" and definition.measured_by == "training" and definition.natural_bound is not None:
        return definition.natural_bound
    return value


def mark_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """Trials left RUNNING by a killed driver: mark them FAIL ('interrupted') and return their params so the
    resumed search evaluates them again. WAITING (enqueued) trials stay: the next ``ask`` takes them.

    ``storage`` is the study's storage (the one it was opened with, e.g. :func:`open_storage`): a trial another
    (dead) process asked for has no ``Trial`` handle here, and ``Study.tell`` cannot set user attributes, so
    its row is written through the storage's public interface, found by study name and trial number."""
    import optuna

    study_id = storage.get_study_id_from_name(study.study_name)
    requeue = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.params:
            requeue.append(dict(t.params))
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "gpnas_state", "interrupted")
        storage.set_trial_user_attr(trial_id, "reason", "the search driver stopped before this trial ended; its "
                                                        "candidate was re-queued on resume")
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    return requeue
