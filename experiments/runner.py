"""Run or resume a search: Ray Tune + the Optuna study (ask and tell); local Ray by default, a cluster with an address.

The Optuna study (SQLite in the search folder) is the single source of truth: the searcher writes every
ending there, with its state and reason, before MLflow hears of it. ``resume`` reads the study, marks the
trials a killed driver left running as interrupted (their candidates are re-queued) and runs exactly the
remaining budget. A trial that hits a bug in gpnas stops the search (:class:`SearchAborted`, exit 1); one that
meets a bad input every trial shares stops it too (:class:`SearchInputError`, exit 2).

The pieces: :mod:`~gpnas.experiments.searcher` (searcher and trainable), :mod:`~gpnas.experiments.recorder`
(driver-side recording and progress), :mod:`~gpnas.experiments.ray_session` (Ray's lifecycle).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpnas.errors import ConfigError, SearchAborted, SearchInputError, SearchInterrupted
from gpnas.experiments.config import SearchConfig, save_config
from gpnas.experiments.ray_session import check_resources, cleanup_stale_ray, prepare_ray, ray_session
from gpnas.experiments.recorder import Recorder, progress_callback, stop_on_internal_error
from gpnas.experiments.scheduler import rung_scheduler
from gpnas.results import study as st
from gpnas.results.folder import SearchFolder, folder_lock
from gpnas.search_space.presets import PRESETS
from gpnas.search_space.space import SearchSpace
from gpnas.search_space.spec import ArchSpec

if TYPE_CHECKING:
    from rich.console import Console

    from gpnas.results.tracking import MlflowTracker

__all__ = ["SearchOutcome", "base_spec", "build_space", "run_search"]


# ---------------------------------------------------------------------------------------------- space
def base_spec(cfg: SearchConfig, folder: SearchFolder | None = None) -> ArchSpec:
    """The base spec of the space, with fitted anchors when ``space.anchors: auto`` (fitted once, saved)."""
    from gpnas.experiments.inspect import resolve_arch

    base = resolve_arch(cfg.space.base)
    if cfg.space.anchors == "auto":
        saved = folder.anchors if folder else None
        if saved and saved.is_file():
            anchors = json.loads(saved.read_text())
        else:
            from gpnas.experiments.stages import load_data
            from gpnas.trainers.anchors import fit_anchors

            data = load_data(cfg.data, base.img_size)
            anchors = fit_anchors(data.box_sizes(), img_size=base.img_size, seed=cfg.sampler.seed).round(1).tolist()
            if saved:
                saved.write_text(json.dumps(anchors))
        base = base.replace(anchors=anchors)
    return base


def build_space(cfg: SearchConfig, folder: SearchFolder | None = None) -> SearchSpace:
    return SearchSpace.from_config(base_spec(cfg, folder), cfg.space.genes)


def _enqueue_params(space: SearchSpace, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The parameters of each named preset or spec file to evaluate first; each must lie in the space (checked
    before the study exists, so a bad name leaves nothing behind)."""
    from gpnas.experiments.inspect import resolve_arch

    out = []
    for name in names:
        spec = resolve_arch(name)
        spec = spec.replace(anchors=space.base.anchors) if name in PRESETS else spec
        if not space.contains(spec):
            raise ConfigError(f"enqueue: '{name}' is not a point of this space; widen space.genes to include its "
                              "genes or remove it from enqueue")
        out.append(space.to_params(spec))
    return out


# ---------------------------------------------------------------------------------------------- study
@dataclass
class SearchOutcome:
    folder: Path
    counts: dict[str, int]
    ran: int
    seconds: float  # wall time of the Tune run (first trial scheduled -> last recorded)
    evaluate_seconds: float  # sum of the trials' own evaluate time


def _open_study(cfg: SearchConfig, storage: Any, resume: bool, enqueue: list[dict[str, Any]]) -> tuple[Any, int]:
    """Create (or, on resume, reopen) the study; -> (study, number of interrupted trials re-queued)."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=cfg.name, directions=cfg.directions(),
                                load_if_exists=True)
    requeued = _requeue_interrupted(study, storage) if resume else 0
    for params in enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    return study, requeued


def _requeue_interrupted(study: Any, storage: Any) -> int:
    """Trials left RUNNING (driver killed or interrupted) become ``interrupted``; their candidates run again."""
    requeue = st.mark_interrupted(study, storage)
    for params in requeue:
        study.enqueue_trial(params)
    return len(requeue)


def _check_new_or_resumable(cfg: SearchConfig, storage: Any, folder: SearchFolder, resume: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = optuna.study.get_all_study_names(storage)
    if cfg.name in existing and not resume:
        raise ConfigError(f"search '{cfg.name}' already exists in {folder}; continue it with `gpnas resume "
                          f"{folder}` or give another name (name=...)")
    if resume and cfg.name not in existing:
        raise ConfigError(f"{folder} has no study '{cfg.name}' to resume; start it with `gpnas search`")


# ---------------------------------------------------------------------------------------------- tune
def _tuner(cfg: SearchConfig, folder: SearchFolder, space: SearchSpace, recorder: Recorder, storage: Any,
           remaining: int, already: int, resumed_after: int, tracking_uri: str | None) -> Any:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from gpnas.experiments.prescreen import Prescreen
    from gpnas.experiments.searcher import GpnasSearcher, make_sampler, trainable  # imports ray: after prepare_ray

    searcher = GpnasSearcher(
        recorder=recorder, space=space, metric=list(cfg.objectives), mode=cfg.modes(),
        sampler=make_sampler(cfg, resumed_after=resumed_after), study_name=cfg.name, storage=storage,
        prescreen=Prescreen(cfg) if cfg.prescreen.enabled else None,
    )
    scheduler = rung_scheduler(recorder) if cfg.early_stopping.enabled else None
    fn = tune.with_parameters(trainable, cfg_json=cfg.model_dump_json(), base_json=space.base.model_dump_json(),
                              weights_dir=str(folder.weights), tracking_uri=tracking_uri)
    part = len(list(folder.ray.glob("part-*"))) if folder.ray.is_dir() else 0
    search_alg, max_concurrent = searcher, cfg.budget.max_concurrent
    if cfg.sampler.reproducible:  # rounds: the sampler sees the same finished trials whatever the timing
        search_alg, max_concurrent = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent, batch=True), None
    return tune.Tuner(
        tune.with_resources(fn, {"cpu": cfg.budget.cpu, "gpu": cfg.budget.gpu, **cfg.budget.resources}),
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=remaining,
                                    max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"part-{part}", storage_path=str(folder.ray), verbose=0, stop=stop_on_internal_error(recorder),
            callbacks=[progress_callback(recorder, cfg.budget.num_trials, already, time.time())]),
    )


def _say_where_artifacts_go(cfg: SearchConfig, tracker: MlflowTracker, console: Console) -> None:
    """A cluster search with the embedded SQLite store: trials on other machines cannot reach it."""
    if cfg.ray_address and tracker.uri.startswith("sqlite:"):
        console.print(f"note: this search runs on the Ray cluster at {cfg.ray_address} but logs to the local "
                      f"store {tracker.uri}: trials on other machines cannot log their weights there (they stay "
                      "on the machine that trained them). For a cluster, run `mlflow server --serve-artifacts` and "
                      "pass --tracking-uri http://HOST:PORT", markup=False, highlight=False)


def _finish(cfg: SearchConfig, tracker: MlflowTracker | None, recorder: Recorder, study: Any, storage: Any,
            seconds: float) -> SearchOutcome:
    recs = st.records(study)
    interrupted = not recorder.stopping and st.finished(recs) < cfg.budget.num_trials
    if interrupted:  # Ctrl-C: what was running is re-queued now, so the study shows no ghost "running" trial
        requeued = _requeue_interrupted(study, storage)
        recs = st.records(study)
    if tracker is not None:
        tracker.finish_search(cfg.info())
    if recorder.input_error is not None:
        raise SearchInputError(f"search '{cfg.name}' stopped: {recorder.input_error}. Every trial would fail the "
                               f"same way, so the search stopped there; after the fix, `gpnas resume "
                               f"{cfg.search_dir()}` runs the remaining budget (the trial is recorded as failed).")
    if recorder.internal_error is not None:
        raise SearchAborted(f"search '{cfg.name}' stopped: {recorder.internal_error}\nThe trial is recorded as "
                            f"failed; after a fix, `gpnas resume {cfg.search_dir()}` runs the remaining budget.")
    if interrupted:
        raise SearchInterrupted(f"search '{cfg.name}' was interrupted after {st.finished(recs)} of "
                                f"{cfg.budget.num_trials} trials ({requeued} running trial(s) re-queued); "
                                f"`gpnas resume {cfg.search_dir()}` runs the rest")
    new = recorder.ended[recorder.loaded:]
    evaluate_seconds = sum(r.evaluate_seconds for r in new if not (r.reason or "").startswith("same arch_id"))
    return SearchOutcome(cfg.search_dir(), st.counts(recs), len(new), seconds, evaluate_seconds)


def _fit(tuner: Any) -> float:
    """Run the Tune experiment; -> its wall seconds. Ctrl-C (Tune stops its trials, or a KeyboardInterrupt
    reaches here) ends it early: :func:`_finish` sees the missing trials and reports the interruption."""
    start = time.time()
    with contextlib.suppress(KeyboardInterrupt):
        tuner.fit()
    return time.time() - start


def _prepare(cfg: SearchConfig, folder: SearchFolder, resume: bool, console: Console) -> tuple[Any, SearchSpace,
                                                                                               list[dict[str, Any]]]:
    """Every check that can fail, before anything of the search is written: -> (storage, space, enqueue)."""
    storage = st.open_storage(folder)
    _check_new_or_resumable(cfg, storage, folder, resume)
    cfg.check_for_run()
    space = build_space(cfg, folder)
    if cfg.data.kind == "coco":  # read and check the annotation files once, here, not in every trial
        from gpnas.experiments.stages import load_data

        load_data(cfg.data, space.base.img_size)
    killed = cleanup_stale_ray(folder)  # this process owns the folder: the recorded driver is dead
    if killed:
        console.print(f"ended {len(killed)} Ray processes left by the interrupted driver: {killed}")
    return storage, space, ([] if resume else _enqueue_params(space, cfg.enqueue))


def run_search(cfg: SearchConfig, *, resume: bool = False, console: Console | None = None,
               tracker: MlflowTracker | None = None) -> SearchOutcome:
    """Run (or resume) a search to its full budget. The folder is ``cfg.search_dir()``; this process owns it
    (:func:`folder_lock`) for the whole run. A start that fails leaves nothing that blocks a corrected retry."""
    from rich.console import Console

    prepare_ray(cfg.ray_address)  # before ray is imported
    console = console or Console()
    folder = cfg.folder()
    with folder_lock(folder):
        storage, space, enqueue = _prepare(cfg, folder, resume, console)
        spent = resume and st.finished(st.records(st.load_study(folder, cfg.name))) >= cfg.budget.num_trials
        with contextlib.nullcontext() if spent else ray_session(cfg.ray_address, folder):
            if not spent:
                check_resources(cfg.budget.cpu, cfg.budget.gpu, cfg.budget.resources)
            save_config(cfg, folder.path)
            study, requeued = _open_study(cfg, storage, resume, enqueue)
            recs = st.records(study, refined=False)  # the search's own results: what a repeat reuses
            remaining = cfg.budget.num_trials - st.finished(recs)
            recorder = Recorder(cfg, folder, tracker, console)
            recorder.load(recs)
            if tracker is not None:
                tracker.start_search(cfg.info())
                if resume:  # the runs of trials the killed driver left running end as KILLED
                    tracker.sync(cfg.info())
                _say_where_artifacts_go(cfg, tracker, console)
            if remaining <= 0:
                console.print(f"search '{cfg.name}' has used its whole budget ({cfg.budget.num_trials} trials)",
                              markup=False)
                return _finish(cfg, tracker, recorder, study, storage, 0.0)  # backfills MLflow if it missed anything
            console.print(f"search {cfg.name}: {remaining} of {cfg.budget.num_trials} trials to run"
                          + (f" ({requeued} interrupted re-queued)" if requeued else "") + f", folder {folder}",
                          markup=False)
            console.print(space.describe(), highlight=False, markup=False)
            resumed_after = sum(1 for r in recs if r.state != "waiting") if resume else 0
            seconds = _fit(_tuner(cfg, folder, space, recorder, storage, remaining, st.finished(recs),
                                  resumed_after, tracker.uri if tracker is not None else None))
        return _finish(cfg, tracker, recorder, study, storage, seconds)
