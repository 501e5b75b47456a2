"""What a full training (`gpnas train ARCH --out DIR`) tells the user: its MLflow run (the checkpoint's, reopened
with the epochs it lacks, or a new one), a progress line per epoch, and the final report of ``best.pt``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpnas.experiments.train_folder import config_to_dict
from gpnas.objectives.accuracy import METRIC_KEYS

if TYPE_CHECKING:
    from gpnas.experiments.full_training import FullTraining, FullTrainRequest
    from gpnas.results.train_tracking import TrainRunTracker

__all__ = ["duration", "final_report", "open_tracker", "progress_line"]

Log = Callable[[str], None]


def duration(seconds: float) -> str:
    """``1h05m``, ``3m07s`` or ``12s``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _params(training: FullTraining) -> dict[str, str]:
    """The run's MLflow params: the spec, the train config (``train.*``), arch_id and the data's name."""
    spec = training.spec
    params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in spec.to_dict().items()}
    params.update({f"train.{k}": v if isinstance(v, str) else json.dumps(v)
                   for k, v in config_to_dict(training.config).items()})
    params.update(arch_id=spec.arch_id, data=training.data.name)
    return params


def open_tracker(request: FullTrainRequest, training: FullTraining, ckpt: dict[str, Any] | None
                 ) -> TrainRunTracker:
    """The run's MLflow run: the checkpoint's, reopened, with the epochs it lacks; or a new one (closing one that
    an earlier start of this folder opened and never checkpointed)."""
    from gpnas.results.train_tracking import TrainRunTracker

    folder, spec = training.folder, training.spec
    saved = (ckpt or {}).get("mlflow") or {}
    uri = request.tracking_uri or saved.get("uri") or folder.default_tracking_uri
    tracker = TrainRunTracker.open(uri, experiment=f"train-{spec.name or spec.arch_id}", run_name=folder.path.name,
                                   params=_params(training), run_id=saved.get("run_id"),
                                   artifacts=folder.mlflow_artifacts)
    stale = folder.read_mlflow_run() if ckpt is None else None
    if stale is not None and stale.get("tracking_uri") == uri and stale.get("run_id") != tracker.run_id:
        tracker.close_stale(stale["run_id"])
    folder.write_mlflow_run(uri, tracker.run_id)
    training.mlflow = {"uri": request.tracking_uri or saved.get("uri"), "run_id": tracker.run_id}
    tracker.log_epochs(training.history)
    return tracker


def progress_line(training: FullTraining, row: dict[str, float], mean_seconds: float) -> str:
    """The line printed after an epoch (``row``: its figures; ``mean_seconds``: an epoch's mean time so far)."""
    config = training.config
    left = config.epochs - training.epoch  # type: ignore[operator]
    return (f"epoch {training.epoch}/{config.epochs}  loss {row['loss']:.4f}  val AP {row['ap']:.4f}  "
            f"AP50 {row['ap50']:.4f}  best AP {training.best_ap:.4f} (epoch {training.best_epoch})  "
            f"{row['seconds']:.1f} s  ETA {duration(left * mean_seconds)}")


def final_report(training: FullTraining, metrics: dict[str, float], best_epoch: int,
                 tracker: TrainRunTracker | None, log: Log) -> dict[str, Any]:
    """The report of the run: ``metrics`` (best.pt's, of epoch ``best_epoch``, on the whole val split) with the
    run's figures; written to the folder and MLflow, and said."""
    folder, data = training.folder, training.data
    report = {"arch_id": training.spec.arch_id, "name": training.spec.name, "data": data.name,
              **{k: metrics[k] for k in METRIC_KEYS}, "images": len(data.val), "epochs": training.epoch,
              "steps": training.step, "best_epoch": best_epoch, "seconds": training.seconds,
              "checkpoint": str(folder.best), "history": training.history}
    folder.write_report(report)
    if tracker is not None:
        final = {**{k: report[k] for k in METRIC_KEYS}, "best_epoch": report["best_epoch"],
                 "seconds": report["seconds"]}
        tracker.finish(final, [folder.report_json, folder.report_md, folder.best])
        log(f"MLflow: {tracker.how_to_open()}")
    log(f"best.pt (epoch {report['best_epoch']}): AP {report['ap']:.4f}  AP50 {report['ap50']:.4f} on "
        f"{report['images']} val images; report: {folder.report_md}")
    return report
