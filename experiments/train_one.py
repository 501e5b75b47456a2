"""Library side of `gpnas train`: proxy-train one architecture on a dataset and score it.

Hidden knobs (for tests and quick looks; not CLI options): ``GPNAS_DIGITS_N_TRAIN`` and ``GPNAS_DIGITS_N_VAL``
set the size of the bundled digits set that ``--data digits`` builds (default 2000 train, 300 val images);
``GPNAS_CACHE`` says where it is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gpnas.experiments.config import DIGITS_N_TRAIN, DIGITS_N_VAL, DataConfig
from gpnas.search_space.errors import ConfigError
from gpnas.search_space.spec import ArchSpec


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
