"""Gradient-path metrics of a detector (ARCH_SPEC §7): structural, from one fx trace, and measured, from one
backward.

Structural metrics (``analyze``), per weighted layer L (a ConvUnit, Conv2d or Linear, named by its module
path):

- TS: gradient timestamps, the lengths of all backward paths loss -> head -> ... -> L (head and L included);
  SGP/LGP are min/max TS.
- SRC: gradient sources, the weighted layers (or ``"LOSS"``) right downstream of L; COMB: (timestamp,
  source) pairs.
- NPATH: number of distinct weighted-layer sequences from the loss to L, with its length histogram.
- channel classes: L's output channels grouped by identical COMB (masked residuals and channel splits create
  several).
- DUP: how many other layers receive the same rows of dL/dx (keys (W, j) = input channel j of W); AGG: how
  many weighted layers feed L's input through parameter-free ops (forward).

The analysis works on intervals of channels (ARCH_SPEC §7.2 "Efficient algorithm"): every tensor is a list
of runs (channel interval, frozenset of (timestamp, source)), so the cost does not grow with channel counts.
Layers are processed once, in reverse topological order.

Measured statistics (``measure_gradients``) run one forward/backward and compare what the structure
predicts: weight and output gradient norms per layer, and for layers with several channel classes the cosine
similarity between the classes' gradient maps.

Requirements on the model (see ``_gp_graph``): fx-traceable forward without data-dependent control flow,
built from ConvUnit / Conv2d / Linear, MaskedAdd, ImplicitA/M and the parameter-free ops listed there;
anything else raises ``GraphError`` (a ``ValueError``).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gpnas.objectives._gp_graph import LOSS, Feed, GraphError, LayerGraph, WeightedLayer, extract_graph

__all__ = [
    "LOSS",
    "ChannelClass",
    "GradientPathReport",
    "GraphError",
    "LayerMetrics",
    "analyze",
    "gradient_aggregates",
    "measure_gradients",
]

Comb = frozenset[tuple[int, str]]
Run = tuple[int, int, Comb]  # [lo, hi) of output channels, COMB shared by all of them


@dataclass(frozen=True)
class ChannelClass:
    """Output channels of one layer that share one COMB set.  ``ranges`` are half-open [lo, hi) intervals."""

    ranges: tuple[tuple[int, int], ...]
    comb: Comb
    npath: int
    sgp: int | None

    @property
    def n_comb(self) -> int:
        return len(self.comb)

    @property
    def channels(self) -> str:
        """Inclusive ranges as in ARCH_SPEC §7.3, e.g. ``"0-1,4-5"``."""
        return ",".join(f"{lo}-{hi - 1}" for lo, hi in self.ranges)


@dataclass(frozen=True)
class LayerMetrics:
    """ARCH_SPEC §7.2 quantities of one weighted layer (timestamps follow the report's ``count_head``).

    ``sgp``/``lgp`` are None (and ``ts`` empty) for a layer no gradient reaches (e.g. only through
    ``detach``).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    groups: int
    is_head: bool
    sgp: int | None
    lgp: int | None
    ts: tuple[int, ...]
    srcs: tuple[str, ...]
    comb: Comb
    npath: int
    npath_hist: dict[int, int]
    classes: tuple[ChannelClass, ...]
    dup: float
    agg: int

    @property
    def n_ts(self) -> int:
        return len(self.ts)

    @property
    def n_src(self) -> int:
        return len(self.srcs)

    @property
    def n_comb(self) -> int:
        return len(self.comb)

    @property
    def n_cls(self) -> int:
        return len(self.classes)


@dataclass
class GradientPathReport:
    """Per-layer metrics (forward topological order) and network aggregates (flat ``gp_*`` floats).

    ``seconds`` is the whole ``analyze`` call (fx trace + ShapeProp included); ``analysis_seconds`` the metric
    computation on the extracted graph alone.
    """

    layers: list[LayerMetrics]
    aggregates: dict[str, float]
    seconds: float
    analysis_seconds: float = 0.0
    count_head: bool = True

    def layer(self, name: str) -> LayerMetrics:
        for m in self.layers:
            if m.name == name:
                return m
        raise KeyError(f"no weighted layer {name!r}; layers are: {', '.join(m.name for m in self.layers)}")

    def table(self) -> list[dict[str, object]]:
        """One JSON-able row per layer (histogram keys are strings so a JSON round trip is lossless)."""
        return [
            {
                "name": m.name,
                "kind": m.kind,
                "out_channels": m.out_channels,
                "sgp": m.sgp,
                "lgp": m.lgp,
                "ts": list(m.ts),
                "n_src": m.n_src,
                "srcs": list(m.srcs),
                "n_comb": m.n_comb,
                "npath": m.npath,
                "npath_hist": {str(k): v for k, v in sorted(m.npath_hist.items())},
                "n_cls": m.n_cls,
                "classes": [
                    {"channels": c.channels, "n_comb": c.n_comb, "npath": c.npath, "sgp": c.sgp} for c in m.classes
                ],
                "dup": m.dup,
                "agg": m.agg,
            }
            for m in self.layers
        ]


def analyze(
    model: nn.Module, *, input_shape: tuple[int, ...] = (1, 3, 64, 64), count_head: bool = True
) -> GradientPathReport:
    """Structural gradient-path metrics of ``model`` (ARCH_SPEC §7.2).

    input_shape: [B, C, H, W] of the example input used for shape propagation only (a detector needs H, W
    divisible by its largest stride, 32). count_head: path lengths include the head conv (ARCH_SPEC
    convention); False subtracts 1 from every timestamp, as if the loss were attached to the head's input.
    Raises GraphError (a ValueError) naming the fx node of any op without a known channel map.
    """
    start = time.perf_counter()
    graph = extract_graph(model, tuple(input_shape))
    mid = time.perf_counter()
    layers = _metrics(graph, shift=0 if count_head else -1)
    end = time.perf_counter()
    return GradientPathReport(layers, _aggregates(layers), end - start, end - mid, count_head)


def _metrics(graph: LayerGraph, shift: int) -> list[LayerMetrics]:
    consumers: dict[str, list[tuple[str, Feed]]] = {layer.name: [] for layer in graph.layers}
    for f in graph.loss_feeds:
        if f.grad:
            consumers[f.producer].append((LOSS, f))
    for layer in graph.layers:
        for f in layer.feeds:
            if f.grad:
                consumers[f.producer].append((layer.name, f))
    dup = _duplication(graph.layers)
    loss_emit: list[tuple[int, int, Comb]] = [(0, 1 << 62, frozenset({(1, LOSS)}))]
    emits: dict[str, list[tuple[int, int, Comb]]] = {LOSS: loss_emit}
    hists: dict[str, dict[int, int]] = {LOSS: {0: 1}}
    out: list[LayerMetrics] = []
    for layer in reversed(graph.layers):
        contributions = []
        for consumer, f in consumers[layer.name]:
            for glo, ghi, emit in emits[consumer]:
                a, b = max(f.lo, glo), min(f.hi, ghi)
                if a < b and emit:
                    contributions.append((f.plo + a - f.lo, f.plo + b - f.lo, emit))
        runs = _sweep(contributions, layer.out_channels)
        emits[layer.name] = _emissions(layer, runs)
        comb: Comb = frozenset().union(*(r[2] for r in runs))
        srcs = sorted({s for _, s in comb})
        hist = _shifted_sum(hists[s] for s in srcs)
        hists[layer.name] = hist
        out.append(_layer_metrics(layer, runs, comb, srcs, hist, hists, dup.get(layer.name, 0.0), shift))
    out.reverse()
    return out


def _layer_metrics(
    layer: WeightedLayer,
    runs: list[Run],
    comb: Comb,
    srcs: list[str],
    hist: dict[int, int],
    hists: dict[str, dict[int, int]],
    dup: float,
    shift: int,
) -> LayerMetrics:
    ts = tuple(sorted({d + shift for d, _ in comb}))
    ranges: dict[Comb, list[tuple[int, int]]] = {}
    for lo, hi, c in runs:
        ranges.setdefault(c, []).append((lo, hi))
    classes = tuple(
        ChannelClass(
            tuple(rs),
            _shift(c, shift),
            sum(sum(hists[s].values()) for s in {s for _, s in c}),
            min(d for d, _ in c) + shift if c else None,
        )
        for c, rs in ranges.items()
    )
    return LayerMetrics(
        name=layer.name,
        kind=layer.kind,
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        groups=layer.groups,
        is_head=LOSS in srcs,
        sgp=ts[0] if ts else None,
        lgp=ts[-1] if ts else None,
        ts=ts,
        srcs=tuple(srcs),
        comb=_shift(comb, shift),
        npath=sum(hist.values()),
        npath_hist={d + shift: n for d, n in sorted(hist.items())},
        classes=classes,
        dup=dup,
        agg=len({f.producer for f in layer.feeds}),
    )


def _shift(comb: Comb, shift: int) -> Comb:
    return comb if shift == 0 else frozenset((d + shift, s) for d, s in comb)


def _sweep(contributions: list[tuple[int, int, Comb]], width: int) -> list[Run]:
    """Union of interval-tagged sets over [0, width) as merged runs; uncovered channels get the empty set."""
    points = sorted({0, width, *(c[0] for c in contributions), *(c[1] for c in contributions)})
    runs: list[Run] = []
    for a, b in itertools.pairwise(points):
        cell: Comb = frozenset().union(*(s for lo, hi, s in contributions if lo <= a and b <= hi))
        if runs and runs[-1][2] == cell:
            runs[-1] = (runs[-1][0], b, cell)
        else:
            runs.append((a, b, cell))
    return runs


def _emissions(layer: WeightedLayer, runs: list[Run]) -> list[tuple[int, int, Comb]]:
    """What L sends to its input channels: {(d + 1, L)} per group, d over that group's output timestamps."""
    g = layer.groups
    cin, cout = layer.in_channels // g, layer.out_channels // g
    out = []
    for k in range(g):
        olo, ohi = k * cout, (k + 1) * cout
        depths = {d for lo, hi, c in runs if lo < ohi and olo < hi for d, _ in c}
        out.append((k * cin, (k + 1) * cin, frozenset((d + 1, layer.name) for d in depths)))
    return out


def _shifted_sum(hists: Iterable[dict[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for h in hists:
        for d, n in h.items():
            total[d + 1] = total.get(d + 1, 0) + n
    return total


def _duplication(layers: Iterable[WeightedLayer]) -> dict[str, float]:
    """DUP per producer: mean over keys (W, j) it receives of (number of layers receiving that key - 1)."""
    received: dict[str, int] = {}
    shared: dict[str, int] = {}
    for layer in layers:
        feeds = [f for f in layer.feeds if f.grad]
        points = sorted({p for f in feeds for p in (f.lo, f.hi)})
        for a, b in itertools.pairwise(points):
            holders = {f.producer for f in feeds if f.lo <= a and b <= f.hi}
            for p in holders:
                received[p] = received.get(p, 0) + (b - a)
                shared[p] = shared.get(p, 0) + (b - a) * (len(holders) - 1)
    return {p: shared[p] / n for p, n in received.items()}


def _aggregates(layers: list[LayerMetrics]) -> dict[str, float]:
    """Network-level ``gp_*`` figures; SGP/LGP statistics are over the layers gradient reaches."""
    reached = [m for m in layers if m.sgp is not None]
    sgps = [float(m.sgp) for m in reached if m.sgp is not None]
    npath_max = max((m.npath for m in layers), default=0)
    return {
        "gp_max_lgp": float(max((m.lgp for m in reached if m.lgp is not None), default=0)),
        "gp_max_sgp": max(sgps, default=0.0),
        "gp_mean_sgp": statistics.fmean(sgps) if sgps else 0.0,
        "gp_median_sgp": float(statistics.median(sgps)) if sgps else 0.0,
        "gp_n_comb_total": float(sum(m.n_comb for m in layers)),
        "gp_n_cls_total": float(sum(m.n_cls for m in layers)),
        "gp_mean_dup": statistics.fmean(m.dup for m in layers) if layers else 0.0,
        "gp_n_layers": float(len(layers)),
        "gp_n_heads": float(sum(m.is_head for m in layers)),
        "gp_n_unreached": float(len(layers) - len(reached)),
        "gp_log10_npath_max": math.log10(npath_max) if npath_max > 0 else 0.0,
    }


LossFn = Callable[[object], torch.Tensor]


def _flat_tensors(outputs: object) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for v in outputs.values() for t in _flat_tensors(v)]
    if isinstance(outputs, (list, tuple)):
        return [t for v in outputs for t in _flat_tensors(v)]
    return []


def default_loss(outputs: object) -> torch.Tensor:
    """Sum over outputs of mean(output²): needs no targets, so it works on an untrained model."""
    return torch.stack([t.float().pow(2).mean() for t in _flat_tensors(outputs)]).sum()


def measure_gradients(
    model: nn.Module,
    images: torch.Tensor,
    loss_fn: LossFn | None = None,
    report: GradientPathReport | None = None,
) -> dict[str, dict[str, float]]:
    """One real forward/backward: gradient statistics per weighted layer of ``report`` (analysed if None).

    images: Tensor[B, 3, H, W]. loss_fn(outputs) -> scalar; default ``default_loss``. Per layer returns
    ``weight_grad_norm`` (L2 over its weight tensors, BN/bias excluded), ``output_grad_norm`` (L2 of dLoss/d
    output) and ``n_cls``; layers with two or more channel classes that gradient reaches also get
    ``class_cos``.

    ``class_cos`` is the mean pairwise cosine similarity between the classes' gradient maps: for each class,
    the output gradient averaged over the class's channels, flattened over batch × H × W. Channels of one
    feature map share spatial positions, so these maps are comparable across classes whatever their sizes; a
    value near 1 means the classes' different (timestamp, source) mixes still deliver the same signal, lower
    values mean the structure really diversifies the gradient (the claim of ARCH_SPEC §7.3 c/e).

    Uses torch.autograd.grad, so ``.grad`` fields are left untouched; the model runs in its current mode and
    its buffers (BN running statistics) are restored afterwards.
    """
    report = report if report is not None else analyze(model, input_shape=(1, *images.shape[1:]))
    weights, wgrad, ograd = _backward(model, images, loss_fn or default_loss, _layer_modules(model, report))
    return {m.name: _layer_row(m, weights[m.name], wgrad, ograd.get(m.name)) for m in report.layers}


def _layer_modules(model: nn.Module, report: GradientPathReport) -> dict[str, tuple[nn.Module, int]]:
    """Layer name -> (its module, which call of it): ``name#k`` is call k (from 0) of a module run several times."""
    modules: dict[str, tuple[nn.Module, int]] = {}
    for m in report.layers:
        base, _, call = m.name.partition("#")
        modules[m.name] = (model.get_submodule(base), int(call or 0))
    return modules


def _backward(
    model: nn.Module, images: torch.Tensor, loss_fn: LossFn, modules: dict[str, tuple[nn.Module, int]]
) -> tuple[dict[str, list[torch.Tensor]], dict[int, torch.Tensor], dict[str, torch.Tensor]]:
    """One forward/backward, the layers' outputs captured by hooks: -> (each layer's weight tensors, the
    gradient of each weight tensor by ``id``, the gradient of each captured output; a gradient is None where
    the loss does not reach it). The hooks are removed and the buffers restored whatever happens."""
    captured: dict[nn.Module, list[torch.Tensor]] = {}
    hooks = [
        mod.register_forward_hook(lambda mod, _i, out: captured.setdefault(mod, []).append(out))
        for mod in {mod for mod, _ in modules.values()}
    ]
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.enable_grad():
            loss = loss_fn(model(images))
        weights = {
            name: [p for p in mod.parameters() if p.ndim > 1 and p.requires_grad] for name, (mod, _) in modules.items()
        }
        outputs = {
            name: captured[mod][call]
            for name, (mod, call) in modules.items()
            if call < len(captured.get(mod, ())) and captured[mod][call].requires_grad
        }
        flat_w = list({id(p): p for ps in weights.values() for p in ps}.values())
        grads = torch.autograd.grad(loss, [*flat_w, *outputs.values()], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)
    wgrad = {id(p): g for p, g in zip(flat_w, grads[: len(flat_w)], strict=True)}
    ograd = dict(zip(outputs, grads[len(flat_w) :], strict=True))
    return weights, wgrad, ograd


def _layer_row(m: LayerMetrics, weights: list[torch.Tensor], wgrad: dict[int, torch.Tensor],
               g: torch.Tensor | None) -> dict[str, float]:
    """One layer's measured statistics (see :func:`measure_gradients`); ``g``: its output gradient, if any."""
    w_sq = sum(float(wgrad[id(p)].pow(2).sum()) for p in weights if wgrad[id(p)] is not None)
    row = {
        "weight_grad_norm": math.sqrt(w_sq),
        "output_grad_norm": float(g.norm()) if g is not None else 0.0,
        "n_cls": float(m.n_cls),
    }
    reached = [c for c in m.classes if c.comb]
    if g is not None and len(reached) > 1:
        row["class_cos"] = _class_cosine(g, reached)
    return row


def _class_cosine(grad: torch.Tensor, classes: list[ChannelClass]) -> float:
    """Mean pairwise cosine between per-class channel-averaged gradient maps (flattened over B × spatial)."""
    maps = []
    for c in classes:
        idx = torch.cat([torch.arange(lo, hi) for lo, hi in c.ranges]).to(grad.device)
        maps.append(grad.detach().float().index_select(1, idx).mean(dim=1).flatten())
    sims = [float(F.cosine_similarity(a, b, dim=0)) for i, a in enumerate(maps) for b in maps[i + 1 :]]
    return statistics.fmean(sims)


def gradient_aggregates(measured: dict[str, dict[str, float]]) -> dict[str, float]:
    """Network-level measured figures, NaN-free.

    ``gp_grad_norm_mean`` / ``gp_grad_norm_cv`` (std / mean, 0.0 when the mean is 0) over weight gradient
    norms; ``gp_class_cos_mean`` over layers having ``class_cos`` — the key is omitted when no layer has two
    classes.
    """
    norms = [row["weight_grad_norm"] for row in measured.values()]
    mean = statistics.fmean(norms) if norms else 0.0
    out = {
        "gp_grad_norm_mean": mean,
        "gp_grad_norm_cv": statistics.pstdev(norms) / mean if mean > 0 else 0.0,
    }
    cos = [row["class_cos"] for row in measured.values() if "class_cos" in row]
    if cos:
        out["gp_class_cos_mean"] = statistics.fmean(cos)
    return out
