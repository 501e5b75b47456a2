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

Exact continuation: ``DIR/last.pt`` after every epoch (:mod:`~gpnas.experiments.train_checkpoint` says
what it holds). Data order: epoch e's batches depend only on (seed, e) —
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gpnas.errors import ConfigError
from gpnas.experiments import stages
from gpnas.experiments.distributed import Distributed
from gpnas.experiments.train_checkpoint import best_state, checkpoint_state, restore_checkpoint
from gpnas.experiments.train_folder import TrainFolder, atomic_save, data_fingerprint, resolve_config
from gpnas.experiments.train_report import Log, final_report, open_tracker, progress_line
from gpnas.objectives.accuracy import CocoEvaluator, inference_on_dataset
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
        tracker = open_tracker(request, training, ckpt) if dist.is_main and request.mlflow else None
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


def _loader_options(config: TrainConfig, dist: Distributed) -> LoaderOptions:
    """The config's loader options; ``num_workers: auto`` on CUDA shares the machine's CPUs among its ranks."""
    options = config.loader_options()
    if dist.enabled and config.num_workers == "auto" and options.num_workers:
        options = replace(options, num_workers=max(1, options.num_workers // dist.local_world))
    return options


class FullTraining:
    """One full training: model, EMA, optimiser, scaler, loader and counters; ``fit`` runs the remaining epochs,
    ``state_dict`` / ``restore`` are the checkpoint (:mod:`~gpnas.experiments.train_checkpoint`), ``finish``
    scores best.pt (the report: :mod:`~gpnas.experiments.train_report`)."""

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
        return checkpoint_state(self)

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from ``ckpt`` (a :meth:`state_dict`): every tensor copied in place, the counters set."""
        restore_checkpoint(self, ckpt)

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
                log(progress_line(self, row, (time.perf_counter() - started) / done))
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
            atomic_save(best_state(self, row), self.folder.best)
        atomic_save(self.state_dict(), self.folder.last)
        if tracker is not None:
            tracker.log_epochs(self.history)

    # ------------------------------------------------------------------------------------------- the end
    def finish(self, tracker: TrainRunTracker | None, log: Log) -> dict[str, Any]:
        """The report: best.pt's COCO metrics on the whole val split, with the run's figures (rank 0)."""
        best = torch.load(self.folder.best, map_location=self.device, weights_only=True)
        model = copy.deepcopy(self.eval_model)
        model.load_state_dict(best["model"])
        return final_report(self, self._evaluate(model), best["epoch"], tracker, log)
