"""The pre-screen: score N proposals of the sampler in seconds, without training, and train only the best k.

Each proposal is built (seeded, as its trial would be) and measured exactly as a trial measures it before
training: size, gradient-path structure, gradient statistics at initialisation, zero-cost proxies and, when the
search predicts latency, its predicted latency (:func:`gpnas.experiments.stages.init_features`). Then:

- ``score: surrogate`` — a gradient-boosting surrogate fitted on the search's complete trials so far (features +
  size -> AP, :func:`gpnas.results.surrogate.fit_surrogate`) predicts each proposal's AP; proposals are ranked by
  the hypervolume the current front would gain with the proposal at its predicted AP and its known GFLOPs,
  params, latency (ties: higher predicted AP). Until the search has ``MIN_TRIALS`` complete trials there is no
  surrogate, and the sampler's proposals are trained unscreened.
- ``score: <zero-cost proxy>`` (``synflow``, ``grad_norm``, ``naswot``, ``maedet_entropy``) — proposals are ranked
  by Pareto rank on (the proxy, higher is better; the known cost objectives) and, within a rank, by the proxy.

The k best are trained; the others are recorded in the study as ``screened`` with their score, rank and the reason
(they use no budget, and the sampler is not told a result for them: nothing is known of their AP).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpnas.experiments.config import SearchConfig
from gpnas.experiments.stage_registry import StageContext, known_before_training, stages_for
from gpnas.objectives.definitions import OBJECTIVES
from gpnas.results.pareto import hypervolume, non_dominated_sort, reference_point
from gpnas.results.records import TrialResult
from gpnas.search_space.spec import ArchSpec

__all__ = ["Prescreen", "Scored", "feature_row", "fit_history", "rank_by_hypervolume_gain", "rank_by_proxy"]


@dataclass
class Scored:
    """One proposal as the pre-screen saw it: its features, its score and the text recorded with it."""

    spec: ArchSpec | None
    metrics: dict[str, float] = field(default_factory=dict)
    score: float = -math.inf
    predicted_ap: float | None = None
    rank: int = 0
    error: str | None = None


def feature_row(metrics: Mapping[str, float]) -> dict[str, float]:
    """The surrogate's inputs of a candidate: its ``gp_*`` / ``zc_*`` features known before training, GFLOPs and
    params (see :data:`gpnas.objectives.gp_features.POST_TRAINING_FEATURES` for what is left out)."""
    from gpnas.objectives.gp_features import POST_TRAINING_FEATURES

    return {k: float(v) for k, v in metrics.items()
            if (k.startswith(("gp_", "zc_")) and k not in POST_TRAINING_FEATURES and not k.endswith("_seconds"))
            or k in ("gflops", "params")}


def fit_history(history: Sequence[Mapping[str, float]], *, seed: int = 0) -> Any:
    """The surrogate of AP fitted on complete trials' metrics (``ap`` and their features known before training;
    the inputs are the features every trial has, plus GFLOPs and params)."""
    from gpnas.objectives.gp_features import POST_TRAINING_FEATURES
    from gpnas.results.analysis_data import Row, is_feature
    from gpnas.results.surrogate import SIZE_INPUTS, fit_surrogate

    rows = [Row(trial=i, search="", arch_id=str(i), target=float(h["ap"]), gflops=float(h["gflops"]),
                params=float(h["params"]) if "params" in h else float(h["params_m"]) * 1e6,
                features={k: float(v) for k, v in h.items() if is_feature(k) and k not in POST_TRAINING_FEATURES})
            for i, h in enumerate(history)]
    common = set.intersection(*(set(r.features) for r in rows)) if rows else set()
    return fit_surrogate(rows, inputs=(*sorted(common), *SIZE_INPUTS), seed=seed)


def rank_by_hypervolume_gain(candidates: np.ndarray, known: np.ndarray, names: Sequence[str],
                             constraints: Mapping[str, float | None] | None = None) -> np.ndarray:
    """Order of ``candidates`` (rows: [predicted AP, cost objectives...] in the order of ``names``, the first
    being ``ap``) by the hypervolume each adds to the front of ``known`` (the complete trials, same columns),
    ties by predicted AP; -> (indices best first, gains)."""
    directions = [OBJECTIVES[n].direction for n in names]
    both = np.vstack([known, candidates]) if len(known) else candidates
    ref = reference_point(both, directions, names, constraints)
    base = hypervolume(known, directions, ref) if len(known) else 0.0
    gains = np.array([hypervolume(np.vstack([known, c[None]]) if len(known) else c[None], directions, ref) - base
                      for c in candidates])
    order = sorted(range(len(candidates)), key=lambda i: (-round(gains[i], 12), -candidates[i, 0], i))
    return np.array(order), gains


def rank_by_proxy(candidates: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Order of ``candidates`` (rows: [proxy score (higher is better), cost objectives...]) by Pareto rank,
    then by the proxy; -> indices best first."""
    directions = ["maximize"] + [OBJECTIVES[n].direction for n in names[1:]]
    ranks = non_dominated_sort(candidates, directions) if len(candidates) else np.array([], dtype=int)
    return np.array(sorted(range(len(candidates)), key=lambda i: (int(ranks[i]), -candidates[i, 0], i)))


class Prescreen:
    """Scores the sampler's proposals for a search (see the module docstring); used by the searcher."""

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self.settings = cfg.prescreen
        self.proxy = None if self.settings.score == "surrogate" else f"zc_{self.settings.score.removeprefix('zc_')}"
        self.costs = known_before_training(cfg.objectives)  # the objectives a proposal has untrained

    def measure(self, spec: ArchSpec) -> dict[str, float]:
        """What the trial would measure before training (the same stages, the same seed), without training."""
        from gpnas.experiments import stages

        ctx = StageContext(spec, stages.build(spec, seed=self.cfg.train.seed), self.cfg,
                           TrialResult(arch_id=spec.arch_id, state="complete"))
        for stage in (s for s in stages_for(self.cfg) if s.before_training):
            ctx.result.metrics.update((stage.screen or stage.run)(ctx))
        ctx.result.metrics.update(stages.init_features(ctx.model, spec, self.cfg, ctx.result.gp_layers))
        return ctx.result.metrics

    def ready(self, complete: int) -> bool:
        """Whether proposals are screened now: always for a proxy, once a surrogate can be fitted otherwise."""
        from gpnas.results.analysis_data import MIN_TRIALS

        return self.proxy is not None or complete >= MIN_TRIALS

    def score(self, scored: list[Scored], history: list[dict[str, float]]) -> list[int]:
        """Fill each proposal's score and rank; -> the indices of ``scored`` best first. ``history``: the
        metrics of the search's complete trials (AP included). Proposals that could not be measured
        (``error``) come last."""
        ok = [i for i, s in enumerate(scored) if s.error is None]
        costs = [c for c in self.costs if all(c in scored[i].metrics for i in ok)]
        cost_rows = np.array([[scored[i].metrics[c] for c in costs] for i in ok]).reshape(len(ok), len(costs))
        if self.proxy is not None:
            first = np.array([scored[i].metrics.get(self.proxy, -math.inf) for i in ok])[:, None]
            order = rank_by_proxy(np.hstack([first, cost_rows]), [self.proxy, *costs])
            for i in ok:
                scored[i].score = scored[i].metrics.get(self.proxy, -math.inf)
        else:
            surrogate = fit_history(history)
            predicted = surrogate.predict([feature_row(scored[i].metrics) for i in ok])
            known = np.array([[h["ap"], *(h[c] for c in costs)] for h in history if all(c in h for c in costs)])
            order, gains = rank_by_hypervolume_gain(np.hstack([np.asarray(predicted)[:, None], cost_rows]),
                                                    known.reshape(-1, 1 + len(costs)), ["ap", *costs],
                                                    self.cfg.constraints.model_dump())
            for j, i in enumerate(ok):
                scored[i].predicted_ap, scored[i].score = float(predicted[j]), float(gains[j])
        ranked = [ok[j] for j in order] + [i for i in range(len(scored)) if i not in ok]
        for rank, i in enumerate(ranked):
            scored[i].rank = rank + 1
        return ranked

    def reason(self, s: Scored, n: int) -> str:
        """Why a proposal was not trained, as recorded in the study."""
        keep = self.settings.keep
        if s.error is not None:
            return f"pre-screen: could not be measured ({s.error}); not trained"
        if self.proxy is not None:
            what = f"{self.proxy} {s.score:.4g}"
        else:
            what = f"predicted AP {s.predicted_ap:.4f}, hypervolume gain {s.score:.3g}"
        return f"pre-screen: {what}, rank {s.rank} of {n} proposals (the best {keep} are trained)"
