"""Proxy-training fidelity and speed on the bundled digits set (issue: proxy trainer).

Prints, on this machine:
1. AP and AP50 of each nano family after the default budget (seed 0);
2. the seed spread of one preset (3 seeds) against the gap between the best and the worst family;
3. ProxyTrainer's training images/s against a bare torch loop (same model, batches, loss and optimiser step);
4. AP50 of yolor-elan-nano and yolor-csp-nano after a longer budget (``--reach``, default 120 s), with their
   per-epoch AP50 curves, i.e. which budget takes them to AP50 0.5.

    .venv/bin/python benchmarks/proxy_training.py [--seconds 90] [--reach 120] [--part all|families|speed|reach]
                                                 [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from gpnas.experiments import stages
from gpnas.objectives.latency import cpu_name
from gpnas.search_space.builder import build_detector
from gpnas.search_space.presets import get_preset
from gpnas.trainers.data import to_model_input
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.loss import YoloLoss
from gpnas.trainers.proxy import ProxyTrainer
from gpnas.trainers.train_config import TrainConfig

FAMILIES = ("yolor-v3-nano", "yolor-prn-nano", "yolor-csp-nano", "yolor-elan-nano")


def fit(name: str, data: ProxyData, seconds: float, seed: int = 0) -> dict:
    config = TrainConfig(seconds=seconds, max_seconds=None, seed=seed, threads=2)
    result = stages.train(stages.build(get_preset(name), seed=seed), data, config)
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
            loss, _ = loss_fn(model(to_model_input(imgs, "cpu")), targets)
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
    result = ProxyTrainer(TrainConfig(steps=steps, max_seconds=None, eval_every=10**6)).fit(model, data)
    return result.images_per_second  # no evaluation callback: nothing is evaluated, and images/s never counts it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0, help="the default CPU budget per run")
    parser.add_argument("--reach", type=float, default=120.0, help="the longer budget that looks for AP50 0.5")
    parser.add_argument("--part", choices=("all", "families", "speed", "reach"), default="all",
                        help="families: 1 and 2; speed: 3; reach: 4")
    parser.add_argument("--quick", action="store_true", help="20-s runs, 2 seeds (a smoke test of the script)")
    args = parser.parse_args()
    seconds = 20.0 if args.quick else args.seconds
    torch.set_num_threads(2)
    print(f"machine: {cpu_name()}; {os.cpu_count()} CPUs; torch {torch.__version__}; 2 threads; "
          f"budget {seconds:.0f} s per run; defaults {TrainConfig()}")
    data = ProxyData.digits()
    print(f"data: {data.name}, {len(data.train)} train / {len(data.val)} val images at {data.img_size}²\n")

    preset = "yolor-csp-nano"
    if args.part in ("all", "families"):
        rows = {name: fit(name, data, seconds) for name in FAMILIES}
        print(f"{'family':18s} {'AP':>7s} {'AP50':>7s} {'epochs':>7s} {'steps':>6s} {'img/s':>7s}")
        for name, r in rows.items():
            print(f"{name:18s} {r['ap']:7.4f} {r['ap50']:7.4f} {r['epochs']:7d} {r['steps']:6d} {r['ips']:7.1f}")
        aps = [r["ap"] for r in rows.values()]
        gap = max(aps) - min(aps)
        more = (1,) if args.quick else (1, 2)
        seeds = [rows[preset]["ap"]] + [fit(preset, data, seconds, seed)["ap"] for seed in more]
        spread = max(seeds) - min(seeds)
        print(f"\nseeds of {preset}: AP {[round(a, 4) for a in seeds]}, spread {spread:.4f}; best−worst family "
              f"gap {gap:.4f} -> signal {'above' if gap > spread else 'NOT above'} noise")

    if args.part in ("all", "speed"):
        steps = 30 if args.quick else 120
        bare = bare_loop(preset, data, steps)
        ours = trainer_ips(preset, data, steps)
        print(f"\nimages/s over {steps} steps: ProxyTrainer {ours:.1f}, bare torch loop {bare:.1f}, "
              f"ratio {ours / bare:.3f} (target >= 0.85)")

    if args.part in ("all", "reach"):
        reach = 40.0 if args.quick else args.reach
        for name in ("yolor-elan-nano", "yolor-csp-nano"):
            r = fit(name, data, reach)
            first = next((h for h in r["history"] if h["ap50"] >= 0.5), None)
            curve = ", ".join(f"{h['train_seconds']:.0f}s:{h['ap50']:.3f}" for h in r["history"])
            print(f"\n{name}, {reach:.0f}-s budget: AP {r['ap']:.4f}, AP50 {r['ap50']:.4f}; AP50 per epoch "
                  f"(train seconds): {curve}")
            when = f"first reached after {first['train_seconds']:.0f} s" if first else "not reached"
            print(f"  AP50 0.5 {when} of this {reach:.0f}-s schedule")

if __name__ == "__main__":
    main()
