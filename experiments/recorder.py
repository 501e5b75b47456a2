"""Driver side of a search: every trial's ending goes to the study, the trial folder and MLflow (in that order:
the study is the source of truth), with a console line; progress lines while trials run; and the stop of the
whole search when a trial hit a bug in gpnas.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from rich.text import Text

from gpnas.experiments.config import SearchConfig
from gpnas.experiments.successive_halving import SuccessiveHalving
from gpnas.objectives.definitions import constraint_values
from gpnas.results import study as st
from gpnas.results.folder import SearchFolder
from gpnas.results.records import TrialRecord, TrialResult
from gpnas.search_space.spec import ArchSpec

if TYPE_CHECKING:
    from rich.console import Console

    from gpnas.results.tracking import MlflowTracker

__all__ = ["Recorder", "progress_callback", "stop_on_internal_error"]


class Recorder:
    """Writes each ending to the study, the trial folder and MLflow; keeps progress figures.

    ``internal_error`` holds the traceback of the first trial that failed by a bug in gpnas (not by its
    candidate): the search then stops (:func:`stop_on_internal_error`), that trial is recorded as failed with
    the reason, and trials stopped with it stay unrecorded, so `gpnas resume` runs them again.
    """

    def __init__(self, cfg: SearchConfig, folder: SearchFolder, tracker: MlflowTracker | None,
                 console: Console) -> None:
        self.cfg, self.folder, self.tracker, self.console = cfg, folder, tracker, console
        self.by_arch: dict[str, TrialResult] = {}
        self.ended: list[TrialResult] = []
        self.running: dict[str, float] = {}
        self.best_ap = float("nan")
        self.loaded = 0
        self.internal_error: str | None = None
        self.asked: dict[str, Any] = {}  # Tune trial id -> its open Optuna trial
        self.evaluations: dict[str, list[dict[str, float]]] = {}  # Tune trial id -> its reported evaluations
        self.rung_log: dict[str, list[dict[str, Any]]] = {}  # Tune trial id -> its rung decisions
        self.run_of: dict[str, str] = {}  # Tune trial id -> its live MLflow run
        self.halving: SuccessiveHalving | None = None
        self.unit = "step"
        if cfg.early_stopping.enabled:
            unit, budgets = cfg.rungs()
            self.unit = unit.removesuffix("s")  # the key of the reported metrics: step / epoch
            self.halving = SuccessiveHalving(budgets, cfg.early_stopping.reduction_factor, cfg.objectives,
                                             mode="ap" if cfg.early_stopping.type == "asha" else "mo")

    def __getstate__(self) -> dict[str, Any]:  # never leaves the driver (holds a console and a tracker)
        return {}

    def load(self, recs: list[TrialRecord]) -> None:
        """What the study already holds: results to reuse, and the rung decisions taken (kept on resume)."""
        for r in recs:
            if r.result is not None and r.state in ("complete", "infeasible"):
                self.by_arch.setdefault(r.result.arch_id, r.result)
                self.ended.append(r.result)
            if self.halving is not None and r.arch_id:
                for d in r.rungs:
                    if d["rung"] < len(self.halving.budgets) and d["budget"] == self.halving.budgets[d["rung"]]:
                        self.halving.restore(r.arch_id, d["rung"], d["values"], d["violation"], d["decision"],
                                             d.get("position", 0), d.get("seen", 1))
        self.loaded = len(self.ended)

    def rung_reached(self, trial_id: str, result: dict[str, Any]) -> str | None:
        """Successive halving: the decision ("promote" / "stop") when ``result`` is a rung evaluation, else None.
        The decision is written to the trial's study row at once, so a killed search keeps it."""
        if self.halving is None or "ap" not in result or result.get("gpnas_result"):
            return None
        rung = self.halving.rung_of(result.get(self.unit, -1.0))
        ot_trial = self.asked.get(trial_id)
        if rung is None or ot_trial is None:
            return None
        arch_id = ot_trial.user_attrs.get("arch_id", trial_id)
        values = [float(result.get(o, float("nan"))) for o in self.cfg.objectives]
        violated = constraint_values(self.cfg.constraints.model_dump(), result)
        violation = sum(v for v in violated.values() if v > 0)
        entry = self.halving.decide(arch_id, rung, values, violation)
        log = self.rung_log.setdefault(trial_id, [])
        log.append({"rung": rung, "budget": self.halving.budgets[rung], "ap": float(result["ap"]),
                    **entry.to_dict()})
        ot_trial.set_user_attr("rungs", json.dumps(log))
        return entry.decision

    def cached(self, arch_id: str) -> TrialResult | None:
        return self.by_arch.get(arch_id)

    def complete_metrics(self) -> list[dict[str, float]]:
        """The metrics of every complete candidate with an AP so far (this run's and, on resume, the study's),
        in the order they ended: what the pre-screen's surrogate is fitted on."""
        return [dict(tr.metrics) for tr in self.by_arch.values() if tr.state == "complete" and "ap" in tr.metrics]

    def started(self, trial_id: str, ot_trial: Any, params: dict[str, Any], spec_yaml: str | None) -> str | None:
        """A trial is about to run: its MLflow run is made now (RUNNING, genes, spec) and its id kept in the
        study, so the run is there to watch while the trial trains. -> the run id (None without MLflow)."""
        if self.tracker is None:
            return None
        run_id = self.tracker.start_trial_safe(ot_trial.number, ot_trial.user_attrs.get("arch_id", "unknown"),
                                               params, spec_yaml)
        if run_id:
            ot_trial.set_user_attr("mlflow_run_id", run_id)
            self.run_of[trial_id] = run_id
        return run_id

    def progress(self, trial_id: str, result: dict[str, Any]) -> None:
        self.running[trial_id] = time.time()
        if "ap" in result and not result.get("gpnas_result"):
            evaluations = self.evaluations.setdefault(trial_id, [])
            evaluations.append(_evaluation(result))
            run_id = self.run_of.get(trial_id)
            if self.tracker is not None and run_id is not None:  # live: the curve grows while the trial trains
                self.tracker.log_evaluation_safe(run_id, len(evaluations), evaluations[-1])

    def _stopped_at_rung(self, trial_id: str) -> dict[str, Any] | None:
        log = self.rung_log.get(trial_id) or []
        return log[-1] if log and log[-1]["decision"] == "stop" else None

    def finish(self, study: Any, ot_trial: Any, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        self.running.pop(trial_id, None)
        self.asked.pop(trial_id, None)
        run_id = self.run_of.pop(trial_id, None)
        if not (result or {}).get("gpnas_result") and not error and self._stopped_at_rung(trial_id) is None:
            # stopped before it reported its result, not by successive halving: the search is stopping (Ctrl-C,
            # or another trial hit a bug). Left RUNNING; the runner re-queues it (interrupted), so no half
            # result is told (its rung decisions stay in the study).
            return
        tr = self._parse(ot_trial, trial_id, result, error)
        tr.rungs = self.rung_log.pop(trial_id, [])
        self.evaluations.pop(trial_id, None)
        if (result or {}).get("gpnas_state") == "error" and self.internal_error is None:
            self.internal_error = f"trial {ot_trial.number} ({tr.arch_id}):\n{result['gpnas_traceback']}"
        limits = self.cfg.constraints.model_dump()
        constraints = constraint_values(limits, tr.metrics) if tr.state in ("complete", "infeasible") else {}
        spec_yaml = ArchSpec(**tr.spec).to_yaml() if tr.spec and "invalid_params" not in tr.spec else None
        self.folder.write_trial(ot_trial.number, tr, spec_yaml)
        if self.tracker is not None:  # before tell: the run id can only be stored while the trial is open
            rec = TrialRecord(number=ot_trial.number, state=tr.state, reason=tr.reason, arch_id=tr.arch_id,
                              values=None, result=tr, mlflow_run_id=run_id, params=dict(ot_trial.params))
            run_id = self.tracker.log_trial_safe(rec)
            if run_id:
                ot_trial.set_user_attr("mlflow_run_id", run_id)
        st.tell_result(study, ot_trial, tr, self.cfg.objectives, constraints)
        self._remember(tr)
        self._say(ot_trial.number, tr)

    def _remember(self, tr: TrialResult) -> None:
        if tr.state in ("complete", "infeasible"):
            self.by_arch.setdefault(tr.arch_id, tr)
        self.ended.append(tr)
        if tr.state == "complete" and "ap" in tr.metrics:
            ap = tr.metrics["ap"]
            self.best_ap = ap if self.best_ap != self.best_ap else max(self.best_ap, ap)

    def _parse(self, ot_trial: Any, trial_id: str, result: dict[str, Any] | None, error: bool) -> TrialResult:
        arch_id = ot_trial.user_attrs.get("arch_id", "unknown")
        if result and result.get("gpnas_result"):
            tr = TrialResult.from_dict(json.loads(result["gpnas_result"]))
            if tr.arch_id in ("unknown", "invalid") and arch_id != "unknown":
                tr.arch_id = arch_id
            if result.get("gpnas_state") == "reused":
                tr.reason = f"same arch_id as an earlier trial; its result was reused ({tr.reason or 'ok'})"
            return tr
        if error:
            return TrialResult(arch_id=arch_id, state="failed",
                               reason="the trial's worker crashed (see the Ray trial folder for error.txt)")
        partial = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and not k.startswith(("gpnas_", "time_", "timestamp", "training_iteration", "pid"))}
        rung = self._stopped_at_rung(trial_id) or {}
        history = self.evaluations.get(trial_id, [])
        if result and (not history or history[-1].get("step") != result.get("step")):
            history = [*history, _evaluation(result)]
        assert self.halving is not None
        unit, n = self.unit + "s", len(self.halving.budgets)
        return TrialResult(
            arch_id=arch_id, state="pruned", metrics=partial, history=history,
            reason=f"stopped by {self.cfg.early_stopping.type} at rung {rung.get('rung', 0) + 1} of {n} "
                   f"({rung.get('budget', 0):g} {unit}): place {rung.get('position', 0) + 1} of "
                   f"{rung.get('seen', 1)} there, the top {self.halving.keep(rung.get('seen', 1))} continue; AP "
                   f"at the rung {rung.get('ap', float('nan')):.4f}")

    def _say(self, number: int, tr: TrialResult) -> None:
        m = tr.metrics
        keys = dict.fromkeys(("ap", "ap50", "gflops", "latency_ms", *self.cfg.objectives))
        figures = " ".join(f"{k} {m[k]:.4g}" for k in keys if k in m)
        why = f" — {tr.reason}" if tr.reason and tr.state != "complete" else ""
        line = Text(f"  trial {number:3d} ")
        line.append(tr.state, style="bold")
        line.append(f" {tr.arch_id} {figures}{why}")  # reasons may hold brackets: literal text, never markup
        self.console.print(line, highlight=False)

    def front_size(self) -> int:
        import numpy as np

        from gpnas.results.pareto import pareto_mask

        done = [r for r in self.ended if r.state == "complete"]
        if not done:
            return 0
        values = np.array([r.objective_values(self.cfg.objectives) for r in done], dtype=float)
        return int(pareto_mask(values, self.cfg.directions()).sum())


def _evaluation(result: dict[str, Any]) -> dict[str, float]:
    """The trainer's figures of one reported evaluation (epoch, step, train_seconds, ap, ap50, ...)."""
    return {k: float(v) for k, v in result.items() if k in ("epoch", "step", "train_seconds") or
            (k.startswith("ap") and isinstance(v, (int, float)))}


def stop_on_internal_error(recorder: Recorder) -> Any:
    """A Tune stopper that ends the whole search once a trial hit a bug in gpnas."""
    from ray.tune import Stopper

    class StopOnInternalError(Stopper):
        def __getstate__(self) -> dict[str, Any]:  # Tune may pickle it; the recorder stays in the driver
            return {}

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return recorder.internal_error is not None

    return StopOnInternalError()


def progress_callback(recorder: Recorder, total: int, already: int, start: float) -> Any:
    from ray.tune import Callback

    class Progress(Callback):
        """One status line every few seconds instead of Tune's raw tables."""

        def __init__(self) -> None:
            self.last = 0.0

        def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks; the recorder stays in the driver
            return {"last": self.last}

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            now = time.time()
            if now - self.last < 15:
                return
            self.last = now
            done = already + sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
            running = sum(1 for t in trials if t.status == "RUNNING")
            elapsed = now - start
            new = done - already
            eta = f"{(total - done) * elapsed / new / 60:.1f} min" if new > 0 else "?"
            recorder.console.print(
                f"[dim]{time.strftime('%H:%M:%S')}[/] {done}/{total} done · {running} running · best AP "
                f"{recorder.best_ap:.4f} · Pareto {recorder.front_size()} · {elapsed / 60:.1f} min elapsed · "
                f"ETA {eta}", highlight=False,
            )

    return Progress()
