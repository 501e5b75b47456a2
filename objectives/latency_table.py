"""Predicted latency: each distinct layer of the space timed once, in isolation, per device; a candidate's latency
is the sum over the layers of its fused model plus a fitted per-network overhead.

Why: a figure measured end to end while another trial trains on the same machine moves by 30 % (CV 0.31 measured
on the demo search); a table measured once, quietly, and then only read, gives the same prediction on a quiet or
a loaded machine. Hardware-aware NAS does the same with per-operator lookup tables (FBNet, ProxylessNAS).

* **A layer** is one node of the fused model's ``torch.fx`` graph that produces a tensor (a conv with its folded
  BN, an activation, a pool, an upsample, a concat, an add, the head's reshapes). Its key is the operation with
  its hyper-parameters and the shapes and dtypes of its inputs, so equal layers of different candidates share
  one entry.
* **An entry** is the minimum over three rounds of the median over ``protocol.repeats`` of the mean time of a
  batch of calls of that block alone, on random inputs of its shapes, under the protocol's device, dtype and
  threads, holding the machine-wide timing lock (:func:`gpnas.objectives.latency.latency_lock`, which also pauses
  the trainers of this machine).
* **The fit** ``ms = scale × Σ entries + c0`` is fitted by least squares on the end-to-end measurements of the
  calibration networks (the four nano presets at widths 0.0625 and 0.125), once per table. ``c0`` is what calling
  the network costs beyond its blocks; ``scale`` (measured ≈ 1.2–1.3 on CPU) is what a block costs more inside a
  network than alone, where its weights and inputs stay in cache across repeats. Without the scale, the sum
  ranked candidates as well but missed their absolute latency by a share that grew with the network.
* **The table** is a JSON file per device fingerprint (CPU model or GPU name, torch version, threads, dtype,
  batch, memory format) under ``<cache>/latency/``, shared by every search on the machine; missing entries are
  measured on demand and added. A corrupt file is rebuilt with a warning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from gpnas.objectives.latency import LatencyProtocol, cpu_name, latency_lock, measure_latency
from gpnas.search_space.modules.common import MaskedAdd

__all__ = ["CALIBRATION", "CALIBRATION_WIDTHS", "LatencyTable", "Prediction", "cache_dir", "fingerprint",
           "layer_calls"]

#: The networks whose end-to-end latency fits scale and overhead (at the protocol's input size), each at these widths.
CALIBRATION = ("yolor-v3-nano", "yolor-prn-nano", "yolor-csp-nano", "yolor-elan-nano")
CALIBRATION_WIDTHS = (0.0625, 0.125)
_TABLE_VERSION = 1
_MIN_REPEAT_SECONDS = 2e-4  # a timed repeat of one layer lasts at least this long (timer and loop noise)
#: Each entry (and each calibration network) is the minimum over this many rounds of median timings: on a shared
#: machine noise only ever adds time, and a burst of it then spoils one round, not the table.
_ROUNDS = 3


def cache_dir() -> Path:
    """``$GPNAS_CACHE/latency`` (default ``~/.cache/gpnas/latency``)."""
    root = os.environ.get("GPNAS_CACHE") or Path.home() / ".cache" / "gpnas"
    return Path(root) / "latency"


def fingerprint(protocol: LatencyProtocol) -> dict[str, Any]:
    """What a table entry depends on, besides the layer: the device, the software and the protocol's settings."""
    device = (torch.cuda.get_device_name(torch.device(protocol.device)) if protocol.device.startswith("cuda")
              else cpu_name())
    return {"device": device, "device_type": protocol.device.split(":")[0], "torch": torch.__version__,
            "threads": protocol.threads if protocol.device == "cpu" else None, "dtype": protocol.dtype,
            "batch": protocol.batch, "channels_last": protocol.channels_last, "warmup": protocol.warmup,
            "repeats": protocol.repeats, "iters_per_repeat": protocol.iters_per_repeat, "version": _TABLE_VERSION,
            # only when set, so the tables written before the field existed keep their fingerprint
            **({"cuda_graph": True} if protocol.cuda_graph else {})}


@dataclass(frozen=True)
class Layer:
    """One layer of a traced model: its table key and how to run it alone (built only when it is timed)."""

    key: str
    build: Callable[[], Callable[[], Any]]


@dataclass(frozen=True)
class Prediction:
    ms: float  # scale × layers_ms + overhead_ms
    layers_ms: float  # the sum of the entries
    scale: float
    overhead_ms: float
    n_layers: int
    timed_now: int  # entries this prediction had to measure (0 once the table holds the space)


# ------------------------------------------------------------------------------------------------ layers
#: The units of a detector that are timed whole: the stem, each backbone stage, the neck, the heads.
_BLOCKS = re.compile(r"^(stem|neck|detect|proto|stages\.\d+)$")


class _Tracer(fx.Tracer):
    """A detector's blocks (stem, stages, neck, heads) are the table's layers: timed whole, they keep the cost of
    their own Python and memory traffic, which a sum of single ops misses (measured: single-op sums explained 50–65 %
    of the end-to-end time, varying by candidate). Other models: torch.nn's modules and MaskedAdd."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _BLOCKS.match(module_qualified_name) or isinstance(m, MaskedAdd):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _ValueProp(ShapeProp):
    """ShapeProp that also keeps each node's small Python results (sizes, ints), which later nodes take as
    arguments (``x.view(b, na, no, h, w)``)."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if not isinstance(result, torch.Tensor) and not _holds_tensor(result):
            n.meta["py_value"] = result
        return result


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (list, tuple)) and any(_holds_tensor(v) for v in value)


def _describe(value: Any) -> str:
    if isinstance(value, fx.Node):
        return _describe(value.meta["py_value"] if "py_value" in value.meta else value.meta.get("tensor_meta"))
    if isinstance(value, TensorMetadata):
        return f"T{tuple(value.shape)}:{str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_describe(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_describe(v)}" for k, v in sorted(value.items())) + "}"
    return repr(value)


def _materialise(value: Any, device: torch.device, generator: torch.Generator) -> Any:
    """Arguments of a layer, with every tensor replaced by a random one of its shape, dtype and layout."""
    if isinstance(value, fx.Node):
        meta = value.meta["py_value"] if "py_value" in value.meta else value.meta.get("tensor_meta")
        return _materialise(meta, device, generator)
    if isinstance(value, TensorMetadata):
        t = torch.randn(tuple(value.shape), generator=generator, dtype=torch.float32)
        return t.to(device=device, dtype=value.dtype).contiguous(
            memory_format=value.memory_format or torch.contiguous_format)
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return type(value)(_materialise(v, device, generator) for v in value)
    return value


def _node_layer(gm: fx.GraphModule, node: fx.Node, device: torch.device) -> Layer | None:
    if node.op not in ("call_module", "call_function", "call_method"):
        return None
    if "py_value" in node.meta or node.meta.get("tensor_meta") is None:
        return None  # sizes and other Python values: no work of their own
    if node.op != "call_module" and not isinstance(node.meta["tensor_meta"], TensorMetadata):
        return None  # getitem of a list and the like
    inputs = _describe(node.args) + _describe(node.kwargs)
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        structure = hashlib.sha256(repr(module).encode()).hexdigest()[:16]  # every sub-layer's configuration
        key = f"{type(module).__name__}#{structure}|{inputs}"
    else:
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
        key = f"{node.op}:{name}|{inputs}"

    def build() -> Callable[[], Any]:
        generator = torch.Generator().manual_seed(0)
        args = _materialise(node.args, device, generator)
        kwargs = {k: _materialise(v, device, generator) for k, v in node.kwargs.items()}
        if node.op == "call_module":
            module = copy.deepcopy(gm.get_submodule(str(node.target)))
            return lambda: module(*args, **kwargs)
        if node.op == "call_method":
            return lambda: getattr(args[0], str(node.target))(*args[1:], **kwargs)
        return lambda: node.target(*args, **kwargs)  # type: ignore[operator]

    return Layer(key, build)


def layer_calls(model: nn.Module, protocol: LatencyProtocol) -> list[Layer]:
    """The layers of ``model``'s fused, eval-mode copy on the protocol's device and dtype, in graph order."""
    from gpnas.objectives.latency import _prepare, _resolve_device

    device = _resolve_device(protocol)
    work, x = _prepare(model, protocol, device)
    gm = fx.GraphModule(work, _Tracer().trace(work))
    with torch.inference_mode():
        _ValueProp(gm).propagate(x)
    return [layer for node in gm.graph.nodes if (layer := _node_layer(gm, node, device)) is not None]


# ------------------------------------------------------------------------------------------------ timing
def _time_layer(run: Callable[[], Any], protocol: LatencyProtocol, sync: Callable[[], None]) -> float:
    """Median ms of one call over ``protocol.repeats`` repeats of a batch long enough to time reliably."""
    for _ in range(max(1, protocol.warmup)):
        run()
    sync()
    start = time.perf_counter()
    run()
    sync()
    once = max(time.perf_counter() - start, 1e-7)
    iters = max(protocol.iters_per_repeat, math.ceil(_MIN_REPEAT_SECONDS / once))
    samples = []
    for _ in range(protocol.repeats):
        start = time.perf_counter_ns()
        for _ in range(iters):
            run()
        sync()
        samples.append((time.perf_counter_ns() - start) / 1e6 / iters)
    return statistics.median(samples)


@contextmanager
def _timing_conditions(protocol: LatencyProtocol) -> Iterator[Callable[[], None]]:
    """The protocol's threads, inference mode and the machine-wide lock; yields the device sync."""
    cuda = protocol.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(protocol.threads)
    try:
        with latency_lock(), torch.inference_mode():
            yield sync
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ the table
class LatencyTable:
    """``LatencyTable.load(protocol)``: the entries (layer key -> ms) and the fitted overhead of one device
    fingerprint; :meth:`predict` fills what a model needs and saves the file."""

    def __init__(self, protocol: LatencyProtocol, path: Path | None = None) -> None:
        self.protocol = protocol
        self.fingerprint = fingerprint(protocol)
        digest = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        self.path = path or cache_dir() / f"{digest}.json"
        self.entries: dict[str, float] = {}
        self.overhead: tuple[float, float] | None = None  # (scale, c0 ms)
        self.calibration: list[tuple[float, float]] = []  # (Σ entries, measured ms) per network, when fitted here

    @classmethod
    def load(cls, protocol: LatencyProtocol, path: Path | None = None) -> LatencyTable:
        table = cls(protocol, path)
        if not table.path.is_file():
            return table
        try:
            data = json.loads(table.path.read_text())
            if data.get("fingerprint") != table.fingerprint:
                raise ValueError("its fingerprint is another device's")
            table.entries = {str(k): float(v) for k, v in data["entries"].items()}
            overhead = data.get("overhead")
            table.overhead = (float(overhead[0]), float(overhead[1])) if overhead else None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            warnings.warn(f"latency table {table.path} is unreadable ({err}); it is rebuilt", stacklevel=2)
            table.entries, table.overhead = {}, None
        return table

    def save(self) -> None:
        """Write the table, merged with entries another process added meanwhile (trials share the file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            with warnings.catch_warnings():  # an unreadable file was reported when it was loaded: replace it
                warnings.simplefilter("ignore")
                on_disk = LatencyTable.load(self.protocol, self.path)
            self.entries = {**on_disk.entries, **self.entries}
            self.overhead = self.overhead or on_disk.overhead
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "overhead": self.overhead,
                                   "entries": self.entries}, indent=0, sort_keys=True))
        tmp.replace(self.path)  # atomic: a concurrent reader sees the old or the new table, never half of one

    def _ensure(self, layers: list[Layer]) -> int:
        """Time the layers the table lacks (once each); -> how many were timed."""
        missing = {layer.key: layer for layer in layers if layer.key not in self.entries}
        if not missing:
            return 0
        runs = {key: layer.build() for key, layer in missing.items()}
        with _timing_conditions(self.protocol) as sync:
            for _ in range(_ROUNDS):  # rounds over all missing entries: a burst of noise hits one round of each
                for key, run in runs.items():
                    ms = _time_layer(run, self.protocol, sync)
                    self.entries[key] = min(ms, self.entries.get(key, math.inf))
        return len(missing)

    def layers_sum(self, model: nn.Module) -> tuple[float, int, int]:
        """(sum of the entries in ms, number of layers, entries timed now) of ``model``."""
        layers = layer_calls(model, self.protocol)
        timed = self._ensure(layers)
        return float(sum(self.entries[layer.key] for layer in layers)), len(layers), timed

    def calibrate(self) -> None:
        """Fit the overhead on the calibration networks: end-to-end median vs the sum of their entries."""
        from gpnas.search_space.builder import build_detector
        from gpnas.search_space.presets import get_preset

        reference = replace(self.protocol, repeats=3 * self.protocol.repeats)  # the fit is only as good as these
        models = [build_detector(get_preset(name).replace(width_multiple=width))
                  for name in CALIBRATION for width in CALIBRATION_WIDTHS]
        totals = [self.layers_sum(model)[0] for model in models]
        quiet = [math.inf] * len(models)
        for _ in range(_ROUNDS):  # interleaved, as the entries: a burst of noise spoils one round of each network
            for i, model in enumerate(models):
                quiet[i] = min(quiet[i], measure_latency(model, reference).median_ms)
        rows = list(zip(totals, quiet, strict=True))
        self.calibration = rows
        a = np.array([[total, 1.0] for total, _ in rows])
        coef, *_ = np.linalg.lstsq(a, np.array([measured for _, measured in rows]), rcond=None)
        self.overhead = (float(coef[0]), float(coef[1]))

    def predict(self, model: nn.Module) -> Prediction:
        """Predicted latency of ``model`` under the table's protocol (its input size included)."""
        if self.overhead is None:
            self.calibrate()
        total, n_layers, timed = self.layers_sum(model)
        assert self.overhead is not None
        scale, overhead = self.overhead
        if timed or not self.path.is_file():
            self.save()
        return Prediction(ms=scale * total + overhead, layers_ms=total, scale=scale, overhead_ms=overhead,
                          n_layers=n_layers, timed_now=timed)
