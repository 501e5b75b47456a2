"""Proxy-training throughput of the four nano presets on CPU (issue 18, part 1: measure first).

For each preset at 160 px, batch 16 (digits batches from the seeded loader, AdamW, the trainer's loss): images/s
over ``--steps`` timed steps after ``--warmup`` steps, the split of a step into forward / loss / backward /
optimizer, and the achieved GFLOP/s with the stated convention: training ≈ 3 × the forward's fvcore GFLOPs (the
paper's convention: 2 × multiply-adds, fused model) per image. The machine's practical peak is timed in the same
run: a large fp32 matmul and a large bf16 matmul (2·n³ FLOPs each), with the same thread count.

    .venv/bin/python benchmarks/training_throughput.py [--steps 30] [--warmup 5] [--threads N]

Run it alone: another process on the same cores changes every figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from gpnas.experiments import stages
from gpnas.objectives.latency import cpu_name
from gpnas.search_space.presets import get_preset
from gpnas.trainers.data import to_model_input
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.loss import YoloLoss
from gpnas.trainers.proxy import build_optimizer
from gpnas.trainers.train_config import TrainConfig

FAMILIES = ("yolor-v3-nano", "yolor-prn-nano", "yolor-csp-nano", "yolor-elan-nano")
BATCH = 16


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n×n @ n×n matmul in ``dtype`` (2·n³ FLOPs), after one warm-up."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure(name: str, data: ProxyData, steps: int, warmup: int) -> dict[str, float]:
    spec = get_preset(name)
    model = stages.build(spec, seed=0).train()
    gflops = stages.measure_size(spec, model)["gflops"]
    config = TrainConfig(steps=steps + warmup, batch_size=BATCH, seed=0)
    opt = build_optimizer(model, config)
    loss_fn = YoloLoss(num_classes=data.num_classes, anchors=model.anchors, strides=model.strides,
                       img_size=data.img_size)
    loader = iter(data.train_loader(batch_size=BATCH, seed=0))
    split = {"forward": 0.0, "loss": 0.0, "backward": 0.0, "optimizer": 0.0}
    images, start = 0, 0.0
    for i in range(steps + warmup):
        try:
            batch, targets, _ = next(loader)
        except StopIteration:
            loader = iter(data.train_loader(batch_size=BATCH, seed=i))
            batch, targets, _ = next(loader)
        imgs = to_model_input(batch, "cpu")
        if i == warmup:
            split = dict.fromkeys(split, 0.0)
            images, start = 0, time.perf_counter()
        t0 = time.perf_counter()
        preds = model(imgs)
        t1 = time.perf_counter()
        loss, _ = loss_fn(preds[:3], targets)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        for key, dt in zip(split, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            split[key] += dt
        images += imgs.shape[0]
    elapsed = time.perf_counter() - start
    ips = images / elapsed
    return {"ips": ips, "gflops_fwd": gflops, "achieved": 3 * gflops * ips,
            **{k: v / steps * 1e3 for k, v in split.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    print(f"# training throughput · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · commit {commit} · "
          f"{cpu_name()} · {os.cpu_count()} cores · torch {torch.__version__} · {args.threads} threads")
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"# practical peak (2048² matmul, best of 5): fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s")
    print(f"# batch {BATCH}, 160 px, AdamW, {args.steps} timed steps after {args.warmup}; GFLOP/s = 3 × forward "
          "GFLOPs (fvcore, fused) × images/s\n")
    data = ProxyData.digits(img_size=160)
    print(f"{'preset':16s} {'img/s':>7s} {'GFLOP/s':>8s} {'% fp32 peak':>11s}   ms/step: {'fwd':>6s} {'loss':>6s} "
          f"{'bwd':>6s} {'opt':>6s}")
    for name in FAMILIES:
        r = measure(name, data, args.steps, args.warmup)
        print(f"{name:16s} {r['ips']:7.1f} {r['achieved']:8.1f} {100 * r['achieved'] / fp32:10.1f}%   "
              f"{'':9s}{r['forward']:6.1f} {r['loss']:6.1f} {r['backward']:6.1f} {r['optimizer']:6.1f}")


if __name__ == "__main__":
    main()
