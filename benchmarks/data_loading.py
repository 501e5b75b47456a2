"""Training-loader throughput at COCO scale: images/s of the DataLoader with 0, 1 and 2 workers (issue 15).

Generates once (into ``--data-dir``, default ``.gpnas_cache/data-loading-v1-<images>``, git-ignored) a
COCO-format set of JPEGs shaped like COCO: longest side 640, the other 360..640, smooth multi-scale colour
texture with 1..5 filled ellipses (each one box), JPEG quality 90 (~60-110 kB, close to COCO's files; random
noise would make decoding unrealistically slow). Then, for each worker count, iterates the training loader at
img_size 640 with letterbox + flip 0.5 + HSV jitter (YOLOv5's gains), image cache off (every image decoded),
batch 32, collate included. Worker start-up is excluded: a first pass over the set warms the persistent workers
(and the OS file cache), then ``--passes`` passes are timed (the best is shown: on a shared VM the same pass moves
by ±20 %), and the CPU time of every process over them gives the loader's cost per image.

Targets: >= 150 images/s per worker core at 640 with letterbox + flip + HSV, and ~linear growth from 1 to 2
workers. ``--profile N`` first times each stage of the per-image path in this process over N images.
Run it alone on a quiet machine: other processes on the same cores distort every figure.

    .venv/bin/python benchmarks/data_loading.py [--images 1000] [--workers 0 1 2] [--batch 32] [--profile 100]
                                                [--passes 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, ImageFilter

from gpnas.trainers.augment import Augment, jitter_colour
from gpnas.trainers.coco_files import read_image_rgb
from gpnas.trainers.data import PAD_VALUE, CocoDetection, LoaderOptions, collate, letterbox_geometry, make_loader

IMG_SIZE = 640
COCO_AUGMENT = Augment(flip=0.5, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4)
TARGET_PER_CORE = 150.0
ROOT = Path(__file__).resolve().parents[1]


def _texture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth colour at four scales plus mild grain: compresses and decodes like a photo, not like noise."""
    acc = np.zeros((h, w, 3), np.float32)
    for cells, amplitude in ((4, 60), (16, 35), (64, 20), (320, 18)):
        small = rng.uniform(-1, 1, (max(2, cells * h // w), cells, 3)).astype(np.float32)
        acc += amplitude * np.stack([np.asarray(Image.fromarray(small[..., c], mode="F").resize((w, h), Image.BICUBIC))
                                     for c in range(3)], -1)
    acc += rng.uniform(60, 190, 3) + rng.normal(0, 4, acc.shape)
    return Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))


def generate(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """Write (once) ``n`` COCO-like JPEGs and their instances file; -> (images folder, annotation file)."""
    ann_file, images = folder / "instances.json", folder / "images"
    if ann_file.is_file():
        return images, ann_file
    images.mkdir(parents=True, exist_ok=True)
    entries, annotations = [], []
    start = time.perf_counter()
    for image_id in range(1, n + 1):
        rng = np.random.default_rng([seed, image_id])
        long, short = IMG_SIZE, int(rng.integers(360, IMG_SIZE + 1))
        w, h = (long, short) if rng.random() < 0.75 else (short, long)  # COCO is mostly landscape
        img = _texture(rng, w, h)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 6))):
            bw, bh = int(rng.integers(16, w // 2)), int(rng.integers(16, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            draw.ellipse([x, y, x + bw - 1, y + bh - 1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.integers(1, 4)), "bbox": [x, y, bw, bh], "area": bw * bh,
                                "iscrowd": 0})
        name = f"{image_id:012d}.jpg"
        img.filter(ImageFilter.GaussianBlur(0.5)).save(images / name, quality=90)
        entries.append({"id": image_id, "file_name": name, "width": w, "height": h})
        if image_id % 200 == 0:
            print(f"  generated {image_id}/{n} images ({time.perf_counter() - start:.0f} s)", flush=True)
    coco = {"images": entries, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]}
    ann_file.write_text(json.dumps(coco), encoding="utf-8")  # last: its presence marks a complete set
    return images, ann_file


def header(images: int, batch: int) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU") \
        if Path("/proc/cpuinfo").is_file() else platform.processor() or "unknown CPU"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip() or "unknown"
    return (f"# data loading · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · commit {commit}\n"
            f"# {cpu} · {os.cpu_count()} cores ({usable} usable) · Python {platform.python_version()} · "
            f"torch {torch.__version__} · Pillow {PIL.__version__} · numpy {np.__version__}\n"
            f"# {images} COCO-like JPEGs, img_size {IMG_SIZE}, letterbox + flip 0.5 + HSV "
            f"(h {COCO_AUGMENT.hsv_h}, s {COCO_AUGMENT.hsv_s}, v {COCO_AUGMENT.hsv_v}), cache off, batch {batch}")


class _Stages:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3


def profile(ds: CocoDetection, n: int, batch: int) -> None:
    """Per-stage ms per image of CocoDetection's path, in this process (the same calls, timed one by one)."""
    timed, n = _Stages(), min(n, len(ds))
    items = []
    for i in range(n):
        info = ds._images[i]
        _, new_w, new_h, pad_x, pad_y = letterbox_geometry(info["height"], info["width"], IMG_SIZE)
        with timed("decode (open, draft, JPEG decode)"):
            rgb = read_image_rgb(ds.images_dir / info["file_name"], image_id=info["id"], width=info["width"],
                                 height=info["height"], source=ds.ann_file, draft_size=(new_w, new_h))
        with timed("resize (when not 640 already)"):
            if (new_w, new_h) != rgb.size:
                rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
        with timed("draw (4 uniforms)"):
            flip, gains = COCO_AUGMENT.draw(np.random.default_rng([0, 0, i]))
        with timed("HSV colour matrix (image area, pad colour)"):
            pad: tuple[int, ...] = (PAD_VALUE,) * 3
            if gains is not None:
                rgb = jitter_colour(rgb, gains)
                pad = jitter_colour(Image.new("RGB", (1, 1), pad), gains).getpixel((0, 0))  # type: ignore[assignment]
        with timed("letterbox canvas + paste"):
            image = Image.new("RGB", (IMG_SIZE, IMG_SIZE), pad)
            image.paste(rgb, (pad_x, pad_y))
        with timed("flip (p 0.5)"):
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        with timed("to uint8 tensor"):
            items.append((torch.from_numpy(np.array(image)).permute(2, 0, 1), torch.zeros(0, 5), None))
    with timed(f"collate (batches of {batch}; in a worker: into shared memory)"):
        for b in range(0, n, batch):
            collate(items[b:b + batch])  # type: ignore[arg-type]
    total = sum(timed.ms.values())
    print(f"\nper-image stages, one process, {n} images (ms per image):")
    for name, ms in timed.ms.items():
        print(f"  {name:58s} {ms / n:6.2f}")
    print(f"  {'total':58s} {total / n:6.2f}  -> {1000 * n / total:.0f} images/s on one core")


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its children so far, live ones included (Linux /proc)."""
    tick, me, total = os.sysconf("SC_CLK_TCK"), os.getpid(), 0.0
    for task in os.listdir("/proc"):
        if not task.isdigit():
            continue
        try:
            fields = Path(f"/proc/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(task) == me or int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def throughput(ds: CocoDetection, workers: int, batch: int, passes: int) -> tuple[float, float]:
    """-> (images/s: the best timed pass over ``ds``, CPU ms per image of all processes over the timed passes).
    Pass 0 starts the persistent workers and warms the file cache; the best pass is the one least disturbed by
    whatever else the machine ran, and the CPU time per image is what the loader costs whatever the wall clock."""
    loader = make_loader(ds, batch_size=batch, shuffle=True, seed=0, drop_last=True,
                         options=LoaderOptions(num_workers=workers, persistent_workers=True))
    for _ in loader:
        pass
    rates, count, cpu0 = [], 0, _cpu_seconds()
    for _ in range(passes):
        n, t0 = 0, time.perf_counter()
        for images, _, _ in loader:
            n += images.shape[0]
        rates.append(n / (time.perf_counter() - t0))
        count += n
    return max(rates), (_cpu_seconds() - cpu0) * 1e3 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="set size (generated once)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--profile", type=int, default=0, help="first time each stage over this many images")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per worker count (the best is shown)")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker (collate runs here with 0 workers, and in --profile)
    folder = args.data_dir or ROOT / ".gpnas_cache" / f"data-loading-v1-{args.images}"
    images, ann = generate(folder, args.images)
    ds = CocoDetection(images, ann, img_size=IMG_SIZE, augment=COCO_AUGMENT, cache=False)
    print(header(len(ds), args.batch))
    if args.profile:
        profile(ds, args.profile, args.batch)
    print(f"\n{'workers':>7}  {'images/s':>9}  {'per worker core':>15}  {'vs 1 worker':>11}  {'CPU ms/image':>12}")
    rates = {w: throughput(ds, w, args.batch, args.passes) for w in args.workers}
    for w, (rate, cpu_ms) in rates.items():
        speedup = f"{rate / rates[1][0]:.2f}x" if 1 in rates else "-"
        print(f"{w:>7}  {rate:>9.1f}  {rate / max(1, w):>15.1f}  {speedup:>11}  {cpu_ms:>12.2f}")
    print(f"\nimages/s: the best of {args.passes} passes; CPU ms/image: every process (trainer + workers) over them")
    print(f"targets: >= {TARGET_PER_CORE:.0f} images/s per worker core; ~linear growth from 1 to 2 workers "
          "(2 workers ~2x of 1)")


if __name__ == "__main__":
    main()
