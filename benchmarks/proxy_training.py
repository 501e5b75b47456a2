"""Proxy-training fidelity and speed on the bundled digits set (issue: proxy trainer).

Prints, on this machine:
1. AP and AP50 of each nano family after the default budget (seed 0);
2. the seed spread of one preset (3 seeds) against the gap between the best and the worst family;
3. ProxyTrainer's training images/s against a bare torch loop (same model, batches, loss and optimiser step);
4. the training seconds at which AP50 first reaches 0.5, read from the per-epoch evaluations of one longer run.

    .venv/bin/python benchmarks/proxy_training.py [--seconds 90] [--long 300] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from objectives.latency import cpu_name
from search_space.builder import build_detector
from search_space.presets import get_preset
from trainers.datasets import ProxyData
from trainers.loss import YoloLoss
from trainers.proxy import ProxyTrainer, TrainBudget, TrainConfig

FAMILIES = ("yolor-v3-nano", "yolor-prn-nano", "yolor-csp-nano", "yolor-elan-nano")


def fit(name: str, data: ProxyData, seconds: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_detector(get_preset(name))
    result = ProxyTrainer(TrainConfig(seed=seed, threads=2)).fit(model, data, TrainBudget(seconds=seconds))
    return {"ap": result.ap, "ap50": result.ap50, "epochs": result.epochs, "steps": result.steps,
            "train_seconds": result.train_seconds, "ips": result.images_per_second, "history": result.history}


def bare_loop(name: str, data: ProxyData, steps: int) -> float:
    """Images/s of a plain loop: forward, loss, backward, AdamW step — no EMA, schedule, callbacks or eval."""
    cfg = TrainConfig()
    model = build_detector(get_preset(name)).train()
    loss_fn = YoloLoss(num_classes=data.num_classes, anchors=model.anchors, strides=model.strides,
                       img_size=data.img_size, hyp=cfg.hyp)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    loader = data.train_loader(batch_size=cfg.batch_size, seed=0)
    images, done, start = 0, 0, time.perf_counter()
    while done < steps:
        for imgs, targets, _ in loader:
            loss, _ = loss_fn(model(imgs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += imgs.shape[0]
            done += 1
            if done >= steps:
                break
    return images / (time.perf_counter() - start)


def trainer_ips(name: str, data: ProxyData, steps: int) -> float:
    model = build_detector(get_preset(name))
    result = ProxyTrainer(TrainConfig(eval_every=10**6)).fit(model, data, TrainBudget(steps=steps))
    return result.images_per_second  # excludes the closing evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0, help="the default CPU budget per run")
    parser.add_argument("--long", type=float, default=300.0, help="budget of the run that looks for AP50 0.5")
    parser.add_argument("--quick", action="store_true", help="20-s runs, 2 seeds (a smoke test of the script)")
    args = parser.parse_args()
    seconds = 20.0 if args.quick else args.seconds
    torch.set_num_threads(2)
    print(f"machine: {cpu_name()}; {os.cpu_count()} CPUs; torch {torch.__version__}; 2 threads; "
          f"budget {seconds:.0f} s per run; defaults {TrainConfig()}")
    data = ProxyData.digits()
    print(f"data: {data.name}, {len(data.train)} train / {len(data.val)} val images at {data.img_size}²\n")

    rows = {name: fit(name, data, seconds) for name in FAMILIES}
    print(f"{'family':18s} {'AP':>7s} {'AP50':>7s} {'epochs':>7s} {'steps':>6s} {'img/s':>7s}")
    for name, r in rows.items():
        print(f"{name:18s} {r['ap']:7.4f} {r['ap50']:7.4f} {r['epochs']:7d} {r['steps']:6d} {r['ips']:7.1f}")
    aps = [r["ap"] for r in rows.values()]
    gap = max(aps) - min(aps)

    preset = "yolor-csp-nano"
    seeds = [rows[preset]["ap"]] + [fit(preset, data, seconds, seed)["ap"] for seed in (1, 2)[: 1 if args.quick else 2]]
    spread = max(seeds) - min(seeds)
    print(f"\nseeds of {preset}: AP {[round(a, 4) for a in seeds]}, spread {spread:.4f}; best−worst family gap "
          f"{gap:.4f} -> signal {'above' if gap > spread else 'NOT above'} noise")

    steps = 30 if args.quick else 120
    bare = bare_loop(preset, data, steps)
    ours = trainer_ips(preset, data, steps)
    print(f"\nimages/s over {steps} steps: ProxyTrainer {ours:.1f}, bare torch loop {bare:.1f}, "
          f"ratio {ours / bare:.3f} (target >= 0.85)")

    long = 40.0 if args.quick else args.long
    r = fit("yolor-elan-nano", data, long)
    reached = next((h for h in r["history"] if h["ap50"] >= 0.5), None)
    curve = ", ".join(f"{h['train_seconds']:.0f}s:{h['ap50']:.3f}" for h in r["history"])
    print(f"\nyolor-elan-nano over {long:.0f} s, AP50 per epoch (train seconds): {curve}")
    if reached:
        print(f"AP50 >= 0.5 first reached after {reached['train_seconds']:.0f} s of training (epoch "
              f"{reached['epoch']:.0f})")
    else:
        print(f"AP50 0.5 not reached within {long:.0f} s (final AP50 {r['ap50']:.3f})")


if __name__ == "__main__":
    main()
