"""Running an exported ONNX model with onnxruntime: a session, its outputs as torch tensors, and its latency under
the same :class:`~gpnas.objectives.latency.LatencyProtocol` as the torch models (so runtimes can be compared).

onnxruntime is an optional dependency (the ``deploy`` extra, which ``make setup`` installs); without it these
functions say how to install it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpnas.errors import ConfigError, GpnasError
from gpnas.objectives.latency import LatencyProtocol, LatencyResult, _warm_up, cpu_name, latency_lock

__all__ = ["input_shape", "measure_onnx_latency", "onnx_metadata", "onnx_session", "run_onnx"]


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise GpnasError("onnxruntime is not installed: `pip install 'gradpath-nas[deploy]'` (make setup installs "
                         "it)") from None
    return onnxruntime


def onnx_session(path: Path | str, *, threads: int = 1) -> Any:
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads (one inter-op thread)."""
    ort = _ort()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for an unreadable model
        raise ConfigError(f"{path} is not a model onnxruntime can load ({type(err).__name__}: {err})") from None


def input_shape(session: Any) -> list[int | str]:
    """The model's input shape, a name where it is dynamic (e.g. ``['batch', 3, 'size', 'size']``)."""
    return list(session.get_inputs()[0].shape)


def onnx_metadata(session: Any) -> dict[str, str]:
    """The model's ``metadata_props`` (key -> value), e.g. the spec a gpnas export writes there."""
    return dict(session.get_modelmeta().custom_metadata_map)


def run_onnx(session: Any, images: torch.Tensor) -> list[torch.Tensor]:
    """images: Tensor[B, 3, S, S] float32 -> the model's outputs as torch tensors, in the graph's order."""
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: images.detach().cpu().float().contiguous().numpy()})
    return [torch.from_numpy(np.asarray(o)) for o in outputs]


def _concrete(shape: list[int | str], protocol: LatencyProtocol) -> tuple[int, ...]:
    """The input shape the protocol asks for; a fixed dimension of the model that differs is a clear error."""
    wanted = (protocol.batch, 3, protocol.img_size, protocol.img_size)
    for axis, (have, want) in enumerate(zip(shape, wanted, strict=True)):
        if isinstance(have, int) and have != want:
            what = ("batch", "channels", "height", "width")[axis]
            raise ConfigError(f"the ONNX model's {what} is fixed at {have}, but the protocol asks for {want}: "
                              f"pass --{'batch' if axis == 0 else 'img'} {have}, or export with a dynamic "
                              f"{'batch' if axis == 0 else 'size'}")
    return wanted


def measure_onnx_latency(path: Path | str, protocol: LatencyProtocol) -> LatencyResult:
    """Latency of the ONNX model at ``path`` with onnxruntime on CPU under ``protocol``: the same warm-up,
    repeats, iterations per repeat, seeded input and machine-wide lock as :func:`measure_latency`."""
    if protocol.is_cuda:
        raise ConfigError("ONNX latency is measured with onnxruntime's CPU provider here; use --device cpu")
    if protocol.dtype != "fp32":
        raise ConfigError(f"an ONNX export is fp32; measure it with --dtype fp32 (got {protocol.dtype})")
    session = onnx_session(path, threads=protocol.threads)
    shape = _concrete(input_shape(session), protocol)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).numpy()
    feed = {session.get_inputs()[0].name: x}

    def run() -> None:
        session.run(None, feed)

    samples: list[float] = []
    with latency_lock() as waited:
        _warm_up(run, protocol, lambda: None)
        for _ in range(protocol.repeats):
            start = time.perf_counter_ns()
            for _ in range(protocol.iters_per_repeat):
                run()
            samples.append((time.perf_counter_ns() - start) / 1e6 / protocol.iters_per_repeat)
    return LatencyResult.from_samples(samples, protocol=protocol, device_name=f"{cpu_name()} (onnxruntime "
                                      f"{_ort().__version__})", lock_wait_s=waited)
