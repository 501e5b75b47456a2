"""The rows `gpnas analyze` studies: one per distinct architecture of one or several searches, with its
gradient-path features, its size (GFLOPs, params) and the AP it is held to (the target).

Features are the metrics whose key starts with ``gp_`` (structural aggregates, measured gradient statistics,
per-stage aggregates) or ``zc_`` (zero-cost proxies), except bookkeeping keys (``*_seconds``). The target is the
search's own (proxy) AP, or the long-budget AP of `gpnas fidelity` (mean over its reference seeds) for the
candidates that have one. Every choice that removes a row or a feature is written down in the dataset, so the
report can say what was left out and why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from gpnas.errors import ConfigError
from gpnas.objectives.gp_features import POST_TRAINING_FEATURES
from gpnas.results.records import SearchInfo

__all__ = ["FEATURE_PREFIXES", "MIN_TRIALS", "TARGETS", "Dataset", "Row", "build_dataset", "fidelity_targets",
           "is_feature", "size_metric"]

#: fewer distinct complete architectures than this and no rank statistic or cross-validation means anything
MIN_TRIALS = 5
FEATURE_PREFIXES = ("gp_", "zc_")
#: bookkeeping metrics that share a feature prefix but say how long a measurement took, not what it measured
_BOOKKEEPING_SUFFIXES = ("_seconds",)
TARGETS = ("auto", "proxy", "fidelity")
Target = Literal["auto", "proxy", "fidelity"]
#: the files `gpnas fidelity` writes into ``<search>/fidelity/`` (experiments/retrain.py owns their format;
#: this floor cannot import it, so the names are repeated here)
_FIDELITY_RUNS, _FIDELITY_REPORT = "runs.jsonl", "fidelity.json"


def is_feature(key: str) -> bool:
    """Whether a result metric is a gradient-path feature or zero-cost proxy (and not a timing)."""
    return key.startswith(FEATURE_PREFIXES) and not key.endswith(_BOOKKEEPING_SUFFIXES)


@dataclass(frozen=True)
class Row:
    """One distinct architecture: where it came from (the first trial that measured it), its features, size
    and target. ``merged`` trials with the same ``arch_id`` were averaged into it."""

    trial: int
    search: str
    arch_id: str
    features: Mapping[str, float]
    gflops: float
    params: float
    target: float
    merged: int = 1

    def inputs(self) -> dict[str, float]:
        """Features plus size: what a surrogate reads."""
        return {**self.features, "gflops": self.gflops, "params": self.params}


@dataclass(frozen=True)
class Dataset:
    """The rows of an analysis and the record of how they were chosen."""

    rows: tuple[Row, ...]
    features: tuple[str, ...]
    target: Literal["proxy", "fidelity"]
    target_label: str
    target_reason: str
    searches: tuple[str, ...]
    complete: Mapping[str, int]  # complete trials with an AP, per search
    dropped: Mapping[str, str] = field(default_factory=dict)  # feature -> why it was left out
    notes: tuple[str, ...] = ()

    def column(self, name: str) -> np.ndarray:
        """One input (a feature, ``gflops`` or ``params``) or ``target`` over the rows, shape [n]."""
        if name == "target":
            return np.array([r.target for r in self.rows], dtype=float)
        return np.array([r.inputs()[name] for r in self.rows], dtype=float)


# ------------------------------------------------------------------------------------------------ reading
def _complete_trials(info: SearchInfo) -> list[tuple[int, str, dict[str, float]]]:
    """(trial number, arch_id, metrics) of each complete trial with a finite proxy AP. Refinements are not
    applied: the proxy target is the AP the search itself measured, at one budget for every trial."""
    from gpnas.results import study as st

    out = []
    for rec in st.records(st.load_study(info.folder, info.name), refined=False):
        if rec.state != "complete" or rec.result is None or not rec.arch_id:
            continue
        metrics = {k: float(v) for k, v in rec.result.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if math.isfinite(metrics.get("ap", math.nan)):
            out.append((rec.number, rec.arch_id, metrics))
    return out


def fidelity_targets(folder: Path) -> dict[str, float]:
    """arch_id -> long-budget AP (mean over the completed reference seeds) from a `gpnas fidelity` folder:
    ``runs.jsonl`` (every finished job), else the candidates of ``fidelity.json``; ``{}`` when neither exists."""
    runs, report = folder / _FIDELITY_RUNS, folder / _FIDELITY_REPORT
    if runs.is_file():
        jobs: dict[str, dict] = {}
        for line in runs.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write; `gpnas fidelity` re-runs that job
                continue
            jobs[f"{row.get('label')}|{row.get('kind')}|{row.get('seed')}"] = row  # a re-run job: the last wins
        by_arch: dict[str, list[float]] = {}
        for row in jobs.values():
            ap = row.get("ap")
            if row.get("kind") == "reference" and row.get("state") == "complete" and row.get("arch_id") \
                    and isinstance(ap, (int, float)) and math.isfinite(ap):
                by_arch.setdefault(row["arch_id"], []).append(float(ap))
        return {arch: float(np.mean(aps)) for arch, aps in by_arch.items()}
    if report.is_file():
        try:
            candidates = json.loads(report.read_text()).get("candidates", [])
        except json.JSONDecodeError as err:
            raise ConfigError(f"{report} is not valid JSON ({err}); run `gpnas fidelity` again to rewrite it, "
                              "or analyse with --target proxy") from None
        return {c["arch_id"]: float(c["reference_ap"]) for c in candidates
                if c.get("arch_id") and isinstance(c.get("reference_ap"), (int, float))}
    return {}


# ------------------------------------------------------------------------------------------------ building
def _pooled_fidelity(searches: Sequence[SearchInfo]) -> dict[str, float]:
    found: dict[str, list[float]] = {}
    for info in searches:
        for arch, ap in fidelity_targets(info.folder.fidelity).items():
            found.setdefault(arch, []).append(ap)
    return {arch: float(np.mean(aps)) for arch, aps in found.items()}


def _choose_target(target: str, trials: list[tuple[str, int, str, dict[str, float]]],
                   long_ap: dict[str, float], names: str) -> tuple[Literal["proxy", "fidelity"], str]:
    """The target actually used and a sentence saying why."""
    if target not in TARGETS:
        raise ConfigError(f"target {target!r}: choose one of {', '.join(TARGETS)}")
    have = len({arch for _, _, arch, _ in trials if arch in long_ap})
    if target == "fidelity" and have == 0:
        raise ConfigError(f"{names}: no candidate has a long-budget AP (no fidelity/{_FIDELITY_RUNS} with "
                          "completed reference runs); run `gpnas fidelity` on the search first, or use --target "
                          "proxy")
    if target == "fidelity" or (target == "auto" and have >= MIN_TRIALS):
        return "fidelity", f"{have} candidate(s) with a long-budget AP from `gpnas fidelity`"
    if target == "auto" and have:
        return "proxy", (f"only {have} candidate(s) have a long-budget AP (auto needs {MIN_TRIALS}); the "
                         "search's proxy AP is the target")
    return "proxy", "the search's own AP at its proxy budget"


def size_metric(metrics: Mapping[str, float], key: str) -> float:
    """GFLOPs, or the parameter count (from ``params_m`` when only the millions were recorded)."""
    if key == "params" and "params" not in metrics:
        return metrics.get("params_m", math.nan) * 1e6
    return metrics.get(key, math.nan)


def _merge(group: list[tuple[str, int, str, dict[str, float]]], target: float) -> Row | None:
    """One row from the trials of one arch_id: features and size averaged over the trials that have them
    (measured gradient statistics differ a little between runs); None without GFLOPs or params."""
    search, number, arch, _ = group[0]
    keys = {k for *_, m in group for k in m if is_feature(k)}
    features = {}
    for key in sorted(keys):
        values = [m[key] for *_, m in group if math.isfinite(m.get(key, math.nan))]
        if values:
            features[key] = float(np.mean(values))
    size = {}
    for key in ("gflops", "params"):
        values = [size_metric(m, key) for *_, m in group]
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return None
        size[key] = float(np.mean(values))
    return Row(trial=number, search=search, arch_id=arch, features=features, gflops=size["gflops"],
               params=size["params"], target=target, merged=len(group))


def _select_features(rows: list[Row]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Features present in every row and not constant; the others with the reason they were dropped."""
    union = sorted({k for r in rows for k in r.features})
    kept, dropped = [], {}
    for key in union:
        if key in POST_TRAINING_FEATURES:  # describes the trained model: it cannot tell before training
            dropped[key] = "measured after training (the question is what predicts AP before training)"
            continue
        missing = sum(1 for r in rows if key not in r.features)
        if missing:
            dropped[key] = f"missing in {missing} of {len(rows)} rows"
            continue
        values = np.array([r.features[key] for r in rows])
        if np.ptp(values) == 0:
            dropped[key] = f"constant ({values[0]:.6g}) across the {len(rows)} rows"
            continue
        kept.append(key)
    return tuple(kept), dropped


def _too_few(names: str, complete: Mapping[str, int], n_rows: int, target: str) -> ConfigError:
    total = sum(complete.values())
    per = f" ({', '.join(f'{name}: {n}' for name, n in complete.items())})" if len(complete) > 1 else ""
    if target == "fidelity":
        fix = "run `gpnas fidelity` with more --candidates, or analyse with --target proxy"
        what = f"{n_rows} distinct candidate(s) have a long-budget AP"
    else:
        fix = "let the search run longer (`gpnas resume`, or a larger budget.num_trials) or pool several " \
              "searches (`gpnas analyze A B`)"
        what = f"{n_rows} distinct architecture(s) with AP and size"
    return ConfigError(f"{names} {'has' if len(complete) == 1 else 'have'} {total} complete trial(s){per}, "
                       f"{what}; the analysis needs at least {MIN_TRIALS}: {fix}")


def build_dataset(searches: Sequence[SearchInfo], target: str = "auto") -> Dataset:
    """The rows of one or several searches: one per distinct arch_id (duplicates within or across searches are
    averaged), ``target`` = ``proxy`` (the search's AP), ``fidelity`` (the long-budget AP of `gpnas fidelity`;
    only the candidates that have one) or ``auto`` (fidelity when at least MIN_TRIALS candidates have it).
    Raises ConfigError when fewer than MIN_TRIALS rows remain."""
    if not searches:
        raise ConfigError("name at least one search (its name or folder) to analyse")
    names = " + ".join(f"search '{s.name}'" for s in searches)
    trials = [(s.name, number, arch, m) for s in searches for number, arch, m in _complete_trials(s)]
    complete = {s.name: sum(1 for t in trials if t[0] == s.name) for s in searches}
    long_ap = _pooled_fidelity(searches) if target != "proxy" else {}
    kind, why = _choose_target(target, trials, long_ap, names)
    groups: dict[str, list[tuple[str, int, str, dict[str, float]]]] = {}
    for t in trials:
        if kind == "proxy" or t[2] in long_ap:
            groups.setdefault(t[2], []).append(t)
    rows, notes = [], []
    for arch, group in groups.items():
        value = long_ap[arch] if kind == "fidelity" else float(np.mean([m["ap"] for *_, m in group]))
        row = _merge(group, value)
        if row is None:
            notes.append(f"{arch} (trial {group[0][1]} of {group[0][0]}) left out: no gflops or params recorded")
        else:
            rows.append(row)
    merged = sum(r.merged - 1 for r in rows)
    if merged:
        notes.append(f"{merged} repeated trial(s) of an arch_id already seen were averaged into its row")
    if len(rows) < MIN_TRIALS:
        raise _too_few(names, complete, len(rows), kind)
    features, dropped = _select_features(rows)
    if not features:
        raise ConfigError(f"{names}: no gp_* or zc_* feature is present in all {len(rows)} rows and varies "
                          f"({'; '.join(f'{k}: {v}' for k, v in dropped.items()) or 'none recorded'}); nothing "
                          "to analyse beyond size (was gradient_path disabled in the search config?)")
    label = "long-budget AP (gpnas fidelity, mean over reference seeds)" if kind == "fidelity" else "proxy AP"
    return Dataset(rows=tuple(rows), features=features, target=kind, target_label=label, target_reason=why,
                   searches=tuple(s.name for s in searches), complete=complete, dropped=dropped,
                   notes=tuple(notes))
