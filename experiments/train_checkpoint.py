"""The checkpoints of a full training (`gpnas train ARCH --out DIR`), for an exact continuation.

``DIR/last.pt`` (written atomically after every epoch) holds the model, the EMA (weights and update count, which
sets its decay), the optimiser, the AMP scaler, the step and the planned total of the LR schedule (``lr_factor``
is a function of the step), the epoch, torch's CPU RNG (and CUDA's on a GPU), the per-epoch history, the best AP
and its epoch, the seconds so far, the spec, the train config, the data fingerprint and the MLflow run. numpy's
and Python's global RNGs are not used by training (augmentation draws from per-item generators), so they are not
saved. ``DIR/best.pt`` holds the weights that are scored (the EMA copy when EMA is on) of the best epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gpnas.errors import ConfigError
from gpnas.experiments.train_folder import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, config_to_dict

if TYPE_CHECKING:
    from gpnas.experiments.full_training import FullTraining

__all__ = ["best_state", "checkpoint_state", "restore_checkpoint"]


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def checkpoint_state(t: FullTraining) -> dict[str, Any]:
    """``last.pt``: everything an exact continuation of ``t`` needs."""
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": t.epoch, "step": t.step,
        "planned_steps": t.planned, "steps_per_epoch": len(t.loader),
        "model": t.model.state_dict(), "ema": None if t.ema is None else t.ema.ema.state_dict(),
        "ema_updates": 0 if t.ema is None else t.ema.updates, "optimizer": t.opt.state_dict(),
        "scaler": t.scaler.state_dict(), "rng": _rng_state(t.device), "history": t.history,
        "best_ap": t.best_ap, "best_epoch": t.best_epoch, "seconds": t.seconds,
        "spec": t.spec.to_dict(), "arch_id": t.spec.arch_id, "train_config": config_to_dict(t.config),
        "data": t.fingerprint, "mlflow": t.mlflow, "world_size": t.dist.world,
        "torch": str(torch.__version__),
    }


def restore_checkpoint(t: FullTraining, ckpt: dict[str, Any]) -> None:
    """Continue ``t`` from ``ckpt`` (a :func:`checkpoint_state`): every tensor copied in place, the counters set."""
    if ckpt["planned_steps"] != t.planned:
        raise ConfigError(f"{t.folder.last} planned {ckpt['planned_steps']} steps, this command "
                          f"{t.planned}; resume with the same data and --batch-size")
    t.model.load_state_dict(ckpt["model"])
    if t.ema is not None:
        t.ema.ema.load_state_dict(ckpt["ema"])
        t.ema.updates = ckpt["ema_updates"]
    t.opt.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"] and t.scaler.is_enabled():
        t.scaler.load_state_dict(ckpt["scaler"])
    t.epoch, t.step = ckpt["epoch"], ckpt["step"]
    t.history = list(ckpt["history"])
    t.best_ap, t.best_epoch, t.seconds = ckpt["best_ap"], ckpt["best_epoch"], ckpt["seconds"]
    t.mlflow = dict(ckpt["mlflow"])
    _set_rng_state(ckpt["rng"], t.device)


def best_state(t: FullTraining, row: dict[str, float]) -> dict[str, Any]:
    """``best.pt``: the scored weights of the epoch just ended, with its metrics ``row``."""
    return {"format": f"{CHECKPOINT_FORMAT}-best", "model": t.eval_model.state_dict(), "epoch": t.epoch,
            "metrics": row, "spec": t.spec.to_dict(), "arch_id": t.spec.arch_id,
            "train_config": config_to_dict(t.config)}
