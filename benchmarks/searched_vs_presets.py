"""Searched vs hand-designed: does a search of the demo space find a candidate that beats the paper's nano models at
equal or lower cost, once both are trained long enough to tell?

    .venv/bin/python benchmarks/searched_vs_presets.py run       # search, refine, record, print (resumes)
    .venv/bin/python benchmarks/searched_vs_presets.py report    # the table and the figure from the file alone

``run``: the search ``experiments/configs/searched-vs-presets.yaml`` (the demo space widened so the four nano
presets are points of it; they are enqueued and scored by the same proxy; 24 trials), then ``gpnas refine
--top 1``: the proxy front and the four presets (the config's ``refine.include``) retrained at 8x the trial budget
(2,400 steps, the proxy study's reference budget) with 2 seeds. The search runs under ``runs/`` (not committed);
every search trial and every finished refinement run is appended to ``benchmarks/data/searched_vs_presets.jsonl``
(committed), and on a machine without the search folder the committed refinement runs are put back before
``gpnas refine`` runs, so no finished run is trained twice and the benchmark continues across sessions.

``report`` prints, for each preset, the best refined searched candidate at equal or lower GFLOPs and at equal or
lower predicted latency: AP mean ± sd over the seeds, the difference in seed standard deviations, GFLOPs, params
and latency; then the paper's family order at this scale; and writes ``benchmarks/results/searched_vs_presets.png``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data" / "searched_vs_presets.jsonl"
FIGURE = HERE / "results" / "searched_vs_presets.png"
CONFIG = REPO / "experiments" / "configs" / "searched-vs-presets.yaml"
NAME = "searched-vs-presets"
ROOT = REPO / "runs" / "bench"
PRESETS = ("yolor-v3-nano", "yolor-prn-nano", "yolor-csp-nano", "yolor-elan-nano")
GPNAS = [sys.executable, "-m", "gpnas.experiments.cli"]


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return out.stdout.strip() or "unknown"


def load_rows(path: Path = DATA) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(rows: list[dict[str, Any]]) -> None:
    DATA.parent.mkdir(parents=True, exist_ok=True)
    with DATA.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")


def gpnas(*args: str) -> None:
    print("$ gpnas " + " ".join(args), flush=True)
    # unbuffered: the command's progress lines reach a log file as they are printed, not in blocks at the end
    code = subprocess.run([*GPNAS, *args], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if code != 0:
        raise SystemExit(f"gpnas {' '.join(args)} exited with {code}")


# ------------------------------------------------------------------------------------------------ running
def record_trials(folder: Any, cfg: Any, stamp: dict[str, str]) -> dict[int, str]:
    """Append the search's trials not yet in the file; -> trial number -> arch_id."""
    from gpnas.results import study as st

    recs = st.records(st.load_study(folder, cfg.name), refined=False)
    named = cfg.named_points()  # arch_id -> preset name, as the search enqueued them
    rows = load_rows()
    have = {(r["number"], r["arch_id"]) for r in rows if r["kind"] == "trial"}
    numbers = {r["number"] for r in rows if r["kind"] == "trial"}
    new = []
    for rec in recs:
        if rec.state not in ("complete", "failed", "infeasible", "timeout", "pruned") or rec.result is None:
            continue
        if (rec.number, rec.arch_id) in have:
            continue
        if rec.number in numbers:
            print(f"WARNING: trial {rec.number} is {rec.arch_id} here but another architecture in {DATA} (a "
                  "search run on another CPU model?); its row is added beside the old one", flush=True)
        m = rec.result.metrics
        new.append({"kind": "trial", "number": rec.number, "arch_id": rec.arch_id, "state": rec.state,
                    "reason": rec.reason, "preset": named.get(rec.arch_id or ""),
                    **{k: m.get(k) for k in ("val_loss", "ap", "ap50", "gflops", "params", "latency_ms")},
                    "spec": rec.result.spec, **stamp})
    append(new)
    print(f"{len(new)} search trial(s) recorded in {DATA}", flush=True)
    return {r.number: r.arch_id for r in recs if r.arch_id}


def restore_refinement(folder: Any, arch_of: dict[int, str]) -> int:
    """Put the committed refinement runs of this search's trials (same number and arch_id) back into its refine
    folder, so `gpnas refine` does not train them again."""
    from gpnas.experiments.retrain import RUNS_FILE, key
    from gpnas.experiments.retrain import load_rows as plan_rows

    folder.refine.mkdir(parents=True, exist_ok=True)
    there = {key(r) for r in plan_rows(folder.refine)}
    back = [r["run"] for r in load_rows() if r["kind"] == "refine"
            and arch_of.get(r["number"]) == r["run"]["arch_id"] and key(r["run"]) not in there]
    with (folder.refine / RUNS_FILE).open("a") as f:
        for run in back:
            f.write(json.dumps(run) + "\n")
    return len(back)


def record_refinement(folder: Any, stamp: dict[str, str]) -> int:
    from gpnas.experiments.retrain import key
    from gpnas.experiments.retrain import load_rows as plan_rows

    have = {key(r["run"]) + "|" + r["run"]["arch_id"] for r in load_rows() if r["kind"] == "refine"}
    new = [{"kind": "refine", "number": int(r["label"].split("-")[1]), "run": r, **stamp}
           for r in plan_rows(folder.refine)
           if r["kind"] == "reference" and key(r) + "|" + r["arch_id"] not in have]
    append(new)
    return len(new)


def cmd_run(args: argparse.Namespace) -> int:
    from gpnas.experiments.config import load_config
    from gpnas.experiments.search_api import open_search

    root = args.root
    stamp = {"machine": machine(), "commit": commit(), "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}"}
    if (root / NAME / "config.yaml").is_file():
        gpnas("resume", NAME, "--root", str(root))
    else:
        load_config(CONFIG)  # a bad config stops here, before anything is written
        gpnas("search", "-c", str(CONFIG), f"storage.root={root}")
    folder, cfg = open_search(NAME, root)
    arch_of = record_trials(folder, cfg, stamp)
    restored = restore_refinement(folder, arch_of)
    if restored:
        print(f"{restored} refinement run(s) restored from {DATA}", flush=True)
    try:
        gpnas("refine", NAME, "--root", str(root), "--top", "1", "--workers", str(args.workers))
    finally:
        print(f"{record_refinement(folder, stamp)} refinement run(s) recorded in {DATA}", flush=True)
    return cmd_report(args)


# ------------------------------------------------------------------------------------------------ the table
def _latest_trials(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["kind"] == "trial":
            out[r["number"]] = r
    return out


def refined_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per refined trial: the trial's size and latency, AP mean and sd over the refinement seeds."""
    trials = _latest_trials(rows)
    runs: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        t = trials.get(r.get("number", -1))
        if r["kind"] == "refine" and t is not None and r["run"]["arch_id"] == t["arch_id"] \
                and r["run"]["state"] == "complete":
            runs.setdefault(r["number"], []).append(r["run"])
    points = []
    for number, done in sorted(runs.items()):
        aps = [float(x["ap"]) for x in sorted(done, key=lambda x: x["seed"])]
        t = trials[number]
        points.append({"number": number, "preset": t.get("preset"), "arch_id": t["arch_id"], "ap": aps,
                       "ap_mean": statistics.fmean(aps), "ap_sd": statistics.stdev(aps) if len(aps) > 1 else math.nan,
                       "val_loss": statistics.fmean(float(x["val_loss"]) for x in done),
                       "proxy_val_loss": t.get("val_loss"), "gflops": t["gflops"], "params": t["params"],
                       "latency_ms": t.get("latency_ms"), "block": t["spec"].get("block")})
    return points


def _fmt(p: dict[str, Any]) -> str:
    sd = f"{p['ap_sd']:.3f}" if math.isfinite(p["ap_sd"]) else "  -  "
    return (f"#{p['number']:<3d} {p['arch_id']}  AP {p['ap_mean']:.3f} ± {sd} (n={len(p['ap'])})  "
            f"{p['gflops']:.3f} GFLOPs  {p['params'] / 1e6:.3f} M params  {p['latency_ms']:.2f} ms")


def _versus(preset: dict[str, Any], best: dict[str, Any] | None) -> str:
    if best is None:
        return "    no refined searched candidate at or below it"
    pooled = math.sqrt((best["ap_sd"] ** 2 + preset["ap_sd"] ** 2) / 2) if len(best["ap"]) > 1 and \
        len(preset["ap"]) > 1 else math.nan
    diff = best["ap_mean"] - preset["ap_mean"]
    sds = f"{diff / pooled:+.1f} seed sd (pooled sd {pooled:.3f})" if pooled > 0 else "seed sd n/a"
    verdict = "BEATS it by > 2 seed sd" if pooled > 0 and diff > 2 * pooled else "not by > 2 seed sd"
    return f"    {_fmt(best)}\n    ΔAP {diff:+.3f} = {sds}: {verdict}"


def report_text(rows: list[dict[str, Any]]) -> str:
    points = refined_points(rows)
    trials = _latest_trials(rows)
    refine_runs = [r for r in rows if r["kind"] == "refine"]
    stamps = sorted({(r["machine"], r["commit"]) for r in rows})
    lines = [f"searched vs presets · printed {datetime.datetime.now():%Y-%m-%d %H:%M} at commit {commit()} · "
             f"{machine()}",
             f"{len(trials)} search trials, {len(refine_runs)} refinement runs recorded ({DATA.name})",
             *(f"  runs from {m} at commit {c}" for m, c in stamps), ""]
    if refine_runs:
        steps = sorted({int(r["run"]["steps"]) for r in refine_runs if r["run"].get("steps")})
        lines.append(f"refinement budget: {steps} optimiser steps; seeds per candidate: "
                     f"{sorted({len(p['ap']) for p in points})}; "
                     f"{sum(float(r['run'].get('evaluate_seconds') or 0) for r in refine_runs) / 60:.0f} core-minutes "
                     "(the runs' own evaluate seconds, one thread each)")
    presets = {p["preset"]: p for p in points if p["preset"]}
    searched = [p for p in points if not p["preset"]]
    lines.append(f"refined: {len(searched)} searched candidates, presets {sorted(presets)}")
    lines.append("")
    for name in PRESETS:
        p = presets.get(name)
        if p is None:
            lines.append(f"{name}: not refined yet")
            continue
        lines.append(f"{name}: {_fmt(p)}")
        for axis in ("gflops", "latency_ms"):
            at_most = [s for s in searched if s[axis] is not None and s[axis] <= p[axis]]
            best = max(at_most, key=lambda s: s["ap_mean"], default=None)
            lines.append(f"  best searched at <= its {axis}:")
            lines.append(_versus(p, best))
        lines.append("")
    lines.append("the paper's order at equal training (ELAN > CSP > PRN > v3), from the same long runs:")
    order = sorted(presets.values(), key=lambda p: -p["ap_mean"])
    lines.append("  " + " > ".join(f"{p['preset']} {p['ap_mean']:.3f}±{p['ap_sd']:.3f}" for p in order))
    if len(order) == len(PRESETS):
        holds = [p["preset"] for p in order] == ["yolor-elan-nano", "yolor-csp-nano", "yolor-prn-nano",
                                                 "yolor-v3-nano"]
        lines.append(f"  the paper's order {'holds' if holds else 'does not hold'} in the means; neighbours "
                     "closer than 2 pooled seed sd are not separated by this measurement:")
        for a, b in itertools.pairwise(order):
            pooled = math.sqrt((a["ap_sd"] ** 2 + b["ap_sd"] ** 2) / 2)
            lines.append(f"    {a['preset']} - {b['preset']}: ΔAP {a['ap_mean'] - b['ap_mean']:+.3f} = "
                         f"{(a['ap_mean'] - b['ap_mean']) / pooled:.1f} pooled seed sd" if pooled > 0 else
                         f"    {a['preset']} - {b['preset']}: ΔAP {a['ap_mean'] - b['ap_mean']:+.3f}")
    lines.append("")
    lines.append("all refined candidates (AP mean over seeds; proxy val loss from the search):")
    for p in sorted(points, key=lambda p: p["gflops"]):
        lines.append(f"  {_fmt(p)}  proxy val_loss {p['proxy_val_loss']:.3f}  {p['preset'] or p['block']}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    rows = load_rows()
    print(report_text(rows))
    points = refined_points(rows)
    if points:
        from gpnas.results.report import write_named_front_png

        write_named_front_png(points, FIGURE, title="searched (refined front, staircase) vs the nano presets")
        print(f"\nfigure: {FIGURE.relative_to(REPO)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="search, refine, record (resumes; skips recorded runs), then report")
    run.add_argument("--root", type=Path, default=ROOT)
    run.add_argument("--workers", type=int, default=2)
    sub.add_parser("report", help="the table and figure from the file alone")
    args = parser.parse_args()
    return {"run": cmd_run, "report": cmd_report}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
