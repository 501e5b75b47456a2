"""Proxy fidelity on a panel of nano candidates (issue: proxy AP that ranks architectures).

Prints, on this machine:
1. ``nano``: the 12-candidate panel trained at the proxy budget (``--steps``, the search default) with ``--seeds``,
   and at ``--factor`` × that budget (the reference, seed 0): Spearman ρ and Kendall τ between proxy and reference
   AP, top-k overlap, seed-to-seed ρ at the proxy budget, the same for the mean of the last two evaluations, and
   the ρ of GFLOPs, params and every gp_* feature with the reference AP — against the targets ρ >= 0.8,
   seed-to-seed ρ >= 0.9 and a margin >= 0.1 over the best of GFLOPs/params;
2. ``cross-scale``: the same panel at ``--width`` × width and ``--img`` × input size, trained at the reference
   budget: does the nano ranking transfer upward?

Every run is appended to ``--out`` as it ends; rerunning the script resumes and reprints (the analysis alone
takes seconds once every run is there). Work budgets make every AP independent of the machine's load; only the
wall times printed depend on it.

    .venv/bin/python benchmarks/proxy_fidelity.py [--part nano|cross-scale|all] [--steps 300] [--factor 4]
        [--seeds 0 1] [--also 600] [--workers 2] [--out runs/bench-fidelity] [--set train.device=cuda] [--quick]

The cross-scale part costs about 16x the nano panel per step (2x width, 2x input): on 2 CPU cores that is most of
a day; run it on a GPU (``--set train.device=cuda --workers 1``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
from pathlib import Path

from gpnas.experiments.fidelity import panel, plan_from_panel, scaled
from gpnas.experiments.retrain import FidelityPlan, run_plan
from gpnas.results.fidelity_report import analyze, markdown


def header(args: argparse.Namespace) -> str:
    import torch

    from gpnas.objectives.latency import cpu_name

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = "?"
    return (f"machine: {cpu_name()}; {os.cpu_count()} CPUs; torch {torch.__version__}; {args.workers} runs at once, "
            f"one thread each\ndate: {datetime.datetime.now():%Y-%m-%d %H:%M}; commit {commit}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("nano", "cross-scale", "all"), default="nano")
    parser.add_argument("--steps", type=int, default=None, help="proxy budget (default: the search default)")
    parser.add_argument("--factor", type=float, default=4.0, help="reference budget = factor × proxy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds at the proxy budget")
    parser.add_argument("--width", type=float, default=2.0, help="cross-scale: width factor")
    parser.add_argument("--img", type=float, default=2.0, help="cross-scale: input-size factor")
    parser.add_argument("--also", type=int, nargs="*", default=[],
                        help="nano: other proxy budgets (steps), ranked against the same reference runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fidelity"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, e.g. train.device=cuda budget.max_concurrent=1")
    parser.add_argument("--quick", action="store_true", help="tiny data and budgets: a smoke test of the script")
    args = parser.parse_args()
    overrides = ["train.max_seconds=null", *args.set]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    if args.quick:
        overrides += ["train.steps=4", "train.batch_size=8", "data.n_train=48", "data.n_val=12"]
    print(header(args), flush=True)
    plan = plan_from_panel("nano", overrides=tuple(overrides), factor=args.factor, seeds=tuple(args.seeds))
    settings = {"proxy": plan.budget("proxy")["steps"], "reference": plan.budget("reference")["steps"],
                "seeds": list(plan.seeds), "batch": plan.cfg.train.batch_size,
                "data": f"digits {plan.cfg.data.n_train}/{plan.cfg.data.n_val}"}
    report = None
    if args.part in ("nano", "all"):
        rows = run_plan(plan, args.out / "nano", workers=args.workers, say=lambda s: print(s, flush=True))
        report = analyze(rows, plan.seeds)
        print("\n" + markdown(report, settings), flush=True)
        for steps in args.also:
            other = other_budget(plan, rows, steps, overrides, args)
            other_rows = run_plan(other, args.out / f"nano-{steps}", workers=args.workers,
                                  say=lambda s: print(s, flush=True))
            print("\n" + markdown(analyze(other_rows, other.seeds), {**settings, "proxy": steps}), flush=True)
    if args.part in ("cross-scale", "all"):
        big = scaled(panel("nano"), width=args.width, img=args.img)
        data = plan.cfg.model_dump(mode="json")
        data["train"]["steps"] = plan.budget("reference")["steps"]
        from gpnas.experiments.config import SearchConfig

        cfg = SearchConfig(**data)
        cross = FidelityPlan(big, cfg, factor=1.0, seeds=(plan.seeds[0],), reference_seeds=(),
                             source=f"panel nano at {args.width:g}x width, {args.img:g}x input")
        big_rows = run_plan(cross, args.out / "cross-scale", workers=args.workers, say=lambda s: print(s, flush=True))
        nano = report or analyze(run_plan(plan, args.out / "nano", workers=args.workers), plan.seeds)
        print("\n" + cross_scale_table(nano, big_rows), flush=True)


def other_budget(plan: FidelityPlan, rows: list[dict], steps: int, overrides: list[str],
                 args: argparse.Namespace) -> FidelityPlan:
    """The panel at another proxy budget against the same reference. The reference runs are copied, not trained
    again: same spec, seed and work budget give the same weights, which the identical job configs guarantee."""
    import json

    ref_steps = plan.budget("reference")["steps"]
    other = plan_from_panel("nano", overrides=(*overrides, f"train.steps={steps}"), factor=ref_steps / steps,
                            seeds=tuple(args.seeds))
    folder = args.out / f"nano-{steps}"
    folder.mkdir(parents=True, exist_ok=True)
    runs = folder / "runs.jsonl"
    if not runs.exists():
        copied = []
        for row in rows:
            if row["kind"] != "reference":
                continue
            job = {"label": row["label"], "kind": "reference", "seed": row["seed"]}
            assert other.job_config(job) == plan.job_config(job), "reference runs differ: they cannot be reused"
            copied.append(json.dumps(row))
        runs.write_text("".join(line + "\n" for line in copied))
    return other


def cross_scale_table(nano: dict, big_rows: list[dict]) -> str:
    from gpnas.results.fidelity_report import _rank_stats

    big = {r["label"]: r for r in big_rows if r["state"] == "complete"}
    rows = [e for e in nano["candidates"] if e["label"] in big]
    if len(rows) < 3:
        return "cross-scale: fewer than 3 candidates completed at both scales"
    large = [big[e["label"]]["ap"] for e in rows]
    lines = ["# Cross-scale", "", "| label | nano proxy AP | nano reference AP | large reference AP | large GFLOPs |",
             "|---|---|---|---|---|"]
    for e in sorted(rows, key=lambda e: -big[e["label"]]["ap"]):
        b = big[e["label"]]
        lines.append(f"| {e['label']} | {e['proxy_ap']:.4f} | {e['reference_ap']:.4f} | {b['ap']:.4f} | "
                     f"{b['gflops']:.3f} |")
    def rho(values: list[float]) -> float:
        return _rank_stats(values, large)[0]

    lines += ["", f"ρ(nano proxy, large reference) {rho([e['proxy_ap'] for e in rows]):.3f}",
              f"ρ(nano reference, large reference) {rho([e['reference_ap'] for e in rows]):.3f}",
              f"ρ(large GFLOPs, large reference) {rho([big[e['label']]['gflops'] for e in rows]):.3f}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
