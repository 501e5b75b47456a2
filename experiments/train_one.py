"""Library side of `gpnas train`: proxy-train one architecture on a dataset and score it (:func:`train_candidate`),
or, with ``out``, train it for real (:func:`~gpnas.experiments.full_training.full_train`); :func:`train_arch`
takes the command's options and picks the mode.

Hidden knobs (for tests and quick looks; not CLI options): ``GPNAS_DIGITS_N_TRAIN`` and ``GPNAS_DIGITS_N_VAL``
set the size of the bundled digits set that ``--data digits`` builds (default 2000 train, 300 val images);
``GPNAS_CACHE`` says where it is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpnas.errors import ConfigError
from gpnas.experiments.config import DIGITS_N_TRAIN, DIGITS_N_VAL, DataConfig
from gpnas.search_space.spec import ArchSpec

__all__ = ["data_config", "digits_sizes", "train_arch", "train_candidate"]


def digits_sizes() -> tuple[int, int]:
    """(n_train, n_val) of the digits set: the defaults, or ``$GPNAS_DIGITS_N_TRAIN`` / ``$GPNAS_DIGITS_N_VAL``."""
    sizes = []
    for name, default in (("GPNAS_DIGITS_N_TRAIN", DIGITS_N_TRAIN), ("GPNAS_DIGITS_N_VAL", DIGITS_N_VAL)):
        raw = os.environ.get(name, "").strip()
        try:
            value = int(raw) if raw else default
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"${name}={raw!r}: give a positive number of images, or unset it "
                              f"(default {default})")
        sizes.append(value)
    return sizes[0], sizes[1]


def train_candidate(
    spec: ArchSpec,
    *,
    data: str = "digits",
    images: str | None = None,
    val_data: str | None = None,
    val_images: str | None = None,
    epochs: int | None = None,
    seconds: float | None = None,
    steps: int | None = None,
    max_seconds: float | None = None,
    img: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    save: Path | None = None,
    **train_overrides: Any,
) -> dict[str, Any]:
    """Train ``spec`` with a budget (default: the search's work budget, ``PROXY_STEPS`` steps) and return ap,
    ap50, …, train_seconds, images_per_second, timed_out.

    ``seed`` seeds the weight initialisation as well as the trainer (batch order, augmentation). A step or epoch
    budget gives the same AP on a quiet or a loaded machine; ``seconds`` gives AP at equal compute.
    """
    import torch

    from gpnas.experiments import stages
    from gpnas.trainers.callbacks import ProgressBar
    from gpnas.trainers.train_config import TrainConfig

    img = img or spec.img_size
    if img != spec.img_size:
        spec = spec.replace(img_size=img)
    # No budget given: TrainConfig's default (PROXY_STEPS steps). max_seconds is passed as given, so there is no
    # wall-clock cap unless asked for (TrainConfig's default cap is the search's, per trial). Built first: a bad
    # value is reported before the data is loaded.
    config = TrainConfig(epochs=epochs, steps=steps, seconds=seconds, max_seconds=max_seconds, device=device,
                         seed=seed, **train_overrides)
    proxy = stages.load_data(data_config(data, images, val_data, val_images), img)
    if proxy.num_classes != spec.num_classes:
        spec = spec.replace(num_classes=proxy.num_classes)
    callbacks = [ProgressBar(total_seconds=config.seconds, total_steps=config.steps)] if progress else []
    fit = stages.train(stages.build(spec, seed=seed), proxy, config, callbacks)
    if save is not None and fit.model is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(fit.model.state_dict(), save)
    out = {"arch_id": spec.arch_id, "name": spec.name, "data": proxy.name, **fit.to_dict()}
    out.update({k: v for k, v in fit.metrics.items() if k not in ("epoch", "step")})
    return out


def data_config(data: str, images: str | None, val_data: str | None, val_images: str | None) -> DataConfig:
    """The CLI's data arguments as a search config's ``data`` section (so proxy training, full training and a
    search load data the same way)."""
    if data == "digits":
        n_train, n_val = digits_sizes()
        return DataConfig(kind="digits", seed=0, n_train=n_train, n_val=n_val)
    if not images:
        raise ConfigError(f"--data {data}: a COCO annotation file needs --images DIR")
    return DataConfig(kind="coco", train_ann=data, train_images=images, val_ann=val_data or data,
                      val_images=val_images or images)


def train_arch(
    arch: str,
    *,
    data: str = "digits",
    images: str | None = None,
    val_data: str | None = None,
    val_images: str | None = None,
    epochs: int | None = None,
    seconds: float | None = None,
    steps: int | None = None,
    max_seconds: float | None = None,
    img: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    save: Path | None = None,
    out: Path | None = None,
    resume: bool = False,
    tracking_uri: str | None = None,
    mlflow: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """`gpnas train ARCH`: ``arch`` (a preset name or spec YAML) proxy-trained (-> :func:`train_candidate`'s
    result), or with ``out`` fully trained in that folder (-> the report; None on a rank other than 0). Options
    of the other mode are refused (:func:`~gpnas.experiments.full_training.check_mode_options`). None: not given
    (the mode's default). ``log``: the full training's lines; ``progress``: the proxy training's progress bar."""
    from gpnas.experiments.full_training import FullTrainRequest, check_mode_options, full_train
    from gpnas.experiments.inspect import resolve_arch

    check_mode_options(out=out, resume=resume, tracking_uri=tracking_uri, no_mlflow=not mlflow, proxy_only={
        "--steps": steps, "--seconds": seconds, "--max-seconds": max_seconds, "--save": save})
    if out is not None:
        request = FullTrainRequest(
            resolve_arch(arch), data_config(data, images, val_data, val_images), out, epochs=epochs,
            batch_size=batch_size, lr=lr, seed=seed, device=device, img=img, resume=resume, tracking_uri=tracking_uri,
            mlflow=mlflow)
        return full_train(request, log=log)
    overrides = {k: v for k, v in (("batch_size", batch_size), ("lr", lr)) if v is not None}
    return train_candidate(
        resolve_arch(arch), data=data, images=images, val_data=val_data, val_images=val_images, epochs=epochs,
        seconds=seconds, steps=steps, max_seconds=max_seconds, img=img, device=device or "cpu",
        seed=0 if seed is None else seed, progress=progress, save=save, **overrides,
    )
