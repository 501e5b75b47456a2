"""How far a proxy ranking agrees with a longer training: rank statistics, a verdict, a table and a scatter plot.

Input rows are plain dicts (one per training run: ``label``, ``kind`` = ``proxy`` | ``reference``, ``seed``,
``state``, ``ap``, ``ap50``, ``ap_last2`` = the mean of the last two evaluations, size and ``gp_*`` features), so
this module knows nothing of how they were made.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The targets the proxy is held to (benchmarks/proxy_fidelity.py): rank agreement with the reference budget,
#: seed-to-seed agreement at the proxy budget, and the margin over the best size baseline.
TARGET_RHO, TARGET_SEED_RHO, TARGET_MARGIN = 0.8, 0.9, 0.1
SIZE_BASELINES = ("gflops", "params")


def _rank_stats(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(Spearman ρ, Kendall τ) of two equally long sequences; NaN when fewer than 3 points or a constant side."""
    from scipy.stats import kendalltau, spearmanr

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan, math.nan
    return float(spearmanr(a, b).statistic), float(kendalltau(a, b).statistic)


def _top_k_overlap(proxy: Sequence[float], reference: Sequence[float], k: int) -> float:
    top = set(np.argsort(-np.asarray(proxy))[:k])
    ref = set(np.argsort(-np.asarray(reference))[:k])
    return len(top & ref) / k if k else math.nan


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def candidate_table(rows: Sequence[dict[str, Any]], proxy_seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One row per candidate whose runs all completed: proxy AP per seed, reference AP (mean over its seeds),
    size and gp_* features. Candidates with a failed or timed-out run are left out (listed by :func:`analyze`)."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    table = []
    for label, runs in by_label.items():
        if any(r["state"] != "complete" for r in runs):
            continue
        proxy = {r["seed"]: r for r in runs if r["kind"] == "proxy"}
        refs = [r for r in runs if r["kind"] == "reference"]
        if not refs or any(s not in proxy for s in proxy_seeds):
            continue
        first = proxy[proxy_seeds[0]]
        entry = {"label": label, "arch_id": first["arch_id"],
                 "proxy_ap": first["ap"], "proxy_ap_last2": first.get("ap_last2", first["ap"]),
                 "proxy_ap_mean": _mean([proxy[s]["ap"] for s in proxy_seeds]),
                 "reference_ap": _mean([r["ap"] for r in refs]),
                 **{f"proxy_ap_s{s}": proxy[s]["ap"] for s in proxy_seeds},
                 **{f"proxy_ap_last2_s{s}": proxy[s].get("ap_last2", proxy[s]["ap"]) for s in proxy_seeds},
                 **{f"proxy_ap50_s{s}": proxy[s].get("ap50", math.nan) for s in proxy_seeds},
                 # the val loss (the default search score), negated so that higher ranks better like AP
                 **{f"proxy_neg_val_loss_s{s}": -float(proxy[s].get("val_loss", math.nan)) for s in proxy_seeds}}
        entry.update({k: v for k, v in first.items() if k in SIZE_BASELINES or k.startswith("gp_")})
        table.append(entry)
    return sorted(table, key=lambda e: -e["reference_ap"])


def _seed_rho(table: Sequence[dict[str, Any]], seeds: Sequence[int], column: str) -> float:
    pairs = [_rank_stats([e[f"{column}_s{a}"] for e in table], [e[f"{column}_s{b}"] for e in table])[0]
             for a, b in itertools.combinations(seeds, 2)]
    return _mean(pairs)


def analyze(rows: Sequence[dict[str, Any]], proxy_seeds: Sequence[int]) -> dict[str, Any]:
    """Rank agreement of the proxy with the reference budget, seed-to-seed agreement, size and gp_* baselines,
    and a plain-words verdict. ``proxy_seeds[0]`` is the seed a search trains with."""
    table = candidate_table(rows, proxy_seeds)
    incomplete = sorted({r["label"] for r in rows} - {e["label"] for e in table})
    ref = [e["reference_ap"] for e in table]
    rho, tau = _rank_stats([e["proxy_ap"] for e in table], ref)
    k = max(1, len(table) // 4)
    features = sorted({k2 for e in table for k2 in e if k2 in SIZE_BASELINES or k2.startswith("gp_")})
    baselines = {}
    for name in features:
        values = [e.get(name, math.nan) for e in table]
        if all(v is not None and math.isfinite(v) for v in values):
            baselines[name] = _rank_stats(values, ref)[0]
    size_rho = [baselines[b] for b in SIZE_BASELINES if b in baselines and math.isfinite(baselines[b])]
    best_size = max(size_rho) if size_rho else math.nan
    report = {
        "n_candidates": len(table),
        "incomplete": incomplete,
        "proxy_seeds": list(proxy_seeds),
        "spearman": rho,
        "kendall": tau,
        "spearman_mean_of_seeds": _rank_stats([e["proxy_ap_mean"] for e in table], ref)[0],
        "spearman_last2": _rank_stats([e["proxy_ap_last2"] for e in table], ref)[0],
        "spearman_ap50": _rank_stats([e[f"proxy_ap50_s{proxy_seeds[0]}"] for e in table], ref)[0] if table
        else math.nan,
        "top_k": k,
        "top_k_overlap": _top_k_overlap([e["proxy_ap"] for e in table], ref, k) if table else math.nan,
        "seed_spearman": _seed_rho(table, proxy_seeds, "proxy_ap") if len(proxy_seeds) > 1 else math.nan,
        "seed_spearman_last2": (_seed_rho(table, proxy_seeds, "proxy_ap_last2") if len(proxy_seeds) > 1
                                else math.nan),
        "seed_spearman_ap50": _seed_rho(table, proxy_seeds, "proxy_ap50") if len(proxy_seeds) > 1 else math.nan,
        "spearman_val_loss": _rank_stats([e[f"proxy_neg_val_loss_s{proxy_seeds[0]}"] for e in table], ref)[0]
        if table else math.nan,
        "seed_spearman_val_loss": (_seed_rho(table, proxy_seeds, "proxy_neg_val_loss") if len(proxy_seeds) > 1
                                   else math.nan),
        "baselines": baselines,
        "best_size_spearman": best_size,
        "candidates": table,
    }
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict[str, Any]) -> str:
    """What a user may conclude, against the targets; an honest limit when the proxy does not rank."""
    rho, seed, size = report["spearman"], report["seed_spearman"], report["best_size_spearman"]
    if report["n_candidates"] < 3 or not math.isfinite(rho):
        return "too few completed candidates to rank (need at least 3 with every run complete)"
    checks = [f"ρ(proxy, reference) {rho:.2f} {'≥' if rho >= TARGET_RHO else '<'} {TARGET_RHO}"]
    if math.isfinite(seed):
        checks.append(f"seed-to-seed ρ {seed:.2f} {'≥' if seed >= TARGET_SEED_RHO else '<'} {TARGET_SEED_RHO}")
    if math.isfinite(size):
        margin = rho - size
        checks.append(f"margin over the best size baseline {margin:+.2f} {'≥' if margin >= TARGET_MARGIN else '<'} "
                      f"{TARGET_MARGIN}")
    ok = rho >= TARGET_RHO and (not math.isfinite(seed) or seed >= TARGET_SEED_RHO) and \
        (not math.isfinite(size) or rho - size >= TARGET_MARGIN)
    if ok:
        head = "the proxy ranks these candidates as the longer training does, and better than size alone"
    elif math.isfinite(size) and rho < size:
        head = ("the proxy does NOT rank these candidates better than GFLOPs/params alone: trust its front for "
                "size trade-offs, not for ordering close architectures; raise train.steps")
    else:
        head = "the proxy ranks these candidates only partly as the longer training does; raise train.steps"
    return f"{head} ({'; '.join(checks)})"


def format_value(value: Any) -> str:
    """4 decimals for a float, ``nan`` for an undefined statistic, ``str`` otherwise."""
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def markdown(report: dict[str, Any], settings: dict[str, Any]) -> str:
    """The report as a Markdown page: settings, summary, per-candidate table, baselines."""
    lines = ["# Proxy fidelity", "", f"Settings: {', '.join(f'{k} {v}' for k, v in settings.items())}", "",
             f"**Verdict:** {report['verdict']}", "", "| statistic | value |", "|---|---|"]
    for key in ("n_candidates", "spearman", "kendall", "spearman_mean_of_seeds", "spearman_last2", "spearman_ap50",
                "top_k", "top_k_overlap", "seed_spearman", "seed_spearman_last2", "seed_spearman_ap50",
                "spearman_val_loss", "seed_spearman_val_loss", "best_size_spearman"):
        lines.append(f"| {key} | {format_value(report[key])} |")
    if report["incomplete"]:
        lines += ["", f"Left out (a run failed or timed out): {', '.join(report['incomplete'])}"]
    seeds = report["proxy_seeds"]
    cols = ["label", "arch_id", *[f"proxy_ap_s{s}" for s in seeds], "proxy_ap_last2", "reference_ap", "gflops",
            "params"]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in report["candidates"]:
        lines.append("| " + " | ".join(format_value(e.get(c, "")) for c in cols) + " |")
    lines += ["", "| baseline feature | Spearman ρ with reference AP |", "|---|---|"]
    for name, rho in sorted(report["baselines"].items(), key=lambda kv: -abs(kv[1]) if math.isfinite(kv[1]) else 0):
        lines.append(f"| {name} | {format_value(rho)} |")
    return "\n".join(lines) + "\n"


def scatter_png(report: dict[str, Any], path: str | Path) -> Path:
    """Proxy AP (seed 0 and other seeds) and GFLOPs against reference AP, one labelled point per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    table = report["candidates"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    ref = [e["reference_ap"] for e in table]
    for i, seed in enumerate(report["proxy_seeds"]):
        axes[0].scatter([e[f"proxy_ap_s{seed}"] for e in table], ref, s=28 if i == 0 else 14,
                        alpha=1.0 if i == 0 else 0.5, label=f"proxy seed {seed}")
    for e in table:
        axes[0].annotate(e["label"], (e["proxy_ap"], e["reference_ap"]), fontsize=6, alpha=0.8)
    axes[0].set(xlabel="proxy AP", ylabel="reference AP (longer training)",
                title=f"ρ {format_value(report['spearman'])}, τ {format_value(report['kendall'])}")
    axes[0].legend(fontsize=7)
    if table and "gflops" in table[0]:
        axes[1].scatter([e["gflops"] for e in table], ref, s=28, color="tab:gray")
        axes[1].set(xlabel="GFLOPs", ylabel="reference AP",
                    title=f"size baseline ρ {format_value(report['baselines'].get('gflops', math.nan))}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
