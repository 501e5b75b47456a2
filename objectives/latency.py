"""Measured inference latency under a declared, logged protocol.

A latency figure means nothing without the conditions it was taken under, so the conditions are data: a frozen
:class:`LatencyProtocol` (device, batch, dtype, input size, warm-up, repeats, threads) travels with every
:class:`LatencyResult` and is logged beside it.

How a figure is taken (see DESIGN.md, "Decisions" and "Traps"):

* The model is deep-copied, BN is folded with ``model.fuse()`` when the model offers it, and it runs in eval
  mode under ``torch.inference_mode()`` on an input ``Tensor[batch, 3, img_size, img_size]``.
* CUDA: ``cudnn.benchmark`` on (restored afterwards), a sustained warm-up of at least ``warmup`` iterations
  *and* ``warmup_seconds`` seconds so clocks settle, then CUDA events around each repeat of
  ``iters_per_repeat`` passes. With ``cuda_graph`` the pass is captured once in a CUDA graph and each iteration
  replays it: the figure is then the GPU's work without Python's per-kernel launches, which at batch 1 take about
  as long as the kernels and carry most of the run-to-run spread (what a deployment runtime that captures graphs
  sees; the eager figure is what a PyTorch program sees).
* CPU: ``protocol.threads`` threads (restored afterwards), ``time.perf_counter_ns`` around each repeat, and a
  machine-wide ``fcntl.flock`` held through warm-up and measurement so concurrent trials on one machine
  (separate processes, e.g. Ray workers) never time each other's load. The lock file is
  ``$TMPDIR/gpnas-latency.lock`` unless the environment variable ``GPNAS_LATENCY_LOCK`` names another path.
  Absolute CPU timings are still only comparable within one run on one machine.
"""

from __future__ import annotations

import copy
import difflib
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gpnas.errors import GpnasError
from gpnas.trainers.device_slot import exclusive_device

try:  # POSIX only; without it the CPU lock degrades to a no-op (see latency_lock).
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_ENV_VAR",
    "DeviceUnavailableError",
    "LatencyProtocol",
    "LatencyProtocolError",
    "LatencyResult",
    "default_lock_path",
    "latency_lock",
    "measure_latency",
]

Dtype = Literal["fp32", "fp16", "bf16"]
LOCK_ENV_VAR = "GPNAS_LATENCY_LOCK"
_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
_CUDA_WARMUP_SECONDS = 2.0


class LatencyProtocolError(GpnasError, ValueError):
    """A latency protocol field has a value that is not allowed."""


class DeviceUnavailableError(GpnasError, RuntimeError):
    """The protocol asks for a device this machine does not have."""


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LatencyProtocolError(
            f"LatencyProtocol.{name}={value!r} is not allowed: use an integer >= {minimum}."
        )


@dataclass(frozen=True)
class LatencyProtocol:
    """How a latency figure is measured; logged with every figure.

    The defaults (5 warm-up passes, 10 timed repeats of 3 passes) are the ones a search uses for every candidate
    and `gpnas latency` uses for one architecture, so the two figures are taken the same way. A search config's
    ``latency`` section holds these fields (all but ``img_size``, which is the candidate's).

    Attributes:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch: images per forward pass.
        dtype: ``"fp32"``, ``"fp16"`` (CUDA only) or ``"bf16"``.
        img_size: input side S; the input is ``Tensor[batch, 3, S, S]``.
        warmup: warm-up forward passes before timing.
        warmup_seconds: minimum warm-up duration in seconds; ``None`` means 2.0 on CUDA (sustained, so clocks
            settle) and 0.0 on CPU.
        repeats: timed repeats; each gives one per-iteration sample.
        iters_per_repeat: forward passes inside one timed repeat.
        channels_last: run model and input in ``torch.channels_last`` memory format.
        threads: CPU intra-op threads during measurement (ignored on CUDA).
        cuda_graph: CUDA only: time replays of the pass captured in a CUDA graph (see the module docstring).
    """

    device: str = "cpu"
    batch: int = 1
    dtype: Dtype = "fp32"
    img_size: int = 640
    warmup: int = 5
    warmup_seconds: float | None = None
    repeats: int = 10
    iters_per_repeat: int = 3
    channels_last: bool = False
    threads: int = 1
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise LatencyProtocolError(
                f"LatencyProtocol.device={self.device!r} is not allowed: use 'cpu', 'cuda' or 'cuda:N'."
            )
        if self.dtype not in _DTYPES:
            raise LatencyProtocolError(
                f"LatencyProtocol.dtype={self.dtype!r} is not allowed: use one of {sorted(_DTYPES)}."
            )
        if self.device == "cpu" and self.dtype == "fp16":
            raise LatencyProtocolError(
                "LatencyProtocol.dtype='fp16' is not allowed on device='cpu' (CPU half kernels are slow or "
                "missing): use 'fp32' or 'bf16', or a CUDA device."
            )
        for name, minimum in (("batch", 1), ("img_size", 1), ("warmup", 0), ("repeats", 1),
                              ("iters_per_repeat", 1), ("threads", 1)):
            _check_int(name, getattr(self, name), minimum)
        for name in ("channels_last", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise LatencyProtocolError(
                    f"LatencyProtocol.{name}={getattr(self, name)!r} is not allowed: use true or false."
                )
        if self.cuda_graph and self.device == "cpu":
            raise LatencyProtocolError(
                "LatencyProtocol.cuda_graph=True is not allowed on device='cpu' (a CUDA graph replays GPU "
                "kernels): use a CUDA device, or cuda_graph false."
            )
        seconds = self.warmup_seconds
        if seconds is None:
            seconds = 0.0 if self.device == "cpu" else _CUDA_WARMUP_SECONDS
        is_number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not is_number or not 0.0 <= seconds < float("inf"):
            raise LatencyProtocolError(
                f"LatencyProtocol.warmup_seconds={self.warmup_seconds!r} is not allowed: use a finite number "
                ">= 0 (or leave it unset for 2.0 on CUDA, 0.0 on CPU)."
            )
        object.__setattr__(self, "warmup_seconds", float(seconds))

    @property
    def is_cuda(self) -> bool:
        """True when the protocol times a CUDA device."""
        return self.device.startswith("cuda")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with every field (``warmup_seconds`` resolved)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyProtocol:
        """Build from a dict such as :meth:`to_dict` gives; unknown keys raise with the close match."""
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else f" Known keys: {known}."
                raise LatencyProtocolError(f"Unknown latency protocol key {key!r}.{hint}")
        return cls(**data)


@dataclass(frozen=True)
class LatencyResult:
    """One latency measurement and the protocol it was taken under.

    ``samples_ms`` holds one value per repeat: that repeat's elapsed time divided by ``iters_per_repeat``, in
    milliseconds. ``median_ms``, ``iqr_ms`` (75th − 25th percentile), ``mean_ms``, ``min_ms`` and ``cv``
    (population std / mean) are computed over those samples. ``lock_wait_s`` is how long the CPU measurement
    waited for the machine-wide lock (0.0 on CUDA).
    """

    median_ms: float
    iqr_ms: float
    cv: float
    mean_ms: float
    min_ms: float
    samples_ms: tuple[float, ...]
    device_name: str
    torch_version: str
    lock_wait_s: float
    protocol: LatencyProtocol = field(default_factory=LatencyProtocol)

    @classmethod
    def from_samples(
        cls, samples_ms: list[float], *, protocol: LatencyProtocol, device_name: str, lock_wait_s: float
    ) -> LatencyResult:
        """Summarise per-repeat samples (ms per iteration) into a result."""
        arr = np.asarray(samples_ms, dtype=np.float64)
        q25, median, q75 = np.percentile(arr, [25.0, 50.0, 75.0])
        mean = float(arr.mean())
        return cls(
            median_ms=float(median),
            iqr_ms=float(q75 - q25),
            cv=float(arr.std() / mean) if mean > 0 else 0.0,
            mean_ms=mean,
            min_ms=float(arr.min()),
            samples_ms=tuple(float(s) for s in arr),
            device_name=device_name,
            torch_version=torch.__version__,
            lock_wait_s=float(lock_wait_s),
            protocol=protocol,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; the protocol is nested under ``"protocol"``."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "protocol"}
        out["samples_ms"] = list(self.samples_ms)
        out["protocol"] = self.protocol.to_dict()
        return out


def default_lock_path() -> Path:
    """The machine-wide CPU timing lock file: ``$GPNAS_LATENCY_LOCK`` or ``<tmpdir>/gpnas-latency.lock``."""
    override = os.environ.get(LOCK_ENV_VAR)
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / "gpnas-latency.lock"


@contextmanager
def latency_lock(path: str | os.PathLike[str] | None = None) -> Iterator[float]:
    """Hold the machine-wide timing lock (an exclusive ``fcntl.flock``) for the duration of the block.

    Yields the seconds spent waiting for the lock. Processes that use the same path never hold it at once; the
    kernel releases it if the holder dies. Without ``fcntl`` (non-POSIX) nothing is locked and 0.0 is yielded.
    """
    lock_path = Path(path) if path is not None else default_lock_path()
    if fcntl is None:  # pragma: no cover - non-POSIX platforms
        yield 0.0
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        start = time.perf_counter()
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            with exclusive_device():  # trainers on this machine pause at their next step (device_slot.py)
                yield time.perf_counter() - start
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cpu_name() -> str:
    """The CPU model name: /proc/cpuinfo when present (``platform.processor()`` is often just the arch)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def _resolve_device(protocol: LatencyProtocol) -> torch.device:
    """The torch device for the protocol; raises :class:`DeviceUnavailableError` if this machine lacks it."""
    device = torch.device(protocol.device)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"LatencyProtocol.device={protocol.device!r} but CUDA is not available here "
            f"(torch {torch.__version__}): use device='cpu' or run on a machine with a CUDA GPU."
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailableError(
            f"LatencyProtocol.device={protocol.device!r} but only {count} CUDA device(s) exist: "
            f"use an index in 0..{count - 1}."
        )
    return torch.device("cuda", index)


def _prepare(
    model: nn.Module, protocol: LatencyProtocol, device: torch.device
) -> tuple[nn.Module, torch.Tensor]:
    """A fused, eval-mode copy of ``model`` and an input ``Tensor[batch, 3, S, S]`` on device and dtype."""
    work = copy.deepcopy(model).eval()
    fuse = getattr(work, "fuse", None)
    if callable(fuse):
        fused = fuse()
        if isinstance(fused, nn.Module):  # fuse() may fold in place and return None
            work = fused
    dtype = _DTYPES[protocol.dtype]
    memory_format = torch.channels_last if protocol.channels_last else torch.contiguous_format
    work = work.to(device=device, dtype=dtype, memory_format=memory_format).eval()
    generator = torch.Generator().manual_seed(0)
    size = protocol.img_size
    x = torch.randn(protocol.batch, 3, size, size, generator=generator)
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
    return work, x


def _warm_up(run: Any, protocol: LatencyProtocol, sync: Any) -> None:
    """Run at least ``warmup`` passes and at least ``warmup_seconds`` seconds."""
    for _ in range(protocol.warmup):
        run()
    sync()
    deadline = time.perf_counter() + float(protocol.warmup_seconds or 0.0)
    while time.perf_counter() < deadline:
        for _ in range(protocol.iters_per_repeat):
            run()
        sync()


def _time_cpu(model: nn.Module, x: torch.Tensor, protocol: LatencyProtocol) -> tuple[list[float], float]:
    """Per-repeat ms/iteration on CPU under the machine-wide lock; also returns the lock wait in seconds."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(protocol.threads)
    samples: list[float] = []
    try:
        with latency_lock() as waited:
            _warm_up(lambda: model(x), protocol, lambda: None)
            for _ in range(protocol.repeats):
                start = time.perf_counter_ns()
                for _ in range(protocol.iters_per_repeat):
                    model(x)
                elapsed_ns = time.perf_counter_ns() - start
                samples.append(elapsed_ns / 1e6 / protocol.iters_per_repeat)
    finally:
        torch.set_num_threads(old_threads)
    return samples, waited


def _captured(model: nn.Module, x: torch.Tensor) -> Any:
    """One forward pass of ``model`` on ``x`` captured in a CUDA graph; -> the graph's replay (no arguments)."""
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # cuDNN picks its algorithms and the allocator settles before the capture
        for _ in range(3):
            model(x)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    return graph.replay


def _time_cuda(model: nn.Module, x: torch.Tensor, protocol: LatencyProtocol) -> list[float]:
    """Per-repeat ms/iteration on CUDA, timed with CUDA events after a sustained warm-up."""
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    samples: list[float] = []
    try:
        with torch.cuda.device(x.device):
            sync = torch.cuda.synchronize
            run = _captured(model, x) if protocol.cuda_graph else (lambda: model(x))
            _warm_up(run, protocol, sync)
            for _ in range(protocol.repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(protocol.iters_per_repeat):
                    run()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / protocol.iters_per_repeat)
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
    return samples


def measure_latency(model: nn.Module, protocol: LatencyProtocol | None = None) -> LatencyResult:
    """Measure the forward latency of ``model`` on ``Tensor[batch, 3, S, S]`` under ``protocol``.

    The caller's model is not modified: a deep copy is fused, cast and timed. Raises
    :class:`DeviceUnavailableError` when the protocol names a CUDA device this machine lacks.
    """
    protocol = protocol if protocol is not None else LatencyProtocol()
    device = _resolve_device(protocol)
    work, x = _prepare(model, protocol, device)
    with torch.inference_mode():
        if device.type == "cuda":
            samples = _time_cuda(work, x, protocol)
            device_name, waited = torch.cuda.get_device_name(device), 0.0
        else:
            samples, waited = _time_cpu(work, x, protocol)
            device_name = cpu_name()
    return LatencyResult.from_samples(samples, protocol=protocol, device_name=device_name, lock_wait_s=waited)
