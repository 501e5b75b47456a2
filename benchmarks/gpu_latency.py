"""End-to-end latency of named architectures under declared protocols, in one process: median, IQR and CV each.

The protocol is :class:`gpnas.objectives.latency.LatencyProtocol` (printed with every figure). ``--cuda-graph``
chooses how a CUDA pass is launched: ``off`` (eager: each kernel launched from Python, the figure a PyTorch program
sees), ``on`` (the pass captured once in a CUDA graph and replayed: the GPU's own work, what a runtime that
captures graphs sees) or ``both``. At batch 1 a paper-scale model is launch-bound on a large GPU: the eager figure
then carries the host's jitter (CV 1.5-3 % with 3 passes per repeat on an H200), which more passes per repeat
(``--iters``) average out and a CUDA graph removes. Run by benchmarks/gpu_check.sh; ``--device cpu`` runs the
eager path on a CPU.

    python benchmarks/gpu_latency.py [--presets yolor-v3 ...] [--device cuda] [--dtype fp16] [--img 640]
        [--warmup 50] [--repeats 30] [--iters 20] [--cuda-graph off|on|both] [--json FILE] [--parse-only]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PAPER = ("yolor-v3", "yolor-prn", "yolor-csp", "yolor-elan")
GOAL_CV = 0.01


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[tuple[str, Any]]]:
    """The arguments and the protocols they declare; a bad preset or protocol is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PAPER))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--warmup-seconds", type=float, default=None, help="default: the protocol's (2 s on CUDA)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--iters", type=int, default=20, help="passes per timed repeat")
    parser.add_argument("--cuda-graph", choices=["off", "on", "both"], default="both")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    parser.add_argument("--parse-only", action="store_true", help="check the arguments and exit")
    args = parser.parse_args(argv)
    from gpnas.errors import GpnasError
    from gpnas.search_space.presets import get_preset

    try:
        for name in args.presets:
            get_preset(name)
        return args, protocols(args)
    except GpnasError as err:
        parser.error(str(err))


def protocols(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(label, LatencyProtocol) per launch mode asked for; each is validated here (a CPU graph is refused)."""
    from gpnas.objectives.latency import LatencyProtocol

    modes = {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graph]
    return [("cuda-graph" if graph else "eager", LatencyProtocol(
        device=args.device, batch=args.batch, dtype=args.dtype, img_size=args.img, warmup=args.warmup,
        warmup_seconds=args.warmup_seconds, repeats=args.repeats, iters_per_repeat=args.iters, cuda_graph=graph))
        for graph in modes]


def main() -> None:
    args, chosen = parse()
    if args.parse_only:
        print(f"arguments accepted: {len(args.presets)} presets × {[label for label, _ in chosen]}")
        return
    import torch

    from gpnas.objectives.latency import measure_latency
    from gpnas.search_space.builder import build_detector
    from gpnas.search_space.presets import get_preset

    for label, protocol in chosen:
        print(f"protocol {label}: {json.dumps(protocol.to_dict())}")
    rows, failed = [], 0
    for name in args.presets:
        torch.manual_seed(0)
        model = build_detector(get_preset(name))
        for label, protocol in chosen:
            try:
                r = measure_latency(model, protocol)
            except (RuntimeError, torch.OutOfMemoryError) as err:  # a pass that cannot be captured, or no memory
                print(f"{name:16s} {label:10s} failed: {type(err).__name__}: {err}")
                failed += 1
                continue
            goal = "met" if r.cv <= GOAL_CV else "missed"
            print(f"{name:16s} {label:10s} median {r.median_ms:7.3f} ms · IQR {r.iqr_ms:.3f} · CV {r.cv:.4f} "
                  f"(goal <= {GOAL_CV}: {goal}) · {r.device_name}", flush=True)
            rows.append({"preset": name, "launch": label, **r.to_dict()})
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    if failed:
        raise SystemExit(f"{failed} measurement(s) failed")


if __name__ == "__main__":
    main()
