"""Library side of `gpnas refine` (and of a search's ``refine`` section): retrain the front at a larger budget and
with several seeds, so the front a user exports is not one short, single-seed training's luck.

Which trials: the complete, feasible ones in the first ``refine.top`` non-dominated ranks of the search's own
(proxy) results, best rank first and, within a rank, best AP first; at most ``refine.max_trials``; then the trials
named by ``refine.include`` (a trial number, or a preset or spec file the search enqueued), whatever their rank. Each is
retrained ``refine.seeds`` times (the search's ``train.seed`` and the next ones) for ``budget_multiplier`` × the
trial budget, by the same trainer as `gpnas fidelity` (runs are appended to ``<search>/refine/runs.jsonl`` as
they end: a killed refinement resumes where it stopped). The mean and sd of AP over the seeds are written to the
study (:func:`gpnas.results.study.set_refined`); from then on the front (`gpnas pareto`, `gpnas export`, MLflow's
``is_pareto``) is the front of the refined trials on their mean AP, with the proxy AP kept as ``ap_proxy``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from gpnas.errors import ConfigError
from gpnas.experiments.config import SearchConfig
from gpnas.experiments.retrain import FidelityPlan, run_plan, run_row
from gpnas.results import study as st
from gpnas.results.folder import SearchFolder
from gpnas.results.front import front_summary
from gpnas.results.records import TrialRecord
from gpnas.search_space.spec import ArchSpec

__all__ = ["refine_search", "refine_targets"]


def refine_targets(recs: list[TrialRecord], cfg: SearchConfig, top: int, max_trials: int) -> list[TrialRecord]:
    """The trials to refine: the first ``top`` ranks of the proxy front, best first, one per arch_id."""
    unrefined = [r for r in recs if r.result is None or not r.result.refined]
    summary = front_summary(unrefined, cfg.objectives, cfg.constraints.model_dump())
    by_number = {r.number: r for r in recs}
    ranked = sorted((n for n, k in summary.ranks.items() if k < top),
                    key=lambda n: (summary.ranks[n], -by_number[n].metric("ap"), n))
    out: list[TrialRecord] = []
    for n in ranked:
        if all(by_number[n].arch_id != r.arch_id for r in out):
            out.append(by_number[n])
    return out[:max_trials]


def included_trials(recs: list[TrialRecord], names: tuple[str, ...], cfg: SearchConfig) -> list[TrialRecord]:
    """The complete trials named by ``names``: a trial number, or a preset name or spec file the search enqueued
    (its arch_id as enqueued: :meth:`SearchConfig.named_points`)."""
    complete = {r.number: r for r in recs if r.state == "complete" and r.result is not None}
    enqueued = {name: arch_id for arch_id, name in cfg.named_points().items()}
    out: list[TrialRecord] = []
    for name in names:
        if name.isdigit():
            rec = complete.get(int(name))
            if rec is None:
                raise ConfigError(f"refine include: trial {name} is not a complete trial of search '{cfg.name}'; "
                                  f"complete trials: {sorted(complete) or 'none yet'}")
        else:
            found = [r for r in complete.values() if name in enqueued and r.arch_id == enqueued[name]]
            if not found:
                raise ConfigError(f"refine include: '{name}' is no complete trial of search '{cfg.name}' (enqueued: "
                                  f"{sorted(enqueued) or 'none'}); add it to the config's enqueue list before the "
                                  "search runs, or name a trial number")
            rec = min(found, key=lambda r: r.number)
        if all(rec.number != r.number for r in out):
            out.append(rec)
    return out


def _plan(cfg: SearchConfig, targets: list[TrialRecord], multiplier: float, seeds: int) -> FidelityPlan:
    candidates, recorded = {}, []
    for rec in targets:
        label = f"trial-{rec.number}"
        candidates[label] = ArchSpec.from_dict(rec.result.spec, source=f"trial {rec.number}")  # type: ignore[union-attr]
        recorded.append({**run_row(label, "proxy", cfg.train.seed, rec.result), "recorded_from_trial": rec.number})
    return FidelityPlan(candidates, cfg, factor=multiplier, seeds=(cfg.train.seed,),
                        reference_seeds=tuple(cfg.train.seed + i for i in range(seeds)),
                        source=f"refine {cfg.name}", recorded=tuple(recorded), min_candidates=1)


def _summary(rows: list[dict[str, Any]], rec: TrialRecord, budget: dict[str, Any]) -> dict[str, Any] | None:
    ok = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: r["seed"])
    if not ok:
        return None
    aps, ap50s = [float(r["ap"]) for r in ok], [float(r["ap50"]) for r in ok]
    losses = [float(r.get("val_loss", math.nan)) for r in ok]
    return {"ap_mean": statistics.fmean(aps), "ap_sd": statistics.stdev(aps) if len(aps) > 1 else 0.0,
            "ap50_mean": statistics.fmean(ap50s), "val_loss_mean": statistics.fmean(losses), "ap": aps,
            "seeds": [r["seed"] for r in ok],
            "budget": {k: v for k, v in budget.items() if v is not None},
            "ap_proxy": rec.metric("ap") if rec.result is not None else math.nan,
            "failed": [{"seed": r["seed"], "state": r["state"], "reason": r["reason"]}
                       for r in rows if r["state"] != "complete"]}


def refine_search(folder: SearchFolder, cfg: SearchConfig, *, top: int | None = None,
                  budget_multiplier: float | None = None, seeds: int | None = None, max_trials: int | None = None,
                  include: tuple[str, ...] | None = None, workers: int | None = None,
                  say: Callable[[str], None] = print) -> dict[int, dict[str, Any]]:
    """Refine the front of a finished (or stopped) search; -> trial number -> its refinement. Arguments left
    None come from the config's ``refine`` section (``workers``: ``budget.max_concurrent``)."""
    r = cfg.refine
    top = r.top if top is None else top
    multiplier = r.budget_multiplier if budget_multiplier is None else budget_multiplier
    seeds = r.seeds if seeds is None else seeds
    max_trials = r.max_trials if max_trials is None else max_trials
    include = r.include if include is None else tuple(include)
    if top < 1 or seeds < 1 or max_trials < 1 or not multiplier >= 1:
        raise ConfigError(f"refine needs top >= 1, seeds >= 1, max_trials >= 1 and budget_multiplier >= 1 (got "
                          f"top {top}, seeds {seeds}, max_trials {max_trials}, budget_multiplier {multiplier})")
    study = st.load_study(folder, cfg.name)
    recs = st.records(study, refined=False)
    targets = refine_targets(recs, cfg, top, max_trials)
    extra = [t for t in included_trials(recs, include, cfg) if all(t.number != r.number for r in targets)]
    targets += extra
    if not targets:
        raise ConfigError(f"search '{cfg.name}' has no complete, feasible trial to refine yet; finish it first "
                          f"(`gpnas resume {folder}`)")
    plan = _plan(cfg, targets, multiplier, seeds)
    say(f"refine {cfg.name}: trials {[t.number for t in targets]} (first {top} rank(s) of the front), "
        f"{seeds} seed(s) each at {multiplier:g}x the trial budget"
        + (f"; included: {[t.number for t in extra]}" if extra else ""))
    rows = run_plan(plan, folder.refine, workers=workers or cfg.budget.max_concurrent, say=say)
    budget = plan.budget("reference")
    out = {}
    for rec in targets:
        mine = [row for row in rows if row["label"] == f"trial-{rec.number}" and row["kind"] == "reference"]
        refined = _summary(mine, rec, budget)
        if refined is None:
            say(f"  trial {rec.number}: no refinement run completed ({[m['reason'] for m in mine]}); not refined")
            continue
        st.set_refined(study, rec.number, refined)
        out[rec.number] = refined
        say(f"  trial {rec.number} {rec.arch_id}: AP {refined['ap_mean']:.4f} ± {refined['ap_sd']:.4f} over seeds "
            f"{refined['seeds']} (proxy {refined['ap_proxy']:.4f})")
    return out
