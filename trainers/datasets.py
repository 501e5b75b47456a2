"""ProxyData: the train/val pair a proxy training uses (the bundled digits set or any COCO-format dataset).

Scoring the val split is not done here: ``gpnas.objectives.accuracy.ValEvaluation`` is the trainer callback that
runs the val images through a model into a COCO evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gpnas.errors import DataError
from gpnas.trainers.augment import Augment
from gpnas.trainers.data import CocoDetection, LoaderOptions, make_loader
from gpnas.trainers.digits import build_digits_dataset


def _require_annotations(dataset: CocoDetection, split: str, why: str) -> None:
    if not dataset.coco.dataset["annotations"]:
        raise DataError(f"{dataset.ann_file}: the {split} split has no annotations ('annotations' is empty), so "
                        f"{why}; pass a COCO instances file with at least one box")


@dataclass
class ProxyData:
    """Train and val datasets at one square size; the val split uses the train split's category ids.

    Only the train split augments (``augment``: an :class:`~gpnas.trainers.augment.Augment`, or True / False);
    ``cache`` ("auto", True, False) applies to both splits (see :class:`~gpnas.trainers.data.CocoDetection`).
    """

    train: CocoDetection
    val: CocoDetection
    img_size: int
    name: str

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @classmethod
    def digits(
        cls, *, img_size: int = 160, seed: int = 0, n_train: int = 2000, n_val: int = 300, root: Path | None = None,
        augment: bool | Augment = False, cache: bool | Literal["auto"] = "auto",
    ) -> ProxyData:
        """The bundled offline digits set (built once into the cache folder). No flip augmentation by default:
        a mirrored digit is not the same digit (a mirrored 2 reads as a 5-like glyph)."""
        paths = build_digits_dataset(root, seed=seed, img_size=160, n_train=n_train, n_val=n_val)
        return cls.coco(paths.train_ann, paths.train_images, paths.val_ann, paths.val_images,
                        img_size=img_size, augment=augment, cache=cache, name=f"digits-s{seed}-{n_train}")

    @classmethod
    def coco(
        cls, train_ann: Path | str, train_images: Path | str, val_ann: Path | str, val_images: Path | str, *,
        img_size: int, augment: bool | Augment = True, cache: bool | Literal["auto"] = "auto",
        name: str | None = None,
    ) -> ProxyData:
        """Any COCO-format pair (COCO 2017 included); val uses the train split's category ids. DataError if
        either split has no annotations (nothing to learn from, or AP undefined), naming its file.
        ``augment=True`` is a horizontal flip with p = 0.5."""
        train = CocoDetection(train_images, train_ann, img_size=img_size, augment=augment, cache=cache)
        _require_annotations(train, "train", "there is nothing to learn from")
        val = CocoDetection(val_images, val_ann, img_size=img_size, augment=False, category_ids=train.category_ids,
                            cache=cache)
        _require_annotations(val, "val", "AP is undefined")
        return cls(train=train, val=val, img_size=img_size, name=name or Path(train_ann).stem)

    def train_loader(self, *, batch_size: int, seed: int, options: LoaderOptions | None = None,
                     shard: tuple[int, int] | None = None) -> torch.utils.data.DataLoader:
        """Shuffled and augmented batches of the train split, incomplete last batch dropped; see
        :func:`~gpnas.trainers.data.make_loader` (the same ``seed`` gives the same batches with any workers;
        ``shard`` (rank, world): this process's share of each batch under DistributedDataParallel)."""
        return make_loader(self.train, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True,
                           options=options, shard=shard)

    def val_loader(self, *, batch_size: int = 64, options: LoaderOptions | None = None) -> torch.utils.data.DataLoader:
        """The val split in file order (no shuffling, every image, the last batch possibly short)."""
        return make_loader(self.val, batch_size=batch_size, shuffle=False, seed=0, options=options)

    def box_sizes(self) -> np.ndarray:
        """Training box (w, h) in pixels of the letterboxed images: ndarray[N, 2] (for anchor fitting)."""
        rows = [labels[:, 3:5] for labels in self.train.labels]  # from the annotations: no image is decoded
        return np.concatenate(rows) * self.img_size if rows else np.zeros((0, 2))
