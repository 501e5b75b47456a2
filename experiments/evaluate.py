"""evaluate_candidate(spec, cfg, reporter) -> TrialResult: the one function every backend calls.

build -> the stages before training that the config needs, cheapest first (size and gradient-path structure,
latency, any registered objective's stage: :mod:`gpnas.experiments.stage_registry`) -> constraints (an infeasible
candidate is not trained) -> features of the fresh model (gradient statistics at init, zero-cost proxies) -> the
stages after training (proxy training with per-epoch AP reports, final AP, measured gradient statistics).
Failures of the candidate (invalid spec, infeasible, diverged, out of memory, timeout) are recorded states with
their reason; a bad input every trial shares (ConfigError, DataError) and a bug in gpnas are raised: the caller
stops (:func:`gpnas.errors.trial_level` decides).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Protocol

from gpnas.errors import InfeasibleCandidate, TrialTimeout, trial_level
from gpnas.experiments import stages
from gpnas.experiments.config import SearchConfig
from gpnas.experiments.stage_registry import Stage, StageContext, stages_for
from gpnas.objectives.definitions import CONSTRAINTS, constraint_values
from gpnas.results.records import TrialResult
from gpnas.search_space.spec import ArchSpec

__all__ = ["Reporter", "evaluate_candidate", "failure_result"]


class Reporter(Protocol):
    """Receives intermediate metrics (one dict per evaluated epoch). Tune's reporter may end the trial."""

    def __call__(self, metrics: dict[str, float]) -> None: ...


_MISSED = {"max": "exceeded", "min": "not reached"}


def _no_report(metrics: dict[str, float]) -> None:
    return None


def _run(chosen: list[Stage], ctx: StageContext) -> None:
    for stage in chosen:
        ctx.result.metrics.update(stage.run(ctx))


def _declared_failure(err: BaseException) -> tuple[str, str] | None:
    """(state, reason) when ``err`` is a failure of the candidate; None for a bad input or a bug (raised)."""
    import torch

    if isinstance(err, InfeasibleCandidate):
        return "infeasible", str(err)
    if isinstance(err, TrialTimeout):
        return "timeout", str(err)
    if trial_level(err) == "candidate":  # invalid spec, diverged, out of memory
        return "failed", f"{type(err).__name__}: {err}"
    if isinstance(err, torch.cuda.OutOfMemoryError) or (
            isinstance(err, RuntimeError) and "can't allocate memory" in str(err)):  # CPU allocator
        return "failed", f"OutOfMemory: {str(err).splitlines()[0]}"
    return None


def evaluate_candidate(
    spec: ArchSpec | dict[str, Any],
    cfg: SearchConfig,
    reporter: Reporter = _no_report,
    *,
    weights_dir: Path | None = None,
) -> TrialResult:
    """Score one candidate; the returned result's ``state`` says how it ended and ``reason`` why."""
    start = time.perf_counter()
    result = TrialResult(arch_id=spec.arch_id if isinstance(spec, ArchSpec) else "invalid", state="failed")
    try:
        if not isinstance(spec, ArchSpec):
            spec = ArchSpec.from_dict(spec, source="candidate")
        result.arch_id, result.spec = spec.arch_id, spec.to_dict()
        ctx = StageContext(spec, stages.build(spec, seed=cfg.train.seed), cfg, result, reporter, weights_dir)
        chosen = stages_for(cfg)
        _run([s for s in chosen if s.before_training], ctx)
        violated = {k: v for k, v in constraint_values(cfg.constraints.model_dump(), result.metrics).items() if v > 0}
        if violated:
            raise InfeasibleCandidate(", ".join(f"{k} {_MISSED[CONSTRAINTS[k].bound]} by {v:.4g}"
                                                for k, v in violated.items()))
        result.metrics.update(stages.init_features(ctx.model, spec, cfg, result.gp_layers))  # only when trained
        _run([s for s in chosen if not s.before_training], ctx)
        result.state = "complete"
    except Exception as err:
        declared = _declared_failure(err)
        if declared is None:
            raise
        result.state, result.reason = declared  # type: ignore[assignment]
    result.evaluate_seconds = time.perf_counter() - start
    return result


def failure_result(spec: dict[str, Any] | None, exc: BaseException, seconds: float,
                   arch_id: str = "unknown") -> TrialResult:
    """An unexpected exception inside a trial, recorded with its type, message and last frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return TrialResult(arch_id=arch_id, state="failed",
                       reason=f"{type(exc).__name__}: {exc}{where}", spec=spec or {}, evaluate_seconds=seconds)
