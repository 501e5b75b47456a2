"""`gpnas analyze`: which gradient-path property predicts AP once model size is accounted for.

Bigger models score higher AP at a fixed proxy budget almost regardless of their gradient paths, so a raw
correlation of a ``gp_*`` feature with AP mostly re-measures size. This module asks the question two ways:

* per feature, the **partial Spearman ρ** controlling for GFLOPs and params (rank every variable, regress the
  feature's and the target's ranks on the control ranks with an intercept, correlate the residuals; p-value from
  Student's t with n - 2 - k degrees of freedom), next to the plain ρ and the ρ of GFLOPs and params themselves;
* jointly, a **cross-validated surrogate** (results/surrogate.py) on features + size against one on size alone:
  the difference of their out-of-fold ρ is the headline, "gradient-path features add Δρ beyond size".

The rows come from results/analysis_data.py (one per distinct architecture; proxy or long-budget AP). The report
is a plain JSON-ready dict; results/analysis_report.py renders it as Markdown and a PNG.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpnas.results.analysis_data import MIN_TRIALS, Dataset, build_dataset
from gpnas.results.analysis_report import analysis_png, markdown
from gpnas.results.records import SearchInfo
from gpnas.results.surrogate import (
    CV_REPEATS,
    GBR_SETTINGS,
    MAX_FOLDS,
    SIZE_INPUTS,
    CrossValidation,
    Surrogate,
    cross_validate,
    fit_surrogate,
)

__all__ = ["CONTROLS", "MIN_TRIALS", "NEGLIGIBLE", "Surrogate", "analyze", "analyze_dataset", "build_dataset",
           "default_out", "feature_table", "fit_surrogate", "markdown", "partial_spearman", "rho_noise", "spearman",
           "verdict"]

CONTROLS = SIZE_INPUTS
#: a Δρ smaller than this (either sign) reads as "nothing beyond size"
NEGLIGIBLE = 0.05


# ------------------------------------------------------------------------------------------------ statistics
def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(ρ, two-sided p); NaN for fewer than 3 points or a constant side."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def _residual(ranks: np.ndarray, design: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design, ranks, rcond=None)
    return ranks - design @ coef


def partial_spearman(x: np.ndarray, y: np.ndarray, controls: np.ndarray) -> tuple[float, float]:
    """Spearman ρ of ``x`` [n] and ``y`` [n] with ``controls`` [n, k] held fixed, and its two-sided p-value.

    All variables are rank-transformed (ties get their mean rank); the ranks of x and y are each regressed on
    [1, control ranks] by least squares, and the Pearson r of the two residuals is returned, with
    t = r √((n - 2 - k) / (1 - r²)) on n - 2 - k degrees of freedom (p NaN when that is < 1). When x (or y) is
    entirely explained by the controls (e.g. a monotone function of GFLOPs) nothing is left to correlate: the
    partial ρ is 0 with p = 1, the honest answer to "what does it add beyond size"."""
    from scipy.stats import rankdata
    from scipy.stats import t as student_t

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    controls = np.asarray(controls, dtype=float).reshape(len(x), -1)
    n, k = controls.shape
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    design = np.column_stack([np.ones(n), *(rankdata(c) for c in controls.T)])
    rx, ry = rankdata(x), rankdata(y)
    ex, ey = _residual(rx, design), _residual(ry, design)
    tiny = 1e-9
    if np.linalg.norm(ex) <= tiny * np.linalg.norm(rx - rx.mean()) or \
            np.linalg.norm(ey) <= tiny * np.linalg.norm(ry - ry.mean()):
        return 0.0, 1.0
    r = float(np.clip(np.dot(ex - ex.mean(), ey - ey.mean())
                      / (np.linalg.norm(ex - ex.mean()) * np.linalg.norm(ey - ey.mean())), -1.0, 1.0))
    dof = n - 2 - k
    if dof < 1:
        return r, math.nan
    if abs(r) >= 1.0:
        return r, 0.0
    t = r * math.sqrt(dof / (1.0 - r * r))
    return r, float(2.0 * student_t.sf(abs(t), dof))


def rho_noise(n: int) -> float:
    """About one standard error of a Spearman ρ near 0 over n points (Fieller et al.: √(1.06 / (n - 3))): the
    size of a ρ (or Δρ) that n trials cannot tell from chance."""
    return math.sqrt(1.06 / (n - 3)) if n > 3 else math.inf


# ------------------------------------------------------------------------------------------------ the report
def _num(value: float) -> float | None:
    """JSON has no NaN: an undefined statistic is null."""
    return None if value is None or not math.isfinite(value) else float(value)


def feature_table(ds: Dataset) -> list[dict[str, Any]]:
    """Per feature: ρ and p with the target, partial ρ and p controlling for size; sorted by |partial ρ|."""
    y, controls = ds.column("target"), np.column_stack([ds.column(c) for c in CONTROLS])
    rows = []
    for name in ds.features:
        x = ds.column(name)
        r, p = spearman(x, y)
        pr, pp = partial_spearman(x, y, controls)
        rows.append({"feature": name, "rho": _num(r), "p": _num(p), "partial_rho": _num(pr), "partial_p": _num(pp)})
    return sorted(rows, key=lambda e: (-abs(e["partial_rho"]) if e["partial_rho"] is not None else 1.0,
                                       e["feature"]))


def verdict(delta: float | None, n: int, n_inputs: int, full: float | None, size: float | None,
            best: dict[str, Any] | None) -> str:
    """The headline in plain words, with the sampling noise of n trials attached."""
    if delta is None or full is None or size is None:
        return ("undefined: a surrogate predicted a constant (too few distinct targets); the per-feature table "
                "still holds")
    noise = rho_noise(n)
    where = f"surrogate ρ {full:.2f} vs size alone {size:.2f}"
    if delta >= NEGLIGIBLE:
        head = f"gradient-path features add {delta:.2f} in ρ beyond size ({where})"
        if delta < noise:
            head += f"; with {n} rows a ρ moves by about ±{noise:.2f} by chance, so this is a hint, not evidence"
    elif delta > -NEGLIGIBLE:
        head = f"gradient-path features add nothing beyond size (Δρ = {delta:+.2f}; {where})"
    else:
        head = (f"gradient-path features add nothing beyond size (Δρ = {delta:+.2f}; {where}): with {n_inputs} "
                f"inputs for {n} rows the extra features are noise to the surrogate")
    if best is not None and best["partial_rho"] is not None:
        p = best["partial_p"]
        head += (f". Strongest feature with size held fixed: {best['feature']} (partial ρ "
                 f"{best['partial_rho']:+.2f}, p {'n/a' if p is None else f'{p:.3g}'})")
    return head


def _cv_numbers(cv: CrossValidation) -> dict[str, Any]:
    return {"inputs": list(cv.inputs), "rho": _num(cv.rho), "rho_repeats": [_num(v) for v in cv.rho_repeats]}


def analyze_dataset(ds: Dataset, *, repeats: int = CV_REPEATS, seed: int = 0) -> dict[str, Any]:
    """The whole analysis of a dataset as a JSON-ready dict (undefined statistics are null)."""
    y = ds.column("target")
    inputs = (*ds.features, *SIZE_INPUTS)
    X = np.column_stack([ds.column(k) for k in inputs])
    full = cross_validate(X, y, inputs, repeats=repeats, seed=seed, importance=True)
    size = cross_validate(X[:, len(ds.features):], y, SIZE_INPUTS, repeats=repeats, seed=seed)
    delta = full.rho - size.rho
    per_repeat = np.array(full.rho_repeats) - np.array(size.rho_repeats)
    features = feature_table(ds)
    n = len(ds.rows)
    assert full.importance is not None
    report: dict[str, Any] = {
        "searches": list(ds.searches), "complete_trials": dict(ds.complete), "n_rows": n,
        "target": ds.target, "target_label": ds.target_label, "target_reason": ds.target_reason,
        "notes": list(ds.notes),
        "dropped_features": dict(ds.dropped),
        "features": features,
        "baselines": {c: dict(zip(("rho", "p"), map(_num, spearman(ds.column(c), y)), strict=True))
                      for c in CONTROLS},
        "surrogate": {"model": "GradientBoostingRegressor", "settings": {**GBR_SETTINGS, "random_state": seed},
                      "cv": {"folds": min(MAX_FOLDS, n), "repeats": repeats,
                             "seeds": [seed + r for r in range(repeats)]},
                      **_cv_numbers(full)},
        "size_only": _cv_numbers(size),
        "delta_rho": _num(delta), "delta_rho_sd_over_repeats": _num(float(per_repeat.std())),
        "rho_noise": _num(rho_noise(n)),
        "importance_units": "drop in Spearman ρ of the out-of-fold predictions when the input is shuffled",
        "importance": sorted(({"input": k, "rho_drop": _num(m), "sd": _num(s)} for k, (m, s) in
                              full.importance.items()), key=lambda e: -(e["rho_drop"] or 0.0)),
        "rows": [{"trial": r.trial, "search": r.search, "arch_id": r.arch_id, "merged": r.merged,
                  "gflops": r.gflops, "params": r.params, "target": r.target, "oof_surrogate": float(a),
                  "oof_size": float(b)} for r, a, b in zip(ds.rows, full.oof, size.oof, strict=True)],
    }
    report["verdict"] = verdict(report["delta_rho"], n, len(inputs), report["surrogate"]["rho"],
                                report["size_only"]["rho"], features[0] if features else None)
    return report


# ------------------------------------------------------------------------------------------------ writing
def default_out(searches: Sequence[SearchInfo]) -> Path:
    """``<search>/analysis`` for one search; ``<root>/analysis-<a>+<b>...`` (the first search's root) for several."""
    if len(searches) == 1:
        return searches[0].folder.path / "analysis"
    return searches[0].folder.path.parent / ("analysis-" + "+".join(s.name for s in searches))


def _tracker(search: SearchInfo) -> Any:
    """The MLflow tracker of the search's store (its tracking URI, or the folder's mlflow.db), or None."""
    if search.tracking_uri is None and not search.folder.mlflow_db.is_file():
        return None
    from gpnas.results.tracking import MlflowTracker

    return MlflowTracker.open(search.tracking_uri or search.folder.mlflow_uri, search.folder)


def analyze(searches: Sequence[SearchInfo], *, target: str = "auto", out: Path | None = None, mlflow: bool = True,
            repeats: int = CV_REPEATS, seed: int = 0) -> tuple[dict[str, Any], dict[str, Path]]:
    """Analyse one search (or pool several): write ``analysis.json``, ``analysis.md`` and ``analysis.png`` to
    ``out`` (default :func:`default_out`) and, with ``mlflow``, log them under ``analysis/`` of the (first)
    search's run with the headline metrics, when the search has an MLflow store (see :func:`_log` for a pooled
    analysis). A search given twice counts once. -> (report, name -> path); the report gains ``files`` and
    ``mlflow`` (where it was logged, or why not)."""
    unique = list({s.folder.path: s for s in searches}.values())
    ds = build_dataset(unique, target)
    tracker = _tracker(unique[0]) if mlflow else None  # an unreachable server fails before the work
    report = analyze_dataset(ds, repeats=repeats, seed=seed)
    out = Path(out) if out is not None else default_out(unique)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "analysis.json", "md": out / "analysis.md", "png": out / "analysis.png"}
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False))
    paths["md"].write_text(markdown(report), encoding="utf-8")
    analysis_png(report, paths["png"])
    report["files"] = {k: str(v) for k, v in paths.items()}
    if not mlflow:
        report["mlflow"] = {"logged": False, "why": "--no-mlflow"}
    elif tracker is None:
        report["mlflow"] = {"logged": False, "why": f"no MLflow store for search '{unique[0].name}' (no "
                                                    f"{unique[0].folder.mlflow_db.name}, no storage.tracking_uri)"}
    else:
        report["mlflow"] = _log(tracker, unique, report, paths, out)
    return report, paths


def _log(tracker: Any, searches: list[SearchInfo], report: dict[str, Any], paths: dict[str, Path],
         out: Path) -> dict[str, Any]:
    """Log to the first search's run. A pooled analysis goes under ``analysis/<out folder>`` without the
    headline metrics: they would overwrite the search's own analysis with numbers about other searches too."""
    pooled = len(searches) > 1
    headline = {} if pooled else {"analysis_surrogate_rho": report["surrogate"]["rho"],
                                  "analysis_size_rho": report["size_only"]["rho"],
                                  "analysis_delta_rho": report["delta_rho"]}
    where = f"analysis/{out.name}" if pooled else "analysis"
    run_id = tracker.log_analysis(searches[0], list(paths.values()), headline, artifact_path=where)
    if run_id is None:
        return {"logged": False, "why": f"{tracker.uri} holds no search run of '{searches[0].name}' for "
                                        f"{searches[0].folder.path} (`gpnas sync` makes it)"}
    return {"logged": True, "run_id": run_id, "uri": tracker.uri, "artifact_path": where,
            "metrics": sorted(headline)}
