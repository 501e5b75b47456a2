"""Library side of `gpnas search / resume / demo / status`: find a search, wire the config, the tracker and the
runner together, and summarise."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpnas.errors import ConfigError, SearchFailed
from gpnas.experiments.config import SearchConfig, load_config
from gpnas.results import study as st
from gpnas.results.folder import CONFIG_FILE, SearchFolder, folder_lock
from gpnas.results.front import front_summary
from gpnas.results.records import TrialRecord

if TYPE_CHECKING:  # the runner imports ray lazily; load it only when a search runs
    from rich.console import Console

    from gpnas.experiments.runner import SearchOutcome
    from gpnas.results.tracking import MlflowTracker

__all__ = ["open_search", "refine", "resume_search", "run_demo", "search_status", "start_search"]


def open_search(name_or_dir: str | Path, root: str | Path = "runs") -> tuple[SearchFolder, SearchConfig]:
    """A search folder (path) or a search name under ``root``; returns (folder, its saved SearchConfig)."""
    path = Path(name_or_dir)
    candidates = [SearchFolder(path), SearchFolder(Path(root) / str(name_or_dir))]
    for folder in candidates:
        if folder.config.is_file():  # the folder may have moved since: its location wins over the saved root
            return folder, load_config(folder.config, [f"storage.root={folder.path.parent}"])
    raise ConfigError(f"no search '{name_or_dir}': neither {candidates[0]} nor {candidates[1]} holds a "
                      f"{CONFIG_FILE} (give the search folder's path, or its name with --root)")


def search_status(folder: SearchFolder, cfg: SearchConfig) -> dict[str, Any]:
    """Counts by state, the budget, and the Pareto trial numbers (feasible complete trials only)."""
    recs = st.records(st.load_study(folder, cfg.name))
    summary = front_summary(recs, cfg.objectives, cfg.constraints.model_dump())
    return {"name": cfg.name, "folder": str(folder), "total": cfg.budget.num_trials, "finished": st.finished(recs),
            "trials": st.counts(recs), "pareto": summary.front, "knee": summary.knee,
            "hypervolume": summary.hypervolume, "objectives": list(cfg.objectives),
            "per_trial": [_trial_row(r, cfg.objectives) for r in recs]}


def _trial_row(rec: TrialRecord, objectives: tuple[str, ...]) -> dict[str, Any]:
    """One trial of `gpnas status --json`: its state, reason, objective values (a pruned trial's AP is its last
    rung's) and the successive-halving rungs it reached (budget, AP there, decision)."""
    return {"number": rec.number, "state": rec.state, "arch_id": rec.arch_id, "reason": rec.reason,
            **{o: rec.metric(o) if rec.result is not None and o in rec.result.metrics else None
               for o in objectives},
            "rungs": [{k: d[k] for k in ("budget", "ap", "decision")} for d in rec.rungs]}


def make_tracker(cfg: SearchConfig, enabled: bool) -> MlflowTracker | None:
    """The MLflow tracker (checked reachable before any training), or None when disabled."""
    if not enabled:
        return None
    from gpnas.results.tracking import MlflowTracker

    return MlflowTracker.connect(cfg.info())


def start_search(cfg: SearchConfig, *, console: Console, mlflow: bool = True, resume: bool = False) -> SearchOutcome:
    from gpnas.experiments.runner import run_search

    with folder_lock(cfg.folder()):  # before the MLflow store is touched: a second driver refuses cleanly
        tracker = make_tracker(cfg, mlflow)
        outcome = run_search(cfg, resume=resume, console=console, tracker=tracker)
        if cfg.refine.top > 0 and outcome.counts.get("complete", 0):
            _refine(cfg.folder(), cfg, console, tracker)
    summarise(outcome, cfg, console, tracker)
    if outcome.counts.get("complete", 0) == 0:
        ended = ", ".join(f"{n} {state}" for state, n in outcome.counts.items() if n)
        raise SearchFailed(f"search '{cfg.name}' spent its budget but no trial completed ({ended}); "
                           f"`gpnas status {outcome.folder} --json` lists each trial's reason")
    return outcome


def resume_search(search: str, *, root: str = "runs", address: str | None = None, console: Console,
                  mlflow: bool = True) -> SearchOutcome:
    folder, cfg = open_search(search, root)
    overrides = [f"storage.root={folder.path.parent}"]
    if address:
        overrides.append(f"ray_address={address}")
    cfg = load_config(folder.config, overrides)
    return start_search(cfg, console=console, mlflow=mlflow, resume=True)


def _refine(folder: SearchFolder, cfg: SearchConfig, console: Console, tracker: MlflowTracker | None,
            **settings: Any) -> dict[int, dict[str, Any]]:
    from gpnas.experiments.refine import refine_search

    refined = refine_search(folder, cfg, say=lambda line: console.print(line, markup=False, highlight=False),
                            **settings)
    if tracker is not None:
        tracker.finish_search(cfg.info())  # backfills trial runs; is_pareto and the report follow the refined front
        tracker.log_refined(cfg.info())
    return refined


def refine(search: str, *, root: str = "runs", console: Console, mlflow: bool = True,
           **settings: Any) -> dict[int, dict[str, Any]]:
    """`gpnas refine`: retrain the front of a finished search (settings override its ``refine`` section)."""
    folder, cfg = open_search(search, root)
    with folder_lock(folder):
        tracker = make_tracker(cfg, mlflow)
        if tracker is not None:
            tracker.start_search(cfg.info())
        refined = _refine(folder, cfg, console, tracker, **settings)
    if tracker is not None:
        console.print(tracker.how_to_open(), markup=False)
    return refined


def run_demo(*, root: str = "runs", console: Console) -> SearchOutcome:
    cfg = load_config("demo", [f"storage.root={root}"])
    exists = cfg.folder().study_db.is_file()
    return start_search(cfg, console=console, resume=exists)


def summarise(outcome: SearchOutcome, cfg: SearchConfig, console: Console, tracker: Any) -> None:
    """The closing lines: counts, the Pareto front, and where to look."""
    from rich.table import Table

    from gpnas.objectives.definitions import OBJECTIVES, format_value
    from gpnas.results.export import pareto_rows

    info = search_status(cfg.folder(), cfg)
    console.print(f"\nsearch {cfg.name} finished: {info['trials']}", markup=False)
    rows = pareto_rows(cfg.info())
    if rows:
        names = list(OBJECTIVES)  # every registered objective, AP first
        table = Table("trial", "arch_id", *names, title="Pareto front")
        for r in rows:
            table.add_row(str(r["trial_id"]), r["arch_id"], *(format_value(o, r[o]) for o in names))
        console.print(table)
    if tracker is not None:
        console.print(tracker.how_to_open(), markup=False)
    console.print(f"export the front: gpnas export {Path(outcome.folder)} --pick pareto --out exported/{cfg.name}",
                  markup=False)
