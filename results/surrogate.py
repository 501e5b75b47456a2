"""A small surrogate that predicts AP from gradient-path features and size, cross-validated honestly.

Why gradient boosting of depth-2 trees, not a Gaussian process: a search leaves a dozen to a few hundred
complete trials. On synthetic searches of that size (target = f(size) + g(feature) + noise, 3-15 distractor
features), a GP with an ARD Matérn kernel and a white-noise term often explained the size-only inputs as noise at
n ≈ 12 and predicted a constant, so the size-only baseline collapsed and the difference looked like a gain from
the features (+0.34 in ρ with no signal at all). Boosted shallow trees kept Δρ ≈ 0 without signal (and went
negative with many distractors at n = 12: an honest cost of extra inputs), found the signal when it was there,
need no scaling of inputs that span 1e-2 (ratios) to 1e7 (params) — trees only see the order of each input —
and capture pairwise interactions (depth 2). 100 trees at learning rate 0.1 with row subsampling 0.8 keep each
tree weak (on the same synthetic searches they gave the same Δρ, to ±0.03, as 200 trees at 0.05, in half the
time); the settings are fixed, not tuned per search, so the cross-validated ρ is not optimistic.

Cross-validation is repeated K-fold (K = min(5, n), :data:`CV_REPEATS` repeats with seeds 0, 1, ...): every row
is predicted only by models that never saw it, and its out-of-fold (OOF) predictions are averaged over the
repeats. Permutation importance is measured on the same held-out predictions, in units of the **drop in the
Spearman ρ of the OOF predictions against the target** when one input is shuffled across rows (the unit of the
headline). Everything is seeded, so a report is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpnas.errors import ConfigError
from gpnas.results.analysis_data import MIN_TRIALS, Row, size_metric

__all__ = ["CV_REPEATS", "GBR_SETTINGS", "SIZE_INPUTS", "CrossValidation", "Surrogate", "cross_validate",
           "design", "fit_surrogate", "rho"]

GBR_SETTINGS: dict[str, Any] = {"n_estimators": 100, "max_depth": 2, "learning_rate": 0.1, "subsample": 0.8}
SIZE_INPUTS = ("gflops", "params")
CV_REPEATS, MAX_FOLDS, PERMUTATIONS = 5, 5, 5


def _model(seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(**GBR_SETTINGS, random_state=seed)


def rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman ρ; NaN for fewer than 3 points or a constant side (undefined, not zero)."""
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def _value(candidate: Mapping[str, float], key: str) -> float:
    return size_metric(candidate, key) if key in SIZE_INPUTS else float(candidate.get(key, math.nan))


@dataclass(frozen=True)
class Surrogate:
    """A fitted surrogate: ``features`` are its inputs in column order (gp_*/zc_* features, gflops, params)."""

    features: tuple[str, ...]
    model: Any

    def predict(self, candidates: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Predicted AP, shape [len(candidates)], for metric dicts (a TrialResult's ``metrics`` or
        :meth:`Row.inputs`) that hold every input; ``params`` may be given as ``params_m``."""
        if not candidates:
            return np.empty(0)
        X = np.array([[_value(c, k) for k in self.features] for c in candidates], dtype=float)
        if X.size and not np.isfinite(X).all():
            i, j = np.argwhere(~np.isfinite(X))[0]
            raise ConfigError(f"candidate {i} has no finite {self.features[j]!r}; this surrogate needs "
                              f"{', '.join(self.features)} (measure them before predicting, or fit a surrogate "
                              "on the inputs you have with fit_surrogate(rows, inputs=...))")
        return self.model.predict(X)


def _inputs(rows: Sequence[Row], inputs: Sequence[str] | None) -> tuple[str, ...]:
    if inputs is not None:
        return tuple(inputs)
    common = set.intersection(*(set(r.features) for r in rows)) if rows else set()
    return (*sorted(common), *SIZE_INPUTS)


def design(rows: Sequence[Row], inputs: Sequence[str]) -> np.ndarray:
    """The input matrix, shape [len(rows), len(inputs)]."""
    return np.array([[r.inputs()[k] for k in inputs] for r in rows], dtype=float)


def fit_surrogate(rows: Sequence[Row], *, inputs: Sequence[str] | None = None, seed: int = 0) -> Surrogate:
    """The surrogate fitted on all ``rows`` (no hold-out): for ranking unseen candidates, e.g. a pre-screen.
    ``inputs`` default to the features every row has plus gflops and params; give fewer to fit on what is
    known before training (structure and zero-cost proxies, not measured gradient statistics)."""
    if len(rows) < MIN_TRIALS:
        raise ConfigError(f"a surrogate needs at least {MIN_TRIALS} rows (distinct complete architectures), got "
                          f"{len(rows)}")
    names = _inputs(rows, inputs)
    missing = sorted({k for r in rows for k in names if k not in r.inputs()})
    if missing:
        raise ConfigError(f"inputs {missing} are missing from some rows; give inputs that every row has")
    model = _model(seed).fit(design(rows, names), np.array([r.target for r in rows], dtype=float))
    return Surrogate(features=names, model=model)


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold results of one surrogate: ``oof`` [n] (mean over repeats), its ρ with the target, the ρ of
    each repeat, and (when asked) input -> (mean, sd over repeats) of the permutation importance in ρ drop."""

    inputs: tuple[str, ...]
    oof: np.ndarray
    rho: float
    rho_repeats: tuple[float, ...]
    importance: Mapping[str, tuple[float, float]] | None = None


def _held_out(models: list[Any], fold_of: np.ndarray) -> Any:
    """An estimator that predicts row i (rows in their original order) with the model that did not see it,
    so sklearn's permutation_importance scores held-out predictions over all rows at once."""
    from sklearn.base import BaseEstimator, RegressorMixin

    class HeldOut(RegressorMixin, BaseEstimator):
        def fit(self, X: np.ndarray, y: np.ndarray) -> HeldOut:  # already fitted, fold by fold
            return self

        def predict(self, X: np.ndarray) -> np.ndarray:
            out = np.empty(len(X))
            for k, model in enumerate(models):
                mask = fold_of == k
                out[mask] = model.predict(X[mask])
            return out

    return HeldOut()


def _rho_score(estimator: Any, X: np.ndarray, y: np.ndarray) -> float:
    value = rho(estimator.predict(X), y)
    return 0.0 if math.isnan(value) else value


def cross_validate(X: np.ndarray, y: np.ndarray, inputs: Sequence[str], *, repeats: int = CV_REPEATS,
                   seed: int = 0, importance: bool = False) -> CrossValidation:
    """Repeated K-fold (K = min(5, n); repeat r shuffles with seed ``seed + r``) of the surrogate on X [n, p]
    -> y [n]; with ``importance``, sklearn's permutation importance on each repeat's held-out predictions."""
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import KFold

    n = len(y)
    total, per_repeat, drops = np.zeros(n), [], []
    for r in range(repeats):
        fold_of, models = np.empty(n, dtype=int), []
        for k, (train, test) in enumerate(KFold(min(MAX_FOLDS, n), shuffle=True, random_state=seed + r).split(X)):
            models.append(_model(seed).fit(X[train], y[train]))
            fold_of[test] = k
        held_out = _held_out(models, fold_of)
        oof = held_out.predict(X)
        total += oof
        per_repeat.append(rho(oof, y))
        if importance:
            result = permutation_importance(held_out, X, y, scoring=_rho_score, n_repeats=PERMUTATIONS,
                                            random_state=seed + r)
            drops.append(result.importances_mean)
    oof = total / repeats
    imp = None
    if importance:
        stacked = np.array(drops)
        imp = {name: (float(stacked[:, j].mean()), float(stacked[:, j].std())) for j, name in enumerate(inputs)}
    return CrossValidation(inputs=tuple(inputs), oof=oof, rho=rho(oof, y), rho_repeats=tuple(per_repeat),
                           importance=imp)
