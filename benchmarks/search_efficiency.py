"""Search efficiency of the samplers (TPE, NSGA-II, random) on a TABULATED objective of the demo space.

Nothing is trained, so the benchmark runs in minutes: every architecture of the demo space
(``experiments/configs/demo.yaml``, ``space.genes``) is scored once by cheap, deterministic functions and the
Optuna studies then only look scores up. The three objectives, as in a real search, are (ap max, gflops min,
latency_ms min):

* ``gflops``: real, ``gpnas.objectives.complexity.measure_complexity`` (fused model, 2 × MACs, at the space's
  ``img_size``, 160) — the figure a real search minimises.
* ``latency_ms``: an analytic PROXY, not a timing (CPU timings on the shared machine are too noisy to tabulate).
  It is a single-thread CPU roofline with assumed, not fitted, constants::

      latency_ms = 1000 · GFLOPs / 25            (compute at 25 GFLOP/s)
                 + 1000 · 4 · params_fused / 10e9 (fp32 weights streamed once at 10 GB/s)
                 + 0.015 · n_layers              (15 µs dispatch per weighted layer, gp_n_layers)

  The per-layer term makes deep, thin designs (ELAN) slower than their FLOPs alone say, as on real CPUs.
* ``ap``: a FIXED AP SURROGATE, NOT MEASURED AP. A deterministic function of the genes and of the structural
  gradient-path aggregates (``gpnas.objectives.gradient_path.analyze``)::

      capacity = 0.40 · (1 − exp(−ln(GFLOPs_640 / 0.05) / 2))      grows with log GFLOPs, saturating
      sgp      = 0.03 · exp(−½ ((gp_max_sgp − 14) / 3)²)          bonus for a moderate longest shortest path
      plain    = 0.03 · (stages with mask_ratio 0) / 4              residual / csp blocks without a shortcut
      noise    = 0.01 · (2u − 1), u = SHA-256("ap-noise:" + arch_id) / 2²⁵⁶ in [0, 1)
      ap       = clip(capacity + sgp − plain + noise, 0, 1)

  The bonus follows the gradient-path paper's argument that a layer's shortest gradient path should be neither
  too long (hard to train) nor trivially short (little to learn), i.e. a moderate maximum SGP; the penalty
  follows its ablation of plain (mask 0) networks. The hash noise (±0.01 per arch_id, fixed across runs) keeps
  the landscape from being trivially smooth.

Reference point: computed once from the WHOLE tabulated space (every architecture, enumerated up front, not
only those sampled): the nadir (worst value of each objective over the space) moved 10 % of that objective's
range further in its worse direction, i.e. ap_min − 0.1·(ap_max − ap_min), gflops_max + 0.1·(gflops range),
latency_max + 0.1·(latency range). Every architecture therefore adds volume, and it is the same for every
sampler and seed, so the hypervolumes compare. (``gpnas.results.pareto.reference_point`` would put ap at 0.0; every
architecture here has a surrogate ap above 0.2, so that slab would be common to all samplers and only compress
the differences.) The hypervolume of the space's true Pareto front is printed too, as the ceiling.

Studies: ``optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=make_sampler(cfg))``
with the demo config's sampler section (TPE: multivariate, group, 6 start-up trials) and NSGA-II population 20
(DESIGN.md); ``space.suggest(trial)`` in the objective; no Ray and no enqueued preset. Hypervolume after 25, 50
and 100 trials, mean ± sample std over seeds 0..n-1. ``--quick``: 2 seeds, 50 trials.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from gpnas.experiments.config import load_config
from gpnas.experiments.runner import build_space
from gpnas.experiments.searcher import make_sampler
from gpnas.results.pareto import hypervolume, hypervolume_history
from gpnas.search_space.space import SearchSpace
from gpnas.search_space.spec import ArchSpec

NAMES = ("ap", "gflops", "latency_ms")
DIRECTIONS = ("maximize", "minimize", "minimize")
SAMPLERS = ("tpe", "nsga2", "random")
CHECKPOINTS = (25, 50, 100)
NSGA2_POPULATION = 20

# latency proxy (assumed single-thread CPU roofline)
_CPU_GFLOP_PER_S = 25.0
_CPU_BYTES_PER_S = 10e9
_LAYER_OVERHEAD_MS = 0.015
# AP surrogate
_AP_CAP, _AP_GFLOPS_FLOOR, _AP_TAU = 0.40, 0.05, 2.0
_SGP_BONUS, _SGP_BEST, _SGP_WIDTH = 0.03, 14.0, 3.0
_PLAIN_PENALTY = 0.03
_NOISE = 0.01


# ---------------------------------------------------------------------------------------------- enumeration
class _Branch(Exception):
    """Raised by _ScriptedTrial at the first undecided parameter: the enumerator branches over its choices."""

    def __init__(self, param: str, choices: list[Any]) -> None:
        super().__init__(param)
        self.param, self.choices = param, choices


class _ScriptedTrial:
    """A TrialLike that answers from a fixed assignment, and stops define-by-run at the first unknown name."""

    def __init__(self, assigned: dict[str, Any]) -> None:
        self.assigned = assigned
        self.params: dict[str, Any] = {}

    def _take(self, name: str, choices: list[Any]) -> Any:
        if name not in self.assigned:
            raise _Branch(name, choices)
        self.params[name] = self.assigned[name]
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._take(name, list(choices))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._take(name, list(range(low, high + 1, step)))

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        if step is None:
            raise ValueError(f"gene parameter '{name}' is continuous: the space cannot be tabulated")
        return self._take(name, [low + i * step for i in range(round((high - low) / step) + 1)])


def enumerate_space(space: SearchSpace) -> list[ArchSpec]:
    """Every distinct architecture of a finite space (conditions respected), deduplicated by arch_id."""
    found: dict[str, ArchSpec] = {}
    pending: list[dict[str, Any]] = [{}]
    while pending:
        assigned = pending.pop()
        trial = _ScriptedTrial(assigned)
        try:
            space.define(trial)
        except _Branch as branch:
            pending.extend({**assigned, branch.param: c} for c in reversed(branch.choices))
            continue
        spec = space.from_params(trial.params)
        found.setdefault(spec.arch_id, spec)
    return list(found.values())


# ---------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class ArchRecord:
    """The tabulated scores of one architecture (ap is the SURROGATE, latency_ms the PROXY)."""

    arch_id: str
    block: str
    neck: str
    width_multiple: float
    gflops: float
    gflops_640: float
    params_fused: int
    gp_max_sgp: float
    gp_n_layers: int
    latency_ms: float
    ap: float

    @property
    def objectives(self) -> tuple[float, float, float]:
        return self.ap, self.gflops, self.latency_ms


def latency_proxy_ms(gflops: float, params_fused: int, n_layers: int) -> float:
    """The analytic latency proxy of the module docstring (ms, batch 1, one CPU thread, fp32)."""
    compute = 1000.0 * gflops / _CPU_GFLOP_PER_S
    weights = 1000.0 * 4.0 * params_fused / _CPU_BYTES_PER_S
    return compute + weights + _LAYER_OVERHEAD_MS * n_layers


def hash_noise(arch_id: str) -> float:
    """A fixed value in [−0.01, 0.01) per arch_id, the same in every process."""
    digest = hashlib.sha256(f"ap-noise:{arch_id}".encode()).digest()
    return _NOISE * (2.0 * int.from_bytes(digest, "big") / 2**256 - 1.0)


def ap_surrogate(spec: ArchSpec, gflops_640: float, gp_max_sgp: float) -> float:
    """The FIXED AP SURROGATE of the module docstring; not a measured AP."""
    capacity = _AP_CAP * (1.0 - math.exp(-max(math.log(gflops_640 / _AP_GFLOPS_FLOOR), 0.0) / _AP_TAU))
    sgp = _SGP_BONUS * math.exp(-0.5 * ((gp_max_sgp - _SGP_BEST) / _SGP_WIDTH) ** 2)
    plain_stages = sum(r == 0.0 for r in spec.mask_ratio) if spec.block in ("residual", "csp") else 0
    plain = _PLAIN_PENALTY * plain_stages / len(spec.mask_ratio)
    return min(max(capacity + sgp - plain + hash_noise(spec.arch_id), 0.0), 1.0)


def score(spec: ArchSpec) -> ArchRecord:
    """Build once; real GFLOPs and gradient-path structure, then the proxy and the surrogate."""
    from gpnas.experiments import stages

    model = stages.build(spec, seed=0)
    size = stages.measure_size(spec, model)
    gp, _, _ = stages.gradient_structure(model)
    n_layers = int(gp["gp_n_layers"])
    return ArchRecord(
        arch_id=spec.arch_id, block=spec.block, neck=spec.neck, width_multiple=spec.width_multiple,
        gflops=size["gflops"], gflops_640=size["gflops_640"], params_fused=int(size["params_fused"]),
        gp_max_sgp=gp["gp_max_sgp"], gp_n_layers=n_layers,
        latency_ms=latency_proxy_ms(size["gflops"], int(size["params_fused"]), n_layers),
        ap=ap_surrogate(spec, size["gflops_640"], gp["gp_max_sgp"]),
    )


class Table:
    """arch_id -> ArchRecord, scored at most once per process; optionally persisted as JSON."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.records: dict[str, ArchRecord] = {}
        if path is not None and path.is_file():
            self.records = {r["arch_id"]: ArchRecord(**r) for r in json.loads(path.read_text())}
        self.scored = 0

    def get(self, spec: ArchSpec) -> ArchRecord:
        record = self.records.get(spec.arch_id)
        if record is None:
            record = self.records[spec.arch_id] = score(spec)
            self.scored += 1
        return record

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps([asdict(r) for r in self.records.values()], indent=1))


def table_reference(values: np.ndarray) -> list[float]:
    """The fixed reference point (module docstring): the table's nadir moved out by 10 % of each range."""
    lo, hi = values.min(axis=0), values.max(axis=0)
    margin = 0.1 * (hi - lo)
    return [float(lo[m] - margin[m]) if d == "maximize" else float(hi[m] + margin[m])
            for m, d in enumerate(DIRECTIONS)]


# ---------------------------------------------------------------------------------------------- studies
def run_study(sampler: str, seed: int, n_trials: int, table: Table) -> tuple[np.ndarray, set[str]]:
    """One Optuna study on the tabulated objective: values ``ndarray[n_trials, 3]`` in trial order, and the
    distinct arch_ids it proposed."""
    overrides = [f"sampler.type={sampler}", f"sampler.seed={seed}", f"sampler.population_size={NSGA2_POPULATION}"]
    cfg = load_config("demo", overrides)
    space = build_space(cfg)

    proposed: set[str] = set()

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        spec = space.suggest(trial)
        proposed.add(spec.arch_id)
        return table.get(spec).objectives

    study = optuna.create_study(directions=list(DIRECTIONS), sampler=make_sampler(cfg))
    study.optimize(objective, n_trials=n_trials)
    return np.asarray([t.values for t in study.trials], dtype=np.float64), proposed


def _mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.5f} ± {std:.5f}"


def print_space_summary(records: list[ArchRecord], ref: list[float], best_hv: float, seconds: float) -> None:
    print("NOTE: 'ap' is a FIXED AP SURROGATE (a documented function of genes and gradient-path structure),")
    print("      NOT measured AP; 'latency_ms' is an analytic proxy, NOT a timing. See the module docstring.")
    print(f"tabulated space: {len(records)} distinct architectures of the demo space, scored in {seconds:.1f} s")
    for name in NAMES:
        col = [getattr(r, name) for r in records]
        print(f"  {name:<11} min {min(col):.4f}  median {statistics.median(col):.4f}  max {max(col):.4f}")
    sgps = sorted({int(r.gp_max_sgp) for r in records})
    print(f"  gp_max_sgp values: {sgps}")
    print(f"reference point (nadir of the whole table + 10 % of each range): "
          f"ap {ref[0]:.4f}, gflops {ref[1]:.4f}, latency_ms {ref[2]:.4f}")
    print(f"hypervolume of the space's true Pareto front (ceiling): {best_hv:.5f}")


def print_results(hvs: dict[str, list[list[float]]], distinct: dict[str, list[int]], checkpoints: list[int],
                  best_hv: float, n_seeds: int) -> None:
    print()
    print(f"hypervolume after k trials, mean ± std over {n_seeds} seeds (% of the ceiling in brackets)")
    header = f"{'sampler':<8}" + "".join(f"{f'HV@{k}':>32}" for k in checkpoints) + f"{'distinct archs':>18}"
    print(header)
    print("-" * len(header))
    for sampler, per_seed in hvs.items():
        cells = ""
        for i, _ in enumerate(checkpoints):
            column = [run[i] for run in per_seed]
            pct = 100.0 * statistics.fmean(column) / best_hv
            cells += f"{_mean_std(column):>24} ({pct:5.1f}%)"
        cells += f"{statistics.fmean(distinct[sampler]):>18.1f}"
        print(f"{sampler:<8}{cells}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Sampler search efficiency on a tabulated (surrogate) objective.")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 50 trials")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5, quick 2)")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default 100, quick 50)")
    parser.add_argument("--cache", type=Path, default=None, help="JSON file to load/save the tabulated scores")
    args = parser.parse_args(argv)
    n_seeds = args.seeds or (2 if args.quick else 5)
    n_trials = args.trials or (50 if args.quick else 100)
    checkpoints = [k for k in CHECKPOINTS if k <= n_trials]
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    start = time.perf_counter()
    table = Table(args.cache)
    specs = enumerate_space(build_space(load_config("demo")))
    records = [table.get(spec) for spec in specs]
    table.save()
    tabulated_s = time.perf_counter() - start
    scored_up_front = table.scored
    values = np.asarray([r.objectives for r in records])
    ref = table_reference(values)
    best_hv = hypervolume(values, DIRECTIONS, ref)
    print_space_summary(records, ref, best_hv, tabulated_s)
    print(f"studies: samplers {', '.join(SAMPLERS)} (nsga2 population {NSGA2_POPULATION}), seeds 0..{n_seeds - 1}, "
          f"{n_trials} trials each")

    hvs: dict[str, list[list[float]]] = {s: [] for s in SAMPLERS}
    distinct: dict[str, list[int]] = {s: [] for s in SAMPLERS}
    study_start = time.perf_counter()
    for sampler in SAMPLERS:
        for seed in range(n_seeds):
            trial_values, proposed = run_study(sampler, seed, n_trials, table)
            history = hypervolume_history(trial_values, DIRECTIONS, ref)
            hvs[sampler].append([history[k - 1] for k in checkpoints])
            distinct[sampler].append(len(proposed))
    print_results(hvs, distinct, checkpoints, best_hv, n_seeds)
    print()
    print(f"architectures proposed outside the enumerated space (scored on demand): {table.scored - scored_up_front}")
    print(f"studies: {time.perf_counter() - study_start:.1f} s; total runtime {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
