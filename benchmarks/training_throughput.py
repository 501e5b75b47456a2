"""Proxy-training throughput of the four nano presets on CPU, speed settings off and on (issue 18).

For each preset at 160 px, batch 16 (digits batches from the seeded loader, AdamW, the trainer's loss and
gradient clipping), with the speed settings off (``amp``, ``channels_last``, ``fused_optimizer`` false: the
trainer before issue 18) and on (the defaults): images/s over ``--steps`` timed steps after ``--warmup``, the
split of a step into forward / loss / backward / optimizer, the achieved GFLOP/s with the stated convention
(training ≈ 3 × the forward's fvcore GFLOPs per image, fp32 count, fused model), and the images/s of
``ProxyTrainer.fit`` itself. Off and on run as ``--repeats`` pairs in alternating order (off-on, on-off, ...);
the medians and the per-pair ratios are printed, so a change in the machine's speed during the run (this VM's
speed drifts by ±20 % over minutes) hits both alike. The practical peak is timed in the same run: a large fp32
and a large bf16 matmul (2·n³ FLOPs each), with the same thread count.

    .venv/bin/python benchmarks/training_throughput.py [--steps 30] [--warmup 5] [--repeats 4]
        [--trainer-steps 100] [--threads N]

Run it alone: another process on the same cores changes every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
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
from gpnas.trainers.proxy import ProxyTrainer, build_optimizer
from gpnas.trainers.speedups import amp_dtype, cpu_has_native_bf16, input_format, set_layout
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


def measure(name: str, data: ProxyData, config: TrainConfig, steps: int, warmup: int) -> dict[str, float]:
    """One preset under ``config``'s speed settings: the trainer's step taken apart (autocast forward, fp32 loss,
    backward, clipping + optimiser, as ``train_step`` does them) over ``steps`` timed steps after ``warmup``."""
    spec = get_preset(name)
    model = set_layout(stages.build(spec, seed=0).train(), config, "cpu")
    gflops = stages.measure_size(spec, stages.build(spec, seed=0))["gflops"]
    opt = build_optimizer(model, config)
    dtype = amp_dtype(config, "cpu")
    loss_fn = YoloLoss(num_classes=data.num_classes, anchors=model.anchors, strides=model.strides,
                       img_size=data.img_size, hyp=config.hyp)
    loader = iter(data.train_loader(batch_size=BATCH, seed=0))
    split = {"forward": 0.0, "loss": 0.0, "backward": 0.0, "optimizer": 0.0}
    images, start = 0, 0.0
    for i in range(steps + warmup):
        try:
            batch, targets, _ = next(loader)
        except StopIteration:
            loader = iter(data.train_loader(batch_size=BATCH, seed=i))
            batch, targets, _ = next(loader)
        imgs = to_model_input(batch, "cpu", memory_format=input_format(config))
        if i == warmup:
            split = dict.fromkeys(split, 0.0)
            images, start = 0, time.perf_counter()
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            preds = model(imgs)
        t1 = time.perf_counter()
        loss, _ = loss_fn([p.float() for p in preds[:3]], targets)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"),
                                       foreach=config.fused_optimizer or None)
        opt.step()
        t4 = time.perf_counter()
        for key, dt in zip(split, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            split[key] += dt
        images += imgs.shape[0]
    elapsed = time.perf_counter() - start
    ips = images / elapsed
    return {"ips": ips, "gflops_fwd": gflops, "achieved": 3 * gflops * ips,
            **{k: v / steps * 1e3 for k, v in split.items()}}


def trainer_rate(name: str, data: ProxyData, config: TrainConfig, steps: int) -> float:
    """Images/s of ``ProxyTrainer.fit`` itself (EMA and callbacks included, first steps included, no
    evaluation callback) over a ``steps`` budget: what a search's training sees."""
    fit = ProxyTrainer(dataclasses.replace(config, steps=steps)).fit(stages.build(get_preset(name), seed=0), data)
    return fit.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4, help="off/on pairs per preset, in alternating order")
    parser.add_argument("--trainer-steps", type=int, default=100, help="the budget of each ProxyTrainer.fit timed")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    print(f"# training throughput · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · commit {commit} · "
          f"{cpu_name()} · {os.cpu_count()} cores · torch {torch.__version__} · {args.threads} threads · "
          f"native bf16: {cpu_has_native_bf16()}")
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"# practical peak (2048² matmul, best of 5): fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s")
    print(f"# batch {BATCH}, 160 px, AdamW; 'off' = amp, channels_last, fused_optimizer false (the trainer before "
          "issue 18), 'on' = the defaults")
    print(f"# step split: {args.steps} timed steps after {args.warmup}; trainer: ProxyTrainer.fit over "
          f"{args.trainer_steps} steps (EMA, first steps included); medians of {args.repeats} off/on pairs "
          "run in alternating order; the ratios are per pair")
    print("# GFLOP/s = 3 × forward GFLOPs (fvcore, fused, fp32 count) × step images/s; % of the fp32 peak\n")
    data = ProxyData.digits(img_size=160)
    list(data.train_loader(batch_size=BATCH, seed=0))  # decode and cache the images before any timing
    settings = {"off": TrainConfig(amp=False, channels_last=False, fused_optimizer=False), "on": TrainConfig()}
    print(f"{'preset':16s} {'speed':5s} {'img/s':>7s} {'GFLOP/s':>8s} {'% peak':>7s}   ms/step: {'fwd':>6s} "
          f"{'loss':>6s} {'bwd':>6s} {'opt':>6s}   {'trainer img/s':>13s}")
    for name in FAMILIES:
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in settings}
        for rep in range(args.repeats):
            order = list(settings) if rep % 2 == 0 else list(settings)[::-1]  # off-on, on-off, ...: drift cancels
            for key in order:
                r = measure(name, data, settings[key], args.steps, args.warmup)
                r["trainer"] = trainer_rate(name, data, settings[key], args.trainer_steps)
                runs[key].append(r)
        for key in settings:
            ordered = sorted(runs[key], key=lambda r: r["ips"])
            r = ordered[len(ordered) // 2]
            trainer = statistics.median(x["trainer"] for x in runs[key])
            print(f"{name:16s} {key:5s} {r['ips']:7.1f} {r['achieved']:8.1f} {100 * r['achieved'] / fp32:6.1f}%   "
                  f"{'':9s}{r['forward']:6.1f} {r['loss']:6.1f} {r['backward']:6.1f} {r['optimizer']:6.1f}   "
                  f"{trainer:13.1f}")
        pairs = list(zip(runs["off"], runs["on"], strict=True))
        step = sorted(on["ips"] / off["ips"] for off, on in pairs)
        trainer = sorted(on["trainer"] / off["trainer"] for off, on in pairs)
        print(f"{name:16s} on/off, median (range) of {len(pairs)} pairs: step loop {statistics.median(step):.2f}× "
              f"({step[0]:.2f}–{step[-1]:.2f}), trainer {statistics.median(trainer):.2f}× "
              f"({trainer[0]:.2f}–{trainer[-1]:.2f})", flush=True)


if __name__ == "__main__":
    main()
