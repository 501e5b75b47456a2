"""Record the tabulated benchmark of benchmarks/multi_fidelity.py: real AP-vs-steps curves of candidates of the
demo space, trained once with the search's own trainer.

How the table is made (`python benchmarks/record_curves.py`, ~45 min on 2 cores; resumable):
- candidates: ``--n`` distinct points of the demo config's space (``yolor-csp-nano`` first, then points drawn by
  Optuna's RandomSampler with seed 0 through the space's own ``define``; a repeated arch_id is drawn again);
- each is built with seed 0 and trained exactly as a demo trial (the demo's ``train`` section: AdamW, batch 16,
  EMA, digits 2000/300 at 160 px, 1 thread) but for ``--max-steps`` steps (600: twice the demo's budget), its LR
  schedule spanning the whole run, and evaluated (COCO AP on the 300 val images) after 75, 150, 300, 450 and 600
  steps (the rungs of successive halving with eta 2 from 75 or 150 steps, and one between). A trial stopped at a
  rung in a search has exactly the AP recorded here at that step (same seed, same batches, same work: training
  is deterministic);
- GFLOPs and params are fvcore's at the candidate's input size, as in a search.

Output: ``benchmarks/data/demo_curves.jsonl``, one JSON object per candidate (params, arch_id, gflops, params,
curve: [{step, ap, ap50}], train_seconds). The AP values depend only on the work (steps), not on the machine's
load; ``train_seconds`` do, and are informative only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "data" / "demo_curves.jsonl"
EVAL_STEPS = (75, 150, 300, 450, 600)


def candidates(n: int) -> list[dict[str, Any]]:
    import optuna

    from gpnas.experiments.config import load_config
    from gpnas.experiments.runner import build_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = build_space(load_config("demo"))
    out: dict[str, dict[str, Any]] = {}
    first = space.to_params(space.base)
    out[space.from_params(first).arch_id] = first
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    tries = 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        trial = study.ask()
        space.define(trial)
        params = dict(trial.params)
        study.tell(trial, 0.0)
        out.setdefault(space.from_params(params).arch_id, params)
    return list(out.values())


def record(params: dict[str, Any], max_steps: int) -> dict[str, Any]:
    import dataclasses

    import torch

    from gpnas.experiments import stages
    from gpnas.experiments.config import load_config
    from gpnas.experiments.runner import build_space

    torch.set_num_threads(1)
    cfg = load_config("demo")
    spec = build_space(cfg).from_params(params)
    model = stages.build(spec, seed=cfg.train.seed)
    size = stages.measure_size(spec, model)
    train = dataclasses.replace(cfg.train, steps=max_steps, max_seconds=None, eval_every=10**6, threads=1,
                                eval_steps=tuple(s for s in EVAL_STEPS if s <= max_steps))
    fit = stages.train(model, stages.load_data(cfg.data, spec.img_size), train)
    return {"params": params, "arch_id": spec.arch_id, "gflops": size["gflops"], "params_count": size["params"],
            "curve": [{"step": int(h["step"]), "ap": h["ap"], "ap50": h["ap50"]} for h in fit.history],
            "train_seconds": fit.train_seconds}


def _worker(jobs: list[dict[str, Any]], max_steps: int, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    for params in jobs:
        t0 = time.time()
        row = record(params, max_steps)
        with open(out, "a") as f:  # one line per write: two workers never interleave a line
            f.write(json.dumps(row) + "\n")
        curve = " ".join(f"{c['step']}:{c['ap']:.4f}" for c in row["curve"])
        print(f"{row['arch_id']} gflops {row['gflops']:.4f} {curve} ({time.time() - t0:.0f} s)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="candidates (default 32)")
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.is_file():
        done = {json.loads(line)["arch_id"] for line in args.out.read_text().splitlines() if line.strip()}
    from gpnas.experiments.config import load_config
    from gpnas.experiments.runner import build_space

    space = build_space(load_config("demo"))
    todo = [p for p in candidates(args.n) if space.from_params(p).arch_id not in done]
    print(f"{len(done)} recorded, {len(todo)} to train ({args.max_steps} steps, evals at {EVAL_STEPS})", flush=True)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(todo[i::args.workers], args.max_steps, str(args.out)))
             for i in range(args.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)


if __name__ == "__main__":
    sys.exit(main())
