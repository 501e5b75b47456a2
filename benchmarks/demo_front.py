"""The demo's front: its size, its GFLOPs span, its wall time, and whether two runs give the same front.

With ``--runs N`` (default 2) it runs the packaged demo N times, each into a fresh root, timing each; with
``--compare DIR DIR ...`` it reads demo folders made before (e.g. by two `make demo`), taking each search's wall
time from its MLflow search run. Then it prints every trial (arch_id, AP, val loss, GFLOPs) side by side and the
fronts.
Targets: >= 10 trials, a front of >= 3 members spanning >= 3x in GFLOPs, <= 10 minutes, the same front twice.

    .venv/bin/python benchmarks/demo_front.py [--runs 2 | --compare runs/demo /tmp/other/demo]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import tempfile
import time
from pathlib import Path

from gpnas.experiments.config import load_config
from gpnas.experiments.search_api import open_search
from gpnas.results.front import front_summary
from gpnas.results.study import load_study, records


def run_demo(root: Path) -> tuple[Path, float]:
    from rich.console import Console

    from gpnas.experiments.search_api import run_demo as demo

    start = time.perf_counter()
    outcome = demo(root=str(root), console=Console(quiet=True))
    return outcome.folder, time.perf_counter() - start


def mlflow_wall_seconds(folder: Path) -> float:
    """Start to end of the search's MLflow run (ms timestamps the search itself recorded)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo")
    run = client.search_runs([exp.experiment_id], filter_string="tags.`gpnas.role` = 'search'")[0]
    return (run.info.end_time - run.info.start_time) / 1000


def summary(folder: Path) -> dict:
    search_folder, cfg = open_search(folder)
    recs = records(load_study(search_folder, cfg.name))
    front = front_summary(recs, cfg.objectives, cfg.constraints.model_dump()).front
    trials = {r.number: (r.arch_id, r.state, r.metric("ap"), r.metric("val_loss"), r.metric("gflops")) for r in recs}
    gflops = [trials[n][4] for n in front]
    span = max(gflops) / min(gflops) if gflops else float("nan")
    return {"trials": trials, "front": sorted(front), "span": span}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--compare", type=Path, nargs="+", help="demo folders made before")
    args = parser.parse_args()
    from gpnas.objectives.latency import cpu_name

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    print(f"machine: {cpu_name()}; {os.cpu_count()} CPUs; date {datetime.datetime.now():%Y-%m-%d %H:%M}; "
          f"commit {commit}")
    cfg = load_config("demo")
    print(f"demo: {cfg.budget.num_trials} trials, {cfg.budget.max_concurrent} at once, train {cfg.train.budget_label()}"
          f", objectives {list(cfg.objectives)}\n")
    runs: list[tuple[Path, float, str]] = []
    if args.compare:
        runs = [(f.resolve(), mlflow_wall_seconds(f.resolve()), "search run in MLflow") for f in args.compare]
    else:
        for _ in range(args.runs):
            folder, seconds = run_demo(Path(tempfile.mkdtemp(prefix="gpnas-demo-")))
            runs.append((folder, seconds, "run_demo, timed here"))
    sums = [summary(folder) for folder, _, _ in runs]
    for i, ((folder, seconds, how), s) in enumerate(zip(runs, sums, strict=True)):
        print(f"run {i + 1}: {folder}: wall {seconds / 60:.2f} min ({how}); front trials {s['front']}, "
              f"{len(s['front'])} members spanning {s['span']:.2f}x in GFLOPs")
    print(f"\n{'trial':>5s} " + " ".join(f"{'arch_id (run ' + str(i + 1) + ')':>16s} {'AP':>8s} {'val loss':>8s} "
                                        f"{'GFLOPs':>7s}" for i in range(len(sums))))
    numbers = sorted(set().union(*(s["trials"] for s in sums)))
    for n in numbers:
        cells = []
        for s in sums:
            arch, state, ap, loss, gf = s["trials"].get(n, ("-", "-", float("nan"), float("nan"), float("nan")))
            cells.append(f"{arch:>16s} {ap:8.4f} {loss:8.4f} {gf:7.4f}" + ("" if state == "complete" else f" {state}"))
        print(f"{n:5d} " + " ".join(cells))
    same_trials = all(s["trials"] == sums[0]["trials"] for s in sums[1:])
    same_front = all(s["front"] == sums[0]["front"] for s in sums[1:])
    print(f"\nsame candidates and scores in every run: {same_trials}; same front: {same_front}")
    ok = [len(s["trials"]) >= 10 and len(s["front"]) >= 3 and s["span"] >= 3 for s in sums]
    print(f"targets (>= 10 trials, front >= 3 members spanning >= 3x GFLOPs): {ok}; "
          f"wall <= 10 min: {[round(sec / 60, 2) <= 10 for _, sec, _ in runs]}")


if __name__ == "__main__":
    main()
