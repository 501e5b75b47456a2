"""Tests for gpnas.results.report: Pareto figures (HTML, PNG), parallel coordinates, gp_* correlations, write_report."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from PIL import Image

from gpnas.results.records import TrialRecord, TrialResult
from gpnas.results.report import (
    correlations_csv,
    correlations_markdown,
    gradient_path_correlations,
    named_points,
    parallel_coordinates,
    pareto_figure,
    write_pareto_html,
    write_pareto_png,
    write_report,
)

OBJ3 = ["ap", "gflops", "latency_ms"]
DIR3 = ["maximize", "minimize", "minimize"]
OBJ2 = ["ap", "gflops"]
DIR2 = ["maximize", "minimize"]
# (ap, gflops, latency): trials 0..7. On the 2-objective front: 0, 2, 5 (ap rises with cost); 3 is dominated.
POINTS = [(0.10, 1.0, 5.0), (0.08, 2.0, 4.0), (0.20, 2.5, 6.0), (0.15, 3.0, 7.0),
          (0.12, 4.0, 3.0), (0.30, 5.0, 9.0), (0.25, 6.0, 8.0), (0.05, 7.0, 2.0)]
BLOCKS = ["residual", "csp", "elan"]


def _record(number: int, state: str = "complete", metrics: dict[str, float] | None = None,
            params: dict[str, object] | None = None) -> TrialRecord:
    block = BLOCKS[number % 3]
    params = params if params is not None else {"block": block, "neck": "csp-pan", "width_multiple": 0.125}
    if block == "csp" and "mask_ratio" not in params:
        params["mask_ratio"] = 0.5  # conditional gene: only csp trials sample it
    result = TrialResult(arch_id=f"arch{number:03d}", state=state, metrics=dict(metrics or {}),  # type: ignore[arg-type]
                         spec={"block": [block] * 4, "neck": "csp-pan"})
    return TrialRecord(number=number, state=state, reason=None, arch_id=f"arch{number:03d}", values=None,
                       result=result, mlflow_run_id=None, params=params)


def _records() -> list[TrialRecord]:
    recs = []
    for i, (ap, gflops, latency) in enumerate(POINTS):
        metrics = {"ap": ap, "gflops": gflops, "latency_ms": latency,
                   "gp_monotone": 10.0 * ap ** 2,  # strictly increasing in AP: ρ = 1
                   "gp_anti": -ap,  # ρ = −1
                   "gp_constant": 3.0,
                   "gp_with_nan": math.nan if i < 6 else float(i),  # only 2 finite values
                   "gp_max_sgp": float(i % 3)}
        recs.append(_record(i, metrics=metrics))
    recs.append(_record(8, "infeasible", {"gflops": 9.0, "latency_ms": 1.0, "gp_monotone": 99.0}))
    recs.append(_record(9, "pruned", {"ap": 0.9, "gflops": 0.5, "latency_ms": 0.5}))
    recs.append(TrialRecord(10, "failed", "boom", None, None, None, None, {"block": "csp"}))
    return recs


def _front_numbers(fig: object) -> list[int]:
    (front,) = [t for t in fig.data if t.name == "Pareto front"]  # type: ignore[attr-defined]
    return [int(text.split()[1]) for text in front.text]


def test_pareto_figure_2d_front_sorted_and_hover() -> None:
    fig = pareto_figure(_records(), OBJ2, DIR2)
    assert _front_numbers(fig) == [0, 2, 5]
    (line,) = [t for t in fig.data if t.mode == "lines"]
    assert list(line.x) == [1.0, 2.5, 5.0]  # the front, joined in x order
    assert line.line.shape == "hv"  # a staircase: level to the next member, then up; no segment between members
    (complete,) = [t for t in fig.data if t.name == "complete"]
    assert len(complete.x) == 8
    hover = complete.text[3]
    assert "trial 3" in hover and "arch003" in hover and "gflops" in hover.lower() and "block = residual" in hover
    (infeasible,) = [t for t in fig.data if t.name == "infeasible"]
    assert list(infeasible.y) == [0.0] and "trial 8" in infeasible.text[0]
    assert all("trial 9" not in text for t in fig.data for text in t.text or ())  # pruned: not plotted


def test_pareto_figure_3_objectives_colour_and_3d() -> None:
    fig = pareto_figure(_records(), OBJ3, DIR3)
    (complete,) = [t for t in fig.data if t.name == "complete"]
    assert list(complete.marker.color) == [p[2] for p in POINTS]  # latency as colour
    assert _front_numbers(fig) == [0, 1, 2, 4, 5, 6, 7]  # 3-objective front: only 3 is dominated
    (line,) = [t for t in fig.data if t.mode == "lines"]
    assert list(line.x) == [1.0, 2.5, 5.0]  # joins the front points non-dominated in the plotted (gflops, ap)
    fig3 = pareto_figure(_records(), OBJ3, DIR3, three_d=True)
    assert {t.type for t in fig3.data} == {"scatter3d"}
    with pytest.raises(ValueError, match="3 objectives"):
        pareto_figure(_records(), OBJ2, DIR2, three_d=True)
    with pytest.raises(ValueError, match="same length"):
        pareto_figure(_records(), OBJ3, DIR2)


def test_html_and_png_written(tmp_path: Path) -> None:
    html = write_pareto_html(pareto_figure(_records(), OBJ3, DIR3), tmp_path / "p.html")
    text = html.read_text(encoding="utf-8")
    assert "plotly" in text and "<script src=" not in text  # plotly.js embedded, not fetched: works offline
    assert len(text) > 1_000_000
    assert all(f"trial {n}" in text for n in range(9))
    png = write_pareto_png(_records(), OBJ3, DIR3, tmp_path / "p.png")
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 800 and img.size[1] >= 500


def test_parallel_coordinates_encodes_categorical_genes() -> None:
    fig = parallel_coordinates(_records(), OBJ3)
    (par,) = fig.data
    dims = {d.label: d for d in par.dimensions}
    assert list(dims)[:2] == ["block", "neck"] and "AP@[.5:.95]" in dims
    assert list(dims["block"].ticktext) == ["csp", "elan", "residual"]
    assert list(dims["block"].values) == [2, 0, 1, 2, 0, 1, 2, 0]
    assert list(dims["mask_ratio"].ticktext) == ["0.5", "n/a"]  # sampled by csp trials only
    assert list(dims["width_multiple"].values) == [0.125] * 8  # numeric gene stays numeric
    assert len(dims["GFLOPs"].values) == 8  # complete trials only


def test_correlations() -> None:
    rows = gradient_path_correlations(_records())
    by = {r["feature"]: r for r in rows}
    assert by["gp_monotone"]["spearman_rho"] == pytest.approx(1.0)
    assert by["gp_anti"]["spearman_rho"] == pytest.approx(-1.0)
    assert by["gp_monotone"]["n"] == 8 and by["gp_monotone"]["p_value"] < 1e-6
    assert by["gp_constant"]["spearman_rho"] is None and "constant" in by["gp_constant"]["note"]
    assert by["gp_with_nan"]["spearman_rho"] is None and by["gp_with_nan"]["n"] == 2
    rhos = [abs(r["spearman_rho"]) for r in rows if r["spearman_rho"] is not None]
    assert rhos == sorted(rhos, reverse=True) and rows[-1]["spearman_rho"] is None
    md = correlations_markdown(rows)
    assert "| `gp_monotone` | +1.000 |" in md and md.count("\n") == len(rows) + 2


def test_correlations_csv(tmp_path: Path) -> None:
    rows = gradient_path_correlations(_records())
    with correlations_csv(rows, tmp_path / "c.csv").open(encoding="utf-8") as fh:
        read = list(csv.DictReader(fh))
    assert [r["feature"] for r in read] == [r["feature"] for r in rows]
    assert {r["feature"]: r["spearman_rho"] for r in read}["gp_constant"] == ""


def test_write_report(tmp_path: Path) -> None:
    paths = write_report(_records(), OBJ3, DIR3, tmp_path / "report")
    names = {p.name for p in paths.values()}
    assert names == {"pareto.html", "pareto.png", "parallel_coordinates.html", "gp_correlations.csv",
                     "gp_correlations.md"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert "gp_monotone" in paths["gp_correlations_md"].read_text(encoding="utf-8")


def test_refined_trials_get_a_figure_with_their_enqueued_names(tmp_path: Path) -> None:
    recs = _records()
    for i, number in enumerate((0, 2, 5)):  # refine three; trial 2 (arch002) was enqueued as a preset
        result = recs[number].result
        assert result is not None
        result.refined = {"ap_mean": 0.2 + 0.05 * i, "ap_sd": 0.01, "ap": [0.19 + 0.05 * i, 0.21 + 0.05 * i],
                          "seeds": [0, 1]}
    points = named_points(recs, {"arch002": "yolor-csp-nano"})
    assert [(p["number"], p["preset"], p["gflops"]) for p in points] == [
        (0, None, 1.0), (2, "yolor-csp-nano", 2.5), (5, None, 5.0)]
    assert [p["ap_mean"] for p in points] == pytest.approx([0.2, 0.25, 0.3])
    paths = write_report(recs, OBJ2, DIR2, tmp_path, named={"arch002": "yolor-csp-nano"})
    with Image.open(paths["refined_front_png"]) as img:
        assert img.format == "PNG" and img.size[0] >= 800
    assert "refined_front_png" not in write_report(_records(), OBJ2, DIR2, tmp_path / "unrefined")


@pytest.mark.parametrize("n_complete", [0, 1])
def test_small_searches_do_not_raise(tmp_path: Path, n_complete: int) -> None:
    recs = [r for r in _records() if r.state != "complete" or r.number < n_complete]
    paths = write_report(recs, OBJ3, DIR3, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert "at least 3 complete trials" in paths["gp_correlations_md"].read_text(encoding="utf-8")
    assert all(r["spearman_rho"] is None for r in gradient_path_correlations(recs))
    with Image.open(paths["pareto_png"]) as img:
        assert img.size[0] >= 800
    empty = write_report([], OBJ2, DIR2, tmp_path / "empty")
    assert empty["pareto_html"].stat().st_size > 0
