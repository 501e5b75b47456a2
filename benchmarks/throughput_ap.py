"""AP after a fixed step budget with and without the training speed settings (issue 18's accuracy check).

For yolor-elan-nano and yolor-csp-nano on the digits set at 160 px, batch 16, the default budget (300 steps):
proxy-train each seed with the speed settings off (``amp``, ``channels_last``, ``fused_optimizer`` false: the
trainer as it was), on (the defaults) and on without bf16 (``amp`` false), and print each run's AP, AP50 and
images/s, then per preset and setting the mean, standard deviation and range over the seeds, and the
difference of each setting's mean AP from "off" in units of its standard error. A run with other kernels is
another draw of the same training (the rounding differences grow over the steps like a different seed's), so
"keeps what is learned" means: the settings' APs look like draws from the "off" distribution.

    .venv/bin/python benchmarks/throughput_ap.py [--steps 300] [--seeds 0 1 2 3 4] [--threads N]

Takes about 25 minutes on 2 cores. The AP column is deterministic (the same on a busy machine); the images/s
column is only comparable within one quiet run.
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
SETTINGS = {"off": {"amp": False, "channels_last": False, "fused_optimizer": False}, "on": {},
            "fp32": {"amp": False}}  # on, less bf16: tells the precision's share from the kernels' share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=PROXY_STEPS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
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
    print(f"\n{'preset':16s} {'speed':5s} {'AP mean':>8s} {'sd':>7s} {'AP range':>17s} {'AP50 mean':>10s} "
          f"{'AP50 range':>17s}  vs off")
    for (name, setting), runs in results.items():
        aps, ap50s = [r[0] for r in runs], [r[1] for r in runs]
        off = [r[0] for r in results[(name, "off")]]
        diff = statistics.mean(aps) - statistics.mean(off)
        se = (statistics.variance(aps) / len(aps) + statistics.variance(off) / len(off)) ** 0.5 if len(aps) > 1 \
            else float("nan")
        versus = "" if setting == "off" else f"{diff:+.4f} ({diff / se:+.1f} s.e.)"
        print(f"{name:16s} {setting:5s} {statistics.mean(aps):8.4f} {statistics.pstdev(aps):7.4f} "
              f"{min(aps):8.4f}–{max(aps):7.4f} {statistics.mean(ap50s):10.4f} {min(ap50s):8.4f}–{max(ap50s):7.4f}  "
              f"{versus}")


if __name__ == "__main__":
    main()
