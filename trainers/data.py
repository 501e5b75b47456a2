"""COCO-format detection data: a letterboxing, augmenting Dataset, collate, seeded samplers and the loader.

Any COCO "instances" file works (COCO 2017 included); the bundled offline digits set
(:func:`gpnas.trainers.digits.build_digits_dataset`) is in the same format and is read back through the same
:class:`CocoDetection`.

Box formats: COCO files hold ``bbox = [x, y, w, h]`` in original image pixels. Training labels are
``(class_index, cx, cy, w, h)`` normalised to [0, 1] of the letterboxed S×S image. Class index = position of
the category id in the sorted category ids (or in the ``category_ids`` given).

Images leave the Dataset and the loader as uint8 (a quarter of the bytes of float32 to collate, pin and copy to
the GPU); :func:`to_model_input` makes them float32 in [0, 1] on the device (``x / 255``, bit-identical to
dividing on the host).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from gpnas.errors import DataError
from gpnas.trainers.augment import Augment, jitter_colour
from gpnas.trainers.coco_files import quiet_coco, read_coco_json, read_image_rgb, validate_coco_dict

PAD_VALUE = 114
BOX_TOLERANCE_PX = 1.0
CACHE_LIMIT_BYTES = 1 << 30  # cache="auto" keeps decoded images only when all letterboxed images fit in this
#: ``augment=True``: YOLO's flip probability, no colour jitter (the behaviour before Augment existed).
FLIP_ONLY = Augment(flip=0.5)


@dataclass(frozen=True)
class ImageMeta:
    """How one original image was letterboxed: ``letterboxed = original * scale + pad`` (then flipped if set).

    ``pad_x``/``pad_y`` are the left/top grey borders in letterboxed pixels; ``img_size`` is S.
    The short side is resized to ``round(side * scale)`` pixels, so mapping back is exact up to < 0.5 px.
    """

    image_id: int
    orig_h: int
    orig_w: int
    scale: float
    pad_x: float
    pad_y: float
    img_size: int = 0
    flipped: bool = False

    def to_original(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """boxes_xyxy: Tensor[n, 4] xyxy in letterboxed pixels -> Tensor[n, 4] xyxy in original pixels."""
        boxes = boxes_xyxy.detach().clone().float()
        if self.flipped:
            boxes[:, [0, 2]] = self.img_size - boxes_xyxy[:, [2, 0]].float()
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - self.pad_x) / self.scale).clamp(0, self.orig_w)
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - self.pad_y) / self.scale).clamp(0, self.orig_h)
        return boxes


def letterbox_geometry(orig_h: int, orig_w: int, img_size: int) -> tuple[float, int, int, int, int]:
    """-> (scale, new_w, new_h, pad_x, pad_y): longer side becomes img_size, centred on grey padding."""
    scale = img_size / max(orig_h, orig_w)
    new_w = max(1, min(img_size, round(orig_w * scale)))
    new_h = max(1, min(img_size, round(orig_h * scale)))
    return scale, new_w, new_h, (img_size - new_w) // 2, (img_size - new_h) // 2


class CocoDetection(Dataset):
    """A COCO-format detection set, letterboxed to S×S.

    ``ds[i] -> (image: Tensor[3, S, S] uint8 (channels-last strides: a view of an S×S×3 array),
    labels: Tensor[n, 5] float32 = (class_index, cx, cy, w, h) in [0, 1] of the letterboxed image,
    meta: ImageMeta)``; :func:`to_model_input` turns a batch into the model's float32 in [0, 1].
    Crowd annotations are left out of labels; zero-area boxes are skipped with one warning; boxes more than
    1 px outside their image raise DataError, those within 1 px are clipped. All image files are checked to
    exist at construction and decoded at first read (a file that is not an image raises DataError naming it
    and its image id); a JPEG at least twice S is decoded at a reduced scale (``Image.draft``).

    ``augment``: an :class:`~gpnas.trainers.augment.Augment` (flip, colour jitter), ``True`` for
    :data:`FLIP_ONLY`, ``False`` for none. Its draws for ``ds[(i, seed)]`` come from
    ``numpy.random.default_rng(seed)`` (a sequence of ints; :func:`make_loader`'s sampler supplies one per
    item, so batches do not depend on the worker count); ``ds[i]`` draws the seed from torch's global RNG.

    ``cache``: keep the decoded letterboxed images in memory, before augmentation — ``"auto"`` when all of them
    fit in ``CACHE_LIMIT_BYTES``, ``True`` always, ``False`` never (decode every read). Each DataLoader worker
    is its own process and holds its own cache, filled by the images it is handed; persistent workers keep it
    across epochs, workers started anew each epoch start empty.
    """

    def __init__(
        self,
        images_dir: str | Path,
        ann_file: str | Path,
        *,
        img_size: int,
        augment: bool | Augment = False,
        category_ids: list[int] | None = None,
        cache: bool | Literal["auto"] = "auto",
    ) -> None:
        if img_size < 1:
            raise DataError(f"img_size must be a positive number of pixels, got {img_size}")
        if cache not in (True, False, "auto"):
            raise DataError(f"cache must be 'auto', True or False, got {cache!r}")
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.img_size = img_size
        self.augment: Augment = FLIP_ONLY if augment is True else augment or Augment()
        data = read_coco_json(self.ann_file)
        if not self.images_dir.is_dir():
            raise DataError(f"images folder not found: {self.images_dir} (for {self.ann_file}); "
                            "pass the folder that holds the files named in 'images'")
        data = validate_coco_dict(data, str(self.ann_file), image_keys=("id", "file_name", "width", "height"))
        cat_ids = sorted(c["id"] for c in data["categories"]) if category_ids is None else list(category_ids)
        if len(set(cat_ids)) != len(cat_ids) or not cat_ids:
            raise DataError(f"category_ids must be a non-empty list of distinct ids, got {cat_ids}")
        self.category_ids: list[int] = cat_ids
        self.num_classes = len(cat_ids)
        self._images = sorted(data["images"], key=lambda img: img["id"])
        self.image_ids: list[int] = [img["id"] for img in self._images]
        self._check_files()
        self._labels = self._build_labels(data["annotations"])
        self.coco = quiet_coco(data)
        need = len(self._images) * 3 * img_size * img_size
        self.caches_images = cache is True or (cache == "auto" and need <= CACHE_LIMIT_BYTES)
        self._cache: dict[int, np.ndarray] = {}

    def _check_files(self) -> None:
        present = set(os.listdir(self.images_dir))
        missing = [img["file_name"] for img in self._images
                   if img["file_name"] not in present and not (self.images_dir / img["file_name"]).is_file()]
        if missing:
            raise DataError(f"{len(missing)} image file(s) listed in {self.ann_file} are missing from "
                            f"{self.images_dir}, e.g. {missing[:3]}; restore them or remove their entries")

    def _build_labels(self, annotations: list[dict[str, Any]]) -> list[np.ndarray]:
        """Per image (``image_ids`` order): ndarray[n, 5] = (class, cx, cy, w, h) normalised, letterboxed."""
        index = {cid: i for i, cid in enumerate(self.category_ids)}
        by_image: dict[int, list[list[float]]] = {img_id: [] for img_id in self.image_ids}
        sizes = {img["id"]: (img["height"], img["width"]) for img in self._images}
        zero_area = 0
        for ann in annotations:
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                zero_area += 1
                continue
            orig_h, orig_w = sizes[ann["image_id"]]
            tol = BOX_TOLERANCE_PX
            if x < -tol or y < -tol or x + w > orig_w + tol or y + h > orig_h + tol:
                raise DataError(f"{self.ann_file}: annotation id {ann['id']} has bbox {ann['bbox']} (xywh) "
                                f"outside its {orig_w}x{orig_h} image {ann['image_id']} by more than "
                                f"{tol} px; fix the box or the image size")
            if ann["category_id"] not in index:
                raise DataError(f"{self.ann_file}: annotation id {ann['id']} has category_id "
                                f"{ann['category_id']}, not in category_ids {self.category_ids}")
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + w, float(orig_w)), min(y + h, float(orig_h))
            scale, _, _, pad_x, pad_y = letterbox_geometry(orig_h, orig_w, self.img_size)
            s = self.img_size
            by_image[ann["image_id"]].append([
                index[ann["category_id"]],
                ((x1 + x2) / 2 * scale + pad_x) / s, ((y1 + y2) / 2 * scale + pad_y) / s,
                (x2 - x1) * scale / s, (y2 - y1) * scale / s,
            ])
        if zero_area:
            warnings.warn(f"{self.ann_file}: skipped {zero_area} annotation(s) with zero-area boxes "
                          "(w or h <= 0)", stacklevel=3)
        return [np.asarray(by_image[i], dtype=np.float32).reshape(-1, 5) for i in self.image_ids]

    def __len__(self) -> int:
        return len(self._images)

    @property
    def labels(self) -> list[np.ndarray]:
        """Per image (``image_ids`` order): ndarray[n, 5] = (class, cx, cy, w, h) normalised, unflipped.
        Read-only views for statistics (anchor fitting); ``ds[i]`` returns copies."""
        return self._labels

    def _load(self, i: int, gains: tuple[float, float, float] | None
              ) -> tuple[np.ndarray | Image.Image, bool, bool]:
        """-> (letterboxed S×S RGB: the cached ndarray[S, S, 3] uint8, or a fresh PIL image when not caching,
        whether the caller may keep it: False for the cached copy; whether ``gains`` were applied already).

        Without the cache, colour jitter is applied to the decoded image before it is pasted on a canvas of the
        jittered pad colour: the same pixels as jittering the whole letterboxed image (the colour matrix acts on
        each pixel alone), at the cost of the image's area only (3/4 of the canvas for a 4:3 COCO photo)."""
        cached = self._cache.get(i)
        if cached is not None:
            return cached, False, False
        info = self._images[i]
        _, new_w, new_h, pad_x, pad_y = letterbox_geometry(info["height"], info["width"], self.img_size)
        rgb = read_image_rgb(self.images_dir / info["file_name"], image_id=info["id"], width=info["width"],
                             height=info["height"], source=self.ann_file, draft_size=(new_w, new_h))
        if (new_w, new_h) != rgb.size:
            rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
        pad: tuple[int, ...] = (PAD_VALUE,) * 3
        jittered = gains is not None and not self.caches_images
        if jittered:
            rgb = jitter_colour(rgb, gains)  # type: ignore[arg-type]
            pad = jitter_colour(Image.new("RGB", (1, 1), pad), gains).getpixel((0, 0))  # type: ignore[arg-type,assignment]
        canvas = Image.new("RGB", (self.img_size, self.img_size), pad)
        canvas.paste(rgb, (pad_x, pad_y))
        if not self.caches_images:
            return canvas, True, jittered  # augmentation works on the PIL image: no array round trip
        array = np.array(canvas)  # HWC: PIL's own layout, so no transposing copy on the way in or out
        self._cache[i] = array
        return array, False, False

    def __getitem__(self, key: int | tuple[int, Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, ImageMeta]:
        """``key``: an index, or (index, seed of this item's augmentation draws) as :func:`make_loader` gives."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        info = self._images[i]
        labels = self._labels[i].copy()
        flip, gains = False, None
        if self.augment.enabled:
            if seed is None:
                seed = [int(torch.randint(0, 2**62, ()))]
            flip, gains = self.augment.draw(np.random.default_rng(seed))
        pixels, owned, jittered = self._load(i, gains)
        if jittered:
            gains = None
        if flip or gains is not None:
            # PIL's C code, not numpy: a flip costs 0.2 ms at 640² against 2 ms for a numpy copy of a reversed view
            image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
            if gains is not None:
                image = jitter_colour(image, gains)
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                labels[:, 1] = 1.0 - labels[:, 1]
            pixels, owned = image, True
        if isinstance(pixels, Image.Image):
            pixels = np.array(pixels)
        tensor = torch.from_numpy(pixels if owned else pixels.copy()).permute(2, 0, 1)
        scale, _, _, pad_x, pad_y = letterbox_geometry(info["height"], info["width"], self.img_size)
        meta = ImageMeta(info["id"], info["height"], info["width"], scale, float(pad_x), float(pad_y),
                         self.img_size, flip)
        return tensor, torch.from_numpy(labels), meta


def collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, ImageMeta]],
) -> tuple[torch.Tensor, torch.Tensor, list[ImageMeta]]:
    """-> (images: Tensor[B, 3, S, S] uint8 (channels-last strides), targets: Tensor[M, 6] float32 =
    (batch_index, class, cx, cy, w, h), metas). The images are stacked as B×S×S×3 (a plain copy of each
    item's HWC memory) and returned as a [B, 3, S, S] view; :func:`to_model_input` makes them contiguous."""
    hwc = [item[0].permute(1, 2, 0) for item in batch]
    out = None
    if torch.utils.data.get_worker_info() is not None:
        # in a loader worker: stack straight into shared memory, which is how the batch reaches the trainer
        # (stacking into private memory would cost a second copy of the whole batch on its way out)
        storage = torch.UntypedStorage._new_shared(len(hwc) * hwc[0].numel())
        out = torch.empty(0, dtype=hwc[0].dtype).set_(storage, 0, (len(hwc), *hwc[0].shape))
    images = torch.stack(hwc, out=out).permute(0, 3, 1, 2)
    targets = [torch.cat([torch.full((len(lab), 1), float(b)), lab], dim=1)
               for b, (_, lab, _) in enumerate(batch)]
    return images, torch.cat(targets) if targets else torch.zeros(0, 6), [item[2] for item in batch]


def to_model_input(images: torch.Tensor, device: torch.device | str, *, non_blocking: bool = False,
                   memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """images: Tensor[B, 3, S, S] uint8 (from :func:`collate`) -> Tensor[B, 3, S, S] float32 in [0, 1],
    dense in ``memory_format``, on ``device``. The uint8 batch is copied (``non_blocking`` when it is pinned),
    laid out and converted there: ``x / 255`` in float32, the same bits as on the host. A floating batch is
    moved, not rescaled."""
    images = images.to(device, non_blocking=non_blocking).contiguous(memory_format=memory_format)
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)  # float() keeps the layout
    return images


@dataclass(frozen=True)
class LoaderOptions:
    """How a DataLoader feeds the trainer: worker processes, pinned memory (then the copy to the GPU can be
    ``non_blocking``), whether workers outlive an epoch (and keep their image caches), and batches prefetched
    per worker (``None``: torch's default, 2). ``TrainConfig.loader_options()`` resolves the ``train`` keys."""

    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None

    def kwargs(self) -> dict[str, Any]:
        """DataLoader keywords (persistent workers and prefetching only mean something with workers)."""
        workers = self.num_workers > 0
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                "persistent_workers": workers and self.persistent_workers,
                "prefetch_factor": self.prefetch_factor if workers else None}


class SeededShuffle(Sampler[int]):
    """A fresh random order of ``range(n)`` per pass, from its own generator seeded with ``seed``.

    DataLoader draws its workers' base seed from the loader's generator once per iterator: every epoch with no
    workers, only once with persistent workers. Shuffling from that same generator would make the order depend
    on the worker count; here each pass first draws the int64 that the loader's iterator used to draw, then
    shuffles as ``RandomSampler`` does, so the order is exactly that of ``DataLoader(shuffle=True,
    generator=seeded)`` without workers (the proxy results from before this sampler), with any workers.

    Pass e's order is a function of (seed, e) only: the generator carries it from one complete pass to the next,
    and :meth:`set_epoch` puts it at the start of pass e whatever was read before (a resumed run)."""

    def __init__(self, n: int, seed: int) -> None:
        self.seed = seed
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self._inner = RandomSampler(range(n), generator=self.generator)
        self._at_pass: int | None = 0  # the pass the generator stands at the start of; None inside or after a cut one

    def __iter__(self) -> Iterator[int]:
        current, self._at_pass = self._at_pass, None
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        yield from self._inner
        self._at_pass = None if current is None else current + 1

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass the ``epoch``-th (0-based) from the seed: replays the earlier passes' draws (a
        permutation each, cheap) unless the generator already stands there."""
        if self._at_pass == epoch:
            return
        self.generator.manual_seed(self.seed)
        self._at_pass = 0
        for _ in range(epoch):
            for _ in self:
                pass

    def __len__(self) -> int:
        return len(self._inner)


class AugmentSeeds(Sampler[tuple[int, tuple[int, int, int]]]):
    """Wraps a sampler: yields ``(index, (seed, epoch, position))``, the seed of each item's augmentation draws.

    It runs in the main process, so every item's draws are fixed by ``seed``, the pass and its place in the pass,
    whichever worker makes it. ``epoch`` counts the passes over this sampler."""

    def __init__(self, base: Sampler[int], seed: int) -> None:
        self.base, self.seed, self.epoch = base, seed, 0

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int, int]]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for position, index in enumerate(self.base):
            yield index, (self.seed, epoch, position)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass the ``epoch``-th: its order (the base's ``set_epoch``) and its draws."""
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


class RankShard(Sampler[Any]):
    """One rank's share of a seeded order under DistributedDataParallel (a DistributedSampler that keeps the
    single-process batches): global batch k is positions [kB, (k+1)B) of the pass, and rank ``rank`` of
    ``world`` takes positions rank, rank + world, … of it, so the ranks' batches of B / world together are
    exactly the batches one process would train on (an incomplete last global batch is dropped). The whole base
    pass is read on every rank, so its draws (AugmentSeeds' positions included) are the single-process ones."""

    def __init__(self, base: Sampler[Any], *, rank: int, world: int, batch_size: int) -> None:
        if not 0 <= rank < world or batch_size % world:
            raise DataError(f"rank {rank} of {world}: the batch size {batch_size} must split evenly over the "
                            f"{world} processes; give a batch size that is a multiple of {world}")
        self.base, self.rank, self.world, self.batch_size = base, rank, world, batch_size

    def __iter__(self) -> Iterator[Any]:
        usable = len(self.base) // self.batch_size * self.batch_size  # type: ignore[arg-type]
        for position, item in enumerate(self.base):
            if position < usable and position % self.world == self.rank:
                yield item

    def __len__(self) -> int:
        return len(self.base) // self.batch_size * self.batch_size // self.world  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
    options: LoaderOptions | None = None,
    shard: tuple[int, int] | None = None,
) -> DataLoader:
    """A DataLoader using :func:`collate`, whose shuffling, augmentation draws and worker seeds follow ``seed``.

    The same ``seed`` gives the same batches with 0 or N workers (``options``; default: none, in this process):
    the order comes from :class:`SeededShuffle` and, for a dataset that augments, each item's draws from
    :class:`AugmentSeeds`, both in the main process. ``shard`` (rank, world): this rank's :class:`RankShard` of
    the global batches of ``batch_size`` (batches of ``batch_size // world``, the last incomplete one dropped).
    ``loader.sampler.set_epoch(e)`` (shuffled loaders) makes the next pass epoch e's."""
    generator = torch.Generator()  # the workers' base seeds only
    generator.manual_seed(seed)
    n = len(dataset)  # type: ignore[arg-type]
    base: Sampler[int] = SeededShuffle(n, seed) if shuffle else SequentialSampler(range(n))
    augment = getattr(dataset, "augment", None)
    sampler: Sampler[Any] = AugmentSeeds(base, seed) if isinstance(augment, Augment) and augment.enabled else base
    if shard is not None:
        sampler = RankShard(sampler, rank=shard[0], world=shard[1], batch_size=batch_size)
        batch_size, drop_last = batch_size // shard[1], True
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        generator=generator,
        drop_last=drop_last,
        **(options or LoaderOptions()).kwargs(),
    )
