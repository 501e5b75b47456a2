"""Does a gradient-path feature, a zero-cost proxy or a surrogate predict AP beyond model size, and does the
pre-screen save training work? On real trained candidates (committed data, no training here).

Data: the 64 candidates of the demo space in ``benchmarks/data/demo_curves.jsonl`` (each trained once for 600
steps by the search's own trainer; AP at 600 steps is the target) and their features known before training in
``benchmarks/data/demo_features.jsonl`` (``benchmarks/record_features.py``: size, structural gradient-path
metrics, gradient statistics at init, stage aggregates, zero-cost proxies — the pre-screen's own measurement).

Part 1, predictive power (out-of-fold Spearman ρ with AP at 600 steps, repeated 5-fold, 5 repeats):
- GFLOPs, params and each zero-cost proxy alone: their ρ (nothing is fitted, so in- and out-of-fold agree);
- the best single gp feature, chosen on the training folds only (sign included) and scored on the held-out fold;
- the surrogate (:mod:`gpnas.results.surrogate`: gradient boosting of depth-2 trees) on size alone, size + gp
  features, size + zero-cost proxies, and size + everything.
Target: the surrogate beats size alone by >= 0.1.

Part 2, hypervolume at equal training work (AP, GFLOPs; the reference of ``multi_fidelity.py``), ``--seeds``
seeds (default 10), ``--full`` trainings (default 12): TPE as in ``multi_fidelity.py`` (proposals snapped to the
nearest untried table candidate) training every proposal, against TPE with the pre-screen: each round the sampler
proposes ``--candidates`` candidates (default 4), the best ``--keep`` (default 1) are trained, the rest are
screened out (never trained, not told to TPE, not proposed again), ranked as a search ranks them
(:class:`gpnas.experiments.prescreen.Prescreen`: the surrogate fitted on the candidates trained so far, by the
hypervolume gain at the predicted AP, from 5 trained candidates on; or a zero-cost proxy by Pareto rank).
Work counts trainings only: measuring a candidate without training costs ~1 s against ~150 s of training (1 %).
Target: the pre-screen reaches the plain search's final hypervolume with <= 60 % of the training work.

    .venv/bin/python benchmarks/gp_prescreen.py [--seeds 10] [--full 12] [--candidates 4] [--keep 1]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import multi_fidelity as mf  # the tabulated benchmark's table and TPE proposer

from gpnas.experiments.prescreen import rank_by_hypervolume_gain, rank_by_proxy
from gpnas.objectives.zero_cost import ZERO_COST_NAMES
from gpnas.results.analysis_data import MIN_TRIALS, Row
from gpnas.results.surrogate import SIZE_INPUTS, cross_validate, design, fit_surrogate, rho

FEATURES = Path(__file__).parent / "data" / "demo_features.jsonl"
#: size in other units, not features
SIZE_ALIASES = ("gflops", "gflops_640", "params", "params_m", "params_fused")


# ------------------------------------------------------------------------------------------------ data
def load_rows(table: mf.Table) -> list[Row]:
    features = {r["arch_id"]: r["features"] for r in map(json.loads, FEATURES.read_text().splitlines()) if r}
    rows = []
    for i, t in enumerate(table.rows):
        f = features[t["arch_id"]]
        rows.append(Row(trial=i, search="demo-table", arch_id=t["arch_id"], gflops=float(f["gflops"]),
                        params=float(f["params"]), target=float(t["ap_at"][mf.FULL]),
                        features={k: float(v) for k, v in f.items() if k not in SIZE_ALIASES}))
    return rows


def informative(rows: list[Row], prefix: str) -> list[str]:
    """Features with that prefix that every row has and that are not constant."""
    names = sorted(set.intersection(*(set(r.features) for r in rows)))
    return [k for k in names if k.startswith(prefix) and np.ptp([r.features[k] for r in rows]) > 0]


# --------------------------------------------------------------------------------------- part 1: power
def best_single_oof(rows: list[Row], names: list[str], repeats: int = 5) -> tuple[float, dict[str, int]]:
    """OOF ρ of 'the best single feature', chosen (with its sign) on the training folds, predicted on the held-out
    fold by a least-squares line on the training folds; -> (ρ of the averaged OOF predictions, chosen counts)."""
    from sklearn.model_selection import KFold

    X, y = design(rows, names), np.array([r.target for r in rows])
    total, chosen = np.zeros(len(y)), {}
    for rep in range(repeats):
        for train, test in KFold(5, shuffle=True, random_state=rep).split(X):
            scores = [abs(rho(X[train, j], y[train])) if np.ptp(X[train, j]) > 0 else 0.0 for j in range(len(names))]
            j = int(np.nanargmax(scores))
            chosen[names[j]] = chosen.get(names[j], 0) + 1
            slope, icept = np.polyfit(X[train, j], y[train], 1)
            total[test] += slope * X[test, j] + icept
    return rho(total / repeats, y), chosen


def power(rows: list[Row]) -> list[tuple[str, float, str]]:
    """(what, ρ, note) rows of part 1."""
    y = np.array([r.target for r in rows])
    gp, zc = informative(rows, "gp_"), informative(rows, "zc_")
    out = [("GFLOPs", rho(np.array([r.gflops for r in rows]), y), "alone"),
           ("params", rho(np.array([r.params for r in rows]), y), "alone")]
    out += [(name, rho(np.array([r.features[name] for r in rows]), y), "alone, higher = better")
            for name in ZERO_COST_NAMES if name in zc]
    in_sample = max(gp, key=lambda k: abs(rho(np.array([r.features[k] for r in rows]), y)))
    best, chosen = best_single_oof(rows, gp)
    top = max(chosen, key=chosen.get)  # type: ignore[arg-type]
    out.append(("best single gp feature", best, f"chosen per fold; most often {top} ({chosen[top]}/25); "
                f"in-sample best {in_sample} ρ {rho(np.array([r.features[in_sample] for r in rows]), y):+.3f}"))
    for label, inputs in (("surrogate: size", []), ("surrogate: size + gp", gp), ("surrogate: size + zero-cost", zc),
                          ("surrogate: size + gp + zero-cost", gp + zc)):
        names = [*inputs, *SIZE_INPUTS]
        cv = cross_validate(design(rows, names), y, names)
        spread = f"repeats {min(cv.rho_repeats):+.3f}..{max(cv.rho_repeats):+.3f}"
        out.append((label, cv.rho, f"{len(names)} inputs; {spread}"))
    return out


def partial_table(rows: list[Row]) -> list[tuple[str, float, float, float]]:
    """(feature, partial ρ controlling GFLOPs and params, its p-value, raw ρ), largest |partial ρ| first."""
    from gpnas.results.analysis import partial_spearman

    y = np.array([r.target for r in rows])
    controls = np.array([[r.gflops, r.params] for r in rows])
    out = []
    for name in [*informative(rows, "gp_"), *informative(rows, "zc_")]:
        x = np.array([r.features[name] for r in rows])
        r, p = partial_spearman(x, y, controls)
        out.append((name, r, p, rho(x, y)))
    return sorted(out, key=lambda t: -abs(t[1]))


# ---------------------------------------------------------------------------------- part 2: pre-screen
def screened_run(table: mf.Table, rows: list[Row], seed: int, budget: int, candidates: int, keep: int,
                 score: str) -> list[tuple[float, float]]:
    """One search with the pre-screen; -> [(trainings, hypervolume)]."""
    tpe = mf.TpeProposer(table, seed)
    tried: set[int] = set()
    trained: list[int] = []
    curve: list[tuple[float, float]] = [(0.0, 0.0)]
    inputs = [*informative(rows, "gp_"), *informative(rows, "zc_")]
    while len(trained) < budget:
        screening = score != "surrogate" or len(trained) >= MIN_TRIALS
        proposals: list[int] = []
        for _ in range(candidates if screening else 1):
            idx = tpe.next(tried | set(proposals))
            if idx is None:
                break
            proposals.append(idx)
        if not proposals:
            break
        gflops = np.array([[rows[i].gflops] for i in proposals])
        if not screening:
            order = [0]
        elif score == "surrogate":
            model = fit_surrogate([rows[i] for i in trained], inputs=[*inputs, *SIZE_INPUTS], seed=0)
            predicted = model.predict([rows[i].inputs() for i in proposals])
            known = np.array([[rows[i].target, rows[i].gflops] for i in trained])
            order = list(rank_by_hypervolume_gain(np.hstack([predicted[:, None], gflops]), known,
                                                  ["ap", "gflops"])[0])
        else:
            proxy = np.array([[rows[i].features[score]] for i in proposals])
            order = list(rank_by_proxy(np.hstack([proxy, gflops]), [score, "gflops"]))
        tried |= set(proposals)
        for place, j in enumerate(order):
            if place >= keep or len(trained) >= budget:
                break
            idx = proposals[j]
            trained.append(idx)
            tpe.tell(idx, [table.rows[idx]["ap_at"][mf.FULL], table.rows[idx]["gflops"]])
            curve.append((float(len(trained)), table.hv(trained)))
    return curve


def plain_run(table: mf.Table, seed: int, budget: int) -> list[tuple[float, float]]:
    return mf.run(table, mf.TpeProposer(table, seed), None, budget * mf.FULL)


def to_trainings(curve: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(w / mf.FULL, h) for w, h in curve]


def reach(runs: list[list[tuple[float, float]]], target: float, budget: int) -> float | None:
    """The least work (share of the budget, in whole trainings) at which the mean curve reaches ``target``."""
    for k in range(budget + 1):
        if np.mean([mf.hv_at(c, k) for c in runs]) >= target - 1e-12:
            return k / budget
    return None


def header() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    return (f"# gp pre-screen · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · commit {commit} · "
            f"{mf.cpu_name()} · Python {platform.python_version()} (deterministic: no timing enters a figure)")


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*experimental feature.*")  # Optuna's note on TPE's group=True
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--full", type=int, default=12, help="training budget (full trainings)")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--keep", type=int, default=1)
    args = ap.parse_args()
    table = mf.Table(mf.TABLE)
    rows = load_rows(table)
    print(header())
    print(f"# {len(rows)} candidates of the demo space, AP at {mf.FULL} steps; "
          f"{len(informative(rows, 'gp_'))} gp features, {len(informative(rows, 'zc_'))} zero-cost proxies\n")
    print("part 1: out-of-fold Spearman ρ with AP (repeated 5-fold, 5 repeats)")
    results = power(rows)
    for what, value, note in results:
        print(f"  {what:34s} {value:+.3f}   {note}")
    by = {w: v for w, v, _ in results}
    best = max((w for w in by if w.startswith("surrogate:") and w != "surrogate: size"), key=lambda w: by[w])
    size = max(("GFLOPs", "params", "surrogate: size"), key=lambda w: by[w])
    delta, delta_fit = by[best] - by[size], by[best] - by["surrogate: size"]
    print(f"  -> best surrogate ({best.split(': ')[1]}) vs the same surrogate on size alone: {delta_fit:+.3f}; "
          f"vs the best size baseline ({size}): {delta:+.3f}")
    print(f"     target >= +0.10 over size alone: {'met' if delta >= 0.1 else 'not met'} against the best size "
          f"baseline, {'met' if delta_fit >= 0.1 else 'not met'} against the size-only surrogate\n")

    print("part 1b: partial Spearman with AP controlling GFLOPs and params (the 6 largest |partial ρ|)")
    for name, r, p, raw in partial_table(rows)[:6]:
        print(f"  {name:34s} partial {r:+.3f} (p {p:.3f})   raw ρ {raw:+.3f}")
    print(f"  (with {len(rows)} candidates and {len(informative(rows, 'gp_')) + len(informative(rows, 'zc_'))} "
          "features tested, p < 0.001 is the bar for one feature to stand out: Bonferroni at 0.05)\n")

    print(f"part 2: hypervolume at equal training work ({args.seeds} seeds, budget {args.full} trainings; "
          f"pre-screen: {args.candidates} proposals, {args.keep} trained)")
    plain = [to_trainings(plain_run(table, s, args.full)) for s in range(args.seeds)]
    target = float(np.mean([mf.hv_at(c, args.full) for c in plain]))
    methods: dict[str, list[list[tuple[float, float]]]] = {"tpe (no pre-screen)": plain}
    for score in ("surrogate", "zc_naswot", "zc_synflow"):
        methods[f"tpe + pre-screen ({score})"] = [
            screened_run(table, rows, s, args.full, args.candidates, args.keep, score) for s in range(args.seeds)]
    marks = sorted({max(1, round(args.full * f)) for f in (0.25, 0.5, 0.6, 0.75, 1.0)})
    print(f"  {'method':36s} " + " ".join(f"{f'HV@{k}':>9s}" for k in marks) + "   reaches plain final HV at")
    for name, runs in methods.items():
        hv = [float(np.mean([mf.hv_at(c, k) for c in runs])) for k in marks]
        share = reach(runs, target, args.full)
        where = f"{share:.0%} of the work" if share is not None else "not within the budget"
        print(f"  {name:36s} " + " ".join(f"{h:9.4f}" for h in hv) + f"   {where}")
    sd = float(np.std([mf.hv_at(c, args.full) for c in plain]))
    print(f"\n  sensitivity (surrogate): proposals/trained per round -> mean HV@{args.full}, share of work to reach "
          f"{target:.4f}")
    for n, k in ((2, 1), (4, 1), (4, 2), (8, 2)):
        runs = [screened_run(table, rows, s, args.full, n, k, "surrogate") for s in range(args.seeds)]
        share = reach(runs, target, args.full)
        print(f"    {n}/{k}: {np.mean([mf.hv_at(c, args.full) for c in runs]):.4f}, "
              + (f"{share:.0%}" if share is not None else "not within the budget"))
    print(f"\n  plain TPE final HV {target:.4f} ± {sd:.4f} (sd over seeds); target: a pre-screen reaches it with "
          "<= 60% of the work")
    return 0 if math.isfinite(target) else 1


if __name__ == "__main__":
    sys.exit(main())
