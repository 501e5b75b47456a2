"""The two halves of a trial in Ray Tune: the searcher in the driver (Optuna proposes, gpnas records) and the
trainable in a worker (rebuild the candidate, evaluate it, report its result).

This module is the search loop's adapter to Ray Tune and Optuna, and imports both: import it only after
:func:`gpnas.experiments.ray_session.prepare_ray` (the runner imports it when it builds the Tuner). It uses their
public interfaces only: Tune's ``Searcher`` (suggest / on_trial_result / on_trial_complete) and Optuna's
ask-and-tell (``Study.ask``, ``Study.tell``, ``Trial.set_user_attr``), so a new release of either breaks loudly
or not at all (``tests/test_public_apis.py`` checks that no private attribute is reached for).

A trial ends in one of the declared states (complete, infeasible, failed with a reason, timeout, pruned); a bad
input that every trial shares (a ConfigError or DataError raised inside the trial) is reported as ``gpnas_state =
"input_error"`` with its message, anything else as a bug in gpnas (``"error"``, with its traceback); either way the
driver stops the whole search once (see :class:`gpnas.experiments.recorder.Recorder`).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from ray import tune
from ray.tune.search import Searcher

from gpnas.errors import GpnasError, trial_level
from gpnas.experiments.config import SearchConfig
from gpnas.experiments.evaluate import evaluate_candidate, failure_result
from gpnas.results.records import TrialResult
from gpnas.results.trial_artifacts import log_trial_artifacts, logs_here
from gpnas.search_space.space import SearchSpace
from gpnas.search_space.spec import ArchSpec

if TYPE_CHECKING:
    from gpnas.experiments.prescreen import Prescreen
    from gpnas.experiments.recorder import Recorder

__all__ = ["GpnasSearcher", "Proposal", "make_sampler", "trainable"]


#: How often the searcher asks again when the sampler proposes a candidate the study already holds, before it
#: accepts the repeat (the space is then probably exhausted; the earlier result is reused).
MAX_REASKS = 10


def make_sampler(cfg: SearchConfig, *, resumed_after: int = 0) -> Any:
    """The configured Optuna sampler. A resumed search (``resumed_after`` trials already in the study) seeds it
    from the seed and that count: a fresh sampler with the original seed would restart its sequence and
    propose the candidates of the first run again. The same study resumed at the same point proposes the
    same candidates."""
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
    space = SearchSpace.from_config(ArchSpec(**json.loads(base_json)), cfg.space.genes)
    spec = _candidate(space, {k: v for k, v in config.items() if not k.startswith("gpnas_")})
    if isinstance(spec, TrialResult):
        return spec

    def report(metrics: dict[str, float]) -> None:
        tune.report({**metrics, "gpnas_state": "running"})

    return evaluate_candidate(spec, cfg, report, weights_dir=weights_dir)


def _node() -> dict[str, str]:
    """The Ray node this trial runs on: its IP address and node id."""
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
        except Exception as exc:  # not a failure of the candidate: a bad input or a bug; the driver stops the search
            tune.report(_stopping_report(exc, time.perf_counter() - start))
            return
        result.node = _node()
        _log_artifacts(result, run_id, tracking_uri)
        if not here and result.weights_path:  # the copy that counts is the run's; name where the cache would be
            result.weights_path = str(Path(weights_dir) / Path(result.weights_path).name)
    tune.report({**result.metrics, "gpnas_state": result.state, "gpnas_result": result.to_json()})


def _stopping_report(exc: BaseException, seconds: float) -> dict[str, Any]:
    """The report of a trial that raised something other than a failure of its candidate: a bad input that every
    trial shares (``gpnas_state = "input_error"``, with its message) or a bug (``"error"``, with its traceback)."""
    failed = failure_result(None, exc, seconds)
    if trial_level(exc) == "input":
        message = f"{type(exc).__name__}: {exc}"
        failed.reason = f"bad input (it stopped the search): {message}"
        return {"gpnas_state": "input_error", "gpnas_result": failed.to_json(), "gpnas_message": message}
    failed.reason = f"internal error (a bug in gpnas, not this candidate): {failed.reason}"
    return {"gpnas_state": "error", "gpnas_result": failed.to_json(),
            "gpnas_traceback": "".join(traceback.format_exception(exc))}


# ---------------------------------------------------------------------------------------------- driver side
@dataclass(frozen=True)
class Proposal:
    """One candidate the sampler proposed: its flat parameters, its spec (None when the parameters make no valid
    spec) and the open Optuna trial that holds it."""

    params: dict[str, Any]
    spec: ArchSpec | None
    trial: optuna.Trial

    @property
    def arch_id(self) -> str:
        return self.spec.arch_id if self.spec is not None else "invalid"


class GpnasSearcher(Searcher):
    """Ray Tune's searcher of a gpnas search: it owns the search's Optuna study and drives it through Optuna's
    ask-and-tell interface (``study.ask()``, :meth:`SearchSpace.define` on the trial, ``study.tell``), and
    records gpnas states (pruned, infeasible, failed with a reason) through a :class:`Recorder`.

    No candidate is trained twice: a proposal whose arch_id the study already holds (ended, or running now)
    is recorded as ``duplicate`` (not counted against the budget, never told to the sampler as a result)
    and the sampler is asked again, up to :data:`MAX_REASKS` times; after that the repeat is accepted and
    the earlier result reused (the space is then probably exhausted).

    The study database is the searcher's persistent state: a resumed search reopens the study and the sampler
    continues from the trials it holds. Tune's own checkpoints of the searcher are therefore not written, and
    the live searcher (a database engine, a console) pickles as a note only.
    """

    def __init__(self, *, recorder: Recorder, space: SearchSpace, study_name: str, storage: Any,
                 sampler: optuna.samplers.BaseSampler, metric: list[str], mode: list[str],
                 prescreen: Prescreen | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        # pruning is the rung scheduler's decision (recorded as PRUNED by the recorder), not Optuna's pruner's
        self.study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                       pruner=optuna.pruners.NopPruner())
        self.recorder = recorder
        self.space = space
        self.prescreen = prescreen
        self.live: dict[str, optuna.Trial] = {}  # Tune trial id -> its open Optuna trial
        self.queue: list[Proposal] = []  # passed the pre-screen, to train

    # ------------------------------------------------------------------ Tune's Searcher interface
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        """The space and the objectives are the search's own, given at construction: Tune's are not taken."""
        return False

    def suggest(self, trial_id: str) -> dict[str, Any]:
        screening = self.prescreen is not None and (
            bool(self.queue) or self.prescreen.ready(len(self.recorder.complete_metrics())))
        proposal = self._screened() if screening else self._propose()
        params, trial = proposal.params, proposal.trial
        trial.set_user_attr("tune_trial_id", trial_id)
        self.live[trial_id] = trial
        self.recorder.asked[trial_id] = trial
        spec_yaml = proposal.spec.to_yaml() if proposal.spec is not None else None
        run_id = self.recorder.started(trial_id, trial, params, spec_yaml)
        if run_id is not None:  # the trial's node logs its weights and tables to this run
            params = {**params, "gpnas_run_id": run_id}
        cached = self.recorder.cached(proposal.arch_id)
        if cached is not None:
            params = {**params, "gpnas_reuse": cached.to_json()}
        return params

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.recorder.progress(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        trial = self.live.get(trial_id)
        if trial is None:  # not asked here, or already told
            return
        self.recorder.finish(self.study, trial, trial_id, result, error)
        del self.live[trial_id]

    def save(self, checkpoint_path: str) -> None:
        """Nothing to write: the state lives in the study."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to read: a resumed search reopens the study."""

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing to write: the state lives in the study."""

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """Nothing to read: a resumed search reopens the study."""

    def __getstate__(self) -> dict[str, Any]:
        return {"gpnas_note": "state lives in the Optuna study"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ proposals
    def _ask(self) -> Proposal:
        """A new trial of the study, its genes suggested by the sampler (define-by-run)."""
        trial = self.study.ask()
        self.space.define(trial)
        params = dict(trial.params)
        try:
            spec: ArchSpec | None = self.space.from_params(params)
        except GpnasError:  # the trainable records the reason as the trial's failure
            spec = None
        proposal = Proposal(params, spec, trial)
        trial.set_user_attr("arch_id", proposal.arch_id)
        return proposal

    def _holder(self, proposal: Proposal) -> int | None:
        """The number of another trial that holds ``proposal``'s candidate (ended or running; an interrupted
        trial's candidate is re-queued and a duplicate was never trained, so neither holds it), or None."""
        if proposal.arch_id == "invalid":
            return None
        for t in self.study.get_trials(deepcopy=False):
            if t.number != proposal.trial.number and t.user_attrs.get("arch_id") == proposal.arch_id and \
                    t.user_attrs.get("gpnas_state") not in ("interrupted", "duplicate"):
                return t.number
        return None

    def _propose(self) -> Proposal:
        """One proposal of the sampler that the study does not hold yet: a repeat is recorded as ``duplicate``
        and the sampler asked again."""
        for _ in range(MAX_REASKS):
            proposal = self._ask()
            first = self._holder(proposal)
            if first is None:
                return proposal
            proposal.trial.set_user_attr("gpnas_state", "duplicate")
            proposal.trial.set_user_attr("reason", f"the sampler proposed {proposal.arch_id} again (trial {first} "
                                                   "has it); it was asked for another candidate")
            self.study.tell(proposal.trial, state=optuna.trial.TrialState.FAIL)
        return self._ask()  # the space is probably exhausted: the repeat runs and reuses the earlier result

    # ------------------------------------------------------------------ pre-screen
    def _screened(self) -> Proposal:
        """The next proposal that passed the pre-screen: a round asks the sampler for ``candidates``
        proposals, trains the best ``keep`` (queued) and records the rest as ``screened``."""
        if not self.queue:
            self._screen_round()
        if not self.queue:  # no proposal of the round could be measured
            return self._propose()
        return self.queue.pop(0)

    def _screen_round(self) -> None:
        from gpnas.experiments.prescreen import Scored

        assert self.prescreen is not None
        settings = self.prescreen.settings
        proposals = [self._propose() for _ in range(settings.candidates)]
        scored = [Scored(p.spec) for p in proposals]
        self.recorder.console.print(f"[dim]pre-screen: measuring {len(proposals)} proposals without training[/]")
        for s, p in zip(scored, proposals, strict=True):
            try:  # parameters that make no valid spec raise here, with the reason
                s.metrics = self.prescreen.measure(s.spec or self.space.from_params(p.params))
            except GpnasError as err:  # a candidate that cannot be built or measured: not trained
                s.error = f"{type(err).__name__}: {err}"
        order = self.prescreen.score(scored, self.recorder.complete_metrics())
        for place, i in enumerate(order):
            trial, s = proposals[i].trial, scored[i]
            trial.set_user_attr("screen_score", s.score)
            trial.set_user_attr("screen_rank", s.rank)
            trial.set_user_attr("screen_metrics", s.metrics)
            if s.predicted_ap is not None:
                trial.set_user_attr("screen_predicted_ap", s.predicted_ap)
            if place < settings.keep and s.error is None:
                self.queue.append(proposals[i])
                continue
            trial.set_user_attr("gpnas_state", "screened")
            trial.set_user_attr("reason", self.prescreen.reason(s, len(proposals)))
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        kept = ", ".join(p.arch_id for p in self.queue if p.spec is not None)
        self.recorder.console.print(f"[dim]pre-screen: training {kept} ({len(proposals) - len(self.queue)} "
                                    "screened out)[/]")
