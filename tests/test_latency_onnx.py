"""`gpnas latency MODEL.onnx --mode both`: a graph gpnas exported carries its spec in metadata_props and is predicted
from the per-layer table as the torch model is (and measured with onnxruntime); a graph without a spec is measured
only, with the reason, and exits 0; the manifest beside an older export names its spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpnas.experiments.onnx_latency import FROM_MANIFEST, FROM_METADATA, graph_spec
from gpnas.results.deploy import ARCH_ID_KEY, SPEC_KEY, DeployOptions, export_model
from gpnas.search_space.builder import build_detector
from gpnas.search_space.presets import get_preset
from gpnas.search_space.spec import ArchSpec

onnx = pytest.importorskip("onnx", reason="the deploy extra (make setup installs it)")
pytest.importorskip("onnxruntime", reason="the deploy extra (make setup installs it)")

PROTOCOL = ["--repeats", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "cache"  # test_deploy's: one digits val set for the export checks


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[ArchSpec, Path]:
    """yolor-v3-nano at 64 px through the real exporter (its runtime check included)."""
    spec = get_preset("yolor-v3-nano")
    out = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPNAS_CACHE", str(cache))
        entry = export_model(spec, build_detector(spec), "onnx", out, DeployOptions(img=64))
    assert entry["metadata_props"] == [SPEC_KEY, ARCH_ID_KEY, "gpnas.decode"]
    return spec, out / entry["file"]


def _without_spec(src: Path, folder: Path) -> Path:
    """A copy of ``src`` whose metadata_props lack the gpnas keys (a graph exported elsewhere)."""
    model = onnx.load(str(src))
    kept = {p.key: p.value for p in model.metadata_props if not p.key.startswith("gpnas.")}
    onnx.helper.set_model_props(model, kept)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "foreign.onnx"))
    return folder / "foreign.onnx"


def _latency(path: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gpnas.experiments.cli", "latency", str(path), "--mode", "both", *PROTOCOL, *extra]
    env = {**os.environ, "GPNAS_CACHE": str(cache), "COLUMNS": "300"}  # a wide table: no wrapped lines
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_an_exported_graph_is_predicted_from_its_spec_and_measured(exported: tuple[ArchSpec, Path],
                                                                   cache: Path) -> None:
    spec, path = exported
    out = _latency(path, cache, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["arch_id"] == spec.arch_id and info["name"] == spec.name and info["predicted_note"] is None
    predicted, measured = info["predicted"], info["measured"]
    assert predicted["source"] == FROM_METADATA and predicted["ms"] > 0 and Path(predicted["table"]).is_file()
    assert info["latency_ms"] == predicted["ms"] and info["protocol"]["img_size"] == 64
    assert measured["median_ms"] > 0 and len(measured["samples_ms"]) == 2 and "onnxruntime" in measured["device_name"]


def test_a_graph_without_a_spec_is_measured_only_and_says_why(exported: tuple[ArchSpec, Path], cache: Path,
                                                              tmp_path: Path) -> None:
    foreign = _without_spec(exported[1], tmp_path / "elsewhere")
    out = _latency(foreign, cache)
    assert out.returncode == 0, out.stderr
    assert "predicted: n/a (the graph carries no gpnas spec; measured only)" in out.stdout
    assert "measured median_ms" in out.stdout and "Traceback" not in out.stderr


def test_where_the_spec_comes_from(exported: tuple[ArchSpec, Path], tmp_path: Path) -> None:
    spec, path = exported
    yaml_spec = spec.to_yaml()
    assert graph_spec(path, {SPEC_KEY: yaml_spec}).source == FROM_METADATA
    foreign = _without_spec(path, tmp_path)
    assert graph_spec(foreign, {}).reason == "the graph carries no gpnas spec"
    edited = graph_spec(path, {SPEC_KEY: yaml_spec, ARCH_ID_KEY: "000000000000"})
    assert edited.spec is None and "the file was edited" in str(edited.reason)
    broken = graph_spec(path, {SPEC_KEY: "block: [unclosed"})
    assert broken.spec is None and "does not load" in str(broken.reason)
    # an export from before the metadata carried the spec: its manifest names the spec YAML
    (tmp_path / "old.yaml").write_text(yaml_spec)
    (tmp_path / "manifest.json").write_text(json.dumps({"architectures": [
        {"spec": "old.yaml", "deploy": {"onnx": {"file": foreign.name}}}]}))
    found = graph_spec(foreign, {})
    assert found.source == FROM_MANIFEST and found.spec is not None and found.spec.arch_id == spec.arch_id
