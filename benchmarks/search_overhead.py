"""Orchestration overhead per trial of a real search (local Ray, SQLite study, MLflow store).

overhead per trial = (search wall time − Σ trial evaluate time) / trials, with one trial at a time so that wall
time and evaluate time are comparable. The search wall time counts from the first trial's scheduling to the
last trial's recording (Ray start-up and the closing report are printed separately). Targets: ≤ 2 s per trial
and ≤ 5 % of a 60-s trial.

    .venv/bin/python benchmarks/search_overhead.py [--trials 8] [--seconds 10] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from gpnas.experiments.config import load_config
from gpnas.experiments.runner import run_search
from gpnas.experiments.search_api import make_tracker
from gpnas.objectives.latency import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="training budget per trial")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpnas-overhead-"))
    cfg = load_config("demo", [f"storage.root={root}", "name=overhead", f"budget.num_trials={args.trials}",
                               "budget.max_concurrent=1", f"train.seconds={args.seconds}", "enqueue=[]"])
    console = Console(quiet=True)
    start = time.perf_counter()
    tracker = make_tracker(cfg, not args.no_mlflow)
    outcome = run_search(cfg, console=console, tracker=tracker)
    total = time.perf_counter() - start
    trials = max(1, outcome.ran)
    overhead = (outcome.seconds - outcome.evaluate_seconds) / trials
    print(f"machine: {cpu_name()}; search '{cfg.name}' with {outcome.ran} trials, one at a time, "
          f"train.seconds={args.seconds}, MLflow {'off' if args.no_mlflow else 'on (SQLite)'}")
    print(f"trial states: {outcome.counts}")
    print(f"search wall time (trials scheduled -> recorded): {outcome.seconds:8.2f} s")
    print(f"sum of trial evaluate times:                     {outcome.evaluate_seconds:8.2f} s")
    print(f"orchestration overhead per trial:                {overhead:8.2f} s   (target <= 2 s)")
    print(f"  as a share of a 60-s trial:                    {100 * overhead / 60:8.2f} %   (target <= 5 %)")
    print(f"whole command incl. Ray start-up and report:     {total:8.2f} s")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
