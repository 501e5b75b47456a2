"""COCO-format detection data: annotation files, a letterboxing Dataset, collate, and the bundled digits set.

Any COCO "instances" file works (COCO 2017 included); the bundled offline digits set written by
:func:`build_digits_dataset` is in the same format and is read back through the same :class:`CocoDetection`.

Box formats: COCO files hold ``bbox = [x, y, w, h]`` in original image pixels. Training labels are
``(class_index, cx, cy, w, h)`` normalised to [0, 1] of the letterboxed S×S image. Class index = position of
the category id in the sorted category ids (or in the ``category_ids`` given).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from gpnas.search_space.errors import DataError
from gpnas.trainers.coco_files import quiet_coco, read_coco_json, read_image_rgb, validate_coco_dict

PAD_VALUE = 114
BOX_TOLERANCE_PX = 1.0
CACHE_LIMIT_BYTES = 1 << 30  # decoded-image cache is used only when all letterboxed images fit in this


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

    ``ds[i] -> (image: Tensor[3, S, S] float32 in [0, 1], labels: Tensor[n, 5] float32 =
    (class_index, cx, cy, w, h) in [0, 1] of the letterboxed image, meta: ImageMeta)``.
    Crowd annotations are left out of labels; zero-area boxes are skipped with one warning; boxes more than
    1 px outside their image raise DataError, those within 1 px are clipped. All image files are checked to
    exist at construction and decoded at first read (a file that is not an image raises DataError naming it
    and its image id). ``augment=True`` flips horizontally with p=0.5 (torch's global RNG; DataLoader
    workers are seeded from the loader's generator). Decoded letterboxed images are kept in memory
    (``cache_images``) when they all fit in ``CACHE_LIMIT_BYTES``.
    """

    def __init__(
        self,
        images_dir: str | Path,
        ann_file: str | Path,
        *,
        img_size: int,
        augment: bool = False,
        category_ids: list[int] | None = None,
        cache_images: bool = True,
    ) -> None:
        if img_size < 1:
            raise DataError(f"img_size must be a positive number of pixels, got {img_size}")
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.img_size = img_size
        self.augment = augment
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
        self.caches_images = cache_images and need <= CACHE_LIMIT_BYTES
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

    def _load(self, i: int) -> np.ndarray:
        """-> ndarray[3, S, S] uint8, letterboxed."""
        cached = self._cache.get(i)
        if cached is not None:
            return cached
        info = self._images[i]
        rgb = read_image_rgb(self.images_dir / info["file_name"], image_id=info["id"], width=info["width"],
                             height=info["height"], source=self.ann_file)
        _, new_w, new_h, pad_x, pad_y = letterbox_geometry(info["height"], info["width"], self.img_size)
        if (new_w, new_h) != rgb.size:
            rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
        canvas = Image.new("RGB", (self.img_size, self.img_size), (PAD_VALUE,) * 3)
        canvas.paste(rgb, (pad_x, pad_y))
        array = np.ascontiguousarray(np.asarray(canvas).transpose(2, 0, 1))
        if self.caches_images:
            self._cache[i] = array
        return array

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, ImageMeta]:
        info = self._images[i]
        # numpy, not torch, for per-image work: torch's intra-op threads cost ms to wake on small tensors
        pixels = self._load(i)
        labels = self._labels[i].copy()
        flip = self.augment and bool(torch.rand(()) < 0.5)
        if flip:
            pixels = pixels[:, :, ::-1]
            labels[:, 1] = 1.0 - labels[:, 1]
        image = torch.from_numpy(np.divide(pixels, 255.0, dtype=np.float32))
        scale, _, _, pad_x, pad_y = letterbox_geometry(info["height"], info["width"], self.img_size)
        meta = ImageMeta(info["id"], info["height"], info["width"], scale, float(pad_x), float(pad_y),
                         self.img_size, flip)
        return image, torch.from_numpy(labels), meta


def collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, ImageMeta]],
) -> tuple[torch.Tensor, torch.Tensor, list[ImageMeta]]:
    """-> (images: Tensor[B, 3, S, S], targets: Tensor[M, 6] = (batch_index, class, cx, cy, w, h), metas)."""
    images = torch.stack([item[0] for item in batch])
    targets = [torch.cat([torch.full((len(lab), 1), float(b)), lab], dim=1)
               for b, (_, lab, _) in enumerate(batch)]
    return images, torch.cat(targets) if targets else torch.zeros(0, 6), [item[2] for item in batch]


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader using :func:`collate`, whose shuffling (and worker seeds) follow ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,  # keeps each worker's image cache across epochs
    )


# --------------------------------------------------------------------------------------- bundled digits set
GENERATOR_VERSION = 1
_MIN_PATCH, _MAX_PATCH, _MAX_IOU, _TRAIN_FRACTION = 12, 68, 0.3, 0.8


@dataclass(frozen=True)
class DigitsPaths:
    """Where :func:`build_digits_dataset` put the set: image folders and COCO instances files."""

    root: Path
    train_images: Path
    train_ann: Path
    val_images: Path
    val_ann: Path


def _resize_bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """a: ndarray[h, w] -> ndarray[out_h, out_w], bilinear with half-pixel centres (align_corners=False)."""
    h, w = a.shape
    ys = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _iou_xyxy(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """-> ndarray[size, size, 3] in [0, 1]: tinted low-frequency texture plus finer blotches of colour."""
    def texture(lo: int, hi: int) -> np.ndarray:
        return _resize_bilinear(rng.uniform(-1, 1, (int(rng.integers(lo, hi)),) * 2), size, size)

    coarse, fine = texture(2, 7), np.stack([texture(8, 21) for _ in range(3)], -1)
    tint = rng.uniform(0.4, 1.0, 3) * rng.uniform(0.05, 0.25)
    canvas = rng.uniform(0.15, 0.85, 3) + coarse[..., None] * tint + fine * rng.uniform(0.0, 0.08)
    return np.clip(canvas, 0.0, 1.0)


def _draw_digit(
    rng: np.random.Generator, canvas: np.ndarray, scan: np.ndarray, boxes: list[tuple[int, int, int, int]]
) -> tuple[int, int, int, int] | None:
    """Paint one 8×8 scan (values 0..16) upsampled into ``canvas`` in place; -> its tight xyxy box or None."""
    size = canvas.shape[0]
    ph = round(math.exp(rng.uniform(math.log(_MIN_PATCH), math.log(min(_MAX_PATCH, size // 2)))))
    pw = max(6, round(ph * rng.uniform(0.75, 1.15)))
    # values below ~3/16 are scanner haze; keeping them would paint a visible rectangle around the digit
    alpha = np.clip((_resize_bilinear(scan / 16.0, ph, pw) - 0.15) / 0.85, 0.0, 1.0)
    rows, cols = np.nonzero((alpha > 0.3).any(1))[0], np.nonzero((alpha > 0.3).any(0))[0]
    for _ in range(20):  # rejection sampling keeps pairwise IoU <= _MAX_IOU
        y0, x0 = int(rng.integers(0, size - ph + 1)), int(rng.integers(0, size - pw + 1))
        box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
        if all(_iou_xyxy(box, other) <= _MAX_IOU for other in boxes):
            break
    else:
        return None
    region = canvas[y0:y0 + ph, x0:x0 + pw]
    under = region.mean((0, 1))
    direction = -1.0 if under.mean() > 0.5 else 1.0  # ink contrasts with what lies beneath, in any colour
    ink = np.clip(under + direction * rng.uniform(0.35, 0.7) + rng.normal(0.0, 0.12, 3), 0.0, 1.0)
    weight = alpha[..., None] * rng.uniform(0.75, 1.0)
    region[:] = region * (1.0 - weight) + ink * weight
    return box


def _write_split(
    folder: Path, split: str, pool: np.ndarray, n: int, seed: int, size: int, digits: Any
) -> None:
    """Render ``n`` images from the scans in ``pool`` into folder/split/ and folder/instances_{split}.json."""
    (folder / split).mkdir()
    images, annotations = [], []
    for image_id in range(1, n + 1):
        rng = np.random.default_rng([seed, 1 if split == "train" else 2, image_id])
        canvas, placed = _background(rng, size), []
        for _ in range(int(rng.integers(1, 7))):
            source = int(pool[rng.integers(len(pool))])
            box = _draw_digit(rng, canvas, digits.images[source], [p[0] for p in placed])
            if box is not None:
                placed.append((box, int(digits.target[source]), source))
        canvas = np.clip(canvas + rng.normal(0.0, rng.uniform(0.01, 0.05), canvas.shape), 0.0, 1.0)
        name = f"{image_id:06d}.png"
        Image.fromarray((canvas * 255.0 + 0.5).astype(np.uint8)).save(folder / split / name, format="PNG",
                                                                      compress_level=1)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for (x1, y1, x2, y2), digit, source in placed:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": digit + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": 0, "source_index": source})
    coco = {"info": {"description": f"gpnas digits {split}", "generator_version": GENERATOR_VERSION},
            "images": images, "annotations": annotations,
            "categories": [{"id": d + 1, "name": str(d)} for d in range(10)]}
    (folder / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")), encoding="utf-8")


def default_cache_dir() -> Path:
    """``$GPNAS_CACHE`` if set, else ``~/.cache/gpnas``."""
    return Path(os.environ.get("GPNAS_CACHE") or Path.home() / ".cache" / "gpnas")


def build_digits_dataset(
    root: Path | str | None = None,
    *,
    seed: int = 0,
    img_size: int = 160,
    n_train: int = 2000,
    n_val: int = 300,
) -> DigitsPaths:
    """Write (once) the bundled digits detection set and return its paths.

    Real 8×8 scans from ``sklearn.datasets.load_digits`` are painted, 1 to 6 per image, at 12..68 px (tight
    boxes roughly 10..64 px, pairwise IoU <= 0.3) on textured, tinted, noisy ``img_size``² RGB canvases in
    random ink colours; category id ``d + 1`` is digit ``d``. Train and val draw from disjoint scans (seeded
    80/20 split; each annotation keeps its ``source_index``). The set lives in
    ``{root}/digits-v{GENERATOR_VERSION}-s{seed}-{img_size}-{n_train}-{n_val}`` (``root`` defaults to
    :func:`default_cache_dir`); its files are bit-identical for a seed. It is built in a temp folder and
    renamed into place, so a killed or concurrent build never leaves half a set.
    """
    from sklearn.datasets import load_digits  # sklearn is slow to import; only the generator needs it

    if img_size < 2 * _MIN_PATCH or min(n_train, n_val) < 1 or seed < 0:
        raise DataError(f"build_digits_dataset needs img_size >= {2 * _MIN_PATCH}, n_train >= 1, n_val >= 1 "
                        f"and seed >= 0; got img_size={img_size}, n_train={n_train}, n_val={n_val}, "
                        f"seed={seed}")
    manifest = {"generator_version": GENERATOR_VERSION, "seed": seed, "img_size": img_size,
                "n_train": n_train, "n_val": n_val}
    base = Path(root) if root is not None else default_cache_dir()
    final = base / f"digits-v{GENERATOR_VERSION}-s{seed}-{img_size}-{n_train}-{n_val}"
    if not final.exists():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=base))
        try:
            digits = load_digits()
            perm = np.random.default_rng([seed, 0]).permutation(len(digits.target))
            cut = int(_TRAIN_FRACTION * len(perm))
            _write_split(tmp, "train", np.sort(perm[:cut]), n_train, seed, img_size, digits)
            _write_split(tmp, "val", np.sort(perm[cut:]), n_val, seed, img_size, digits)
            (tmp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
            tmp.chmod(0o755)
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # not another process finishing first: a real error
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _check_manifest(final, manifest)
    return DigitsPaths(final, final / "train", final / "instances_train.json", final / "val",
                       final / "instances_val.json")


def _check_manifest(folder: Path, expected: dict[str, int]) -> None:
    path = folder / "manifest.json"
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{folder} is not a complete digits set ({path}: {err}); delete the folder and it "
                        "will be rebuilt") from err
    if found != expected:
        raise DataError(f"{path} says {found}, expected {expected}; delete {folder} and it will be rebuilt")
