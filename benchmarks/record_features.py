"""Record the pre-training features of the candidates of the tabulated benchmark (benchmarks/data/demo_curves.jsonl):
what a search measures on each candidate before training it — size, structural gradient-path metrics, gradient
statistics at initialisation, stage aggregates, zero-cost proxies — with the pre-screen's own code
(:meth:`gpnas.experiments.prescreen.Prescreen.measure`, the demo config: seed 0, digits val batch, 160 px).

Output: ``benchmarks/data/demo_features.jsonl``, one JSON object per candidate (arch_id, features). Deterministic:
the same code gives the same features (the seeded model, the fixed val batch; one thread).

    .venv/bin/python benchmarks/record_features.py      # ~2-4 min on 2 cores for 64 candidates
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

CURVES = Path(__file__).parent / "data" / "demo_curves.jsonl"
OUT = Path(__file__).parent / "data" / "demo_features.jsonl"


def main() -> None:
    from gpnas.experiments.config import load_config
    from gpnas.experiments.prescreen import Prescreen
    from gpnas.experiments.runner import build_space

    torch.set_num_threads(1)  # as a demo trial (budget.cpu 1): the same bits
    cfg = load_config("demo")
    space, screen = build_space(cfg), Prescreen(cfg)
    rows = [json.loads(line) for line in CURVES.read_text().splitlines() if line.strip()]
    out, start = [], time.perf_counter()
    for i, row in enumerate(rows):
        spec = space.from_params(row["params"])
        if spec.arch_id != row["arch_id"]:
            raise SystemExit(f"{CURVES}: row {i} has arch_id {row['arch_id']} but its params build {spec.arch_id}; "
                             "the space changed since the table was recorded")
        metrics = screen.measure(spec)
        kept = {k: metrics[k] for k in sorted(metrics) if not k.endswith("_seconds")}  # timings: not features
        out.append({"arch_id": spec.arch_id, "features": kept})
        print(f"  {i + 1}/{len(rows)} {spec.arch_id} ({time.perf_counter() - start:.0f} s)", flush=True)
    OUT.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in out))
    print(f"wrote {OUT} ({len(out)} candidates, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
