"""Multi-fidelity search on a tabulated benchmark: hypervolume vs training work for random search, TPE with every
candidate trained to the end, TPE + ASHA on AP, and TPE + MO-ASHA (gpnas's successive halving by Pareto rank).

The table (``benchmarks/data/demo_curves.jsonl``, made by ``benchmarks/record_curves.py``) holds real AP-vs-steps
curves of candidates of the demo space, each trained once by the search's own trainer for 600 steps (the full
budget here), with COCO AP at 75, 150, 300, 450 and 600 steps. A search "trains" a candidate by reading its curve,
so the methods differ only in what they choose to train and for how long; the decisions are made by the same
:class:`gpnas.experiments.successive_halving.SuccessiveHalving` a real search uses, with rungs at 150 and 300
steps (``early_stopping: {type: mo-asha, min_budget: 150, reduction_factor: 2}`` with ``train.steps: 600``).

Protocol:
- objectives: AP (max, at 600 steps) and GFLOPs (min) — the demo's; hypervolume reference AP 0 and 1.1 × the
  table's largest GFLOPs; only candidates trained to 600 steps count on the front (as in a search);
- work: optimiser steps spent, pruned trials included; the budget is ``--full`` full trainings (default 12 of
  the table's 32 candidates); one worker (trials run one after another: asynchronous SH with one worker);
- TPE is Optuna's (multivariate, group, 6 start-up trials, as the demo) over the demo space's real genes; its
  proposal is replaced by the nearest candidate of the table not yet tried (genes differing; ties by table
  order) and told under that candidate's parameters; a pruned trial is told PRUNED (as a search tells it);
- ``--seeds`` seeds per method (default 10); figures are means (± sd) over seeds.

Targets (issue 14): MO-ASHA reaches the final hypervolume of TPE without early stopping with <= 50 % of the work,
and beats ASHA on AP at equal work.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpnas.experiments.successive_halving import SuccessiveHalving
from gpnas.results.pareto import hypervolume

TABLE = Path(__file__).parent / "data" / "demo_curves.jsonl"
FULL = 600
RUNGS = (150, 300)
ETA = 2
DIRS = ["maximize", "minimize"]


class Table:
    def __init__(self, path: Path) -> None:
        self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for r in self.rows:
            r["ap_at"] = {int(c["step"]): float(c["ap"]) for c in r["curve"]}
        self.reference = [0.0, 1.1 * max(r["gflops"] for r in self.rows)]

    def __len__(self) -> int:
        return len(self.rows)

    def values(self, idx: list[int]) -> np.ndarray:
        return np.array([[self.rows[i]["ap_at"][FULL], self.rows[i]["gflops"]] for i in idx]).reshape(-1, 2)

    def hv(self, idx: list[int]) -> float:
        return hypervolume(self.values(idx), DIRS, self.reference) if idx else 0.0


def _distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k)))


# --------------------------------------------------------------------------------------------- proposers
class RandomProposer:
    def __init__(self, table: Table, seed: int) -> None:
        self.order = list(np.random.default_rng(seed).permutation(len(table)))

    def next(self, tried: set[int]) -> int | None:
        return next((i for i in self.order if i not in tried), None)

    def tell(self, idx: int, values: list[float] | None) -> None:
        return None


class TpeProposer:
    """Optuna TPE over the demo space; proposals snapped to the nearest untried table candidate."""

    def __init__(self, table: Table, seed: int) -> None:
        import optuna

        from gpnas.experiments.config import load_config
        from gpnas.experiments.runner import build_space

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.optuna, self.table = optuna, table
        self.space = build_space(load_config("demo"))
        self.study = optuna.create_study(directions=DIRS, sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=6, multivariate=True, group=True))
        self.dists = self._distributions()

    def _distributions(self) -> list[dict[str, Any]]:
        """Each candidate's Optuna distributions, as the space defines them for its parameters."""
        out = []
        for row in self.table.rows:
            scratch = self.optuna.create_study()
            scratch.enqueue_trial(row["params"])
            trial = scratch.ask()
            self.space.define(trial)
            out.append(dict(trial.distributions))
        return out

    def next(self, tried: set[int]) -> int | None:
        untried = [i for i in range(len(self.table)) if i not in tried]
        if not untried:
            return None
        trial = self.study.ask()
        self.space.define(trial)
        proposal = dict(trial.params)
        self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)  # replaced by the nearest candidate
        return min(untried, key=lambda i: (_distance(proposal, self.table.rows[i]["params"]), i))

    def tell(self, idx: int, values: list[float] | None) -> None:
        row = self.table.rows[idx]
        state = self.optuna.trial.TrialState.COMPLETE if values else self.optuna.trial.TrialState.PRUNED
        self.study.add_trial(self.optuna.trial.create_trial(params=row["params"], distributions=self.dists[idx],
                                                            values=values, state=state))


# --------------------------------------------------------------------------------------------- search
def run(table: Table, proposer: Any, halving: SuccessiveHalving | None, budget: float) -> list[tuple[float, float]]:
    """One search until ``budget`` steps are spent or the table is exhausted; -> [(work, hypervolume)]."""
    tried: set[int] = set()
    complete: list[int] = []
    work, curve = 0.0, [(0.0, 0.0)]
    while work < budget:
        idx = proposer.next(tried)
        if idx is None:
            break
        tried.add(idx)
        row = table.rows[idx]
        stopped_at = None
        for k, b in enumerate(halving.budgets if halving else ()):
            if work + b >= budget:  # the budget runs out before this rung: the trial ends unfinished
                stopped_at = b
                break
            entry = halving.decide(row["arch_id"], k, [row["ap_at"][b], row["gflops"]])  # type: ignore[union-attr]
            if entry.decision == "stop":
                stopped_at = b
                break
        if stopped_at is None and work + FULL > budget:
            stopped_at = budget - work
        if stopped_at is not None:
            work += min(stopped_at, budget - work)
            proposer.tell(idx, None)
        else:
            work += FULL
            complete.append(idx)
            proposer.tell(idx, [row["ap_at"][FULL], row["gflops"]])
        curve.append((work, table.hv(complete)))
    return curve


def hv_at(curve: list[tuple[float, float]], work: float) -> float:
    return max((h for w, h in curve if w <= work + 1e-9), default=0.0)


def methods(rungs: tuple[int, ...], eta: int) -> dict[str, Callable[[Table, int], tuple[Any, Any]]]:
    return {
        "random": lambda t, s: (RandomProposer(t, s), None),
        "tpe": lambda t, s: (TpeProposer(t, s), None),
        "tpe+asha(ap)": lambda t, s: (TpeProposer(t, s), SuccessiveHalving(rungs, eta, ("ap", "gflops"), mode="ap")),
        "tpe+mo-asha": lambda t, s: (TpeProposer(t, s), SuccessiveHalving(rungs, eta, ("ap", "gflops"), mode="mo")),
    }


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def diagnosis(table: Table) -> str:
    """How far early AP predicts the final AP (Spearman), and how wide the all-candidates front is."""
    from scipy.stats import spearmanr

    from gpnas.results.pareto import pareto_mask

    final = [r["ap_at"][FULL] for r in table.rows]
    steps = sorted(set.intersection(*(set(r["ap_at"]) for r in table.rows)) - {FULL})
    rho = ", ".join(f"{s}: {spearmanr([r['ap_at'][s] for r in table.rows], final)[0]:.2f}" for s in steps)
    size = spearmanr([r["gflops"] for r in table.rows], final)[0]
    front = int(pareto_mask(table.values(list(range(len(table)))), DIRS).sum())
    return (f"Spearman of AP at step s with AP at {FULL}: {rho} (GFLOPs: {size:.2f}); {front} of {len(table)} "
            "candidates are on the all-candidates front")


def simulate(table: Table, rungs: tuple[int, ...], eta: int, budget: float, seeds: int
             ) -> dict[str, list[list[tuple[float, float]]]]:
    """Every method's (work, hypervolume) curve per seed."""
    curves: dict[str, list[list[tuple[float, float]]]] = {}
    for name, make in methods(rungs, eta).items():
        curves[name] = []
        for seed in range(seeds):
            proposer, halving = make(table, seed)
            curves[name].append(run(table, proposer, halving, budget))
    return curves


def mean_hv(runs: list[list[tuple[float, float]]], work: float) -> float:
    return statistics.fmean(hv_at(c, work) for c in runs)


def reach(runs: list[list[tuple[float, float]]], target: float, budget: float) -> float | None:
    """The least work (share of ``budget``) at which the mean curve reaches ``target``; None if it does not."""
    grid = np.linspace(0, budget, 193)
    return next((w / budget for w in grid if mean_hv(runs, w) >= target - 1e-12), None)


def _share(x: float | None) -> str:
    return f"{x:.0%}" if x is not None else "> 100%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--full", type=float, default=12.0, help="work budget in full trainings (600 steps)")
    ap.add_argument("--table", type=Path, default=TABLE)
    ap.add_argument("--rungs", default=",".join(map(str, RUNGS)), help="rung budgets in steps (default 150,300)")
    ap.add_argument("--eta", type=int, default=ETA, help="reduction factor (default 2)")
    ap.add_argument("--no-sensitivity", action="store_true", help="only the main comparison")
    args = ap.parse_args()
    rungs = tuple(int(x) for x in args.rungs.split(","))
    table = Table(args.table)
    budget = args.full * FULL
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"gpnas multi-fidelity benchmark · {time.strftime('%Y-%m-%d %H:%M')} · commit {commit} · {cpu_name()}, "
          f"{os.cpu_count()} cores · Python {platform.python_version()}")
    print(f"table {args.table.name}: {len(table)} candidates of the demo space, AP at {FULL} steps "
          f"{min(r['ap_at'][FULL] for r in table.rows):.4f}..{max(r['ap_at'][FULL] for r in table.rows):.4f}; "
          f"all-candidates hypervolume {table.hv(list(range(len(table)))):.5f} (reference AP 0, GFLOPs "
          f"{table.reference[1]:.4f})")
    print(diagnosis(table))
    print(f"budget {args.full:g} full trainings = {budget:.0f} steps; rungs {rungs} (eta {args.eta}); "
          f"{args.seeds} seeds; one worker\n")
    fractions = (0.25, 0.375, 0.5, 0.75, 1.0)
    curves = simulate(table, rungs, args.eta, budget, args.seeds)
    print(f"{'method':14s}" + "".join(f"  HV @{f:>5.1%} work    " for f in fractions) + "  trained to end")
    means: dict[str, list[float]] = {}
    for name, runs in curves.items():
        cells, means[name] = [], []
        for f in fractions:
            hvs = [hv_at(c, f * budget) for c in runs]
            means[name].append(statistics.fmean(hvs))
            cells.append(f"{statistics.fmean(hvs):.5f} ± {statistics.stdev(hvs):.5f}")
        finished = statistics.fmean(sum(1 for (w0, _), (w1, _) in itertools.pairwise(c) if w1 - w0 == FULL)
                                    for c in runs)
        print(f"{name:14s}" + "".join(f"  {c:20s}" for c in cells) + f"  {finished:.1f}")
    target = means["tpe"][-1]
    print(f"\nfinal hypervolume of TPE without early stopping (100 % work): {target:.5f}")
    for name, runs in curves.items():
        per_seed = [next((w for w, h in c if h >= target - 1e-12), None) for c in runs]
        hit = [w / budget for w in per_seed if w is not None]
        print(f"  {name:14s} mean curve reaches it at {_share(reach(runs, target, budget))} of the work; seeds "
              f"reaching it: {len(hit)}/{len(runs)}" + (f" (median {statistics.median(hit):.0%})" if hit else ""))
    half = fractions.index(0.5)
    mo_reach = reach(curves["tpe+mo-asha"], target, budget)
    print(f"\ntarget 1 (MO-ASHA reaches TPE's final HV with <= 50 % of the work): "
          f"{'met' if mo_reach is not None and mo_reach <= 0.5 else 'NOT met'}")
    better = all(means["tpe+mo-asha"][i] >= means["tpe+asha(ap)"][i] for i in range(len(fractions)))
    print(f"target 2 (MO-ASHA beats ASHA on AP at equal work, mean HV at every work fraction above): "
          f"{'met' if better else 'NOT met'} ({means['tpe+mo-asha'][half]:.5f} vs {means['tpe+asha(ap)'][half]:.5f} "
          f"at 50 %)")
    if not args.no_sensitivity:
        sensitivity(table, args.seeds)
    return 0


def sensitivity(table: Table, seeds: int) -> None:
    """The same comparison for other rung settings and budgets (each row: its own TPE reference)."""
    print("\nsensitivity: mean HV at 50 % / 100 % of the work, and the work at which the mean curve reaches TPE's "
          "final HV")
    print(f"{'rungs':12s} {'eta':>3s} {'budget':>6s}  {'TPE final':>9s}  {'MO-ASHA 50%/100%':>17s} {'reach':>6s}  "
          f"{'ASHA(AP) 50%/100%':>17s} {'reach':>6s}")
    for rungs, eta in (((150, 300), 2), ((150,), 2), ((150,), 4), ((300,), 2), ((150, 300), 3)):
        for full in (8.0, 12.0, 16.0):
            budget = full * FULL
            curves = simulate(table, rungs, eta, budget, seeds)
            target = mean_hv(curves["tpe"], budget)
            cells = []
            for name in ("tpe+mo-asha", "tpe+asha(ap)"):
                runs = curves[name]
                cells.append(f"{mean_hv(runs, budget / 2):.5f}/{mean_hv(runs, budget):.5f} "
                             f"{_share(reach(runs, target, budget)):>6s}")
            print(f"{','.join(map(str, rungs)):12s} {eta:3d} {full:6g}  {target:9.5f}  {cells[0]}  {cells[1]}")


if __name__ == "__main__":
    raise SystemExit(main())
