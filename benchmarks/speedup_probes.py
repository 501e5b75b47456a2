"""The measurements behind the choices in ``gpnas/trainers/speedups.py`` (issue 18), each printed here.

1. conv forward + backward, batch 16, in NCHW vs channels-last, fp32 and bf16, for the nano models' thin convs;
2. BatchNorm + SiLU forward + backward in NCHW vs channels-last, fp32 and bf16, by channel count;
3. the val forward of yolor-elan-nano over the 300 digits val images: ``no_grad``, ``inference_mode``, and a
   BN-folded copy under ``inference_mode``;
4. with ``--compile``: ``torch.compile`` of the training step, from an empty inductor cache — the first step
   (compilation) and the steady-state images/s against eager, for an architecture compiled for the first time,
   the same architecture again (what a per-architecture cache would give), and another architecture (about 5
   minutes on 2 cores).

Times are the median of 15 repetitions after 3 warm-ups, in ms.

    .venv/bin/python benchmarks/speedup_probes.py [--compile] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from gpnas.experiments import stages
from gpnas.objectives.latency import cpu_name
from gpnas.search_space.presets import get_preset
from gpnas.trainers.data import to_model_input
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.loss import YoloLoss

CL = torch.channels_last
#: (in, out, size, kernel, stride) of thin convs in the nano presets at 160 px
CONVS = ((3, 4, 160, 3, 1), (4, 8, 160, 3, 2), (8, 8, 80, 3, 1), (8, 16, 80, 3, 2), (8, 8, 40, 3, 1),
         (32, 32, 40, 1, 1), (16, 16, 20, 3, 1))
NORMS = ((4, 160), (8, 80), (8, 40), (16, 40), (32, 40), (64, 20), (128, 10))


def median_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 15) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def conv_ms(cin: int, cout: int, size: int, k: int, stride: int, dtype: torch.dtype,
            fmt: torch.memory_format) -> float:
    x = torch.randn(16, cin, size, size).to(dtype).contiguous(memory_format=fmt).requires_grad_(cin != 3)
    w = torch.randn(cout, cin, k, k).to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
    grad = torch.randn_like(nn.functional.conv2d(x, w, padding=k // 2, stride=stride))
    return median_ms(lambda: nn.functional.conv2d(x, w, padding=k // 2, stride=stride).backward(grad))


def norm_ms(c: int, size: int, dtype: torch.dtype, fmt: torch.memory_format) -> float:
    x = torch.randn(16, c, size, size).to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
    bn, act = nn.BatchNorm2d(c), nn.SiLU()
    grad = torch.randn_like(act(bn(x)))
    return median_ms(lambda: act(bn(x)).backward(grad))


def val_forward(data: ProxyData) -> None:
    model = stages.build(get_preset("yolor-elan-nano"), seed=0).eval()
    batches = [to_model_input(imgs, "cpu") for imgs, _, _ in data.val_loader(batch_size=64)]
    fused = copy.deepcopy(model).fuse()

    def run(m: nn.Module, ctx: Callable[[], object]) -> None:
        with ctx():  # type: ignore[attr-defined]
            for x in batches:
                m(x)

    for label, m, ctx in (("no_grad", model, torch.no_grad), ("inference_mode", model, torch.inference_mode),
                          ("BN-folded, inference_mode", fused, torch.inference_mode)):
        print(f"  {label:28s} {median_ms(lambda m=m, ctx=ctx: run(m, ctx), warmup=1, repeats=5):8.1f} ms "
              f"per {len(data.val)} images")


def time_training(data: ProxyData, name: str, compiled: bool, steps: int = 20) -> tuple[float, float]:
    """(seconds of the first step, images/s of ``steps`` steps after 3 more) of preset ``name``, eager or
    compiled (after ``torch._dynamo.reset()``: only inductor's on-disk cache carries over)."""
    torch._dynamo.reset()
    model = stages.build(get_preset(name), seed=0).train()
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    loss_fn = YoloLoss(num_classes=data.num_classes, anchors=model.anchors, strides=model.strides,
                       img_size=data.img_size)
    batches = iter(data.train_loader(batch_size=16, seed=0))

    def step() -> None:
        imgs, targets, _ = next(batches)
        loss, _ = loss_fn(forward(to_model_input(imgs, "cpu"))[:3], targets)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return first, 16 * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (about 3 minutes)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    print(f"# speed-up probes · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · commit {commit} · {cpu_name()} · "
          f"{os.cpu_count()} cores · torch {torch.__version__} · {args.threads} threads")
    print("\n1. conv forward + backward, batch 16 (ms): NCHW vs channels-last")
    print(f"  {'in→out, size, k/stride':26s} {'fp32':>7s} {'fp32 CL':>8s} {'bf16':>7s} {'bf16 CL':>8s}")
    for cin, cout, size, k, stride in CONVS:
        cells = [conv_ms(cin, cout, size, k, stride, dtype, fmt)
                 for dtype in (torch.float32, torch.bfloat16) for fmt in (torch.contiguous_format, CL)]
        print(f"  {f'{cin}→{cout}, {size}², {k}/{stride}':26s} " + " ".join(f"{c:8.2f}" for c in cells))
    print("\n2. BatchNorm + SiLU forward + backward, batch 16 (ms): NCHW vs channels-last")
    print(f"  {'channels, size':26s} {'fp32':>7s} {'fp32 CL':>8s} {'bf16':>7s} {'bf16 CL':>8s}")
    for c, size in NORMS:
        cells = [norm_ms(c, size, dtype, fmt)
                 for dtype in (torch.float32, torch.bfloat16) for fmt in (torch.contiguous_format, CL)]
        print(f"  {f'{c}, {size}²':26s} " + " ".join(f"{x:8.2f}" for x in cells))
    data = ProxyData.digits(img_size=160)
    print("\n3. val forward of yolor-elan-nano (median of 5 passes)")
    val_forward(data)
    if args.compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpnas-inductor-")  # a cold cache
        print("\n4. training step, eager vs torch.compile (fp32, fused AdamW; inductor cache empty at the start)")
        for name, compiled, label in (
                ("yolor-elan-nano", False, "eager"), ("yolor-elan-nano", True, "compile, cold cache"),
                ("yolor-elan-nano", True, "compile, same arch again"), ("yolor-csp-nano", False, "eager"),
                ("yolor-csp-nano", True, "compile, new arch")):
            first, rate = time_training(data, name, compiled)
            print(f"  {name:16s} {label:25s} first step {first:6.1f} s, then {rate:6.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
