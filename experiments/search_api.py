"""Library side of `gpnas search / resume / demo`: wire the config, the tracker and the runner together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpnas.experiments.config import SearchConfig, load_config
from gpnas.experiments.runner import SearchOutcome, run_search


def make_tracker(cfg: SearchConfig, enabled: bool) -> Any:
    """The MLflow tracker (checked reachable before any training), or None when disabled."""
    if not enabled:
        return None
    from gpnas.results.tracking import MlflowTracker

    return MlflowTracker.connect(cfg)


def start_search(cfg: SearchConfig, *, console: Any, mlflow: bool = True, resume: bool = False) -> SearchOutcome:
    tracker = make_tracker(cfg, mlflow)
    outcome = run_search(cfg, resume=resume, console=console, tracker=tracker)
    summarise(outcome, cfg, console, tracker)
    return outcome


def resume_search(search: str, *, root: str = "runs", address: str | None = None, console: Any,
                  mlflow: bool = True) -> SearchOutcome:
    from gpnas.experiments.study import open_search

    folder, cfg = open_search(search, root)
    overrides = [f"storage.root={folder.parent}"]
    if address:
        overrides.append(f"ray_address={address}")
    cfg = load_config(folder / "config.yaml", overrides)
    return start_search(cfg, console=console, mlflow=mlflow, resume=True)


def run_demo(*, root: str = "runs", console: Any) -> SearchOutcome:
    cfg = load_config("demo", [f"storage.root={root}"])
    exists = (cfg.search_dir() / "study.db").is_file()
    return start_search(cfg, console=console, resume=exists)


def summarise(outcome: SearchOutcome, cfg: SearchConfig, console: Any, tracker: Any) -> None:
    """The closing lines: counts, the Pareto front, and where to look."""
    from gpnas.experiments.study import search_status
    from rich.table import Table

    info = search_status(outcome.folder, cfg)
    console.print(f"\nsearch [bold]{cfg.name}[/] finished: {info['trials']}")
    try:
        from gpnas.results.export import pareto_rows

        rows = pareto_rows(outcome.folder, cfg)
    except ImportError:
        rows = []
    if rows:
        table = Table("trial", "arch_id", "ap", "gflops", "latency_ms", title="Pareto front")
        for r in rows:
            table.add_row(str(r["trial_id"]), r["arch_id"], f"{r['ap']:.4f}", f"{r['gflops']:.4f}",
                          f"{r['latency_ms']:.3f}" if r.get("latency_ms") is not None else "-")
        console.print(table)
    if tracker is not None:
        console.print(tracker.how_to_open())
    console.print(f"export the front: gpnas export {Path(outcome.folder)} --pick pareto --out exported/{cfg.name}")
