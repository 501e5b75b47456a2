"""Gradient-path graph extraction (ARCH_SPEC §7.1): a torch.fx trace reduced to weighted layers and channel
feeds.

Every weighted layer (a ConvUnit, Conv2d or Linear call) becomes one node. The parameter-free ops between
weighted layers are folded into *feeds*: "channels [lo, hi) of this layer's input come from channels [plo,
plo + hi - lo) of that layer's output", with a flag saying whether gradient flows back along the feed (it
does not through ``detach``). The loss is a virtual consumer fed by every model output. The metrics in
``gradient_path.py`` only ever see this reduced graph, so a new op only has to be taught here, and an op
nobody taught raises ``GraphError`` instead of being silently mis-analysed.

Feeds are computed once per fx node in forward topological order, so diamonds of parameter-free ops (SPP
pools, residual streams) cost time linear in the number of feeds rather than in the number of paths.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from gpnas.errors import GpnasError
from gpnas.search_space.modules.common import IDENTITY_LEAVES, WEIGHTED_LEAVES, MaskedAdd

#: Name of the virtual loss node (the gradient source of every head).
LOSS = "LOSS"


class GraphError(GpnasError, ValueError):
    """The model cannot be reduced to a gradient-path graph (unknown op, untraceable forward, ...)."""


@dataclass(frozen=True)
class Feed:
    """Consumer input channels [lo, hi) carry producer output channels [plo, plo + hi - lo)."""

    producer: str
    lo: int
    hi: int
    plo: int
    grad: bool = True


@dataclass(frozen=True)
class WeightedLayer:
    """One weighted layer: ``feeds`` say where each of its input channels comes from (forward edges)."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    groups: int
    feeds: tuple[Feed, ...]


@dataclass(frozen=True)
class LayerGraph:
    """Weighted layers in forward topological order, plus the feeds of the virtual loss node (the outputs)."""

    layers: tuple[WeightedLayer, ...]
    loss_feeds: tuple[Feed, ...]


# Parameter-free (or channel-wise) modules whose channel map is the identity.
_IDENTITY_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.GELU,
    nn.Tanh, nn.ELU, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    *IDENTITY_LEAVES,
)  # fmt: skip
_ELEMENTWISE_FUNCS = {operator.add, operator.sub, operator.mul, operator.truediv,
                      torch.add, torch.sub, torch.mul, torch.div}  # fmt: skip
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div"}
# Ops whose first argument is the only routed tensor and which keep dims 0 and 1.
_IDENTITY_FUNCS = {F.interpolate, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                   F.relu, F.silu, F.leaky_relu, F.hardswish, F.mish, F.gelu, torch.relu, torch.sigmoid,
                   torch.tanh, torch.clone}  # fmt: skip
_IDENTITY_METHODS = {"contiguous", "clone", "float", "half", "to", "type_as", "sigmoid", "relu", "tanh"}
_RESHAPE_FUNCS = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze"}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_CHUNK_FUNCS = {torch.chunk, torch.split}
_CHUNK_METHODS = {"chunk", "split"}


class _Tracer(fx.Tracer):
    """Stops at weighted layers, identity leaves, MaskedAdd and torch.nn's own modules."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (*WEIGHTED_LEAVES, *IDENTITY_LEAVES, MaskedAdd)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass
class _Val:
    """What the analysis knows about one tensor (or tuple of tensors) an fx node produces."""

    shape: tuple[int, ...]
    feeds: tuple[Feed, ...]
    aligned: bool = True  # dim 1 still indexes the producers' channels (False after a layout-changing view)
    pieces: tuple[tuple[int, int], ...] | None = None  # channel ranges of a chunk/split tuple

    @property
    def channels(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else 1


def _compact(feeds: Iterable[Feed]) -> tuple[Feed, ...]:
    """Drop duplicates and join feeds that continue each other (same producer, contiguous on both sides)."""
    out: list[Feed] = []
    for f in sorted(set(feeds), key=lambda f: (f.producer, f.grad, f.lo, f.plo)):
        last = out[-1] if out else None
        if (last is not None and last.producer == f.producer and last.grad == f.grad and last.hi == f.lo
                and last.plo + (last.hi - last.lo) == f.plo):  # fmt: skip
            out[-1] = Feed(f.producer, last.lo, f.hi, last.plo, f.grad)
        else:
            out.append(f)
    return tuple(out)


def _slice_feeds(feeds: Iterable[Feed], lo: int, hi: int, shift: int) -> list[Feed]:
    """Feeds restricted to channels [lo, hi), then moved by ``shift``."""
    out = []
    for f in feeds:
        a, b = max(f.lo, lo), min(f.hi, hi)
        if a < b:
            out.append(Feed(f.producer, a + shift, b + shift, f.plo + a - f.lo, f.grad))
    return out


def _describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
    return f"fx node {node.name!r} ({node.op} {target})"


def _layer_kind(mod: nn.Module) -> tuple[str, int, int]:
    """(kind, groups, in_channels) of a weighted leaf."""
    conv = mod.conv if hasattr(mod, "conv") and isinstance(mod.conv, nn.Conv2d) else mod
    if isinstance(conv, nn.Conv2d):
        k, s = conv.kernel_size, conv.stride
        kind = f"{type(mod).__name__} {k[0]}x{k[1]}/{s[0]}" + (f" g{conv.groups}" if conv.groups > 1 else "")
        return kind, conv.groups, conv.in_channels
    if isinstance(mod, nn.Linear):
        return "Linear", 1, mod.in_features
    raise GraphError(f"weighted leaf {type(mod).__name__} has no Conv2d or Linear to analyse")


class _Extractor:
    """Walks the fx graph forward once, computing the feeds of every tensor."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.vals: dict[fx.Node, _Val] = {}
        self.layers: list[WeightedLayer] = []
        self.calls: dict[str, int] = {}

    def run(self) -> LayerGraph:
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        needed = _ancestors(output)
        for node in self.gm.graph.nodes:
            if node in needed and node.op != "output" and "tensor_meta" in node.meta:
                self.vals[node] = self._visit(node)
        outs: list[fx.Node] = []
        fx.node.map_arg(output.args, outs.append)
        loss = _compact(f for n in outs if n in self.vals for f in self.vals[n].feeds)
        if not any(f.grad for f in loss):
            raise GraphError("the model output does not depend (with gradient) on any weighted layer")
        return LayerGraph(tuple(self.layers), loss)

    def _val(self, node: fx.Node, arg: object, *, aligned: bool = True) -> _Val:
        if not isinstance(arg, fx.Node) or arg not in self.vals:
            raise GraphError(f"{_describe(node)}: expected a tensor argument, got {arg!r}")
        val = self.vals[arg]
        if aligned and not val.aligned:
            raise GraphError(
                f"{_describe(node)} reads a tensor whose channel layout was changed by view/permute/reshape; "
                "such ops are only supported on the way to the model output (detect head)"
            )
        return val

    def _visit(self, node: fx.Node) -> _Val:
        meta = node.meta["tensor_meta"]
        shape = tuple(meta.shape) if hasattr(meta, "shape") else ()
        if node.op in ("placeholder", "get_attr"):
            return _Val(shape, ())
        if node.op == "call_module":
            return self._module(node, self.gm.get_submodule(str(node.target)), shape)
        if node.op in ("call_function", "call_method"):
            return self._function(node, shape)
        raise GraphError(f"{_describe(node)}: unsupported fx op kind")

    def _module(self, node: fx.Node, mod: nn.Module, shape: tuple[int, ...]) -> _Val:
        if isinstance(mod, WEIGHTED_LEAVES):
            return self._weighted(node, mod, shape)
        if isinstance(mod, MaskedAdd):
            fx_arg, id_arg = _args(node, "fx", "identity")
            fval, ival = self._val(node, fx_arg), self._val(node, id_arg)
            if fval.channels != shape[1] or mod.k > ival.channels:
                raise GraphError(f"{_describe(node)}: MaskedAdd shapes {fval.shape} + {ival.shape} -> {shape}")
            return _Val(shape, _compact([*fval.feeds, *_slice_feeds(ival.feeds, 0, mod.k, 0)]))
        if isinstance(mod, _IDENTITY_MODULES):
            return self._identity(node, _first(node), shape)
        if isinstance(mod, nn.Flatten):
            return self._reshape(node, shape, keeps_channels=None)
        raise GraphError(
            f"{_describe(node)}: module type {type(mod).__name__} has no gradient-path channel map; "
            "register it in objectives/_gp_graph.py"
        )

    def _weighted(self, node: fx.Node, mod: nn.Module, shape: tuple[int, ...]) -> _Val:
        kind, groups, in_channels = _layer_kind(mod)
        val = self._val(node, _first(node))
        if isinstance(mod, nn.Linear) and len(val.shape) != 2:
            raise GraphError(f"{_describe(node)}: Linear is only analysed on [B, features] inputs, got {val.shape}")
        if val.channels != in_channels:
            raise GraphError(f"{_describe(node)}: input has {val.channels} channels, layer expects {in_channels}")
        call = self.calls.get(str(node.target), 0)
        self.calls[str(node.target)] = call + 1
        name = str(node.target) if call == 0 else f"{node.target}#{call}"
        self.layers.append(WeightedLayer(name, kind, in_channels, shape[1], groups, val.feeds))
        return _Val(shape, (Feed(name, 0, shape[1], 0),))

    def _identity(self, node: fx.Node, arg: object, shape: tuple[int, ...]) -> _Val:
        val = self._val(node, arg, aligned=False)
        same = val.shape == shape if not val.aligned else val.shape[:2] == shape[:2]
        if not same:
            raise GraphError(f"{_describe(node)}: channel-wise op changed the shape {val.shape} -> {shape}")
        return _Val(shape, val.feeds, val.aligned)

    def _reshape(self, node: fx.Node, shape: tuple[int, ...], keeps_channels: bool | None) -> _Val:
        val = self._val(node, _first(node), aligned=False)
        if keeps_channels is None:  # a view keeps channel indices iff it keeps the sizes of dims 0 and 1
            keeps_channels = val.shape[:2] == shape[:2]
        return _Val(shape, val.feeds, val.aligned and keeps_channels)

    def _function(self, node: fx.Node, shape: tuple[int, ...]) -> _Val:
        method = node.op == "call_method"
        target = node.target
        if (target in _ELEMENTWISE_METHODS) if method else (target in _ELEMENTWISE_FUNCS):
            return self._elementwise(node, shape)
        if (target in _IDENTITY_METHODS) if method else (target in _IDENTITY_FUNCS):
            return self._identity(node, _first(node), shape)
        if (target in _RESHAPE_METHODS) if method else (target in _RESHAPE_FUNCS):
            return self._reshape(node, shape, keeps_channels=None)
        if target == "permute" or target is torch.permute:
            dims = node.args[1:] if method else node.args[1]
            dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else tuple(dims)
            return self._reshape(node, shape, keeps_channels=tuple(d % len(shape) for d in dims[:2]) == (0, 1))
        if target == "transpose" or target is torch.transpose:
            swapped = {d % len(shape) for d in node.args[1:3]}
            return self._reshape(node, shape, keeps_channels=not swapped & {0, 1})
        if target == "detach" or target is torch.detach:
            val = self._val(node, _first(node), aligned=False)
            return _Val(shape, tuple(Feed(f.producer, f.lo, f.hi, f.plo, False) for f in val.feeds), val.aligned)
        if not method and target in _CAT_FUNCS:
            return self._cat(node, shape)
        if (target in _CHUNK_METHODS) if method else (target in _CHUNK_FUNCS):
            return self._chunk(node)
        if not method and target is operator.getitem:
            return self._getitem(node, shape)
        raise GraphError(
            f"{_describe(node)} has no gradient-path channel map; supported: add/sub/mul/div on equal "
            "shapes, cat/chunk/split/slicing on dim 1, interpolate, pooling, activations, "
            "view/permute/reshape at the output, detach"
        )

    def _elementwise(self, node: fx.Node, shape: tuple[int, ...]) -> _Val:
        feeds: list[Feed] = []
        aligned = True
        for arg in [*node.args, *node.kwargs.values()]:
            if not isinstance(arg, fx.Node) or arg not in self.vals:
                continue  # numbers, shapes
            val = self.vals[arg]
            if val.feeds and val.shape != shape:
                raise GraphError(
                    f"{_describe(node)}: broadcasting {val.shape} to {shape} is not a channel map; "
                    "only equal shapes are supported for tensors that carry gradient"
                )
            if val.feeds:
                feeds.extend(val.feeds)
                aligned = aligned and val.aligned
        return _Val(shape, _compact(feeds), aligned)

    def _cat(self, node: fx.Node, shape: tuple[int, ...]) -> _Val:
        tensors = _first(node)
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(dim, int) or dim % len(shape) != 1:
            raise GraphError(f"{_describe(node)}: only concatenation on dim 1 (channels) is supported, got {dim}")
        feeds: list[Feed] = []
        offset = 0
        for arg in tensors:
            val = self._val(node, arg)
            feeds.extend(_slice_feeds(val.feeds, 0, val.channels, offset))
            offset += val.channels
        return _Val(shape, _compact(feeds))

    def _chunk(self, node: fx.Node) -> _Val:
        val = self._val(node, _first(node))
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if not isinstance(dim, int) or dim % len(val.shape) != 1:
            raise GraphError(f"{_describe(node)}: only chunk/split on dim 1 (channels) is supported, got {dim}")
        pieces, lo = [], 0
        for meta in node.meta["tensor_meta"]:
            pieces.append((lo, lo + meta.shape[1]))
            lo += meta.shape[1]
        return _Val(val.shape, val.feeds, True, tuple(pieces))

    def _getitem(self, node: fx.Node, shape: tuple[int, ...]) -> _Val:
        val = self._val(node, _first(node))
        index = node.args[1]
        if val.pieces is not None:
            lo, hi = val.pieces[index]  # type: ignore[index]
            return _Val(shape, _compact(_slice_feeds(val.feeds, lo, hi, -lo)))
        lo, hi = _channel_slice(node, index, val.shape)
        return _Val(shape, _compact(_slice_feeds(val.feeds, lo, hi, -lo)))


def _channel_slice(node: fx.Node, index: object, shape: tuple[int, ...]) -> tuple[int, int]:
    """[lo, hi) of ``x[index]`` on dim 1; dim 0 must be whole, later dims may be sliced (spatial only)."""
    items = index if isinstance(index, tuple) else (index,)
    if items.count(Ellipsis) > 1 or any(i is None for i in items):
        raise GraphError(f"{_describe(node)}: unsupported index {index!r}")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = (slice(None),) * (len(shape) - len(items) + 1)
        items = items[:at] + fill + items[at + 1 :]
    items = items + (slice(None),) * (len(shape) - len(items))
    whole = slice(None)
    if not all(isinstance(i, slice) for i in items) or items[0] != whole:
        raise GraphError(f"{_describe(node)}: index {index!r} must keep dims 0 and 1 (use slices, no integers)")
    lo, hi, step = items[1].indices(shape[1])
    if step != 1 or any(isinstance(v, fx.Node) for i in items for v in (i.start, i.stop, i.step)):
        raise GraphError(f"{_describe(node)}: channel slice {items[1]!r} must be static with step 1")
    return lo, max(lo, hi)


def _first(node: fx.Node) -> object:
    """The routed tensor of an op: its first argument, positional or keyword."""
    if node.args:
        return node.args[0]
    if node.kwargs:
        return next(iter(node.kwargs.values()))
    raise GraphError(f"{_describe(node)} has no arguments")


def _args(node: fx.Node, *names: str) -> list[object]:
    """Positional-or-keyword arguments of a module call, in the order of ``names``."""
    return [node.args[i] if i < len(node.args) else node.kwargs[n] for i, n in enumerate(names)]


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _all_modules_train(model: nn.Module, mode: bool) -> dict[nn.Module, bool]:
    before = {m: m.training for m in model.modules()}
    model.train(mode)
    return before


def extract_graph(model: nn.Module, input_shape: tuple[int, ...]) -> LayerGraph:
    """Trace ``model`` in training mode and reduce it to a :class:`LayerGraph`.

    ``input_shape`` ([B, C, H, W]) only feeds ShapeProp, which runs once (single-threaded) in eval mode under
    no_grad so BN running statistics are untouched; every module's train/eval flag and the torch thread count
    are restored afterwards.
    """
    before = _all_modules_train(model, True)
    try:
        tracer = _Tracer()
        try:
            graph = tracer.trace(model)
        except fx.proxy.TraceError as exc:
            raise GraphError(
                f"torch.fx could not trace {type(model).__name__}: {exc}. The forward must not branch on "
                "tensor values (no data-dependent Python control flow)"
            ) from exc
        gm = fx.GraphModule(tracer.root, graph)
        model.eval()
        param = next(model.parameters(), None)
        kwargs = {"device": param.device, "dtype": param.dtype} if param is not None else {}
        # The example tensors are tiny: one thread is faster, and on a busy CPU a multi-threaded pass can be
        # 30× slower from OpenMP contention.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(input_shape, **kwargs))
        finally:
            torch.set_num_threads(threads)
    finally:
        for m, mode in before.items():
            m.training = mode
    return _Extractor(gm).run()
