"""Cost of the gradient-path analysis at paper scale, and the repeatability of measured latency.

(a) ``gpnas.objectives.gradient_path.analyze`` on the paper-scale presets yolor-v3, yolor-csp and yolor-elan (built with
    ``build_detector(get_preset(name))``, width = depth = 1.0, 80 classes): median over ``--runs`` calls of
    ``report.seconds`` (the whole call: fx trace + shape propagation + metrics) and ``report.analysis_seconds``
    (the metrics on the extracted graph alone). Shape propagation uses the default 1×3×64×64 input: the
    structure does not depend on the input size. Target: whole call < 1 s.
(b) CPU latency of yolor-elan-nano under ``LatencyProtocol(device="cpu", img_size=160, batch=1, repeats=20,
    warmup=10, threads=1)``: ``--runs`` protocol runs, each run's median / IQR / CV over its repeats, then the
    spread of the per-run medians. On a shared machine this spread is the honest error bar of a CPU figure.
(c) With CUDA: yolor-elan at 640, batch 1, fp16 (CUDA events, sustained warm-up): median and CV across
    repeats, target CV ≤ 1 %. Without CUDA this part says so and measures nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Sequence

import torch

from gpnas.objectives.gradient_path import analyze
from gpnas.objectives.latency import LatencyProtocol, LatencyResult, cpu_name, measure_latency
from gpnas.search_space.builder import build_detector
from gpnas.search_space.presets import get_preset

GP_PRESETS = ("yolor-v3", "yolor-csp", "yolor-elan")
GP_TARGET_S = 1.0
CPU_PRESET = "yolor-elan-nano"
GPU_PRESET = "yolor-elan"
GPU_CV_TARGET = 0.01


def print_machine() -> None:
    print(f"machine: {cpu_name()}; {os.cpu_count()} logical CPUs; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()} "
          f"(intra-op), {torch.get_num_interop_threads()} (inter-op)")
    if torch.cuda.is_available():
        print(f"cuda: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
    print()


def bench_gradient_path(presets: Sequence[str], runs: int) -> None:
    """(a): whole-call and analysis-only seconds of ``analyze``, median of ``runs``."""
    print(f"(a) gradient-path analysis at paper scale, median of {runs} runs (target < {GP_TARGET_S:.0f} s)")
    header = (f"{'preset':<12}{'layers':>8}{'total s':>10}{'min':>8}{'max':>8}"
              f"{'analysis s':>12}{'trace s':>10}{'< 1 s':>7}")
    print(header)
    print("-" * len(header))
    for name in presets:
        model = build_detector(get_preset(name))
        totals, analysis, n_layers = [], [], 0
        for _ in range(runs):
            report = analyze(model)
            totals.append(report.seconds)
            analysis.append(report.analysis_seconds)
            n_layers = len(report.layers)
        total, only = statistics.median(totals), statistics.median(analysis)
        verdict = "yes" if total < GP_TARGET_S else "NO"
        print(f"{name:<12}{n_layers:>8}{total:>10.3f}{min(totals):>8.3f}{max(totals):>8.3f}"
              f"{only:>12.3f}{total - only:>10.3f}{verdict:>7}")
    print("total = report.seconds (fx trace + ShapeProp + metrics); analysis = report.analysis_seconds; "
          "trace = total − analysis")
    print()


def _row(label: str, r: LatencyResult) -> str:
    return (f"{label:<8}{r.median_ms:>11.3f}{r.iqr_ms:>10.3f}{100 * r.cv:>8.2f}{r.min_ms:>10.3f}"
            f"{r.lock_wait_s:>12.2f}")


def bench_cpu_latency(runs: int) -> None:
    """(b): ``runs`` protocol runs of the nano preset on CPU, and the spread of their medians."""
    protocol = LatencyProtocol(device="cpu", img_size=160, batch=1, repeats=20, warmup=10, threads=1)
    print(f"(b) CPU latency of {CPU_PRESET}, {runs} protocol runs: {protocol.to_dict()}")
    model = build_detector(get_preset(CPU_PRESET))
    header = f"{'run':<8}{'median ms':>11}{'IQR ms':>10}{'CV %':>8}{'min ms':>10}{'lock wait s':>12}"
    print(header)
    print("-" * len(header))
    medians = []
    for i in range(runs):
        result = measure_latency(model, protocol)
        medians.append(result.median_ms)
        print(_row(str(i + 1), result))
    centre = statistics.median(medians)
    spread = max(medians) - min(medians)
    cv = statistics.pstdev(medians) / statistics.fmean(medians)
    print(f"spread of the {runs} run medians: min {min(medians):.3f} ms, median {centre:.3f} ms, "
          f"max {max(medians):.3f} ms; max − min = {spread:.3f} ms ({100 * spread / centre:.1f} % of the median); "
          f"CV of medians {100 * cv:.2f} %")
    print(f"device: {result.device_name}; one thread; absolute CPU timings compare only within one run")
    print()


def bench_gpu_latency(repeats: int) -> None:
    """(c): the paper-scale ELAN at 640, batch 1, fp16 on CUDA; median and CV across repeats."""
    if not torch.cuda.is_available():
        print("(c) no CUDA device: GPU figure not measured")
        return
    protocol = LatencyProtocol(device="cuda", img_size=640, batch=1, dtype="fp16", repeats=repeats, warmup=50)
    print(f"(c) GPU latency of {GPU_PRESET}: {protocol.to_dict()}")
    result = measure_latency(build_detector(get_preset(GPU_PRESET)), protocol)
    verdict = "yes" if result.cv <= GPU_CV_TARGET else "NO"
    print(f"device {result.device_name}: median {result.median_ms:.3f} ms, IQR {result.iqr_ms:.3f} ms, "
          f"CV {100 * result.cv:.2f} % over {repeats} repeats (CV ≤ 1 %: {verdict})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gradient-path analysis time and latency repeatability.")
    parser.add_argument("--runs", type=int, default=5, help="runs for (a) and protocol runs for (b) (default 5)")
    parser.add_argument("--presets", nargs="+", default=list(GP_PRESETS), help="paper-scale presets for (a)")
    parser.add_argument("--gpu-repeats", type=int, default=100, help="timed repeats for (c) (default 100)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print_machine()
    bench_gradient_path(args.presets, args.runs)
    bench_cpu_latency(args.runs)
    bench_gpu_latency(args.gpu_repeats)
    print(f"\ntotal runtime {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
