"""Deployable graphs: every nano preset exported to ONNX and TorchScript passes the runtime check (onnxruntime /
torch.jit.load against the fused torch model: raw outputs, then COCO AP on digits val images); a broken export
fails with a clear message; gpnas latency times an ONNX file under the same protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from searchutil import run_cli

pytest.importorskip("onnxruntime", reason="the deploy extra (make setup installs it)")

from gpnas.errors import ConfigError
from gpnas.results.deploy import ATOL, DeployModel, DeployOptions, ExportCheckFailed, export_model, verify_export
from gpnas.search_space.builder import build_detector
from gpnas.search_space.presets import get_preset

pytestmark = pytest.mark.slow  # exports of every nano preset, each checked on 100 images: minutes on 2 cores

NANOS = ["yolor-v3-nano", "yolor-prn-nano", "yolor-csp-nano", "yolor-elan-nano"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPNAS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))  # one digits val set


@pytest.mark.parametrize("name", NANOS)
def test_every_nano_preset_exports_to_onnx_and_torchscript_and_runs_the_same(name: str, tmp_path: Path) -> None:
    spec = get_preset(name)
    model = build_detector(spec)
    opts = DeployOptions(batch=None)  # dynamic batch: checked at a batch it was not traced with
    for fmt in ("onnx", "torchscript"):
        entry = export_model(spec, model, fmt, tmp_path, opts)
        check = entry["check"]
        assert (tmp_path / entry["file"]).is_file() and check["max_abs_diff"] <= ATOL
        assert check["images"] == 100 and round(check["ap_torch"], 3) == round(check["ap_runtime"], 3)
        assert [o["name"] for o in entry["outputs"]] == ["p3", "p4", "p5"]
        assert entry["inputs"][0]["shape"] == ["batch", 3, 160, 160] and entry["fused"]
    assert entry["opset"] is None  # TorchScript has no opset; the ONNX entry names it (18)


def test_decode_in_the_graph_and_a_dynamic_size(tmp_path: Path) -> None:
    spec = get_preset("yolor-elan-nano")
    entry = export_model(spec, build_detector(spec), "onnx", tmp_path,
                         DeployOptions(batch=2, dynamic_size=True, decode=True))
    assert entry["outputs"] == [{"name": "detections", "shape": [2, 3 * (20 * 20 + 10 * 10 + 5 * 5), 15]}]
    assert entry["inputs"][0]["shape"] == [2, 3, "height", "width"] and entry["opset"] == 18
    from gpnas.objectives.onnx_runtime import onnx_session, run_onnx

    session = onnx_session(tmp_path / entry["file"])
    out = run_onnx(session, torch.rand(2, 3, 224, 224))  # a size it was not traced at
    assert out[0].shape == (2, 3 * (28 * 28 + 14 * 14 + 7 * 7), 15)


def test_a_broken_export_fails_clearly(tmp_path: Path) -> None:
    spec = get_preset("yolor-v3-nano")
    model = build_detector(spec)
    with pytest.raises(ConfigError, match=r"--img 100: the input size must be a positive multiple of 32"):
        export_model(spec, model, "onnx", tmp_path, DeployOptions(img=100))
    entry = export_model(spec, model, "onnx", tmp_path, DeployOptions())
    other = DeployModel(model)  # a fused copy of the exported model
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)  # not the weights that were exported
    with pytest.raises(ExportCheckFailed, match=r"output p3 differs from the torch model by .* \(max abs, fp32"):
        verify_export(tmp_path / entry["file"], "onnx", other, 160, DeployOptions())
    with pytest.raises(ConfigError, match="not a model onnxruntime can load"):
        (tmp_path / "bad.onnx").write_bytes(b"not onnx")
        verify_export(tmp_path / "bad.onnx", "onnx", other, 160, DeployOptions())


def test_gpnas_latency_times_an_onnx_file(tmp_path: Path) -> None:
    spec = get_preset("yolor-csp-nano")
    entry = export_model(spec, build_detector(spec), "onnx", tmp_path, DeployOptions())
    onnx = str(tmp_path / entry["file"])
    out = run_cli(None, "latency", onnx, "--repeats", "3", "--warmup", "1", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout)["measured"]
    assert measured["median_ms"] > 0 and len(measured["samples_ms"]) == 3 and "onnxruntime" in measured["device_name"]
    wrong = run_cli(None, "latency", onnx, "--img", "320", timeout=120)
    assert wrong.returncode == 2 and "fixed at 160" in wrong.stderr and "Traceback" not in wrong.stderr


def test_the_graph_decode_is_the_detectors_decode() -> None:
    spec = get_preset("yolor-csp-nano")
    deploy = DeployModel(build_detector(spec), decode=True)
    with torch.no_grad():
        raw = deploy.detector(torch.rand(2, 3, 160, 160))
        assert torch.equal(deploy.decoded(raw[:3]), deploy.detector.decode(raw[:3]))
