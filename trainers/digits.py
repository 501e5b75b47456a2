"""The bundled offline digits detection set: real 8×8 scans painted on textured canvases, as COCO files."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gpnas.errors import DataError

__all__ = ["GENERATOR_VERSION", "DigitsPaths", "build_digits_dataset", "default_cache_dir"]

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
