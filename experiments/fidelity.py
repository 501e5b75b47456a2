"""Library side of `gpnas fidelity`: re-train candidates at a longer budget and with more seeds, and measure how
far the proxy ranking agrees (results/fidelity_report.py holds the statistics).

The jobs (candidate × ``proxy``/``reference`` budget × seed) are planned and run resumably by
:mod:`gpnas.experiments.retrain`, which `gpnas refine` shares.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpnas.errors import ConfigError
from gpnas.experiments.config import SearchConfig, budget_label, load_config
from gpnas.experiments.retrain import FidelityPlan, run_plan, run_row
from gpnas.results.folder import SearchFolder
from gpnas.search_space.spec import ArchSpec


# ------------------------------------------------------------------------------------------------ panels
def nano_panel() -> dict[str, ArchSpec]:
    """Twelve nano candidates spanning the families: plain and PRN residuals, the four CSP fusions and two split
    ratios, ELAN stack counts for backbone and neck, and two widths."""
    from gpnas.search_space.presets import get_preset

    v3, csp, elan = get_preset("yolor-v3-nano"), get_preset("yolor-csp-nano"), get_preset("yolor-elan-nano")
    half = 0.0625
    return {
        "v3": v3,
        "prn-0.5": v3.replace(mask_ratio=0.5, name=None),
        "csp-both": csp,
        "csp-first": csp.replace(fusion="first", name=None),
        "csp-last": csp.replace(fusion="last", name=None),
        "csp-none": csp.replace(fusion="none", name=None),
        "csp-split-0.25": csp.replace(split_ratio=0.25, name=None),
        "elan-2-1": elan,
        "elan-1-1": elan.replace(backbone_stacks=1, neck_stacks=1, name=None),
        "elan-3-2": elan.replace(backbone_stacks=3, neck_stacks=2, name=None),
        "csp-both-w/2": csp.replace(width_multiple=half, name=None),
        "elan-2-1-w/2": elan.replace(width_multiple=half, name=None),
    }


#: The proxy study's panel (``experiments/panels/study.json``): 20 candidates of the demo space, 12 size-matched.
STUDY_PANEL_FILE = Path(__file__).resolve().parent / "panels" / "study.json"


def study_panel() -> dict[str, ArchSpec]:
    """The proxy study's twenty demo-space candidates (12 within ±15 % of their median GFLOPs over the block
    families, CSP fusions, split and mask ratios and ELAN stack counts; 8 that spread size), built from their
    genes by the space of the panel's config (the demo's)."""
    from gpnas.experiments.runner import build_space

    doc = json.loads(STUDY_PANEL_FILE.read_text())
    space = build_space(load_config(doc["config"]))
    return {name: space.from_params({**doc["defaults"], **genes})
            for name, genes in doc["candidates"].items()}


PANELS: dict[str, Callable[[], dict[str, ArchSpec]]] = {"study": study_panel, "nano": nano_panel}


def panel(name: str) -> dict[str, ArchSpec]:
    if name not in PANELS:
        raise ConfigError(f"--panel {name!r}: no such panel; valid panels: {', '.join(PANELS)}")
    return PANELS[name]()


def scaled(specs: dict[str, ArchSpec], *, width: float = 1.0, img: float = 1.0) -> dict[str, ArchSpec]:
    """The same candidates at ``width`` × their width and ``img`` × their input size (the cross-scale check);
    anchors grow with the input, since the objects do."""
    def grow(s: ArchSpec) -> ArchSpec:
        anchors = [[(w * img, h * img) for w, h in level] for level in s.anchors]
        return s.replace(width_multiple=s.width_multiple * width, img_size=round(s.img_size * img),
                         anchors=anchors, name=None)

    return {label: grow(s) for label, s in specs.items()}


def plan_from_search(folder: SearchFolder, cfg: SearchConfig, *, max_candidates: int = 8, factor: float = 4.0,
                     seeds: tuple[int, ...] = (), reference_seeds: tuple[int, ...] = (0,)) -> FidelityPlan:
    """The search's Pareto front plus a spread sample of its other complete trials (evenly spaced in proxy AP),
    ``max_candidates`` in all. The search's own results stand for the proxy runs at ``train.seed``."""
    from gpnas.results.front import competing, front_summary
    from gpnas.results.study import load_study, records

    recs = records(load_study(folder, cfg.name))
    done: dict[int, Any] = {}
    for r in competing(recs, cfg.objectives):  # a repeated arch_id (a reused result) is one candidate
        if all(r.arch_id != d.arch_id for d in done.values()):
            done[r.number] = r
    if len(done) < 2:
        raise ConfigError(f"search '{cfg.name}' has {len(done)} complete trial(s); fidelity needs at least 2 "
                          "(finish it with `gpnas resume`)")
    front = front_summary(recs, cfg.objectives, cfg.constraints.model_dump()).front
    chosen = [n for n in front if n in done][:max_candidates]
    rest = sorted((n for n in done if n not in chosen), key=lambda n: done[n].metric("ap"))
    room = max(0, max_candidates - len(chosen))
    if rest and room:
        picks = {round(i * (len(rest) - 1) / max(1, room - 1)) for i in range(room)} if room > 1 else {len(rest) // 2}
        chosen += [rest[i] for i in sorted(picks)]
    candidates, recorded = {}, []
    for n in chosen:
        rec = done[n]
        label = f"trial-{n}"
        candidates[label] = ArchSpec.from_dict(rec.result.spec, source=f"trial {n}")  # type: ignore[union-attr]
        recorded.append({**run_row(label, "proxy", cfg.train.seed, rec.result), "recorded_from_trial": n})
    seeds = seeds or (cfg.train.seed, cfg.train.seed + 1)
    if seeds[0] != cfg.train.seed:
        seeds = (cfg.train.seed, *[s for s in seeds if s != cfg.train.seed])
    return FidelityPlan(candidates, cfg, factor, seeds, reference_seeds, source=f"search {cfg.name}",
                        recorded=tuple(recorded))


def plan_from_panel(name: str, *, config: str = "demo", overrides: tuple[str, ...] = (), factor: float = 4.0,
                    seeds: tuple[int, ...] = (0, 1), reference_seeds: tuple[int, ...] = (0,),
                    candidates: dict[str, ArchSpec] | None = None) -> FidelityPlan:
    """A named panel (or the given candidates) trained under ``config``'s data and ``train`` section."""
    cfg = load_config(config, list(overrides))
    if seeds[0] != cfg.train.seed:
        cfg = load_config(config, [*overrides, f"train.seed={seeds[0]}"])
    return FidelityPlan(candidates or panel(name), cfg, factor, tuple(seeds), tuple(reference_seeds),
                        source=f"panel {name}")


# ------------------------------------------------------------------------------------------------ entry
@dataclass(frozen=True)
class _Target:
    """What a fidelity run measures and where it goes: its plan, its folder, the search folder (None for a
    panel), the MLflow store (None: the folder's own) and experiment."""

    plan: FidelityPlan
    out: Path
    search_folder: SearchFolder | None
    tracking_uri: str | None
    experiment: str


def _search_target(search: str, root: str, overrides: tuple[str, ...], factor: float, n_seeds: int,
                   n_reference_seeds: int, max_candidates: int, out: Path | None) -> _Target:
    """A finished search's front plus a spread sample, measured in its ``fidelity/`` folder by default."""
    from gpnas.experiments.search_api import open_search

    if overrides:
        raise ConfigError(f"overrides {list(overrides)} only apply with --panel; a search's fidelity uses the "
                          "search's own config")
    folder, cfg = open_search(search, root)
    seed0 = cfg.train.seed
    plan = plan_from_search(folder, cfg, max_candidates=max_candidates, factor=factor,
                            seeds=tuple(range(seed0, seed0 + n_seeds)), reference_seeds=tuple(range(n_reference_seeds)))
    return _Target(plan, (out or folder.fidelity).resolve(), folder, cfg.storage.tracking_uri, plan.cfg.name)


def _panel_target(panel_name: str, root: str, config: str, overrides: tuple[str, ...], factor: float,
                  n_seeds: int, n_reference_seeds: int, out: Path | None) -> _Target:
    """A named panel, measured in ``<root>/fidelity-<panel>`` by default (its own MLflow store)."""
    plan = plan_from_panel(panel_name, config=config, overrides=overrides, factor=factor,
                           seeds=tuple(range(n_seeds)), reference_seeds=tuple(range(n_reference_seeds)))
    return _Target(plan, (out or Path(root) / f"fidelity-{panel_name}").resolve(), None, None,
                   f"fidelity-{panel_name}")


def _default_workers(plan: FidelityPlan) -> int:
    """One job at a time on a GPU; on CPU as many as the search's concurrency and the cores allow."""
    if plan.cfg.train.device.startswith("cuda"):
        return 1
    return max(1, min(plan.cfg.budget.max_concurrent, os.cpu_count() or 1))


def _write_report(report: dict[str, Any], plan: FidelityPlan, out: Path) -> tuple[dict[str, Any], list[Path]]:
    """``fidelity.json``, ``fidelity.md`` and ``scatter.png`` in ``out``; -> (the settings, the files)."""
    from gpnas.results.fidelity_report import markdown, scatter_png

    settings = {"source": plan.source, "proxy": budget_label(**plan.budget("proxy")),
                "reference": budget_label(**plan.budget("reference")), "seeds": list(plan.seeds),
                "reference_seeds": list(plan.reference_seeds)}
    (out / "fidelity.json").write_text(json.dumps({"settings": settings, **report}, indent=2, default=str))
    (out / "fidelity.md").write_text(markdown(report, settings))
    return settings, [out / "fidelity.json", out / "fidelity.md", scatter_png(report, out / "scatter.png")]


def _log_to_mlflow(target: _Target, report: dict[str, Any], artifacts: list[Path], settings: dict[str, Any]) -> str:
    """The fidelity run in MLflow, under the search's run when there is one; -> its run id."""
    from gpnas.results.tracking import MlflowTracker

    home = target.search_folder or SearchFolder(target.out)  # a panel's own folder holds its MLflow store
    tracker = MlflowTracker.open(target.tracking_uri or home.mlflow_uri, home)
    search_folder = target.search_folder.path if target.search_folder else None
    return tracker.log_fidelity(target.experiment, target.out, report, artifacts, settings,
                                search_folder=search_folder)


def run_fidelity(
    search: str | None = None,
    *,
    panel_name: str | None = None,
    root: str = "runs",
    config: str = "demo",
    overrides: tuple[str, ...] = (),
    factor: float = 4.0,
    n_seeds: int = 2,
    n_reference_seeds: int = 1,
    max_candidates: int = 8,
    workers: int | None = None,
    out: Path | None = None,
    mlflow: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`gpnas fidelity`: from a finished search (its front plus a spread sample) or a named panel; trains what is
    missing, then writes ``fidelity.json``, ``fidelity.md`` and ``scatter.png`` to ``out`` and logs them to MLflow
    (under the search's run). Returns the report."""
    from gpnas.results.fidelity_report import analyze

    if (search is None) == (panel_name is None):
        raise ConfigError("give one of: a search (its name or folder), or --panel NAME (e.g. --panel nano)")
    if n_seeds < 1 or n_reference_seeds < 1:
        raise ConfigError(f"--seeds {n_seeds} / --reference-seeds {n_reference_seeds}: give at least 1 of each")
    if search is not None:
        target = _search_target(search, root, overrides, factor, n_seeds, n_reference_seeds, max_candidates, out)
    else:
        assert panel_name is not None
        target = _panel_target(panel_name, root, config, overrides, factor, n_seeds, n_reference_seeds, out)
    plan = target.plan
    if plan.cfg.train.seconds is not None:
        say("note: this budget includes train.seconds, so proxy AP depends on the machine's load; the rank "
            "statistics below move with it")
    rows = run_plan(plan, target.out, workers=_default_workers(plan) if workers is None else workers, say=say)
    report = analyze(rows, plan.seeds)
    settings, artifacts = _write_report(report, plan, target.out)
    if mlflow:
        report["mlflow_run_id"] = _log_to_mlflow(target, report, artifacts, settings)
    report["folder"] = str(target.out)
    report["settings"] = settings
    return report
