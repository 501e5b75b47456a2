"""Retraining candidates at chosen budgets and seeds, resumably: the jobs of `gpnas fidelity` and `gpnas refine`.

Each training run is one *job* (candidate × ``proxy``/``reference`` budget × seed), trained by the same
:func:`evaluate_candidate` a search uses, so a proxy job reproduces the search's AP exactly (work budgets are
deterministic). Finished jobs are appended to ``runs.jsonl`` in the output folder as they end; a killed run resumes
from it, and the plan (``plan.json``) must match for a resume to use it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpnas.errors import ConfigError
from gpnas.experiments.config import SearchConfig, budget_label
from gpnas.objectives.definitions import OBJECTIVES
from gpnas.search_space.spec import ArchSpec

__all__ = ["PLAN_FILE", "RUNS_FILE", "FidelityPlan", "key", "load_rows", "run_job", "run_plan", "run_row"]

PLAN_FILE, RUNS_FILE = "plan.json", "runs.jsonl"


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class FidelityPlan:
    """What to train: candidates, the proxy budget (the config's ``train``), ``factor`` × it as the reference,
    ``seeds`` at the proxy budget (the first is the config's ``train.seed``) and ``reference_seeds``."""

    candidates: dict[str, ArchSpec]
    cfg: SearchConfig
    factor: float = 4.0
    seeds: tuple[int, ...] = (0, 1)
    reference_seeds: tuple[int, ...] = (0,)
    source: str = "panel"
    recorded: tuple[dict[str, Any], ...] = ()  # proxy runs a search already made (seed = train.seed)
    min_candidates: int = 2  # a rank statistic needs two; a refinement of the front may hold one

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ConfigError(f"--factor {self.factor}: the reference budget must be at least the proxy's (>= 1)")
        if not self.seeds:
            raise ConfigError("fidelity needs at least one proxy seed")
        if len(self.candidates) < self.min_candidates:
            raise ConfigError(f"fidelity needs at least {self.min_candidates} candidates, got "
                              f"{len(self.candidates)}")

    def jobs(self) -> list[dict[str, Any]]:
        """Every run, candidate by candidate (so a stopped run leaves whole candidates behind)."""
        out = []
        for label in self.candidates:
            out += [{"label": label, "kind": "proxy", "seed": s} for s in self.seeds]
            out += [{"label": label, "kind": "reference", "seed": s} for s in self.reference_seeds]
        return out

    def budget(self, kind: str) -> dict[str, float | None]:
        """The training budget of a ``proxy`` or ``reference`` run: the config's, or ``factor`` × it."""
        t = self.cfg.train
        scale = self.factor if kind == "reference" else 1.0

        def grow(value: float | None) -> float | None:
            return None if value is None else value * scale

        steps, epochs = grow(t.steps), grow(t.epochs)
        return {"steps": None if steps is None else round(steps),
                "epochs": None if epochs is None else round(epochs),
                "seconds": grow(t.seconds), "max_seconds": grow(t.max_seconds)}

    def job_config(self, job: dict[str, Any]) -> SearchConfig:
        """The search config a job trains under: the proxy's or the reference budget, the job's seed, no latency
        and no measured gradients (they do not change with the budget). Threads stay the search's (train.threads
        or budget.cpu): results are bit-identical only for the same thread count."""
        data = self.cfg.model_dump(mode="json")
        data["train"].update({**self.budget(job["kind"]), "seed": job["seed"], "repeats": 1})  # a job: one seed
        data["latency"]["enabled"] = False
        data["objectives"] = [o for o in data["objectives"] if OBJECTIVES[o].measured_by != "latency"] or ["ap"]
        data["gradient_path"]["measured"] = False
        return SearchConfig(**data)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "factor": self.factor, "seeds": list(self.seeds),
                "reference_seeds": list(self.reference_seeds), "proxy_budget": self.budget("proxy"),
                "reference_budget": self.budget("reference"), "data": self.cfg.data.model_dump(mode="json"),
                "candidates": {k: s.arch_id for k, s in self.candidates.items()}}


def key(job: dict[str, Any]) -> str:
    return f"{job['label']}|{job['kind']}|{job['seed']}"


# ------------------------------------------------------------------------------------------------ running
def run_row(label: str, kind: str, seed: int, result: Any) -> dict[str, Any]:
    m = result.metrics
    aps = [h["ap"] for h in result.history if "ap" in h]
    return {"label": label, "kind": kind, "seed": seed, "arch_id": result.arch_id, "state": result.state,
            "reason": result.reason, "ap": m.get("ap", math.nan), "ap50": m.get("ap50", math.nan),
            "val_loss": m.get("val_loss", math.nan), "ap_last2": sum(aps[-2:]) / len(aps[-2:]) if aps else math.nan,
            "history_ap": aps,
            "steps": m.get("steps"), "train_seconds": m.get("train_seconds"),
            "evaluate_seconds": result.evaluate_seconds,
            **{k: v for k, v in m.items() if k in ("gflops", "params") or k.startswith("gp_")}}


def _die_with_parent() -> None:
    """Pool workers end when the driver is killed (Linux), so a SIGKILLed fidelity run leaves no trainer behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_job(job: dict[str, Any], spec_json: str, cfg_json: str) -> dict[str, Any]:
    """Train one job (in a pool worker or in-process) and return its row."""
    from gpnas.experiments.evaluate import evaluate_candidate

    cfg = SearchConfig(**json.loads(cfg_json))
    result = evaluate_candidate(ArchSpec(**json.loads(spec_json)), cfg)
    return run_row(job["label"], job["kind"], job["seed"], result)


def load_rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / RUNS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write: that job runs again
            continue
    return rows


def _check_plan(plan: FidelityPlan, folder: Path) -> None:
    path = folder / PLAN_FILE
    current = plan.to_dict()
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(current)):
            diff = [k for k in current if saved.get(k) != json.loads(json.dumps(current[k]))]
            raise ConfigError(f"{path}: this folder holds a fidelity run with other settings ({', '.join(diff)}); "
                              "give another --out folder, or delete it to start over")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2))


def run_plan(plan: FidelityPlan, folder: Path, *, workers: int = 1, say: Callable[[str], None] = print
             ) -> list[dict[str, Any]]:
    """Train every job of ``plan`` not yet in ``folder`` (``workers`` at once, one process each); -> all rows."""
    _check_plan(plan, folder)
    rows = {key(r): r for r in load_rows(folder)}
    with (folder / RUNS_FILE).open("a") as out:
        for rec in plan.recorded:
            if key(rec) not in rows:
                rows[key(rec)] = rec
                out.write(json.dumps(rec) + "\n")
    todo = [j for j in plan.jobs() if key(j) not in rows]
    total = len(plan.jobs())
    say(f"fidelity ({plan.source}): {len(plan.candidates)} candidates, proxy {budget_label(**plan.budget('proxy'))} × "
        f"seeds {list(plan.seeds)}, reference {budget_label(**plan.budget('reference'))} × seeds "
        f"{list(plan.reference_seeds)}; {total - len(todo)}/{total} runs already done, {len(todo)} to train in "
        f"{folder} ({workers} at once)")
    if not todo:
        return list(rows.values())
    args = [(j, plan.candidates[j["label"]].model_dump_json(), plan.job_config(j).model_dump_json()) for j in todo]
    start, finished = time.time(), 0

    def record(row: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        rows[key(row)] = row
        with (folder / RUNS_FILE).open("a") as out:
            out.write(json.dumps(row, default=str) + "\n")
            out.flush()
            os.fsync(out.fileno())
        elapsed = time.time() - start
        eta = elapsed / finished * (len(todo) - finished)
        what = f"AP {row['ap']:.4f}" if row["state"] == "complete" else f"{row['state']}: {row['reason']}"
        say(f"  [{total - len(todo) + finished}/{total}] {row['label']} {row['kind']} seed {row['seed']}: {what} "
            f"({row['evaluate_seconds']:.0f} s) · {elapsed / 60:.1f} min elapsed · ETA {eta / 60:.1f} min")

    if workers <= 1:
        for a in args:
            record(run_job(*a))
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent) as pool:
            pending = {pool.submit(run_job, *a) for a in args}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    record(fut.result())
    return list(rows.values())
