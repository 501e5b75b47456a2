"""Tests for gpnas.objectives.latency: protocol validation, CPU timing, the machine-wide lock, CUDA (gpu marker)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gpnas.objectives.latency import (
    LOCK_ENV_VAR,
    DeviceUnavailableError,
    LatencyProtocol,
    LatencyProtocolError,
    LatencyResult,
    default_lock_path,
    latency_lock,
    measure_latency,
)

SHORT = {"repeats": 3, "warmup": 1, "iters_per_repeat": 2, "img_size": 32}


class TinyNet(nn.Module):
    """A conv-BN-act pair with a ``fuse()`` that folds BN, like the real detectors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU()
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> TinyNet:
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        w = self.conv.weight * scale.view(-1, 1, 1, 1)
        b = self.bn.bias - self.bn.running_mean * scale
        conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        conv.weight.data.copy_(w.detach())
        conv.bias.data.copy_(b.detach())
        self.conv, self.bn, self.fused = conv, nn.Identity(), True
        return self


def test_cpu_measurement_is_positive_finite_and_carries_protocol(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(LOCK_ENV_VAR, str(tmp_path / "lock"))
    protocol = LatencyProtocol(**SHORT)
    model = TinyNet()
    result = measure_latency(model, protocol)
    assert result.protocol is protocol
    assert len(result.samples_ms) == 3
    for value in (result.median_ms, result.mean_ms, result.min_ms, *result.samples_ms):
        assert value > 0 and math.isfinite(value)
    assert result.iqr_ms >= 0 and result.cv >= 0 and math.isfinite(result.cv)
    assert result.min_ms <= result.median_ms
    assert result.lock_wait_s >= 0
    assert result.device_name and result.torch_version == torch.__version__
    assert not model.fused and isinstance(model.bn, nn.BatchNorm2d), "the caller's model must stay untouched"
    assert (tmp_path / "lock").exists()


def test_result_to_dict_is_json_and_round_trips_protocol(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(LOCK_ENV_VAR, str(tmp_path / "lock"))
    protocol = LatencyProtocol(**SHORT, channels_last=True)
    result = measure_latency(nn.Conv2d(3, 4, 3), protocol)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["protocol"]["channels_last"] is True
    assert LatencyProtocol.from_dict(data["protocol"]) == protocol
    assert len(data["samples_ms"]) == protocol.repeats


def test_summary_statistics_from_known_samples() -> None:
    result = LatencyResult.from_samples(
        [1.0, 2.0, 3.0, 4.0, 5.0], protocol=LatencyProtocol(), device_name="x", lock_wait_s=0.0
    )
    assert result.median_ms == 3.0 and result.mean_ms == 3.0 and result.min_ms == 1.0
    assert result.iqr_ms == pytest.approx(2.0)
    assert result.cv == pytest.approx(math.sqrt(2.0) / 3.0)


def test_bf16_on_cpu_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(LOCK_ENV_VAR, str(tmp_path / "lock"))
    result = measure_latency(TinyNet(), LatencyProtocol(**SHORT, dtype="bf16"))
    assert result.median_ms > 0


def test_thread_count_restored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(LOCK_ENV_VAR, str(tmp_path / "lock"))
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    measure_latency(TinyNet(), LatencyProtocol(**SHORT, threads=wanted))
    assert torch.get_num_threads() == before


def test_defaults_and_warmup_seconds_resolution() -> None:
    assert LatencyProtocol().warmup_seconds == 0.0
    assert LatencyProtocol(device="cuda").warmup_seconds == 2.0
    assert LatencyProtocol(device="cuda:1", warmup_seconds=0.5).warmup_seconds == 0.5
    cuda = LatencyProtocol(device="cuda")
    assert LatencyProtocol.from_dict(cuda.to_dict()) == cuda


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"dtype": "fp8"}, "dtype='fp8'"),
        ({"dtype": "fp16"}, "use 'fp32' or 'bf16'"),
        ({"batch": 0}, "batch=0"),
        ({"batch": True}, "batch=True"),
        ({"device": "gpu"}, "device='gpu'"),
        ({"repeats": 0}, "repeats=0"),
        ({"threads": 0}, "threads=0"),
        ({"warmup": -1}, "warmup=-1"),
        ({"warmup_seconds": -1.0}, "warmup_seconds=-1.0"),
        ({"channels_last": "yes"}, "channels_last='yes'"),
        ({"cuda_graph": 1}, "cuda_graph=1"),
        ({"cuda_graph": True}, "cuda_graph=True is not allowed on device='cpu'"),
    ],
)
def test_validation_errors_name_field_and_value(kwargs: dict, fragment: str) -> None:
    with pytest.raises(LatencyProtocolError) as info:
        LatencyProtocol(**kwargs)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_fp16_allowed_on_cuda_protocol() -> None:
    assert LatencyProtocol(device="cuda", dtype="fp16").dtype == "fp16"


def test_cuda_graph_is_declared_protocol_data() -> None:
    protocol = LatencyProtocol(device="cuda", dtype="fp16", cuda_graph=True, iters_per_repeat=20)
    assert protocol.to_dict()["cuda_graph"] is True and LatencyProtocol.from_dict(protocol.to_dict()) == protocol
    assert LatencyProtocol().to_dict()["cuda_graph"] is False


def test_from_dict_unknown_key_suggests_close_match() -> None:
    with pytest.raises(LatencyProtocolError, match="Did you mean 'repeats'"):
        LatencyProtocol.from_dict({"repeat": 3})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is missing")
def test_cuda_unavailable_raises_at_measure_time() -> None:
    protocol = LatencyProtocol(device="cuda")  # constructing is fine; measuring is not
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        measure_latency(TinyNet(), protocol)


def test_default_lock_path_env_override(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(LOCK_ENV_VAR, str(tmp_path / "custom.lock"))
    assert default_lock_path() == tmp_path / "custom.lock"
    monkeypatch.delenv(LOCK_ENV_VAR)
    assert default_lock_path().name == "gpnas-latency.lock"


def _hold_lock(path: str, hold_s: float, queue: mp.Queue) -> None:
    """Child process: hold the timing lock for ``hold_s`` seconds and report (enter, exit) wall times."""
    with latency_lock(path):
        entered = time.time()
        time.sleep(hold_s)
        exited = time.time()
    queue.put((entered, exited))


def test_file_lock_serialises_processes(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    path = str(tmp_path / "shared.lock")
    procs = [ctx.Process(target=_hold_lock, args=(path, 0.3, queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    intervals = sorted(queue.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    (first_in, first_out), (second_in, second_out) = intervals
    assert first_out <= second_in, f"lock intervals overlap: {intervals}"
    assert first_out - first_in >= 0.3 and second_out - second_in >= 0.3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_cuda_measurement(dtype: str) -> None:
    old_benchmark = torch.backends.cudnn.benchmark
    protocol = LatencyProtocol(device="cuda", dtype=dtype, warmup_seconds=0.2, channels_last=True, **SHORT)
    result = measure_latency(TinyNet(), protocol)
    assert result.median_ms > 0 and math.isfinite(result.median_ms)
    assert result.device_name == torch.cuda.get_device_name(0)
    assert result.lock_wait_s == 0.0
    assert torch.backends.cudnn.benchmark == old_benchmark


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_time_the_same_pass() -> None:
    protocol = LatencyProtocol(device="cuda", dtype="fp16", warmup_seconds=0.2, cuda_graph=True, **SHORT)
    result = measure_latency(TinyNet(), protocol)
    assert result.median_ms > 0 and result.protocol.cuda_graph and len(result.samples_ms) == SHORT["repeats"]
