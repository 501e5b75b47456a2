"""The per-layer latency table: entries measured once and reused, keyed by device fingerprint, prediction = sum of
entries + overhead, a corrupt file rebuilt with a warning, and `gpnas latency --mode both`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from searchutil import cli_env, run_cli

from gpnas.objectives.latency import LatencyProtocol
from gpnas.objectives.latency_table import LatencyTable, fingerprint, layer_calls
from gpnas.search_space.builder import build_detector
from gpnas.search_space.presets import get_preset

FAST = LatencyProtocol(img_size=64, warmup=1, repeats=2, iters_per_repeat=1)


@pytest.fixture
def model() -> torch.nn.Module:
    return build_detector(get_preset("yolor-csp-nano"))


@pytest.fixture
def calibrated(tmp_path: Path) -> LatencyTable:
    table = LatencyTable(FAST, path=tmp_path / "t.json")
    table.overhead = (1.25, 0.05)  # (scale, c0); calibration measures eight networks end to end: tested below
    return table


def test_entries_are_measured_once_and_reused(calibrated: LatencyTable, model: torch.nn.Module) -> None:
    first = calibrated.predict(model)
    assert first.timed_now == len({layer.key for layer in layer_calls(model, FAST)}) >= 7  # stem, stages, neck, head
    again = LatencyTable.load(FAST, calibrated.path).predict(model)  # from the file: no timing at all
    assert again.timed_now == 0 and again.ms == first.ms


def test_prediction_is_the_scaled_sum_of_its_entries_plus_the_overhead(calibrated: LatencyTable,
                                                                model: torch.nn.Module) -> None:
    pred = calibrated.predict(model)
    layers = layer_calls(model, FAST)
    total = sum(calibrated.entries[layer.key] for layer in layers)
    assert pred.n_layers == len(layers) and pred.layers_ms == pytest.approx(total)
    assert pred.ms == pytest.approx(1.25 * total + 0.05)


def test_equal_layers_of_different_candidates_share_entries(calibrated: LatencyTable) -> None:
    small = build_detector(get_preset("yolor-csp-nano"))
    wider = build_detector(get_preset("yolor-csp-nano").replace(width_multiple=0.125))
    calibrated.predict(small)
    shared = {layer.key for layer in layer_calls(small, FAST)} & {layer.key for layer in layer_calls(wider, FAST)}
    assert shared and calibrated.predict(wider).timed_now < len({layer.key for layer in layer_calls(wider, FAST)})


def test_the_table_is_keyed_by_device_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPNAS_CACHE", str(tmp_path))
    one, two = LatencyTable(FAST), LatencyTable(replace(FAST, threads=2))
    assert one.path != two.path and one.path.parent == tmp_path / "latency"
    assert fingerprint(FAST)["torch"] == torch.__version__ and "device" in fingerprint(FAST)
    one.entries = {"x": 1.0}
    one.save()
    foreign = json.loads(one.path.read_text())
    foreign["fingerprint"]["device"] = "another machine"
    two.path.write_text(json.dumps(foreign))
    with pytest.warns(UserWarning, match="another device"):
        assert LatencyTable.load(replace(FAST, threads=2)).entries == {}


def test_a_corrupt_table_is_rebuilt_with_a_warning(calibrated: LatencyTable, model: torch.nn.Module) -> None:
    calibrated.path.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        table = LatencyTable.load(FAST, calibrated.path)
    table.overhead = (1.0, 0.0)
    assert table.predict(model).timed_now > 0
    assert json.loads(calibrated.path.read_text())["entries"]  # written again, whole


@pytest.mark.slow
def test_calibration_fits_the_overhead_on_the_nano_presets(tmp_path: Path) -> None:
    table = LatencyTable(FAST, path=tmp_path / "t.json")
    table.calibrate()
    assert table.overhead is not None and all(map(lambda v: v == v, table.overhead))


@pytest.mark.slow
def test_gpnas_latency_both_prints_both_figures(tmp_path: Path) -> None:
    out = run_cli(None, "latency", "yolor-v3-nano", "--img", "64", "--repeats", "2", "--warmup", "1", "--mode", "both",
                  "--json", env=cli_env(GPNAS_CACHE=str(tmp_path)), timeout=600)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["predicted"]["ms"] > 0 and info["measured"]["median_ms"] > 0
    assert info["latency_ms"] == info["predicted"]["ms"] and info["mode"] == "both"
    assert Path(info["predicted"]["table"]).is_file()


@pytest.mark.gpu
def test_cuda_table_with_fp16_predicts_and_reuses_its_entries(tmp_path: Path) -> None:
    protocol = LatencyProtocol(device="cuda", dtype="fp16", img_size=160, warmup=2, repeats=3, iters_per_repeat=2)
    table = LatencyTable(protocol, path=tmp_path / "cuda.json")
    model = build_detector(get_preset("yolor-elan-nano"))
    pred = table.predict(model)  # calibrates on CUDA (events + synchronize) first
    assert pred.ms > 0 and pred.timed_now > 0 and table.fingerprint["device_type"] == "cuda"
    assert LatencyTable.load(protocol, table.path).predict(model).timed_now == 0
