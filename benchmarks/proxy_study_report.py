"""The tables of the proxy study (benchmarks/proxy_study.py), computed from its JSONL rows alone.

1. The reference's own reliability: seed-to-seed ρ (whole panel, size-matched subset), split-half ρ for every
   evaluation point of the reference runs (the reference's cost curve), the spread of AP between candidates
   against the seed standard deviation.
2. Every proxy setting × score (final AP, AP50, final val loss, the training-speed estimate of Ru et al.: the
   mean training loss over the last quarter of the run): Spearman ρ and Kendall τ against the reference's seed
   mean (whole panel, size-matched), the proxy's seed-to-seed ρ, partial ρ controlling GFLOPs and params, top-3
   overlap, relative cost; GFLOPs and params as baselines; the issue's targets, pass or fail.
3. When localisation starts (rows that record the loss parts): the first step at which the box term's 10-step mean
   falls below ``TAKE_OFF_BOX`` × its plateau value (the level it reaches by step 60), per setting: how many runs
   took off within the budget, the median take-off step, and how far AP follows it (ρ of AP against -step).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from typing import Any

import numpy as np
from proxy_study import SETTINGS, SIZE_MATCHED
from scipy import stats

TARGETS = {"rho_all": 0.8, "rho_matched": 0.6, "seed_rho": 0.8, "margin": 0.1, "split_half": 0.7}
SCORES = ("ap", "ap50", "val_loss", "tse")  # losses enter negated: higher is better for every score
TAKE_OFF_BOX = 0.9  # the box term below 90 % of its plateau: the model has started to localise


def score(row: dict[str, Any], name: str) -> float | None:
    if name == "tse":
        losses = row.get("train_loss") or []
        tail = losses[-max(1, len(losses) // 4):]
        return -float(np.mean(tail)) if tail else None
    value = row.get(name)
    if value is None:
        return None
    return -float(value) if name == "val_loss" else float(value)


def by_arch(rows: list[dict[str, Any]], setting: str, name: str = "ap") -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["setting"] == setting:
            v = score(r, name)
            if v is not None:
                out[r["arch"]][r["seed"]] = v
    return out


def at_step(rows: list[dict[str, Any]], setting: str, step: int) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["setting"] == setting:
            for point in r["curve"]:
                if int(point["step"]) == step:
                    out[r["arch"]][r["seed"]] = float(point["ap"])
    return out


def rho(a: dict[str, float], b: dict[str, float], names: tuple[str, ...] | None = None) -> tuple[float, int]:
    keys = [k for k in a if k in b and (names is None or k in names)]
    if len(keys) < 4:
        return float("nan"), len(keys)
    return float(stats.spearmanr([a[k] for k in keys], [b[k] for k in keys])[0]), len(keys)


def tau(a: dict[str, float], b: dict[str, float], names: tuple[str, ...] | None = None) -> float:
    keys = [k for k in a if k in b and (names is None or k in names)]
    return float(stats.kendalltau([a[k] for k in keys], [b[k] for k in keys])[0]) if len(keys) >= 4 else float("nan")


def partial_rho(a: dict[str, float], b: dict[str, float], covs: list[dict[str, float]]) -> float:
    """Spearman ρ of a and b with the (ranked) covariates regressed out of both."""
    keys = [k for k in a if k in b and all(k in c for c in covs)]
    if len(keys) < len(covs) + 4:
        return float("nan")
    x = stats.rankdata([a[k] for k in keys])
    y = stats.rankdata([b[k] for k in keys])
    design = np.column_stack([np.ones(len(keys))] + [stats.rankdata([c[k] for k in keys]) for c in covs])

    def resid(v: np.ndarray) -> np.ndarray:
        return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]

    return float(stats.pearsonr(resid(x), resid(y))[0])


def mean_over(per_seed: dict[str, dict[int, float]], seeds: tuple[int, ...] | None = None) -> dict[str, float]:
    out = {}
    for arch, values in per_seed.items():
        chosen = [v for s, v in values.items() if seeds is None or s in seeds]
        if chosen and (seeds is None or len(chosen) == len(seeds)):
            out[arch] = statistics.fmean(chosen)
    return out


def split_half(per_seed: dict[str, dict[int, float]], names: tuple[str, ...] | None = None) -> tuple[float, int]:
    """Mean ρ between the seed means of the two halves, over every split of the seeds all candidates share."""
    seeds = sorted(set.intersection(*(set(v) for v in per_seed.values()))) if per_seed else []
    if len(seeds) < 2:
        return float("nan"), len(seeds)
    half = len(seeds) // 2
    values = []
    for first in itertools.combinations(seeds, half):
        second = tuple(s for s in seeds if s not in first)[:half]
        if first < second:
            values.append(rho(mean_over(per_seed, first), mean_over(per_seed, second), names)[0])
    return float(np.nanmean(values)), len(seeds)


def top_overlap(a: dict[str, float], b: dict[str, float], k: int = 3) -> int:
    keys = [x for x in a if x in b]
    top = set(sorted(keys, key=lambda x: -a[x])[:k])
    return len(top & set(sorted(keys, key=lambda x: -b[x])[:k]))


def relative_cost(setting: str) -> float:
    s = SETTINGS[setting]
    batch = s.get("train", {}).get("batch_size", 16)
    return s["steps"] * batch / (300 * 16) * s.get("img", 1.0) ** 2 * s.get("width", 1.0) ** 2


def measured_cost(rows: list[dict[str, Any]], setting: str, base: str = "p300-box.15") -> float:
    """Training seconds per run of ``setting`` over ``base``'s, on the candidates both have (the same machine's
    runs; niced runs beside other work make it rough): the nominal cost above assumes a step costs its pixels and
    channels squared, which thin convolutions do not."""
    def seconds(key: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for r in rows:
            if r["setting"] == key and r.get("train_seconds"):
                out.setdefault(r["arch"], []).append(float(r["train_seconds"]))
        return out

    mine, theirs = seconds(setting), seconds(base)
    common = [a for a in mine if a in theirs]
    if not common:
        return float("nan")
    return statistics.fmean(statistics.fmean(mine[a]) for a in common) / \
        statistics.fmean(statistics.fmean(theirs[a]) for a in common)


def fmt(x: float) -> str:
    return "  n/a" if x != x else f"{x:+.2f}"


def seeds_needed(per_seed: dict[str, dict[int, float]], names: tuple[str, ...]) -> str:
    """The seeds per half that a split-half rho of 0.7 needs on ``names``, from the variance components: the seed
    variance (the mean of each candidate's variance over its seeds) and the architecture variance (the variance
    of the candidate means less the seed variance's share in them); Spearman-Brown then gives the reliability of
    a k-seed mean, k r / (1 + (k - 1) r), with r the one-seed reliability."""
    groups = [list(v.values()) for k, v in per_seed.items() if k in names]
    noise = statistics.fmean(statistics.variance(g) for g in groups if len(g) >= 2)
    means = [statistics.fmean(g) for g in groups]
    k_h = statistics.harmonic_mean([len(g) for g in groups])
    arch = max(statistics.variance(means) - noise / k_h, 0.0)
    if arch == 0.0:
        return (f"variance components (size-matched): seed sd {noise ** 0.5:.4f}, architecture sd 0 (the candidate "
                "means spread no more than seed noise predicts): no number of seeds reaches split-half rho 0.7")
    r1 = arch / (arch + noise)
    target = TARGETS["split_half"]
    k = math.ceil(target * (1 - r1) / ((1 - target) * r1))
    return (f"variance components (size-matched): seed sd {noise ** 0.5:.4f}, architecture sd {arch ** 0.5:.4f}; "
            f"one-seed reliability {r1:.2f}; split-half rho {target} needs {k} seeds per half (Spearman-Brown)")


def reference_table(rows: list[dict[str, Any]], reference: str) -> list[str]:
    per_seed = by_arch(rows, reference)
    lines = [f"## 1. The reference ({reference}): its own reliability", ""]
    if not per_seed:
        return [*lines, f"no {reference} runs yet", ""]
    seeds = sorted({s for v in per_seed.values() for s in v})
    counts = {s: sum(s in v for v in per_seed.values()) for s in seeds}
    lines.append("runs per seed: " + ", ".join(f"seed {s}: {n}" for s, n in counts.items()))
    matched = tuple(SIZE_MATCHED)
    if len(seeds) >= 2:
        a, b = mean_over(per_seed, (seeds[0],)), mean_over(per_seed, (seeds[1],))
        r_all, n_all = rho(a, b)
        r_m, n_m = rho(a, b, matched)
        lines.append(f"seed {seeds[0]} vs seed {seeds[1]}: rho {fmt(r_all)} (n={n_all}), size-matched {fmt(r_m)} "
                     f"(n={n_m})")
    sds = [statistics.stdev(v.values()) for k, v in per_seed.items() if len(v) >= 2 and k in matched]
    means = [statistics.fmean(v.values()) for k, v in per_seed.items() if k in matched]
    if sds and len(means) >= 2:
        lines.append(f"size-matched: AP spread (sd of candidate means) {statistics.stdev(means):.4f}, range "
                     f"{min(means):.4f}-{max(means):.4f}; mean seed sd {statistics.fmean(sds):.4f}")
        lines.append(seeds_needed(per_seed, matched))
    steps = sorted({int(p["step"]) for r in rows if r["setting"] == reference for p in r["curve"]})
    lines += ["", "cost curve of the reference: split-half rho (seed-mean of one half vs the other) per evaluation",
              "| step | split-half rho, all | size-matched | seeds | mean AP |", "|---|---|---|---|---|"]
    for step in steps:
        ps = at_step(rows, reference, step)
        sh_all, k = split_half(ps)
        sh_m, _ = split_half(ps, matched)
        mean_ap = statistics.fmean(v for d in ps.values() for v in d.values())
        lines.append(f"| {step} | {fmt(sh_all)} | {fmt(sh_m)} | {k} | {mean_ap:.4f} |")
    lines += ["", f"target: split-half rho >= {TARGETS['split_half']} on the size-matched subset", ""]
    return lines


def proxy_table(rows: list[dict[str, Any]], reference: str, sizes: dict[str, dict[str, float]]) -> list[str]:
    ref = mean_over(by_arch(rows, reference))
    matched = tuple(SIZE_MATCHED)
    gflops = {k: v["gflops"] for k, v in sizes.items()}
    params = {k: v["params"] for k, v in sizes.items()}
    lines = ["## 2. Proxies against the reference's seed mean", ""]
    if len(ref) < 4:
        return [*lines, "too few reference candidates yet", ""]
    base = max(rho(gflops, ref)[0], rho(params, ref)[0])
    lines.append(f"baselines: GFLOPs rho {fmt(rho(gflops, ref)[0])} (size-matched {fmt(rho(gflops, ref, matched)[0])}),"
                 f" params rho {fmt(rho(params, ref)[0])} (size-matched {fmt(rho(params, ref, matched)[0])})")
    lines += ["", "cost x: nominal (steps x batch x pixels x width^2 over one default run) x runs; measured x: "
              "training seconds per run over p300-box.15's (the default) on the same candidates, x runs", "",
              "| setting | cost x | measured x | score | seeds | rho all | tau all | rho matched | seed-to-seed rho | "
              "partial rho | top-3 | targets |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for setting in [s for s in SETTINGS if s != reference and not s.startswith(("ref", "x2", "smoke"))]:
        for name in SCORES:
            per_seed = by_arch(rows, setting, name)
            if len(per_seed) < 4:
                continue
            seeds = sorted({s for v in per_seed.values() for s in v})
            seed_r = rho(mean_over(per_seed, (seeds[0],)), mean_over(per_seed, (seeds[1],)))[0] \
                if len(seeds) >= 2 else float("nan")
            # one seed (what a search trains: each figure the mean over the seeds of that seed's figure, i.e. what
            # a one-seed search can expect) and, where there are more, the mean of the seeds' scores (more runs,
            # more cost)
            variants = [("one seed", [(s,) for s in seeds])]
            if len(seeds) >= 2:
                variants.append((f"mean of {len(seeds)}", [tuple(seeds)]))
            for label, groups in variants:
                stats_ = []
                for used in groups:
                    proxy = mean_over(per_seed, used)
                    r_all, n = rho(proxy, ref)
                    stats_.append((r_all, tau(proxy, ref), rho(proxy, ref, matched)[0],
                                   partial_rho(proxy, ref, [gflops, params]), top_overlap(proxy, ref), n))
                r_all, t_all, r_m, r_p, top, n = (float(np.mean([x[i] for x in stats_])) for i in range(6))
                ok = (r_all >= TARGETS["rho_all"] and r_m >= TARGETS["rho_matched"]
                      and seed_r >= TARGETS["seed_rho"] and r_all >= base + TARGETS["margin"])
                lines.append(f"| {setting} | {relative_cost(setting) * len(groups[0]):.2f} | "
                             f"{measured_cost(rows, setting) * len(groups[0]):.2f} | {name} | {label} "
                             f"(n={n:.0f}) | {fmt(r_all)} | {fmt(t_all)} | {fmt(r_m)} | {fmt(seed_r)} | {fmt(r_p)} | "
                             f"{top:.1f}/3 | {'PASS' if ok else 'fail'} |")
    lines += ["", f"targets: rho >= {TARGETS['rho_all']} (all), >= {TARGETS['rho_matched']} (size-matched), "
              f"seed-to-seed >= {TARGETS['seed_rho']}, rho >= {base + TARGETS['margin']:.2f} (best of GFLOPs/params "
              f"+ {TARGETS['margin']})", ""]
    return lines


def self_table(rows: list[dict[str, Any]], sizes: dict[str, dict[str, float]]) -> list[str]:
    """Every setting on its own: seed-to-seed rho of AP, and how far its AP only follows size."""
    gflops = {k: v["gflops"] for k, v in sizes.items()}
    lines = ["## 0. Each setting on its own (AP)", "",
             "| setting | runs | seeds | mean AP | seed-to-seed rho all | matched | rho(AP, GFLOPs) | mean s/run |",
             "|---|---|---|---|---|---|---|---|"]
    for setting in SETTINGS:
        chosen = [r for r in rows if r["setting"] == setting]
        if not chosen:
            continue
        per_seed = by_arch(rows, setting)
        seeds = sorted({s for v in per_seed.values() for s in v})
        pair = (mean_over(per_seed, (seeds[0],)), mean_over(per_seed, (seeds[1],))) if len(seeds) >= 2 else None
        seed_all = rho(*pair)[0] if pair else float("nan")
        seed_m = rho(*pair, tuple(SIZE_MATCHED))[0] if pair else float("nan")
        lines.append(f"| {setting} | {len(chosen)} | {len(seeds)} | {statistics.fmean(r['ap'] for r in chosen):.4f} | "
                     f"{fmt(seed_all)} | {fmt(seed_m)} | {fmt(rho(mean_over(per_seed), gflops)[0])} | "
                     f"{statistics.fmean(r['wall_seconds'] for r in chosen):.0f} |")
    return [*lines, ""]


def take_off_step(row: dict[str, Any]) -> int | None:
    """The first step whose 10-step box-loss window is below TAKE_OFF_BOX × the plateau (the window that ends at
    step 60); None when the run never got there, or when the row has no loss parts (runs before 2026-12-07)."""
    box = (row.get("train_loss_parts") or {}).get("box") or []
    window = int(row.get("loss_window", 10))
    first = 60 // window - 1
    if len(box) <= first:
        return None
    plateau = box[first]
    return next(((i + 1) * window for i, b in enumerate(box) if i > first and b < TAKE_OFF_BOX * plateau), None)


def take_off_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## 3. When localisation starts (runs with loss parts)", "",
             f"take-off: the box term's 10-step mean below {TAKE_OFF_BOX:g} x its value at step 60", "",
             "| setting | runs with parts | took off | median take-off step | rho(AP, -take-off step) |",
             "|---|---|---|---|---|"]
    for setting in SETTINGS:
        chosen = [r for r in rows if r["setting"] == setting and r.get("train_loss_parts")]
        if not chosen:
            continue
        steps = [(take_off_step(r), r["ap"]) for r in chosen]
        off = [(st, ap) for st, ap in steps if st is not None]
        median = f"{statistics.median(st for st, _ in off):.0f}" if off else "n/a"
        # a run that never took off ranks after every run that did
        order = [-(st if st is not None else 10**9) for st, _ in steps]
        r_ap = stats.spearmanr(order, [ap for _, ap in steps]).statistic if len(steps) > 2 else float("nan")
        lines.append(f"| {setting} | {len(chosen)} | {len(off)} | {median} | {fmt(r_ap)} |")
    return [*lines, ""]


def report(rows: list[dict[str, Any]], *, reference: str, sizes: dict[str, dict[str, float]]) -> str:
    machines = sorted({f"{r['machine']} ({r['device']})" for r in rows})
    head = [f"# Proxy study: {len(rows)} runs", "machines: " + "; ".join(machines), ""]
    return "\n".join(head + self_table(rows, sizes) + reference_table(rows, reference)
                     + proxy_table(rows, reference, sizes) + take_off_table(rows))
