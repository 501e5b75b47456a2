"""Plots and tables of a search: Pareto scatter (interactive HTML and a PNG), parallel coordinates of genes
against objectives, and Spearman correlations of the gradient-path aggregates (``gp_*``) with AP.

Input is the study's rows (:class:`gpnas.results.records.TrialRecord`). Only complete trials are plotted and
correlated; infeasible ones appear greyed on the Pareto scatter (their AP is 0, as the study records it);
pruned, failed, interrupted and running trials are left out. Everything copes with a search that has no or one
complete trial: figures then carry a note instead of points, and nothing raises.

plotly and matplotlib are imported lazily (STYLE.md 10); HTML files embed plotly.js so they open offline.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpnas.objectives.definitions import OBJECTIVES, score_objective
from gpnas.results.pareto import pareto_mask
from gpnas.results.records import TrialRecord

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["correlations_csv", "correlations_markdown", "gradient_path_correlations", "parallel_coordinates",
           "pareto_figure", "write_pareto_html", "write_pareto_png", "write_report"]

#: Axis labels of metrics that are not objectives (objectives carry their own label).
LABELS = {"ap50": "AP@.5", "params_m": "params (M)", "trial": "trial number"}
_FRONT_COLOUR = "#d62728"
_INFEASIBLE_COLOUR = "#b0b0b0"
_CSV_FIELDS = ("feature", "spearman_rho", "p_value", "n", "note")
_HOVER = {"hovertemplate": "%{text}<extra></extra>"}


def _label(name: str) -> str:
    return OBJECTIVES[name].label if name in OBJECTIVES else LABELS.get(name, name)


def _num(value: Any) -> float:
    """A metric as float; missing, None or non-numeric values become NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _metric(rec: TrialRecord, name: str) -> float:
    if name == "trial":
        return float(rec.number)
    return _num(rec.result.metrics.get(name)) if rec.result is not None else math.nan


def _complete(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.state == "complete" and r.result is not None]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return str(value[0]) if len(set(map(str, value))) == 1 else "/".join(map(str, value))
    return str(value)


def _hover(rec: TrialRecord, objectives: Sequence[str]) -> str:
    """Trial number, arch_id, every objective, then block / neck and the sampled genes."""
    arch_id = rec.arch_id or (rec.result.arch_id if rec.result is not None else None)
    lines = [f"trial {rec.number} ({rec.state})", f"arch_id {arch_id or 'n/a'}"]
    lines += [f"{_label(o)} = {_fmt(_metric(rec, o))}" for o in objectives]
    spec = rec.result.spec if rec.result is not None else {}
    lines.append(" · ".join(f"{g} = {_fmt(spec.get(g, rec.params.get(g, 'n/a')))}" for g in ("block", "neck")))
    genes = [f"{k}={_fmt(v)}" for k, v in sorted(rec.params.items()) if k not in ("block", "neck")]
    lines += [", ".join(genes[i:i + 4]) for i in range(0, len(genes), 4)]
    if rec.reason:
        lines.append(f"reason: {rec.reason}")
    return "<br>".join(lines)


# ------------------------------------------------------------------------------------------ Pareto scatter
@dataclass(frozen=True)
class _ScatterData:
    """What both the plotly and the matplotlib Pareto figures draw."""

    x: str
    y: str
    colour: str | None
    done: list[TrialRecord]  # complete, every objective finite
    front: np.ndarray  # ndarray[len(done)] bool, over all objectives
    line: np.ndarray  # ndarray[len(done)] bool: the front points joined by the front line
    infeasible: list[TrialRecord]

    def line_recs(self) -> list[TrialRecord]:
        recs = [self.done[i] for i in np.flatnonzero(self.line)]
        return sorted(recs, key=lambda r: (_metric(r, self.x), _metric(r, self.y)))


def _coords(recs: Sequence[TrialRecord], name: str | None, *, infeasible: bool = False) -> np.ndarray:
    """``ndarray[len(recs)]`` of one metric; an infeasible trial was not trained, so a figure it lacks is at its
    objective's natural bound (AP 0, as in the study)."""
    if name is None:
        return np.zeros(len(recs))
    values = np.array([_metric(r, name) for r in recs], dtype=float)
    bound = OBJECTIVES[name].natural_bound if name in OBJECTIVES else None
    return np.nan_to_num(values, nan=bound) if infeasible and bound is not None else values


def _axes(objectives: Sequence[str]) -> tuple[str, str, str | None]:
    """(x, y, colour): the score (the first objective measured in training: val_loss, AP) on the y axis when there
    is one, the next objective on x, a third as colour."""
    if len(objectives) == 1:
        return "trial", objectives[0], None
    score = score_objective(objectives)
    if score is not None:
        rest = [o for o in objectives if o != score]
        return rest[0], score, rest[1] if len(rest) > 1 else None
    return objectives[0], objectives[1], objectives[2] if len(objectives) > 2 else None


def _scatter_data(records: Sequence[TrialRecord], objectives: Sequence[str],
                  directions: Sequence[str]) -> _ScatterData:
    if not objectives or len(objectives) != len(directions):
        raise ValueError(f"objectives {list(objectives)} and directions {list(directions)} must be non-empty "
                         "and of the same length (one direction per objective)")
    x, y, colour = _axes(objectives)
    done = [r for r in _complete(records) if all(math.isfinite(_metric(r, o)) for o in objectives)]
    values = np.array([[_metric(r, o) for o in objectives] for r in done], dtype=float).reshape(-1, len(objectives))
    front = pareto_mask(values, directions)  # type: ignore[arg-type]
    line = front
    if len(objectives) > 2:  # a 3-D front joined in 2-D zigzags: join the points not dominated in (x, y) only
        cols = [list(objectives).index(x), list(objectives).index(y)]
        line = front & pareto_mask(values[:, cols], [directions[c] for c in cols])  # type: ignore[misc]
    infeasible = [r for r in records if r.state == "infeasible" and r.result is not None]
    for name in (x, y, colour):
        infeasible = [r for r, v in zip(infeasible, _coords(infeasible, name, infeasible=True), strict=True)
                      if math.isfinite(v)]
    return _ScatterData(x, y, colour, done, front, line, infeasible)


def _empty_plotly(message: str) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure(layout={"xaxis": {"visible": False}, "yaxis": {"visible": False}})
    return fig.add_annotation(text=message, showarrow=False, font={"size": 16}, xref="paper", yref="paper",
                              x=0.5, y=0.5)


def _figure_3d(data: _ScatterData, objectives: Sequence[str]) -> go.Figure:
    import plotly.graph_objects as go

    assert data.colour is not None
    rest = [r for r, m in zip(data.done, data.front, strict=True) if not m]
    front = [data.done[i] for i in np.flatnonzero(data.front)]
    fig = go.Figure()
    for recs, name, marker, inf in (
        (data.infeasible, "infeasible", {"color": _INFEASIBLE_COLOUR, "size": 4, "opacity": 0.5}, True),
        (rest, "complete", {"color": "#1f77b4", "size": 4}, False),
        (front, "Pareto front", {"color": _FRONT_COLOUR, "size": 7, "symbol": "diamond"}, False),
    ):
        fig.add_trace(go.Scatter3d(
            x=_coords(recs, data.x, infeasible=inf), y=_coords(recs, data.colour, infeasible=inf),
            z=_coords(recs, data.y, infeasible=inf), mode="markers", name=name, marker=marker,
            text=[_hover(r, objectives) for r in recs], **_HOVER))
    scene = {"xaxis_title": _label(data.x), "yaxis_title": _label(data.colour), "zaxis_title": _label(data.y)}
    return fig.update_layout(scene=scene, template="plotly_white")


def pareto_figure(records: Sequence[TrialRecord], objectives: Sequence[str], directions: Sequence[str], *,
                  three_d: bool = False) -> go.Figure:
    """Scatter of complete trials with the Pareto front (over all objectives) highlighted, joined in x order.

    The front is drawn as a staircase (from each member, level until the next one's x: no straight segment
    suggests a candidate between two members).
    Two objectives: AP on y (when it is one) against the other on x. Three: AP vs the first other objective,
    the last as colour, and the line joins only the front points also non-dominated in the two plotted
    objectives; ``three_d=True`` draws a 3-D scatter of all three instead. Infeasible trials are grey.
    """
    import plotly.graph_objects as go

    data = _scatter_data(records, objectives, directions)
    if three_d and len(objectives) != 3:
        raise ValueError(f"three_d=True needs exactly 3 objectives; got {list(objectives)}")
    title = f"{len(data.done)} complete trial(s), {int(data.front.sum())} on the Pareto front"
    if not data.done and not data.infeasible:
        return _empty_plotly("no complete trials yet").update_layout(title="Pareto front: no complete trials")
    if three_d:
        return _figure_3d(data, objectives).update_layout(title=title)
    fig = go.Figure()
    front_recs = [data.done[i] for i in np.flatnonzero(data.front)]
    if data.infeasible:
        fig.add_trace(go.Scatter(
            x=_coords(data.infeasible, data.x, infeasible=True),
            y=_coords(data.infeasible, data.y, infeasible=True), mode="markers", name="infeasible",
            marker={"color": _INFEASIBLE_COLOUR, "symbol": "x", "size": 8, "opacity": 0.6},
            text=[_hover(r, objectives) for r in data.infeasible], **_HOVER))
    marker: dict[str, Any] = {"size": 9, "color": "#1f77b4"}
    if data.colour is not None:
        marker.update(color=_coords(data.done, data.colour), colorscale="Viridis", showscale=True,
                      colorbar={"title": {"text": _label(data.colour)}})
    fig.add_trace(go.Scatter(x=_coords(data.done, data.x), y=_coords(data.done, data.y), mode="markers",
                             name="complete", marker=marker, text=[_hover(r, objectives) for r in data.done],
                             **_HOVER))
    if front_recs:
        order = data.line_recs()
        projected = len(objectives) > 2
        fig.add_trace(go.Scatter(
            x=_coords(order, data.x), y=_coords(order, data.y), mode="lines", hoverinfo="skip", line_shape="hv",
            name=f"front in {_label(data.x)}, {_label(data.y)}", showlegend=projected,
            line={"color": _FRONT_COLOUR, "width": 2, "dash": "dot" if projected else "solid"}))
        fig.add_trace(go.Scatter(
            x=_coords(front_recs, data.x), y=_coords(front_recs, data.y), mode="markers",
            name="Pareto front", text=[_hover(r, objectives) for r in front_recs], **_HOVER,
            marker={"size": 14, "color": "rgba(0,0,0,0)", "line": {"color": _FRONT_COLOUR, "width": 2.5}}))
    colour = f" (colour: {_label(data.colour)})" if data.colour else ""
    return fig.update_layout(title=f"Pareto front{colour}: {title}", xaxis_title=_label(data.x),
                             yaxis_title=_label(data.y), template="plotly_white",
                             legend={"orientation": "h", "y": -0.15})


def write_pareto_html(fig: go.Figure, path: str | Path) -> Path:
    """Self-contained HTML (plotly.js embedded, ~5 MB): opens with no network."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def _new_figure() -> Any:
    """A 1080×720 px matplotlib figure on the Agg canvas (no pyplot: no global backend switch, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def write_pareto_png(records: Sequence[TrialRecord], objectives: Sequence[str], directions: Sequence[str],
                     path: str | Path) -> Path:
    """The 2-D Pareto scatter as a static PNG (matplotlib, Agg, 1080×720 px), front points labelled."""
    data = _scatter_data(records, objectives, directions)
    fig = _new_figure()
    ax = fig.add_subplot()
    if data.infeasible:
        ax.scatter(_coords(data.infeasible, data.x, infeasible=True),
                   _coords(data.infeasible, data.y, infeasible=True), marker="x", color=_INFEASIBLE_COLOUR,
                   label="infeasible", zorder=1)
    if data.done:
        kwargs: dict[str, Any] = {"color": "#1f77b4"}
        if data.colour is not None:
            kwargs = {"c": _coords(data.done, data.colour), "cmap": "viridis"}
        points = ax.scatter(_coords(data.done, data.x), _coords(data.done, data.y), s=40,
                            label="complete", zorder=2, **kwargs)
        if data.colour is not None:
            fig.colorbar(points, ax=ax, label=_label(data.colour))
        front = [data.done[i] for i in np.flatnonzero(data.front)]
        fx, fy = _coords(front, data.x), _coords(front, data.y)
        ax.scatter(fx, fy, s=130, facecolors="none", edgecolors=_FRONT_COLOUR, linewidths=1.8,
                   label="Pareto front", zorder=3)
        line = data.line_recs()
        projected = len(objectives) > 2
        ax.step(_coords(line, data.x), _coords(line, data.y), ":" if projected else "-", where="post",
                color=_FRONT_COLOUR, linewidth=1.8, zorder=3,
                label=f"front in {_label(data.x)}, {_label(data.y)}" if projected else None)
        for rec, px, py in zip(front, fx, fy, strict=True):
            ax.annotate(f"#{rec.number}", (px, py), textcoords="offset points", xytext=(6, 6), fontsize=9)
    else:
        ax.text(0.5, 0.5, "no complete trials yet", ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set(xlabel=_label(data.x), ylabel=_label(data.y))
    ax.set_title(f"Pareto front: {len(data.done)} complete, {int(data.front.sum())} on the front, "
                 f"{len(data.infeasible)} infeasible", fontsize=12)
    ax.grid(alpha=0.3)
    if data.done or data.infeasible:
        ax.legend(loc="best", fontsize=9)
    return _save_png(fig, path)


# ------------------------------------------------------------------------------------------ refined vs named points
def named_points(records: Sequence[TrialRecord], named: dict[str, str]) -> list[dict[str, Any]]:
    """The refined trials of a search as points of :func:`write_named_front_png`; ``named``: arch_id -> the name
    of a point the search enqueued (a preset), which is drawn labelled instead of on the front."""
    out = []
    for rec in records:
        refined = rec.result.refined if rec.result is not None else None
        if not refined:
            continue
        out.append({"number": rec.number, "preset": named.get(rec.arch_id or ""), "arch_id": rec.arch_id,
                    "ap": list(refined["ap"]), "ap_mean": refined["ap_mean"], "ap_sd": refined["ap_sd"],
                    "gflops": _metric(rec, "gflops")})
    return out


def write_named_front_png(points: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """AP (mean over refinement seeds, ± sd as error bars) against GFLOPs: the front of the unnamed (searched)
    points as a staircase, every point with its error bar, the named points (presets) as labelled squares."""
    fig = _new_figure()
    ax = fig.add_subplot()
    searched = [p for p in points if not p.get("preset")]
    presets = [p for p in points if p.get("preset")]
    for group, style in ((searched, {"fmt": "o", "color": "#1f77b4", "label": "searched (refined)"}),
                         (presets, {"fmt": "s", "color": "#2ca02c", "label": "preset (refined)"})):
        if group:
            ax.errorbar([p["gflops"] for p in group], [p["ap_mean"] for p in group],
                        yerr=[p["ap_sd"] if math.isfinite(p["ap_sd"]) else 0.0 for p in group], capsize=4,
                        markersize=7, linestyle="none", zorder=3, **style)
    if searched:
        values = np.array([[p["ap_mean"], p["gflops"]] for p in searched], dtype=float)
        front = sorted((p for p, m in zip(searched, pareto_mask(values, ["maximize", "minimize"]), strict=True)
                        if m), key=lambda p: p["gflops"])
        ax.step([p["gflops"] for p in front], [p["ap_mean"] for p in front], "-", where="post",
                color=_FRONT_COLOUR, linewidth=1.8, zorder=2, label="searched front")
        for p in front:
            ax.annotate(f"#{p['number']}", (p["gflops"], p["ap_mean"]), textcoords="offset points",
                        xytext=(6, -12), fontsize=9)
    for p in presets:
        ax.annotate(str(p["preset"]), (p["gflops"], p["ap_mean"]), textcoords="offset points", xytext=(6, 6),
                    fontsize=9, color="#2ca02c")
    if not points:
        ax.text(0.5, 0.5, "no refined trials yet", ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set(xlabel=_label("gflops"), ylabel="AP (mean ± sd over seeds)")
    ax.set_title(title or "refined front vs named points", fontsize=12)
    ax.grid(alpha=0.3)
    if points:
        ax.legend(loc="lower right", fontsize=9)
    return _save_png(fig, path)


# ------------------------------------------------------------------------------------------ parallel coordinates
def _sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0, float(value), ""
    return 1, 0.0, str(value)


def _gene_dimension(name: str, values: list[Any]) -> dict[str, Any]:
    """Numeric genes as they are; categorical ones (or genes some trials lack) as integer codes with labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return {"label": name, "values": [float(v) for v in values]}
    labels = sorted({v for v in values if v is not None}, key=_sort_key)
    codes = {v: i for i, v in enumerate(labels)}
    ticktext = [_fmt(v) for v in labels] + (["n/a"] if None in values else [])
    return {"label": name, "values": [codes.get(v, len(labels)) if v is not None else len(labels) for v in values],
            "tickvals": list(range(len(ticktext))), "ticktext": ticktext, "range": [0, max(len(ticktext) - 1, 1)]}


def parallel_coordinates(records: Sequence[TrialRecord], objectives: Sequence[str]) -> go.Figure:
    """``go.Parcoords`` of complete trials: one axis per sampled gene (``params``), then one per objective,
    lines coloured by the first objective. Genes not sampled in a trial (conditional ones) show as ``n/a``."""
    import plotly.graph_objects as go

    done = [r for r in _complete(records) if all(math.isfinite(_metric(r, o)) for o in objectives)]
    if not done:
        return _empty_plotly("no complete trials yet").update_layout(title="Genes vs objectives")
    names = sorted({k for r in done for k in r.params}, key=lambda k: (k not in ("block", "neck"), k))
    dims = [_gene_dimension(n, [r.params.get(n) for r in done]) for n in names]
    dims += [{"label": _label(o), "values": [_metric(r, o) for r in done]} for o in objectives]
    line: dict[str, Any] = {}
    if objectives:
        line = {"color": [_metric(r, objectives[0]) for r in done], "colorscale": "Viridis", "showscale": True,
                "colorbar": {"title": {"text": _label(objectives[0])}}}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    return fig.update_layout(title=f"Genes vs objectives: {len(done)} complete trial(s)")


# ------------------------------------------------------------------------------------------ correlations
def _correlation(feature: str, x: np.ndarray, y: np.ndarray, target: str) -> dict[str, Any]:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    row: dict[str, Any] = {"feature": feature, "spearman_rho": None, "p_value": None, "n": n, "note": None}
    if n < 3:
        row["note"] = f"fewer than 3 trials with both {feature} and {target}"
    elif np.ptp(x[ok]) == 0:
        row["note"] = "constant across trials"
    elif np.ptp(y[ok]) == 0:
        row["note"] = f"{target} is constant across trials"
    else:
        rho, p = spearmanr(x[ok], y[ok])
        if math.isfinite(rho):
            row.update(spearman_rho=float(rho), p_value=float(p))
        else:
            row["note"] = "undefined correlation"
    return row


def gradient_path_correlations(records: Sequence[TrialRecord], target: str = "ap") -> list[dict[str, Any]]:
    """Spearman ρ between each ``gp_*`` aggregate and ``target`` over complete trials.

    Rows ``{"feature", "spearman_rho", "p_value", "n", "note"}`` sorted by |ρ| descending; a feature with fewer
    than 3 finite pairs, or constant (as is the target), gets ρ = p = None and says why in ``note``.
    NaN values are dropped pairwise.
    """
    done = _complete(records)
    features = sorted({k for r in done for k in r.result.metrics if k.startswith("gp_")})  # type: ignore[union-attr]
    y = np.array([_metric(r, target) for r in done], dtype=float)
    rows = [_correlation(f, np.array([_metric(r, f) for r in done], dtype=float), y, target) for f in features]
    return sorted(rows, key=lambda r: (r["spearman_rho"] is None, -abs(r["spearman_rho"] or 0.0), r["feature"]))


def correlations_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`gradient_path_correlations` rows."""
    if not rows:
        return "_No gradient-path features were recorded for the complete trials._\n"
    lines = ["| feature | Spearman ρ | p-value | n | note |", "|---|---:|---:|---:|---|"]
    for r in rows:
        rho = "–" if r["spearman_rho"] is None else f"{r['spearman_rho']:+.3f}"
        p = "–" if r["p_value"] is None else f"{r['p_value']:.3g}"
        lines.append(f"| `{r['feature']}` | {rho} | {p} | {r['n']} | {r.get('note') or ''} |")
    return "\n".join(lines) + "\n"


def correlations_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV (empty cells for None), with a header even when there are no rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in _CSV_FIELDS} for r in rows)
    return path


# ------------------------------------------------------------------------------------------ everything
def write_report(records: Sequence[TrialRecord], objectives: Sequence[str], directions: Sequence[str],
                 folder: str | Path, *, named: dict[str, str] | None = None) -> dict[str, Path]:
    """Write pareto.html, pareto.png, parallel_coordinates.html, gp_correlations.csv and gp_correlations.md
    into ``folder``, and refined_front.png once trials were refined (``named``: arch_id -> the enqueued point's
    name, labelled there); returns name -> path. Small searches get figures with a note, never an exception."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = _scatter_data(records, objectives, directions)
    rows = gradient_path_correlations(records)
    paths = {
        "pareto_html": write_pareto_html(pareto_figure(records, objectives, directions), folder / "pareto.html"),
        "pareto_png": write_pareto_png(records, objectives, directions, folder / "pareto.png"),
        "parallel_coordinates_html": write_pareto_html(parallel_coordinates(records, objectives),
                                                       folder / "parallel_coordinates.html"),
        "gp_correlations_csv": correlations_csv(rows, folder / "gp_correlations.csv"),
    }
    points = named_points(records, named or {})
    if points:
        paths["refined_front_png"] = write_named_front_png(
            points, folder / "refined_front.png",
            title=f"refined trials: {sum(not p['preset'] for p in points)} searched (front as a staircase), "
                  f"{sum(bool(p['preset']) for p in points)} named")
    n_done = len(_complete(records))
    front = sorted(data.done[i].number for i in np.flatnonzero(data.front))
    notes = [f"{n_done} complete trial(s) of {len(records)}; objectives: "
             + ", ".join(f"{o} ({d})" for o, d in zip(objectives, directions, strict=True)) + ".",
             f"Pareto front (trial numbers): {front or 'none yet'}."]
    if n_done < 3:
        notes.append(f"Correlations need at least 3 complete trials; this search has {n_done}.")
    elif rows:
        notes.append("With few trials the p-values are indicative only; ρ is a rank correlation, not a cause.")
    md = ["# Gradient-path aggregates vs AP (Spearman)", "", *(f"- {n}" for n in notes), "",
          correlations_markdown(rows)]
    paths["gp_correlations_md"] = folder / "gp_correlations.md"
    paths["gp_correlations_md"].write_text("\n".join(md), encoding="utf-8")
    return paths
