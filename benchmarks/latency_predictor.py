"""Does the per-layer latency table rank candidates like a quiet end-to-end measurement, also under load?

Candidates: distinct architectures of the demo space (``--n``, default 24), drawn by a seeded random sampler.
Protocol: the search's (``latency`` section of the demo config) at each candidate's input size; the reference is
a quiet end-to-end measurement with 3× the repeats, the minimum over three interleaved rounds. Steps, all in this
one process, run alone:

1. a fresh table (temporary file): calibration on the four nano presets, then every candidate's layers;
2. quiet reference: end-to-end median per candidate;
3. prediction vs reference: share within ±10 %, Spearman ρ, mean |error|;
4. with a CPU-burning process beside it (busy on every core): prediction again (the table is only read: no timing)
   and an end-to-end measurement, each ranked against the quiet reference.

    python benchmarks/latency_predictor.py [--n 24] [--device cpu] [--dtype fp32] [--img N] [--warmup-seconds S]
        [--no-load] [--parse-only]

``--warmup-seconds`` sets the protocol's sustained warm-up (2 s by default on CUDA, paid by every end-to-end
measurement: 8 calibration networks × 3 rounds, then 4 measurements per candidate); ``--no-load`` skips step 4
(benchmarks/gpu_check.sh uses both to fit its time budget).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr


def candidates(n: int, seed: int = 0) -> list:
    import optuna

    from gpnas.experiments.config import load_config
    from gpnas.experiments.runner import build_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = build_space(load_config("demo"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    seen, out = set(), []
    for _ in range(20 * n):
        trial = study.ask()
        space.define(trial)
        spec = space.from_params(trial.params)
        if spec.arch_id not in seen:
            seen.add(spec.arch_id)
            out.append(spec)
        study.tell(trial, 0.0)
        if len(out) == n:
            break
    return out


def _burn(stop_at: float) -> None:
    x = 1.0001
    while time.time() < stop_at:
        for _ in range(100_000):
            x = x * 1.0000001 % 7.0


def burner(seconds: float) -> list[multiprocessing.Process]:
    """One busy process per core, for ``seconds``."""
    stop_at = time.time() + seconds
    procs = [multiprocessing.Process(target=_burn, args=(stop_at,), daemon=True) for _ in range(os.cpu_count() or 1)]
    for p in procs:
        p.start()
    return procs


def _stats(pred: np.ndarray, ref: np.ndarray) -> str:
    err = (pred - ref) / ref
    rho = spearmanr(pred, ref).statistic
    return (f"within ±10 %: {np.mean(np.abs(err) <= 0.10):.0%} ({int(np.sum(np.abs(err) <= 0.10))}/{len(err)}) · "
            f"Spearman ρ {rho:.3f} · mean |error| {np.mean(np.abs(err)):.1%} · max |error| {np.max(np.abs(err)):.1%}")


def _parse() -> tuple[argparse.Namespace, Any]:
    """The arguments and the demo config with the protocol they declare (validated)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--img", type=int, default=None, help="input size (default: the demo space's, 160)")
    parser.add_argument("--warmup-seconds", type=float, default=None, help="default: the protocol's")
    parser.add_argument("--no-load", action="store_true", help="skip the measurements under CPU load (step 4)")
    parser.add_argument("--parse-only", action="store_true", help="check the arguments and the protocol, and exit")
    args = parser.parse_args()

    from gpnas.experiments.config import load_config

    overrides = [f"latency.device={args.device}", f"latency.dtype={args.dtype}"]
    if args.warmup_seconds is not None:
        overrides.append(f"latency.warmup_seconds={args.warmup_seconds}")
    return args, load_config("demo", overrides)


def _commit() -> str:
    if shutil.which("git") is None:
        return "?"
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"


def main() -> None:
    args, cfg = _parse()
    if args.parse_only:
        print(f"arguments accepted: {cfg.latency.protocol(img_size=args.img or 160)}")
        return

    from gpnas.objectives.latency import cpu_name, measure_latency
    from gpnas.objectives.latency_table import LatencyTable
    from gpnas.search_space.builder import build_detector

    specs = [s.replace(img_size=args.img) if args.img else s for s in candidates(args.n)]
    commit = _commit()
    print(f"gpnas latency predictor · {time.strftime('%Y-%m-%d %H:%M')} · commit {commit} · {cpu_name()}, "
          f"{os.cpu_count()} cores · torch {__import__('torch').__version__} · Python {platform.python_version()}")
    base = cfg.latency.protocol(img_size=specs[0].img_size)
    print(f"protocol: {base}; {len(specs)} candidates of the demo space")
    models = [build_detector(s) for s in specs]
    with tempfile.TemporaryDirectory() as tmp:
        table = LatencyTable(base, path=Path(tmp) / "table.json")
        start = time.perf_counter()
        table.calibrate()
        preds = [table.predict(m) for m in models]
        build_s = time.perf_counter() - start
        scale, c0 = table.overhead  # type: ignore[misc]
        print(f"table: {len(table.entries)} entries (blocks), fit ms = {scale:.3f} × Σ entries + {c0:.3f}, "
              f"calibrated and built in {build_s:.0f} s")
        ref_protocol = replace(base, repeats=base.repeats * 3)
        rounds = [[measure_latency(m, ref_protocol).median_ms for m in models] for _ in range(3)]
        quiet = np.min(np.array(rounds), axis=0)  # three interleaved rounds: noise on a shared VM only adds time
        predicted = np.array([p.ms for p in preds])
        print(f"\n{'arch_id':<14}{'block':<10}{'neck':<10}{'layers':>7}{'quiet ms':>10}{'pred ms':>10}{'err':>8}")
        for s, p, q in zip(specs, preds, quiet, strict=True):
            print(f"{s.arch_id:<14}{s.block:<10}{s.neck:<10}{p.n_layers:>7}{q:>10.3f}{p.ms:>10.3f}"
                  f"{(p.ms - q) / q:>+8.1%}")
        print(f"\nquiet: prediction vs end-to-end   {_stats(predicted, quiet)}")
        if args.no_load:
            return
        procs = burner(600)
        time.sleep(2)
        try:
            loaded_preds = [table.predict(m) for m in models]
            timed = sum(p.timed_now for p in loaded_preds)
            loaded_pred = np.array([p.ms for p in loaded_preds])
            loaded_meas = np.array([measure_latency(m, base).median_ms for m in models])
        finally:
            for p in procs:
                p.terminate()
        print(f"under load ({len(procs)} busy processes): prediction (entries timed now: {timed}) vs quiet "
              f"reference   {_stats(loaded_pred, quiet)}")
        print(f"under load: end-to-end measurement vs quiet reference   {_stats(loaded_meas, quiet)}")


if __name__ == "__main__":
    main()
