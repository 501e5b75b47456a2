"""Full training of one architecture (`gpnas train ARCH --data ANN.json --images DIR --epochs N --out DIR`): hours
on the user's data, a checkpoint after every epoch, exact resumption (``--resume``), one process or many under
``torchrun``. `gpnas train` without ``--out`` stays proxy training (``train_one.py``).

A loop of its own, not ProxyTrainer: proxy training is a budgeted run that starts from step 0 every time (``fit``
makes its optimiser, loader, EMA, step, epoch and history afresh, and its budgets include wall-clock time);
resuming it exactly would need hooks to inject each of those into the middle of ``fit``. This loop counts epochs
only and reuses ProxyTrainer's pieces — ``build_optimizer``, ``lr_factor``, ``train_step`` (AMP on CUDA, gradient
clipping, the NaN check), ``YoloLoss``, ``ModelEMA``, the seeded loader and ``inference_on_dataset`` — so one
step here is one proxy step. ProxyTrainer is unchanged: those functions were lifted out of it operation for
operation.

Exact continuation. ``DIR/last.pt`` (written atomically after every epoch) holds the model, the EMA (weights and
update count, which sets its decay), the optimiser, the AMP scaler, the step and the planned total of the LR
schedule (``lr_factor`` is a function of the step), the epoch, torch's CPU RNG (and CUDA's on a GPU), the
per-epoch history, the best AP and its epoch, the seconds so far, the spec, the train config, the data
fingerprint and the MLflow run. numpy's and Python's global RNGs are not used by training (augmentation draws from
per-item generators), so they are not saved. Data order: epoch e's batches depend only on (seed, e) —
``SeededShuffle`` carries its generator from pass to pass and ``AugmentSeeds`` counts passes; before each epoch
the loop calls ``loader.sampler.set_epoch(e)``, which puts both at pass e (replaying the earlier permutations when
the sampler is new, as after a resume). On CPU a resumed run thus ends with the same weights, bit for bit, as an
uninterrupted one (with the same thread count); a run killed mid-epoch resumes from its last completed epoch.

Several GPUs: under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains a DistributedDataParallel replica on its
``RankShard`` of every batch: ``--batch-size`` is the global batch and each rank takes every world-th image of it,
so together the ranks see the single-process batches and the LR schedule has the same steps (BatchNorm statistics
stay per rank). Rank 0 alone scores val AP, writes files and MLflow and prints; the ranks meet at a barrier after
every epoch.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gpnas.experiments import stages
from gpnas.experiments.distributed import Distributed
from gpnas.experiments.train_folder import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    TrainFolder,
    atomic_save,
    config_to_dict,
    data_fingerprint,
    resolve_config,
)
from gpnas.objectives.accuracy import METRIC_KEYS, CocoEvaluator, inference_on_dataset
from gpnas.search_space.errors import ConfigError
from gpnas.search_space.spec import ArchSpec
from gpnas.trainers.data import LoaderOptions, to_model_input
from gpnas.trainers.ema import ModelEMA
from gpnas.trainers.loss import YoloLoss
from gpnas.trainers.proxy import build_optimizer, lr_factor, train_step
from gpnas.trainers.speedups import input_format, set_layout

if TYPE_CHECKING:
    from gpnas.experiments.config import DataConfig
    from gpnas.results.train_tracking import TrainRunTracker
    from gpnas.trainers.datasets import ProxyData
    from gpnas.trainers.train_config import TrainConfig

__all__ = ["FullTrainRequest", "FullTraining", "check_mode_options", "full_train"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class FullTrainRequest:
    """What `gpnas train ... --out DIR` asks for. None: not given — a new run's default, or a resumed run's own
    value (``img``: the run's spec's size)."""

    spec: ArchSpec
    data: DataConfig
    out: Path
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    device: str | None = None
    img: int | None = None
    resume: bool = False
    tracking_uri: str | None = None
    mlflow: bool = True

    def given(self) -> dict[str, Any]:
        """The TrainConfig fields the command sets (None: not given)."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
                "device": self.device}


def check_mode_options(*, out: Path | None, resume: bool, tracking_uri: str | None, no_mlflow: bool,
                       proxy_only: dict[str, object]) -> None:
    """Refuse options of the other mode of `gpnas train`: the full training's need ``--out``; the budgets and
    ``--save`` of proxy training have no meaning with it (``--epochs`` is the length, ``best.pt`` the weights)."""
    if out is None:
        used = [name for name, on in (("--resume", resume), ("--tracking-uri", tracking_uri),
                                      ("--no-mlflow", no_mlflow)) if on]
        if used:
            raise ConfigError(f"{', '.join(used)}: only for a full training; add --out DIR (its checkpoints, "
                              "report and MLflow store), or drop them for a proxy training")
        return
    used = [name for name, value in proxy_only.items() if value is not None]
    if used:
        raise ConfigError(f"{', '.join(used)}: only for proxy training; with --out the run lasts --epochs N and "
                          f"its weights are {out / 'best.pt'}: drop {', '.join(used)}")


def full_train(request: FullTrainRequest, *, log: Log = print) -> dict[str, Any] | None:
    """Train (or, with ``request.resume``, continue) the run in ``request.out``; -> the report (rank 0; None on
    the other ranks). Refusals (ConfigError / DataError, exit code 2) come before anything is written."""
    if request.epochs is not None and request.epochs < 1:
        raise ConfigError(f"--epochs {request.epochs}: give at least 1 epoch")
    dist = Distributed.from_env()
    log = log if dist.is_main else _quiet
    folder = TrainFolder(request.out)
    ckpt = folder.check_start(resume=request.resume)
    config = resolve_config(None if ckpt is None else ckpt["train_config"], request.given(), source=folder.last)
    device = dist.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible; train with --device cpu")
    with dist.session(device):
        spec, data = _load(request, ckpt)
        fingerprint = data_fingerprint(data)
        if ckpt is not None:
            folder.check_same_run(ckpt, spec, fingerprint)
            if ckpt["epoch"] >= config.epochs and folder.report_json.is_file():
                log(f"{folder.path}: all {config.epochs} epochs are done; the report is {folder.report_json}")
                return json.loads(folder.report_json.read_text()) if dist.is_main else None
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it
        training = FullTraining(spec, data, config, dist=dist, device=device, folder=folder, fingerprint=fingerprint)
        if ckpt is not None:
            training.restore(ckpt)
            log(f"resuming {folder.last}: epoch {training.epoch}/{config.epochs} done (step {training.step})")
        elif dist.is_main:
            folder.write_start(spec, config)
        tracker = _open_tracker(request, training, ckpt) if dist.is_main and request.mlflow else None
        try:
            training.fit(tracker, log)
            report = training.finish(tracker, log) if dist.is_main else None
        except BaseException as err:
            if tracker is not None:
                tracker.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        dist.barrier()
    return report


def _quiet(_: str) -> None:
    """The progress of ranks other than 0."""


def _load(request: FullTrainRequest, ckpt: dict[str, Any] | None) -> tuple[ArchSpec, ProxyData]:
    """The data at the run's image size, and the spec at that size with the data's class count."""
    img = request.img or (ArchSpec.from_dict(ckpt["spec"]).img_size if ckpt else None) or request.spec.img_size
    data = stages.load_data(request.data, img)
    spec = request.spec
    changes = {k: v for k, v in (("img_size", img), ("num_classes", data.num_classes)) if getattr(spec, k) != v}
    return (spec.replace(**changes) if changes else spec), data


def _open_tracker(request: FullTrainRequest, training: FullTraining, ckpt: dict[str, Any] | None
                  ) -> TrainRunTracker:
    """The run's MLflow run: the checkpoint's, reopened, with the epochs it lacks; or a new one (closing one that
    an earlier start of this folder opened and never checkpointed)."""
    from gpnas.results.train_tracking import TrainRunTracker

    folder, spec = training.folder, training.spec
    saved = (ckpt or {}).get("mlflow") or {}
    uri = request.tracking_uri or saved.get("uri") or folder.default_tracking_uri
    params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in spec.to_dict().items()}
    params.update({f"train.{k}": v if isinstance(v, str) else json.dumps(v)
                   for k, v in config_to_dict(training.config).items()})
    params.update(arch_id=spec.arch_id, data=training.data.name)
    tracker = TrainRunTracker.open(uri, experiment=f"train-{spec.name or spec.arch_id}", run_name=folder.path.name,
                                   params=params, run_id=saved.get("run_id"), artifacts=folder.mlflow_artifacts)
    stale = folder.read_mlflow_run() if ckpt is None else None
    if stale is not None and stale.get("tracking_uri") == uri and stale.get("run_id") != tracker.run_id:
        tracker.close_stale(stale["run_id"])
    folder.write_mlflow_run(uri, tracker.run_id)
    training.mlflow = {"uri": request.tracking_uri or saved.get("uri"), "run_id": tracker.run_id}
    tracker.log_epochs(training.history)
    return tracker


def _loader_options(config: TrainConfig, dist: Distributed) -> LoaderOptions:
    """The config's loader options; ``num_workers: auto`` on CUDA shares the machine's CPUs among its ranks."""
    options = config.loader_options()
    if dist.enabled and config.num_workers == "auto" and options.num_workers:
        options = replace(options, num_workers=max(1, options.num_workers // dist.local_world))
    return options


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class FullTraining:
    """One full training: model, EMA, optimiser, scaler, loader and counters; ``fit`` runs the remaining epochs,
    ``state_dict`` / ``restore`` are the checkpoint (see the module docstring for what it holds and why)."""

    def __init__(self, spec: ArchSpec, data: ProxyData, config: TrainConfig, *, dist: Distributed,
                 device: torch.device, folder: TrainFolder, fingerprint: dict[str, Any]) -> None:
        self.spec, self.data, self.config, self.dist, self.device = spec, data, config, dist, device
        self.folder, self.fingerprint = folder, fingerprint
        if config.threads:
            torch.set_num_threads(config.threads)
        self.model = set_layout(stages.build(spec, seed=config.seed).to(device), config, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        torch.manual_seed(config.seed)
        self.ema = ModelEMA(self.model, config.ema_decay, config.ema_tau) if config.ema else None
        self.opt = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
        self.options = _loader_options(config, dist)
        self.loader = data.train_loader(batch_size=config.batch_size, seed=config.seed, options=self.options,
                                        shard=dist.shard())
        if len(self.loader) == 0:
            raise ConfigError(f"--batch-size {config.batch_size} is larger than the {len(data.train)} training "
                              "images (incomplete batches are dropped); lower it")
        self.loss_fn = YoloLoss(num_classes=data.num_classes, anchors=self.model.anchors,  # type: ignore[arg-type]
                                strides=self.model.strides, img_size=data.img_size, hyp=config.hyp)  # type: ignore[arg-type]
        self.planned = config.epochs * len(self.loader)  # type: ignore[operator]
        self.net: nn.Module = self.model
        self.epoch = self.step = 0
        self.history: list[dict[str, float]] = []
        self.best_ap, self.best_epoch, self.seconds = -1.0, 0, 0.0
        self.mlflow: dict[str, str | None] = {"uri": None, "run_id": None}
        self._val: tuple[Any, CocoEvaluator] | None = None

    @property
    def eval_model(self) -> nn.Module:
        """What is scored and kept as best.pt: the EMA copy when EMA is on."""
        return self.model if self.ema is None else self.ema.ema

    # ------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": self.epoch, "step": self.step,
            "planned_steps": self.planned, "steps_per_epoch": len(self.loader),
            "model": self.model.state_dict(), "ema": None if self.ema is None else self.ema.ema.state_dict(),
            "ema_updates": 0 if self.ema is None else self.ema.updates, "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": _rng_state(self.device), "history": self.history,
            "best_ap": self.best_ap, "best_epoch": self.best_epoch, "seconds": self.seconds,
            "spec": self.spec.to_dict(), "arch_id": self.spec.arch_id, "train_config": config_to_dict(self.config),
            "data": self.fingerprint, "mlflow": self.mlflow, "world_size": self.dist.world,
            "torch": str(torch.__version__),
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from ``ckpt`` (a :meth:`state_dict`): every tensor copied in place, the counters set."""
        if ckpt["planned_steps"] != self.planned:
            raise ConfigError(f"{self.folder.last} planned {ckpt['planned_steps']} steps, this command "
                              f"{self.planned}; resume with the same data and --batch-size")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(ckpt["ema"])
            self.ema.updates = ckpt["ema_updates"]
        self.opt.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.history = list(ckpt["history"])
        self.best_ap, self.best_epoch, self.seconds = ckpt["best_ap"], ckpt["best_epoch"], ckpt["seconds"]
        self.mlflow = dict(ckpt["mlflow"])
        _set_rng_state(ckpt["rng"], self.device)

    # ------------------------------------------------------------------------------------------- the loop
    def fit(self, tracker: TrainRunTracker | None, log: Log) -> None:
        """The remaining epochs; after each, rank 0 scores val AP, writes best.pt / last.pt, logs and prints."""
        self.net = self.dist.wrap(self.model, self.device, unused_parameters=self.spec.head != "detect")
        started, done = time.perf_counter(), 0
        while self.epoch < self.config.epochs:  # type: ignore[operator]
            t0 = time.perf_counter()
            loss, lr = self._train_epoch()
            if self.dist.is_main:
                row = {"epoch": float(self.epoch), "loss": loss, "lr": lr, **self._evaluate(self.eval_model)}
                row["seconds"] = time.perf_counter() - t0
                self._end_epoch(row, tracker)
                done += 1
                log(self._progress(row, (time.perf_counter() - started) / done))
            self.dist.barrier()

    def _lr(self) -> float:
        cfg = self.config
        warmup = max(1, int(cfg.warmup_fraction * self.planned))
        return cfg.lr * lr_factor(self.step, self.planned, warmup, cfg.final_lr_fraction)

    def _train_epoch(self) -> tuple[float, float]:
        """One pass over epoch ``self.epoch``'s batches; -> (mean loss over every rank's batches, last LR)."""
        self.loader.sampler.set_epoch(self.epoch)  # type: ignore[attr-defined]
        self.net.train()
        total, count, lr = 0.0, 0, 0.0
        for imgs, targets, _ in self.loader:
            lr = self._lr()
            for group in self.opt.param_groups:
                group["lr"] = lr
            inputs = to_model_input(imgs, self.device, non_blocking=self.options.pin_memory,
                                    memory_format=input_format(self.config, self.device))
            parts = train_step(self.net, self.loss_fn, self.opt, self.scaler, inputs, targets.to(self.device),
                               config=self.config, where=f"step {self.step} (epoch {self.epoch})")
            self.step += 1
            if self.ema is not None:
                self.ema.update()
            total, count = total + parts["total"], count + 1
        self.epoch += 1
        return self.dist.mean(total, count, self.device), lr

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        """COCO metrics of ``model`` on the whole val split (the loader and evaluator are made once)."""
        cfg = self.config
        if self._val is None:
            val = self.data.val
            self._val = (self.data.val_loader(options=self.options),
                         CocoEvaluator(val.coco, max_dets=cfg.max_det, category_ids=val.category_ids))
        loader, evaluator = self._val
        return inference_on_dataset(model, loader, evaluator, conf_thres=cfg.conf_thres, iou_thres=cfg.iou_thres,
                                    max_det=cfg.max_det, device=self.device, non_blocking=self.options.pin_memory)

    def _end_epoch(self, row: dict[str, float], tracker: TrainRunTracker | None) -> None:
        """best.pt (when AP improved), then last.pt, then MLflow: a kill between them loses nothing a resume
        cannot redo or backfill."""
        self.history.append(row)
        self.seconds += row["seconds"]
        if row["ap"] > self.best_ap:
            self.best_ap, self.best_epoch = row["ap"], self.epoch
            atomic_save({"format": f"{CHECKPOINT_FORMAT}-best", "model": self.eval_model.state_dict(),
                         "epoch": self.epoch, "metrics": row, "spec": self.spec.to_dict(),
                         "arch_id": self.spec.arch_id, "train_config": config_to_dict(self.config)}, self.folder.best)
        atomic_save(self.state_dict(), self.folder.last)
        if tracker is not None:
            tracker.log_epochs(self.history)

    def _progress(self, row: dict[str, float], mean_seconds: float) -> str:
        left = self.config.epochs - self.epoch  # type: ignore[operator]
        return (f"epoch {self.epoch}/{self.config.epochs}  loss {row['loss']:.4f}  val AP {row['ap']:.4f}  "
                f"AP50 {row['ap50']:.4f}  best AP {self.best_ap:.4f} (epoch {self.best_epoch})  "
                f"{row['seconds']:.1f} s  ETA {_duration(left * mean_seconds)}")

    # ------------------------------------------------------------------------------------------- the end
    def finish(self, tracker: TrainRunTracker | None, log: Log) -> dict[str, Any]:
        """The report: best.pt's COCO metrics on the whole val split, with the run's figures (rank 0)."""
        best = torch.load(self.folder.best, map_location=self.device, weights_only=True)
        model = copy.deepcopy(self.eval_model)
        model.load_state_dict(best["model"])
        metrics = self._evaluate(model)
        report = {"arch_id": self.spec.arch_id, "name": self.spec.name, "data": self.data.name,
                  **{k: metrics[k] for k in METRIC_KEYS}, "images": len(self.data.val), "epochs": self.epoch,
                  "steps": self.step, "best_epoch": best["epoch"], "seconds": self.seconds,
                  "checkpoint": str(self.folder.best), "history": self.history}
        self.folder.write_report(report)
        if tracker is not None:
            final = {**{k: report[k] for k in METRIC_KEYS}, "best_epoch": report["best_epoch"],
                     "seconds": report["seconds"]}
            tracker.finish(final, [self.folder.report_json, self.folder.report_md, self.folder.best])
            log(f"MLflow: {tracker.how_to_open()}")
        log(f"best.pt (epoch {report['best_epoch']}): AP {report['ap']:.4f}  AP50 {report['ap50']:.4f} on "
            f"{report['images']} val images; report: {self.folder.report_md}")
        return report
