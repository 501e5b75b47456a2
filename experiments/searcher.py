"""The two halves of a trial in Ray Tune: the searcher in the driver (Optuna proposes, gpnas records) and the
trainable in a worker (rebuild the candidate, evaluate it, report its result).

A trial ends in one of the declared states (complete, infeasible, failed with a reason, timeout, pruned);
anything else raised inside the trainable is a bug in gpnas, not a bad candidate: the trainable reports it as
``gpnas_state = "error"`` with its traceback, and the driver stops the whole search (see
:class:`gpnas.experiments.recorder.Recorder`).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpnas.experiments.config import SearchConfig
from gpnas.experiments.evaluate import evaluate_candidate, failure_result
from gpnas.results.records import TrialResult
from gpnas.results.trial_artifacts import log_trial_artifacts, logs_here
from gpnas.search_space.errors import GpnasError
from gpnas.search_space.space import SearchSpace
from gpnas.search_space.spec import ArchSpec

if TYPE_CHECKING:
    from gpnas.experiments.prescreen import Prescreen
    from gpnas.experiments.recorder import Recorder

__all__ = ["make_sampler", "searcher_class", "trainable"]


#: How often the searcher asks again when the sampler proposes a candidate the study already holds, before it
#: accepts the repeat (the space is then probably exhausted; the earlier result is reused).
MAX_REASKS = 10


def make_sampler(cfg: SearchConfig, *, resumed_after: int = 0) -> Any:
    """The configured Optuna sampler. A resumed search (``resumed_after`` trials already in the study) seeds it
    from the seed and that count: a fresh sampler with the original seed would restart its sequence and
    propose the candidates of the first run again. The same study resumed at the same point proposes the
    same candidates."""
    import optuna

    s = cfg.sampler
    seed = s.seed if s.seed is None or not resumed_after else (s.seed * 1_000_003 + resumed_after) % 2**32
    if s.type == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True,
                                          group=True)
    if s.type == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


# ---------------------------------------------------------------------------------------------- worker side
def _candidate(space: SearchSpace, params: dict[str, Any]) -> ArchSpec | TrialResult:
    """The candidate of a trial's parameters, or the failed result of parameters that make no valid spec."""
    try:
        return space.from_params(params)
    except GpnasError as err:
        return TrialResult(arch_id="invalid", state="failed", reason=str(err),
                           spec={"invalid_params": params, "error": str(err)})


def _run_trial(config: dict[str, Any], cfg: SearchConfig, base_json: str, weights_dir: Path) -> TrialResult:
    from ray import tune

    space = SearchSpace.from_config(ArchSpec(**json.loads(base_json)),
                                    {k: v.model_dump() for k, v in cfg.space.genes.items()})
    spec = _candidate(space, {k: v for k, v in config.items() if not k.startswith("gpnas_")})
    if isinstance(spec, TrialResult):
        return spec

    def report(metrics: dict[str, float]) -> None:
        tune.report({**metrics, "gpnas_state": "running"})

    return evaluate_candidate(spec, cfg, report, weights_dir=weights_dir)


def _node() -> dict[str, str]:
    """The Ray node this trial runs on: its IP address and node id."""
    import ray

    return {"ip": ray.util.get_node_ip_address(), "id": ray.get_runtime_context().get_node_id()}


def _log_artifacts(result: TrialResult, run_id: str | None, tracking_uri: str | None) -> None:
    """From this node, the trial's weights and tables into its MLflow run (``result.artifacts`` lists them); a
    failure is a warning: the driver logs what it has from its own copy, the rest stays on this node."""
    if not run_id or not tracking_uri or not logs_here(tracking_uri):
        return
    weights = Path(result.weights_path) if result.weights_path else None
    try:
        result.artifacts = log_trial_artifacts(tracking_uri, run_id, arch_id=result.arch_id,
                                               gp_layers=result.gp_layers, latency=result.latency, weights=weights)
    except Exception as err:  # any tracking failure is the store's, not the candidate's: warn, keep the result
        warnings.warn(f"trial {result.arch_id}: logging its artifacts to MLflow run {run_id} at {tracking_uri} "
                      f"failed ({type(err).__name__}: {err}); the driver logs what it has", stacklevel=2)


def trainable(config: dict[str, Any], cfg_json: str, base_json: str, weights_dir: str,
              tracking_uri: str | None = None) -> None:
    """Runs in a Ray worker: rebuild the candidate from its parameters, evaluate it, log its artifacts to its
    MLflow run from here, report the result.

    Weights are saved into the search folder's ``weights/`` when that folder is on this node (the driver's
    machine, or a shared disk); on another node they go to a temporary folder, into the run, and are deleted."""
    from ray import tune

    start = time.perf_counter()
    reuse = config.get("gpnas_reuse")
    if reuse:
        tune.report({**json.loads(reuse)["metrics"], "gpnas_state": "reused", "gpnas_result": reuse})
        return
    run_id = config.get("gpnas_run_id")
    here = Path(weights_dir).parent.is_dir() or not (run_id and tracking_uri and logs_here(tracking_uri))
    with contextlib.ExitStack() as stack:
        wdir = Path(weights_dir) if here else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        try:
            result = _run_trial(config, SearchConfig(**json.loads(cfg_json)), base_json, wdir)
        except Exception as exc:  # not a declared trial failure: a bug in gpnas; the driver stops the search
            failed = failure_result(None, exc, time.perf_counter() - start)
            failed.reason = f"internal error (a bug in gpnas, not this candidate): {failed.reason}"
            tune.report({"gpnas_state": "error", "gpnas_result": failed.to_json(),
                         "gpnas_traceback": "".join(traceback.format_exception(exc))})
            return
        result.node = _node()
        _log_artifacts(result, run_id, tracking_uri)
        if not here and result.weights_path:  # the copy that counts is the run's; name where the cache would be
            result.weights_path = str(Path(weights_dir) / Path(result.weights_path).name)
    tune.report({**result.metrics, "gpnas_state": result.state, "gpnas_result": result.to_json()})


# ---------------------------------------------------------------------------------------------- driver side
class _StateLivesInTheStudy:
    """The study database is the searcher's persistent state: Tune's own pickled searcher checkpoints are not
    used (resume reads the study), and the live searcher holds a database engine and a console."""

    def __getstate__(self) -> dict[str, Any]:
        return {"_gpnas_note": "state lives in the Optuna study"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        return None

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        return None


def searcher_class() -> type:
    """Ray's OptunaSearch, recording gpnas states through a :class:`Recorder` (built lazily: imports ray)."""
    from ray.tune.search.optuna import OptunaSearch

    class GpnasOptunaSearch(_StateLivesInTheStudy, OptunaSearch):
        """OptunaSearch that records gpnas states (pruned, infeasible, failed with reason) and reuses results of
        an arch_id evaluated before.

        OptunaSearch keeps its asked trials, its study and the trials it has told in private attributes
        (``_ot_trials``, ``_ot_study``, ``_completed_trials``; checked against ray 2.60.0) and has no public
        accessor for them: :meth:`_asked`, :meth:`_forget`, :meth:`_study`, :meth:`_told` and :meth:`_screened`
        are the only places that touch them.

        No candidate is trained twice: a proposal whose arch_id the study already holds (ended, or running now)
        is recorded as ``duplicate`` (not counted against the budget, never told to the sampler as a result)
        and the sampler is asked again, up to :data:`MAX_REASKS` times; after that the repeat is accepted and
        the earlier result reused (the space is then probably exhausted).
        """

        def __init__(self, *, recorder: Recorder, space: SearchSpace, prescreen: Prescreen | None = None,
                     **kwargs: Any) -> None:
            self.recorder = recorder
            self.gp_space = space
            self.prescreen = prescreen
            self.queue: list[tuple[str, dict[str, Any], ArchSpec | None]] = []  # passed the pre-screen, to train
            super().__init__(space=space.define, **kwargs)

        def _asked(self, trial_id: str) -> Any | None:
            return self._ot_trials.get(trial_id)

        def _forget(self, trial_id: str) -> None:
            self._ot_trials.pop(trial_id, None)

        def _study(self) -> Any:
            return self._ot_study

        def _taken(self, ot_trial: Any) -> dict[str, int]:
            """arch_id -> trial number, for the candidates the study holds other than ``ot_trial``'s (ended or
            running; an interrupted trial's candidate is re-queued, so it is not taken)."""
            taken: dict[str, int] = {}
            for t in self._study().get_trials(deepcopy=False):
                arch = t.user_attrs.get("arch_id")
                if t.number == ot_trial.number or arch in (None, "invalid", "unknown") or \
                        t.user_attrs.get("gpnas_state") in ("interrupted", "duplicate"):
                    continue
                taken.setdefault(arch, t.number)
            return taken

        def _told(self) -> set[str]:
            return self._completed_trials

        def _spec(self, params: dict[str, Any]) -> ArchSpec | None:
            try:
                return self.gp_space.from_params(params)
            except GpnasError:
                return None

        def _propose(self, trial_id: str) -> tuple[dict[str, Any] | None, ArchSpec | None, Any]:
            """One proposal of the sampler under ``trial_id`` that the study does not hold yet (a repeat is
            recorded as ``duplicate`` and the sampler asked again); -> (params, spec or None, Optuna trial)."""
            import optuna

            for attempt in range(MAX_REASKS + 1):
                params = super().suggest(trial_id)
                if not isinstance(params, dict):
                    return params, None, None
                spec, ot_trial = self._spec(params), self._asked(trial_id)
                arch_id = spec.arch_id if spec is not None else "invalid"
                first = self._taken(ot_trial).get(arch_id)
                ot_trial.set_user_attr("arch_id", arch_id)
                if first is None or arch_id == "invalid" or attempt == MAX_REASKS:
                    break
                ot_trial.set_user_attr("gpnas_state", "duplicate")
                ot_trial.set_user_attr("reason", f"the sampler proposed {arch_id} again (trial {first} has it); "
                                                 "it was asked for another candidate")
                self._study().tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                self._forget(trial_id)
            return params, spec, ot_trial

        def _screened(self, trial_id: str) -> tuple[dict[str, Any] | None, ArchSpec | None, Any]:
            """The next proposal that passed the pre-screen: a round asks the sampler for ``candidates``
            proposals, trains the best ``keep`` (queued) and records the rest as ``screened``."""
            if not self.queue:
                self._screen_round(trial_id)
            if not self.queue:  # the sampler had nothing to propose
                return self._propose(trial_id)
            key, params, spec = self.queue.pop(0)
            self._ot_trials[trial_id] = self._ot_trials.pop(key)
            return params, spec, self._asked(trial_id)

        def _screen_round(self, trial_id: str) -> None:
            import optuna

            from gpnas.experiments.prescreen import Scored

            settings, proposals = self.prescreen.settings, []
            for i in range(settings.candidates):
                key = f"{trial_id}-screen{i}"
                params, spec, ot_trial = self._propose(key)
                if not isinstance(params, dict):
                    break
                proposals.append((key, params, spec, ot_trial))
            scored = [Scored(spec) for _, _, spec, _ in proposals]
            self.recorder.console.print(f"[dim]pre-screen: measuring {len(proposals)} proposals without training[/]")
            for s, (_, params, _, _) in zip(scored, proposals, strict=True):
                try:  # parameters that make no valid spec raise here, with the reason
                    s.metrics = self.prescreen.measure(s.spec or self.gp_space.from_params(params))
                except GpnasError as err:  # a candidate that cannot be built or measured: not trained
                    s.error = f"{type(err).__name__}: {err}"
            order = self.prescreen.score(scored, self.recorder.complete_metrics())
            for place, i in enumerate(order):
                key, params, spec, ot_trial = proposals[i]
                s = scored[i]
                ot_trial.set_user_attr("screen_score", s.score)
                ot_trial.set_user_attr("screen_rank", s.rank)
                ot_trial.set_user_attr("screen_metrics", s.metrics)
                if s.predicted_ap is not None:
                    ot_trial.set_user_attr("screen_predicted_ap", s.predicted_ap)
                if place < settings.keep and s.error is None:
                    self.queue.append((key, params, spec))
                    continue
                ot_trial.set_user_attr("gpnas_state", "screened")
                ot_trial.set_user_attr("reason", self.prescreen.reason(s, len(proposals)))
                self._study().tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                self._forget(key)
            kept = ", ".join(spec.arch_id for _, _, spec in self.queue if spec is not None)
            self.recorder.console.print(f"[dim]pre-screen: training {kept} ({len(proposals) - len(self.queue)} "
                                        "screened out)[/]")

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            if self.prescreen is not None and (self.queue or self.prescreen.ready(
                    len(self.recorder.complete_metrics()))):
                params, spec, ot_trial = self._screened(trial_id)
            else:
                params, spec, ot_trial = self._propose(trial_id)
            if not isinstance(params, dict):
                return params
            arch_id = spec.arch_id if spec is not None else "invalid"
            ot_trial.set_user_attr("arch_id", arch_id)
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            self.recorder.asked[trial_id] = ot_trial
            run_id = self.recorder.started(trial_id, ot_trial, params, spec.to_yaml() if spec is not None else None)
            if run_id is not None:  # the trial's node logs its weights and tables to this run
                params = {**params, "gpnas_run_id": run_id}
            cached = self.recorder.cached(arch_id)
            if cached is not None:
                params = {**params, "gpnas_reuse": cached.to_json()}
            return params

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            self.recorder.progress(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            ot_trial = self._asked(trial_id)
            if trial_id in self._told() or ot_trial is None:
                return
            self.recorder.finish(self._study(), ot_trial, trial_id, result, error)
            self._told().add(trial_id)

    return GpnasOptunaSearch
