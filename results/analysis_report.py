"""The report of `gpnas analyze` (a dict made by results/analysis.py) as a Markdown page and a PNG figure.

Pure rendering: nothing here computes a statistic, so the page, the figure, the JSON and the terminal table can
never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["analysis_png", "fmt", "fmt_p", "markdown"]

#: the most features drawn in the bar chart (the table in the Markdown lists them all)
_MAX_BARS = 30


def fmt(value: Any, digits: int = 3) -> str:
    """A statistic for a table: ``n/a`` when undefined (null), fixed decimals for a float."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_p(value: float | None) -> str:
    """A p-value: three significant digits (a tiny one stays readable as 4.4e-06, not 0.000)."""
    return "n/a" if value is None else f"{value:.3g}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: verdict, the surrogate comparison, features sorted by |partial ρ|,
    permutation importances, what was left out and why."""
    s, z = report["surrogate"], report["size_only"]
    lines = [f"# What predicts AP beyond size: {' + '.join(report['searches'])}", "",
             f"**Verdict:** {report['verdict']}", "",
             f"- Rows: {report['n_rows']} distinct architectures (complete trials: "
             + ", ".join(f"{k} {v}" for k, v in report["complete_trials"].items()) + ")",
             f"- Target: {report['target_label']} ({report['target_reason']})",
             *(f"- {note}" for note in report["notes"]),
             f"- Sampling noise of a ρ over {report['n_rows']} rows: about ±{fmt(report['rho_noise'], 2)}",
             "", "## Surrogate (out-of-fold)", "",
             f"{s['model']} {s['settings']}; repeated {s['cv']['folds']}-fold CV × {s['cv']['repeats']} "
             f"(seeds {s['cv']['seeds']}); each row is predicted only by models that did not see it.", "",
             "| model | inputs | Spearman ρ (OOF) | ρ per repeat |", "|---|---|---|---|",
             f"| features + size | {len(s['inputs'])} | {fmt(s['rho'])} | "
             f"{', '.join(fmt(v, 2) for v in s['rho_repeats'])} |",
             f"| size only | {', '.join(z['inputs'])} | {fmt(z['rho'])} | "
             f"{', '.join(fmt(v, 2) for v in z['rho_repeats'])} |",
             f"| **Δρ** | | **{fmt(report['delta_rho'])}** | sd {fmt(report['delta_rho_sd_over_repeats'], 2)} |",
             "", "## Features, sorted by |partial ρ| (GFLOPs and params held fixed)", "",
             "| feature | ρ | p | partial ρ | partial p |", "|---|---|---|---|---|"]
    for name, b in report["baselines"].items():
        lines.append(f"| *{name} (baseline)* | {fmt(b['rho'])} | {fmt_p(b['p'])} | | |")
    for e in report["features"]:
        lines.append(f"| {e['feature']} | {fmt(e['rho'])} | {fmt_p(e['p'])} | {fmt(e['partial_rho'])} | "
                     f"{fmt_p(e['partial_p'])} |")
    lines += ["", f"## Permutation importance ({report['importance_units']})", "",
              "| input | ρ drop | sd over CV repeats |", "|---|---|---|"]
    lines += [f"| {e['input']} | {fmt(e['rho_drop'])} | {fmt(e['sd'])} |" for e in report["importance"]]
    if report["dropped_features"]:
        lines += ["", "## Features left out", ""]
        lines += [f"- {k}: {v}" for k, v in report["dropped_features"].items()]
    lines += ["", "p-values are per feature, not corrected for testing many features; ρ is a rank association, "
              "not a cause."]
    return "\n".join(lines) + "\n"


def analysis_png(report: dict[str, Any], path: str | Path) -> Path:
    """Left: ρ and partial ρ per feature (bars, strongest partial first). Right: out-of-fold predictions of the
    surrogate and of size alone against the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    baselines = [{"feature": f"{k} (baseline)", "rho": b["rho"], "partial_rho": None}
                 for k, b in report["baselines"].items()]
    feats = baselines + report["features"][:_MAX_BARS]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(4.5, 0.28 * len(feats) + 1.5)))
    pos = np.arange(len(feats))
    left.barh(pos - 0.2, [e["rho"] or 0.0 for e in feats], height=0.4, label="ρ with target", color="tab:gray")
    left.barh(pos + 0.2, [e["partial_rho"] or 0.0 for e in feats], height=0.4, label="partial ρ (size fixed)",
              color="tab:blue")
    left.set_yticks(pos, [e["feature"] for e in feats], fontsize=7)
    left.invert_yaxis()
    left.axvline(0, color="black", lw=0.6)
    left.set(xlim=(-1, 1), xlabel="Spearman ρ", title=f"features vs {report['target_label']}")
    left.legend(fontsize=7, loc="lower right")
    target = [r["target"] for r in report["rows"]]
    s, z = report["surrogate"], report["size_only"]
    right.scatter([r["oof_surrogate"] for r in report["rows"]], target, s=22,
                  label=f"features + size, ρ {fmt(s['rho'], 2)}")
    right.scatter([r["oof_size"] for r in report["rows"]], target, s=22, marker="x", color="tab:orange",
                  label=f"size only, ρ {fmt(z['rho'], 2)}")
    lo, hi = min(target), max(target)
    right.plot([lo, hi], [lo, hi], color="black", lw=0.6, alpha=0.5)
    right.set(xlabel="out-of-fold prediction", ylabel=report["target_label"],
              title=f"surrogate vs size alone: Δρ {fmt(report['delta_rho'], 2)} (n {report['n_rows']})")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
