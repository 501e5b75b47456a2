"""Export chosen architectures of a search: one spec YAML each (it rebuilds exactly the measured model), a
manifest with their metrics and provenance, and, when asked, the proxy-trained weights."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from gpnas.errors import ConfigError
from gpnas.objectives.definitions import metric_names
from gpnas.results import study as st
from gpnas.results.folder import SPEC_FILE, weights_name
from gpnas.results.front import FrontSummary, competing, front_summary
from gpnas.results.records import SearchInfo, TrialRecord

__all__ = ["PICKS", "check_out", "export", "pareto_rows", "pick_records"]

PICKS = ("pareto", "knee", "best-ap", "fastest")
_CONDITION = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)\s*$")


def _row(rec: TrialRecord) -> dict[str, Any]:
    """A trial as ``gpnas pareto`` and the manifest show it: every registered figure (None: not measured, such
    as latency in a search without it; AP NaN), AP50, the run and its refinement."""
    m = rec.result.metrics if rec.result else {}
    refined = rec.result.refined if rec.result else None
    figures = {name: m.get(name) for name in metric_names()}
    row = {"trial_id": rec.number, "arch_id": rec.arch_id, **figures, "ap": m.get("ap", math.nan),
           "ap50": m.get("ap50", math.nan), "run_id": rec.mlflow_run_id, "refined": bool(refined)}
    if refined:  # AP is the mean over the refinement seeds; the search's own proxy AP is kept
        row.update(ap_sd=refined["ap_sd"], ap_seeds=refined["ap"], seeds=refined["seeds"],
                   ap_proxy=m.get("ap_proxy", math.nan), refine_budget=refined["budget"])
    return row


def _front(recs: list[TrialRecord], search: SearchInfo) -> FrontSummary:
    return front_summary(recs, search.objectives, search.constraints)


def pareto_rows(search: SearchInfo) -> list[dict[str, Any]]:
    """The current front as rows (trial_id, arch_id, every registered figure, ap50, run_id), best AP first."""
    recs = st.records(st.load_study(search.folder, search.name))
    front = set(_front(recs, search).front)
    rows = [_row(r) for r in recs if r.number in front]
    return sorted(rows, key=lambda r: -r["ap"])


def pick_records(recs: list[TrialRecord], search: SearchInfo, pick: str) -> list[TrialRecord]:
    """``pareto`` (the front), ``knee``, ``best-ap``, ``fastest`` (lowest latency, else GFLOPs), or a condition
    such as ``latency_ms<5`` / ``gflops<=0.1`` / ``ap>0.3``, which keeps the front members that satisfy it."""
    done = competing(recs, search.objectives)
    if not done:
        raise ConfigError("this search has no complete trial to export yet")
    summary = _front(recs, search)
    front = [r for r in done if r.number in summary.front]
    if pick == "pareto":
        return front
    if pick == "knee":
        return [r for r in done if r.number == summary.knee]
    if pick == "best-ap":
        return [max(done, key=lambda r: r.metric("ap"))]
    if pick == "fastest":
        key = "latency_ms" if all(math.isfinite(r.metric("latency_ms")) for r in done) else "gflops"
        return [min(done, key=lambda r: r.metric(key))]
    match = _CONDITION.match(pick)
    if not match:
        raise ConfigError(f"--pick {pick!r}: use one of {', '.join(PICKS)} or a condition like 'latency_ms<5'")
    metric, op, raw = match.groups()
    if not any(metric in (r.result.metrics if r.result else {}) for r in done):
        raise ConfigError(f"--pick {pick!r}: no trial has the metric '{metric}' (try {', '.join(metric_names())})")
    limit = float(raw)
    ops = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "==": float.__eq__}
    chosen = [r for r in front if ops[op](r.metric(metric), limit)]
    if not chosen:
        raise ConfigError(f"--pick {pick!r}: no Pareto trial satisfies it (front: "
                          f"{[round(r.metric(metric), 4) for r in front]})")
    return chosen


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("gradpath-nas", "torch", "optuna", "ray", "mlflow", "fvcore", "pycocotools"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _writable_base(out: Path) -> Path:
    """The folder that has to be written to make or fill ``out``: ``out`` itself or its nearest existing parent."""
    path = out.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        where = "is a file" if path == out.absolute() else f"cannot be made: {path} is a file"
        raise ConfigError(f"export folder {out} {where}, not a folder; give a folder path for the spec YAMLs and "
                          "manifest.json")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"export folder {out}: {path} cannot be written (permission denied); give a folder "
                          "you can write to")
    return path


def check_out(out: Path, *, force: bool = False) -> None:
    """Refuse an export folder before anything is read or written: ``out`` is a file, cannot be made or written,
    or (unless ``force``) already holds files, which the export could overwrite or mix with its own."""
    try:
        _writable_base(out)
        held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as err:
        raise ConfigError(f"export folder {out}: cannot be used ({err.strerror or err})") from None
    if held and not force:
        raise ConfigError(f"export folder {out} already holds {len(held)} entries ({_listing(held)}); give a new "
                          "or empty folder, or --force (force=True) to write into it and overwrite the files "
                          "the export writes")


def _tracking_uri(search: SearchInfo) -> str | None:
    """Where the search's runs are: its tracking server, or the folder's own store when it has one."""
    if search.tracking_uri:
        return search.tracking_uri
    return search.folder.mlflow_uri if search.folder.mlflow_db.is_file() else None


def _from_mlflow(search: SearchInfo, runs: list[str], artifact: str, dst: Path) -> Path | None:
    """The first of ``runs`` that holds ``artifact``, downloaded to ``dst`` (this machine's cache); None if none."""
    from gpnas.results.trial_artifacts import fetch_artifact

    uri = _tracking_uri(search)
    for run_id in runs if uri else []:
        got = fetch_artifact(uri, run_id, artifact, dst)  # type: ignore[arg-type]
        if got is not None:
            return got
    return None


def _sources(search: SearchInfo, recs: list[TrialRecord], rec: TrialRecord, weights: bool
             ) -> tuple[Path, Path | None]:
    """The trial's spec (and weights) file, checked before anything is written. A file missing here (a
    trial run on another machine of a cluster, or a moved folder) is fetched from the trial's MLflow run."""
    from gpnas.results.trial_artifacts import weights_artifact

    spec_src = search.folder.trial_spec(rec.number)
    runs = [rec.mlflow_run_id] if rec.mlflow_run_id else []
    if not spec_src.is_file() and _from_mlflow(search, runs, SPEC_FILE, spec_src) is None:
        raise ConfigError(f"{spec_src} is missing and no MLflow run of trial {rec.number} holds {SPEC_FILE}; the "
                          "search folder is incomplete (was it moved? `gpnas sync` restores it from MLflow)")
    if not weights:
        return spec_src, None
    result = rec.result
    saved = [Path(result.weights_path)] if result and result.weights_path else []
    for src in [*saved, search.folder.weights_file(rec.arch_id or "")]:
        if src.is_file():
            return spec_src, src
    # the same architecture trained once: any trial of it may hold the weights (a reused trial holds none)
    runs += [r.mlflow_run_id for r in recs if r.arch_id == rec.arch_id and r.mlflow_run_id and r is not rec]
    fetched = _from_mlflow(search, runs, weights_artifact(rec.arch_id or ""),
                           search.folder.weights_file(rec.arch_id or ""))
    if fetched is None:
        where = f"at {_tracking_uri(search)}" if _tracking_uri(search) else "(this search has no MLflow store)"
        raise ConfigError(f"trial {rec.number} ({rec.arch_id}) has no saved weights here "
                          f"({saved[0] if saved else search.folder.weights_file(rec.arch_id or '')}) nor in its "
                          f"MLflow runs {where}; export without --weights, or re-run the trial")
    return spec_src, fetched


def _entry(rec: TrialRecord, sources: tuple[Path, Path | None], out: Path) -> dict[str, Any]:
    """Copy one trial's spec (and weights) into ``out``; its manifest entry."""
    spec_src, weights_src = sources
    spec_path = out / f"{rec.arch_id}.yaml"
    shutil.copyfile(spec_src, spec_path)
    result = rec.result
    entry: dict[str, Any] = {"spec": spec_path.name, **_row(rec), "metrics": result.metrics if result else {},
                             "latency_protocol": (result.latency or {}).get("protocol") if result else None}
    if weights_src is not None:
        dst = out / weights_name(rec.arch_id or "")
        shutil.copyfile(weights_src, dst)
        entry["weights"] = dst.name
    return entry


def _graphs(entry: dict[str, Any], out: Path, formats: tuple[str, ...], deploy: Any,
            protocol: dict[str, Any] | None) -> None:
    """Add the deployable graphs of one exported architecture (fused, verified by a runtime) to its entry."""
    import torch

    from gpnas.results.deploy import export_model
    from gpnas.search_space.builder import build_detector
    from gpnas.search_space.spec import load_spec

    spec = load_spec(out / entry["spec"])
    model = build_detector(spec)
    if entry.get("weights"):
        model.load_state_dict(torch.load(out / entry["weights"], weights_only=True), strict=True)
    entry["deploy"] = {"weights": "proxy-trained" if entry.get("weights") else "initial (untrained: export with "
                       "--weights for the trained ones)",
                       **{fmt: export_model(spec, model, fmt, out, deploy) for fmt in formats if fmt != "spec"}}
    if deploy.latency and "onnx" in entry["deploy"]:
        from gpnas.results.deploy import compare_latency

        entry["deploy"]["latency"] = compare_latency(spec, model, out / entry["deploy"]["onnx"]["file"], deploy,
                                                     protocol)


def export(search: SearchInfo, pick: str, out: Path, *, weights: bool = False, force: bool = False,
           formats: tuple[str, ...] = ("spec",), deploy: Any = None) -> dict[str, Any]:
    """Write ``<out>/<arch_id>.yaml`` per chosen trial, ``manifest.json``, and ``<arch_id>.pt`` if asked; with
    ``formats`` ``onnx`` / ``torchscript`` also the fused graph of each (``deploy``: a
    :class:`gpnas.results.deploy.DeployOptions`), each verified by running it (see :mod:`gpnas.results.deploy`).

    ``out`` must be new or empty unless ``force`` (then the files written here replace those of the same name)."""
    from gpnas.results.deploy import FORMATS, DeployOptions

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"--format {','.join(unknown)}: choose from {', '.join(FORMATS)} (several: "
                          "--format spec,onnx,torchscript)")
    deploy = deploy or DeployOptions()
    check_out(out, force=force)
    recs = st.records(st.load_study(search.folder, search.name))
    chosen = pick_records(recs, search, pick)
    sources = [_sources(search, recs, rec, weights) for rec in chosen]
    settings = search.settings
    manifest: dict[str, Any] = {
        "search": search.name, "folder": str(search.folder.path), "pick": pick, "objectives": list(search.objectives),
        "data": settings.get("data"), "train": settings.get("train"), "latency": settings.get("latency"),
        "versions": _versions(), "architectures": []}
    try:
        out.mkdir(parents=True, exist_ok=True)
        manifest["architectures"] = [_entry(rec, src, out) for rec, src in zip(chosen, sources, strict=True)]
        if any(f != "spec" for f in formats):
            for entry in manifest["architectures"]:
                _graphs(entry, out, formats, deploy, settings.get("latency"))
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    except OSError as err:
        raise ConfigError(f"export folder {out}: cannot write {err.filename or out} ({err.strerror or err})") from None
    return manifest
