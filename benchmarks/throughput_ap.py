"""AP after a fixed step budget with and without the training speed settings (issue 18's accuracy check).

For yolor-elan-nano and yolor-csp-nano on the digits set at 160 px, batch 16, the default budget (300 steps):
proxy-train seeds 0, 1, 2 with the speed settings off (``amp``, ``channels_last``, ``fused_optimizer`` false:
the trainer as it was) and on (the defaults), and print each run's AP, AP50 and images/s, then per preset and
setting the mean and the seed-to-seed range. The speed settings keep "what is learned" when the fast runs' APs
lie within the range the seeds span with the settings off.

    .venv/bin/python benchmarks/throughput_ap.py [--steps 300] [--seeds 0 1 2] [--threads N]

Takes about 10 minutes on 2 cores; run it alone (the images/s column is only comparable within one run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from gpnas.experiments import stages
from gpnas.objectives.latency import cpu_name
from gpnas.search_space.presets import get_preset
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.speedups import cpu_has_native_bf16
from gpnas.trainers.train_config import PROXY_STEPS, TrainConfig

PRESETS = ("yolor-elan-nano", "yolor-csp-nano")
SETTINGS = {"off": {"amp": False, "channels_last": False, "fused_optimizer": False}, "on": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=PROXY_STEPS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    print(f"# AP at equal steps, speed settings off vs on · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · "
          f"commit {commit} · {cpu_name()} · {os.cpu_count()} cores · torch {torch.__version__} · "
          f"{args.threads} threads · native bf16: {cpu_has_native_bf16()}")
    print(f"# digits, 160 px, batch 16, {args.steps} steps, seeds {args.seeds}; AP on the 300 val images\n")
    data = ProxyData.digits(img_size=160)
    print(f"{'preset':16s} {'speed':5s} {'seed':>4s} {'AP':>7s} {'AP50':>7s} {'img/s':>7s}", flush=True)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name in PRESETS:
        spec = get_preset(name)
        for seed in args.seeds:
            for setting, knobs in SETTINGS.items():
                config = dataclasses.replace(TrainConfig(steps=args.steps, seed=seed, threads=args.threads), **knobs)
                fit = stages.train(stages.build(spec, seed=seed), data, config)
                results.setdefault((name, setting), []).append((fit.ap, fit.ap50))
                print(f"{name:16s} {setting:5s} {seed:4d} {fit.ap:7.4f} {fit.ap50:7.4f} "
                      f"{fit.images_per_second:7.1f}", flush=True)
    print(f"\n{'preset':16s} {'speed':5s} {'AP mean':>8s} {'AP range':>17s} {'AP50 mean':>10s} {'AP50 range':>17s}")
    for (name, setting), runs in results.items():
        aps, ap50s = [r[0] for r in runs], [r[1] for r in runs]
        print(f"{name:16s} {setting:5s} {statistics.mean(aps):8.4f} {min(aps):8.4f}–{max(aps):7.4f} "
              f"{statistics.mean(ap50s):10.4f} {min(ap50s):8.4f}–{max(ap50s):7.4f}")
    for name in PRESETS:
        off = [r[0] for r in results[(name, "off")]]
        on = [r[0] for r in results[(name, "on")]]
        inside = all(min(off) <= a <= max(off) for a in on)
        mean_diff = statistics.mean(on) - statistics.mean(off)
        print(f"# {name}: on-runs inside the off-runs' seed range: {inside}; mean AP on − off {mean_diff:+.4f} "
              f"(seed range off {max(off) - min(off):.4f})")


if __name__ == "__main__":
    main()
