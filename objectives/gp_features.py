"""One per-trial feature table: the structural gradient-path metrics of each weighted layer with the gradient
statistics measured on it (at initialisation and after training), its schema, and stage-level aggregates.

The structural rows come from :meth:`gpnas.objectives.gradient_path.GradientPathReport.table`; the measured
statistics from :func:`gpnas.objectives.gradient_path.measure_gradients` are merged into them by layer name, with
a suffix saying when they were measured (``_init``: the freshly initialised model, before any training — usable
to pre-screen a candidate; no suffix: the proxy-trained model). Stages follow the detector's modules: ``stem``,
the backbone stages ``p2`` … ``p5`` (``stages.0`` … ``stages.3``), ``neck`` and ``head`` (``detect``, ``proto``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MEASURED_COLUMNS", "POST_TRAINING_FEATURES", "SCHEMA", "STAGES", "merge_measured", "stage_aggregates",
           "stage_of", "table_schema"]

STAGES = ("stem", "p2", "p3", "p4", "p5", "neck", "head")
#: measured statistic -> column name in the table (a suffix is added for when it was measured)
MEASURED_COLUMNS = {"weight_grad_norm": "grad_norm", "output_grad_norm": "output_grad_norm",
                    "class_cos": "class_cos"}
#: features that describe the trained model: they cannot rank a candidate before it is trained
POST_TRAINING_FEATURES = ("gp_grad_norm_mean", "gp_grad_norm_cv", "gp_class_cos_mean")

#: column -> (type, when it is known, what it is); the schema written beside every per-trial table
SCHEMA: dict[str, tuple[str, str, str]] = {
    "name": ("str", "structure", "weighted layer (module path; '#k' for its k-th call)"),
    "stage": ("str", "structure", f"the detector part: {', '.join(STAGES)}"),
    "kind": ("str", "structure", "module type"),
    "out_channels": ("int", "structure", "output channels"),
    "sgp": ("int|null", "structure", "shortest gradient path: layers from the loss (null: no gradient reaches)"),
    "lgp": ("int|null", "structure", "longest gradient path"),
    "ts": ("json list[int]", "structure", "gradient timestamps reaching the layer"),
    "n_src": ("int", "structure", "gradient sources"),
    "srcs": ("json list[str]", "structure", "the gradient sources"),
    "n_comb": ("int", "structure", "distinct (timestamp, source) combinations"),
    "npath": ("int", "structure", "gradient paths"),
    "npath_hist": ("json dict", "structure", "paths by length"),
    "n_cls": ("int", "structure", "channel classes (channels receiving the same gradient mix)"),
    "classes": ("json list", "structure", "the channel classes"),
    "dup": ("float", "structure", "duplicated-gradient measure"),
    "agg": ("int", "structure", "aggregated inputs"),
    "grad_norm_init": ("float|null", "init", "L2 norm of dLoss/dW at initialisation (one val batch of 8)"),
    "output_grad_norm_init": ("float|null", "init", "L2 norm of dLoss/d output at initialisation"),
    "class_cos_init": ("float|null", "init", "mean pairwise cosine of the channel classes' gradients, at init"),
    "grad_norm": ("float|null", "trained", "L2 norm of dLoss/dW after proxy training"),
    "output_grad_norm": ("float|null", "trained", "L2 norm of dLoss/d output after proxy training"),
    "class_cos": ("float|null", "trained", "mean pairwise cosine of the channel classes' gradients, trained"),
}


def stage_of(layer: str) -> str:
    """The detector part a layer belongs to (see :data:`STAGES`), from its module path."""
    parts = layer.split("#")[0].split(".")
    if parts[0] == "stages" and len(parts) > 1 and parts[1].isdigit():
        return f"p{int(parts[1]) + 2}"
    if parts[0] in ("detect", "proto"):
        return "head"
    return parts[0] if parts[0] in STAGES else "neck"


def merge_measured(rows: list[dict[str, Any]], measured: Mapping[str, Mapping[str, float]], *, when: str
                   ) -> list[dict[str, Any]]:
    """``rows`` (the structural table) with the statistics of ``measured`` (layer -> statistic -> value) as
    columns; ``when`` is ``init`` or ``trained``. A layer with no measurement gets None (the schema's null)."""
    if when not in ("init", "trained"):
        raise ValueError(f"when must be 'init' or 'trained', got {when!r}")
    suffix = "_init" if when == "init" else ""
    out = []
    for row in rows:
        got = measured.get(str(row["name"]), {})
        extra = {f"{col}{suffix}": got.get(stat) for stat, col in MEASURED_COLUMNS.items()}
        out.append({**row, "stage": stage_of(str(row["name"])), **extra})
    return out


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(kept) if kept else None


def stage_aggregates(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``gp_stage_<stage>_<quantity>`` for each stage that has layers: mean_sgp and max_lgp (over the layers
    gradient reaches), n_cls (sum), mean_dup, and — when measured at initialisation — grad_norm_init and
    class_cos_init (means). Known before training, so they can rank an untrained candidate."""
    out: dict[str, float] = {}
    for stage in STAGES:
        layers = [r for r in rows if (r.get("stage") or stage_of(str(r["name"]))) == stage]
        if not layers:
            continue
        reached = [r for r in layers if r.get("sgp") is not None]
        values = {
            "mean_sgp": _mean(r["sgp"] for r in reached),
            "max_lgp": float(max(r["lgp"] for r in reached if r.get("lgp") is not None)) if reached else None,
            "n_cls": float(sum(int(r.get("n_cls") or 0) for r in layers)),
            "mean_dup": _mean(r.get("dup") for r in layers),
            "grad_norm_init": _mean(r.get("grad_norm_init") for r in layers),
            "class_cos_init": _mean(r.get("class_cos_init") for r in layers),
        }
        out.update({f"gp_stage_{stage}_{k}": v for k, v in values.items() if v is not None})
    return out


def table_schema(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The schema of a per-trial table: its columns in order, each with type, when it is known and meaning."""
    columns = list(rows[0]) if rows else list(SCHEMA)
    unknown = ("unknown", "unknown", "not described")
    return {"table": "gradient_path_layers.csv", "rows": "one per weighted layer, forward order",
            "columns": [{"name": c, "type": SCHEMA.get(c, unknown)[0], "known": SCHEMA.get(c, unknown)[1],
                         "description": SCHEMA.get(c, unknown)[2]} for c in columns]}
