"""How reproducible is a quiet end-to-end CPU latency measurement on this machine? (issue 29: the ceiling of any
predictor's accuracy is the reference's own reproducibility.)

The same three models (the nano CSP preset at width 1/8 and two demo-space candidates) under the demo's protocol,
30 repeats, measured three times in each of ``--processes`` fresh processes started one after another, nothing
else running; beside each model measurement, a fixed matmul probe (200 × 256² fp32 matmuls, one thread) shows
whether the machine as a whole got slower. Prints each process's figures, then per model the spread of its
per-process minimum (max / min) and of all its measurements.

    python benchmarks/latency_stability.py [--processes 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
sys.path.insert(0, "benchmarks")
from dataclasses import replace
import torch
from gpnas.experiments.config import load_config
from gpnas.objectives.latency import measure_latency
from gpnas.search_space.builder import build_detector
from gpnas.search_space.presets import get_preset
from latency_predictor import candidates

ref = replace(load_config("demo").latency.protocol(img_size=160), repeats=30)
models = [build_detector(get_preset("yolor-csp-nano").replace(width_multiple=0.125))]
models += [build_detector(s) for s in candidates(2)]
a = torch.randn(256, 256)


def probe():
    torch.set_num_threads(1)
    start = time.perf_counter()
    for _ in range(200):
        a @ a
    return (time.perf_counter() - start) * 1000


out = {"ms": [[], [], []], "probe": []}
for _ in range(3):
    for i, m in enumerate(models):
        out["probe"].append(probe())
        out["ms"][i].append(measure_latency(m, ref).median_ms)
print(json.dumps(out))
"""

NAMES = ("yolor-csp-nano w1/8", "candidate 1", "candidate 2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    args = parser.parse_args()
    from latency_predictor import _commit  # beside this file

    from gpnas.objectives.latency import cpu_name

    print(f"gpnas latency stability · {time.strftime('%Y-%m-%d %H:%M')} · commit {_commit()} · {cpu_name()}, "
          f"{os.cpu_count()} cores · Python {platform.python_version()}")
    print("protocol: the demo's (cpu, batch 1, fp32, 160 px, 1 thread), 30 repeats; 3 measurements per model per "
          "process\n")
    env = {**os.environ, "GPNAS_LATENCY_LOCK": os.environ.get("GPNAS_LATENCY_LOCK", "/tmp/gpnas-stability.lock")}
    runs = []
    for p in range(args.processes):
        start = time.time()
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True)
        run = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(run)
        cells = "  ".join(" ".join(f"{x:5.2f}" for x in ms) for ms in run["ms"])
        print(f"process {p + 1} (+{time.time() - start:4.0f} s): ms {cells}   probe ms "
              f"{min(run['probe']):5.1f}-{max(run['probe']):5.1f}", flush=True)
    print()
    for i, name in enumerate(NAMES):
        mins = [min(r["ms"][i]) for r in runs]
        every = [x for r in runs for x in r["ms"][i]]
        print(f"{name:20s} per-process minimum {min(mins):.2f}-{max(mins):.2f} ms "
              f"(max/min {max(mins) / min(mins):.2f}); "
              f"all measurements {min(every):.2f}-{max(every):.2f} ms (max/min {max(every) / min(every):.2f})")
    probes = [x for r in runs for x in r["probe"]]
    print(f"{'matmul probe':20s} {min(probes):.1f}-{max(probes):.1f} ms (max/min {max(probes) / min(probes):.2f})")


if __name__ == "__main__":
    main()
