"""Ray Tune + OptunaSearch over the space; local Ray by default, an existing cluster with ``address``.

The Optuna study (SQLite in the search folder) is the single source of truth: the searcher writes every
ending there, with its state and reason, before MLflow hears of it. ``resume`` reads the study, marks the
trials a killed driver left running as interrupted (their candidates are re-queued) and runs exactly the
remaining budget. This is the only module that imports ray.
"""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpnas.experiments import study as st
from gpnas.experiments.config import SearchConfig, save_config
from gpnas.experiments.evaluate import TrialResult, constraint_values, evaluate_candidate, failure_result
from gpnas.search_space.errors import ConfigError, GpnasError
from gpnas.search_space.presets import PRESETS
from gpnas.search_space.space import SearchSpace
from gpnas.search_space.spec import ArchSpec

PID_FILE = "ray_pids.json"
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
warnings.filterwarnings("ignore", message=".*experimental feature.*")


def _ray() -> Any:
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError as err:  # pragma: no cover - ray is a dependency
        raise ConfigError(f"ray[tune] is not importable ({err}); install gradpath-nas with its dependencies") from None
    return ray


# ---------------------------------------------------------------------------------------------- space
def base_spec(cfg: SearchConfig, folder: Path | None = None) -> ArchSpec:
    """The base spec of the space, with fitted anchors when ``space.anchors: auto`` (fitted once, saved)."""
    from gpnas.experiments.inspect import resolve_arch

    base = resolve_arch(cfg.space.base)
    if cfg.space.anchors == "auto":
        saved = folder / "anchors.json" if folder else None
        if saved and saved.is_file():
            anchors = json.loads(saved.read_text())
        else:
            from gpnas.experiments.evaluate import load_data
            from gpnas.trainers.anchors import fit_anchors

            data = load_data(cfg, base.img_size)
            anchors = fit_anchors(data.box_sizes(), img_size=base.img_size, seed=cfg.sampler.seed).round(1).tolist()
            if saved:
                saved.write_text(json.dumps(anchors))
        base = base.replace(anchors=anchors)
    return base


def build_space(cfg: SearchConfig, folder: Path | None = None) -> SearchSpace:
    return SearchSpace.from_config(base_spec(cfg, folder), {k: v.model_dump() for k, v in cfg.space.genes.items()})


def make_sampler(cfg: SearchConfig) -> Any:
    import optuna

    s = cfg.sampler
    if s.type == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=True,
                                          group=True)
    if s.type == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=s.population_size)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=s.seed)


# ---------------------------------------------------------------------------------------------- trainable
def trainable(config: dict[str, Any], cfg_json: str, base_json: str, weights_dir: str) -> None:
    """Runs in a Ray worker: rebuild the candidate from its parameters, evaluate it, report the result."""
    from ray import tune

    cfg = SearchConfig(**json.loads(cfg_json))
    start = time.perf_counter()
    reuse = config.get("gpnas_reuse")
    if reuse:
        tune.report({**json.loads(reuse)["metrics"], "gpnas_state": "reused", "gpnas_result": reuse})
        return
    space = SearchSpace.from_config(ArchSpec(**json.loads(base_json)),
                                    {k: v.model_dump() for k, v in cfg.space.genes.items()})
    params = {k: v for k, v in config.items() if not k.startswith("gpnas_")}

    def report(metrics: dict[str, float]) -> None:
        tune.report({**metrics, "gpnas_state": "running"})

    try:
        spec: ArchSpec | dict[str, Any] = space.from_params(params)
    except GpnasError as err:
        spec = {"invalid_params": params, "error": str(err)}
    try:
        if isinstance(spec, dict):
            result = TrialResult(arch_id="invalid", state="failed", reason=spec["error"], spec=spec)
        else:
            result = evaluate_candidate(spec, cfg, report, weights_dir=Path(weights_dir))
    except Exception as exc:  # a trial must never kill the search: record the unexpected with its reason
        is_spec = isinstance(spec, ArchSpec)
        result = failure_result(spec.to_dict() if is_spec else spec, exc, time.perf_counter() - start,
                                arch_id=spec.arch_id if is_spec else "invalid")
    tune.report({**result.metrics, "gpnas_state": result.state, "gpnas_result": result.to_json()})


# ---------------------------------------------------------------------------------------------- searcher
def _searcher_class() -> type:
    from ray.tune.search.optuna import OptunaSearch

    class GpnasOptunaSearch(OptunaSearch):
        """OptunaSearch that records gpnas states (pruned, infeasible, failed with reason) and reuses results of
        an arch_id evaluated before."""

        def __init__(self, *, recorder: Recorder, space: SearchSpace, **kwargs: Any) -> None:
            self.recorder = recorder
            self.gp_space = space
            super().__init__(space=space.define, **kwargs)

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            params = super().suggest(trial_id)
            if not isinstance(params, dict):
                return params
            ot_trial = self._ot_trials[trial_id]
            try:
                arch_id = self.gp_space.from_params(params).arch_id
            except GpnasError:
                arch_id = "invalid"
            ot_trial.set_user_attr("arch_id", arch_id)
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            cached = self.recorder.cached(arch_id)
            if cached is not None:
                params = {**params, "gpnas_reuse": cached.to_json()}
            return params

        # The study database is the persistent state; Tune's own pickled searcher checkpoints are not used
        # (resume reads the study), and the live searcher holds a database engine and a console.
        def __getstate__(self) -> dict[str, Any]:
            return {"_gpnas_note": "state lives in the Optuna study"}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)

        def save(self, checkpoint_path: str) -> None:
            return None

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            return None

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            self.recorder.progress(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            self.recorder.finish(self._ot_study, ot_trial, trial_id, result, error)
            self._completed_trials.add(trial_id)

    return GpnasOptunaSearch


# ---------------------------------------------------------------------------------------------- recorder
class Recorder:
    """Driver side: writes each ending to the study, the trial folder and MLflow; keeps progress figures."""

    def __init__(self, cfg: SearchConfig, folder: Path, tracker: Any | None, console: Any) -> None:
        self.cfg, self.folder, self.tracker, self.console = cfg, folder, tracker, console
        self.by_arch: dict[str, TrialResult] = {}
        self.ended: list[TrialResult] = []
        self.running: dict[str, float] = {}
        self.best_ap = float("nan")
        self.loaded = 0

    def __getstate__(self) -> dict[str, Any]:  # never leaves the driver (holds a console and a tracker)
        return {}

    def load(self, recs: list[st.TrialRecord]) -> None:
        for r in recs:
            if r.result is not None and r.state in ("complete", "infeasible"):
                self.by_arch.setdefault(r.result.arch_id, r.result)
                self.ended.append(r.result)
        self.loaded = len(self.ended)

    def cached(self, arch_id: str) -> TrialResult | None:
        return self.by_arch.get(arch_id)

    def progress(self, trial_id: str, result: dict[str, Any]) -> None:
        self.running[trial_id] = time.time()

    def finish(self, study: Any, ot_trial: Any, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        self.running.pop(trial_id, None)
        tr = self._parse(ot_trial, result, error)
        constraints = constraint_values(self.cfg, tr.metrics) if tr.state in ("complete", "infeasible") else {}
        self._write_trial_folder(ot_trial.number, tr)
        if self.tracker is not None:  # before tell: the run id can only be stored while the trial is open
            rec = st.TrialRecord(number=ot_trial.number, state=tr.state, reason=tr.reason, arch_id=tr.arch_id,
                                 values=None, result=tr, mlflow_run_id=None, params=dict(ot_trial.params))
            run_id = self.tracker.log_trial_safe(rec)
            if run_id:
                ot_trial.set_user_attr("mlflow_run_id", run_id)
        st.tell_result(study, ot_trial, tr, self.cfg.objectives, constraints)
        if tr.state in ("complete", "infeasible"):
            self.by_arch.setdefault(tr.arch_id, tr)
        self.ended.append(tr)
        if tr.state == "complete" and "ap" in tr.metrics:
            ap = tr.metrics["ap"]
            self.best_ap = ap if self.best_ap != self.best_ap else max(self.best_ap, ap)
        self._say(ot_trial.number, tr)

    def _parse(self, ot_trial: Any, result: dict[str, Any] | None, error: bool) -> TrialResult:
        arch_id = ot_trial.user_attrs.get("arch_id", "unknown")
        if result and result.get("gpnas_result"):
            tr = TrialResult.from_dict(json.loads(result["gpnas_result"]))
            if result.get("gpnas_state") == "reused":
                tr.reason = f"same arch_id as an earlier trial; its result was reused ({tr.reason or 'ok'})"
            return tr
        if error:
            return TrialResult(arch_id=arch_id, state="failed",
                               reason="the trial's worker crashed (see the Ray trial folder for error.txt)")
        partial = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return TrialResult(arch_id=arch_id, state="pruned", metrics=partial,
                           reason=f"stopped early by ASHA after {partial.get('epoch', 0):.0f} epochs")

    def _write_trial_folder(self, number: int, tr: TrialResult) -> None:
        folder = self.folder / "trials" / f"{number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").write_text(tr.to_json())
        if tr.spec and "invalid_params" not in tr.spec:
            (folder / "spec.yaml").write_text(ArchSpec(**tr.spec).to_yaml())

    def _say(self, number: int, tr: TrialResult) -> None:
        m = tr.metrics
        figures = " ".join(f"{k} {m[k]:.4g}" for k in ("ap", "ap50", "gflops", "latency_ms") if k in m)
        why = f" — {tr.reason}" if tr.reason and tr.state != "complete" else ""
        self.console.print(f"  trial {number:3d} [bold]{tr.state}[/] {tr.arch_id} {figures}{why}", highlight=False)


# ---------------------------------------------------------------------------------------------- ray lifecycle
def _record_ray_pids(folder: Path) -> None:
    """Remember the local Ray processes this driver started, so a resume can end them if it was killed."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # ray has no public accessor for its processes
    pids = []
    for infos in getattr(node, "all_processes", {}).values():
        pids += [info.process.pid for info in infos if getattr(info, "process", None) is not None]
    (folder / PID_FILE).write_text(json.dumps({"driver": os.getpid(), "ray": pids}))


def cleanup_stale_ray(folder: Path) -> list[int]:
    """End the Ray processes a killed driver of this search left behind (checked by their command line)."""
    path = folder / PID_FILE
    if not path.is_file():
        return []
    info = json.loads(path.read_text())
    killed = []
    for pid in [info.get("driver"), *info.get("ray", [])]:
        if not pid or pid == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmdline or "gpnas" in cmdline:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    path.unlink(missing_ok=True)
    return killed


def prepare_ray_auth(address: str | None) -> None:
    """A cluster started with `ray start` uses token auth (its token in ~/.ray/auth_token); a driver only
    presents it when RAY_AUTH_MODE=token is set before ray is imported."""
    if not address or "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def init_ray(address: str | None, folder: Path, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` or start a local Ray; returns whether this driver started it."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                              "logging_level": "ERROR"}
    if address:
        ray.init(address=address, **kwargs)
        return False
    ray.init(address="local", num_cpus=num_cpus, **kwargs)  # never attach to a stale cluster by accident
    _record_ray_pids(folder)
    return True


@dataclass
class SearchOutcome:
    folder: Path
    counts: dict[str, int]
    ran: int
    seconds: float  # wall time of the Tune run (first trial scheduled -> last recorded)
    evaluate_seconds: float  # sum of the trials' own evaluate time


def _progress_callback(recorder: Recorder, total: int, already: int, start: float) -> Any:
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
            front = len(_front_numbers(recorder, recorder.cfg))
            recorder.console.print(
                f"[dim]{time.strftime('%H:%M:%S')}[/] {done}/{total} done · {running} running · best AP "
                f"{recorder.best_ap:.4f} · Pareto {front} · {elapsed / 60:.1f} min elapsed · ETA {eta}",
                highlight=False,
            )

    return Progress()


def _front_numbers(recorder: Recorder, cfg: SearchConfig) -> list[int]:
    import numpy as np
    from gpnas.results.pareto import pareto_mask

    done = [r for r in recorder.ended if r.state == "complete"]
    if not done:
        return []
    values = np.array([r.objective_values(cfg.objectives) for r in done], dtype=float)
    return [i for i, m in enumerate(pareto_mask(values, cfg.directions())) if m]


def run_search(
    cfg: SearchConfig,
    *,
    resume: bool = False,
    console: Any = None,
    tracker: Any = None,
) -> SearchOutcome:
    """Run (or resume) a search to its full budget. The folder is ``cfg.search_dir()``."""
    from rich.console import Console

    prepare_ray_auth(cfg.ray_address)  # before ray is imported
    from ray import tune

    console = console or Console()
    folder = cfg.search_dir()
    storage = st.open_storage(folder)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = optuna.study.get_all_study_names(storage)
    if cfg.name in existing and not resume:
        raise ConfigError(f"search '{cfg.name}' already exists in {folder}; continue it with `gpnas resume "
                          f"{folder}` or give another name (name=...)")
    if resume and cfg.name not in existing:
        raise ConfigError(f"{folder} has no study '{cfg.name}' to resume; start it with `gpnas search`")
    save_config(cfg, folder)
    killed = cleanup_stale_ray(folder)
    if killed:
        console.print(f"ended {len(killed)} Ray processes left by the interrupted driver: {killed}")
    space = build_space(cfg, folder)
    study = optuna.create_study(storage=storage, study_name=cfg.name, directions=cfg.directions(),
                                load_if_exists=True)
    requeued = st.mark_interrupted(study) if resume else []
    for params in requeued:
        study.enqueue_trial(params)
    if not resume:
        for name in cfg.enqueue:
            _enqueue_named(study, space, name)
    recs = st.records(study)
    remaining = cfg.budget.num_trials - st.finished(recs)
    recorder = Recorder(cfg, folder, tracker, console)
    recorder.load(recs)
    start = time.time()
    if tracker is not None:
        tracker.start_search(cfg, folder)
    if remaining <= 0:
        console.print(f"search '{cfg.name}' has used its whole budget ({cfg.budget.num_trials} trials)")
        if tracker is not None:
            tracker.finish_search(cfg, folder, recs)  # backfills MLflow if it missed anything
        return SearchOutcome(folder, st.counts(recs), 0, 0.0, 0.0)
    console.print(f"search [bold]{cfg.name}[/]: {remaining} of {cfg.budget.num_trials} trials to run"
                  + (f" ({len(requeued)} interrupted re-queued)" if requeued else "") + f", folder {folder}")
    console.print(space.describe(), highlight=False)
    started_ray = init_ray(cfg.ray_address, folder)
    try:
        searcher = _searcher_class()(
            recorder=recorder, space=space, metric=list(cfg.objectives),
            mode=["max" if d == "maximize" else "min" for d in cfg.directions()],
            sampler=make_sampler(cfg), study_name=cfg.name, storage=storage,
        )
        scheduler = None
        if cfg.early_stopping.asha:
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(metric="ap", mode="max", time_attr="training_iteration", max_t=10_000,
                                      grace_period=cfg.early_stopping.grace_period,
                                      reduction_factor=cfg.early_stopping.reduction_factor)
        resources = {"cpu": cfg.budget.cpu, "gpu": cfg.budget.gpu}
        fn = tune.with_parameters(trainable, cfg_json=cfg.model_dump_json(), base_json=space.base.model_dump_json(),
                                  weights_dir=str(folder / "weights"))
        part = len(list((folder / "ray").glob("part-*"))) if (folder / "ray").is_dir() else 0
        search_alg, max_concurrent = searcher, cfg.budget.max_concurrent
        if cfg.sampler.reproducible:  # rounds: the sampler sees the same finished trials whatever the timing
            from ray.tune.search import ConcurrencyLimiter

            search_alg, max_concurrent = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent, batch=True), None
        tuner = tune.Tuner(
            tune.with_resources(fn, resources),
            tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=remaining,
                                        max_concurrent_trials=max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=f"part-{part}", storage_path=str(folder / "ray"), verbose=0,
                                      callbacks=[_progress_callback(recorder, cfg.budget.num_trials,
                                                                    st.finished(recs), start)]),
        )
        fit_start = time.time()
        tuner.fit()
        fit_seconds = time.time() - fit_start
    finally:
        if started_ray:
            import ray

            ray.shutdown()
            (folder / PID_FILE).unlink(missing_ok=True)
    recs = st.records(study)
    if tracker is not None:
        tracker.finish_search(cfg, folder, recs)
    new = recorder.ended[recorder.loaded:]
    evaluate_seconds = sum(r.evaluate_seconds for r in new if not (r.reason or "").startswith("same arch_id"))
    return SearchOutcome(folder, st.counts(recs), len(new), fit_seconds, evaluate_seconds)


def _enqueue_named(study: Any, space: SearchSpace, name: str) -> None:
    """Enqueue a preset or spec file as the next trial; it must lie in the space."""
    from gpnas.experiments.inspect import resolve_arch

    spec = resolve_arch(name)
    spec = spec.replace(anchors=space.base.anchors) if name in PRESETS else spec
    if not space.contains(spec):
        raise ConfigError(f"enqueue: '{name}' is not a point of this space; widen space.genes to include its genes "
                          f"or remove it from enqueue")
    study.enqueue_trial(space.to_params(spec), skip_if_exists=True)
