from __future__ import annotations

import json

import pytest
from searchutil import run_cli


def test_presets_json() -> None:
    out = run_cli(None, "presets", "--json")
    assert out.returncode == 0
    rows = json.loads(out.stdout)
    assert {"name", "family", "description"} <= set(rows[0])
    assert "yolor-elan-2-2" in {r["name"] for r in rows}


@pytest.mark.slow
def test_describe_json_gradient_path_and_export(tmp_path) -> None:
    path = tmp_path / "spec.yaml"
    out = run_cli(None, "describe", "yolor-prn-nano", "--json", "--gradient-path", "--layers", "--export-spec",
                  str(path))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    for key in ("arch_id", "params", "params_fused", "gflops", "gflops_640", "img"):
        assert key in info
    gp = info["gradient_path"]
    for key in ("max_sgp", "max_lgp", "mean_sgp", "n_comb_total", "n_cls_total", "mean_dup", "seconds", "layers"):
        assert key in gp
    again = json.loads(run_cli(None, "describe", str(path), "--json").stdout)
    assert again["arch_id"] == info["arch_id"] and again["params"] == info["params"]


@pytest.mark.slow
def test_describe_seg_head_at_another_size() -> None:
    info = json.loads(run_cli(None, "describe", "yolor-csp-nano", "--head", "seg", "--img", "320", "--json").stdout)
    assert info["head"] == "seg" and info["img"] == 320
    assert abs(info["gflops"] * 4 - info["gflops_640"]) < 1e-6


@pytest.mark.slow
def test_bad_inputs_are_one_paragraph_errors(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("block: csp\nfusion: sideways\nmask_ratio: 1.5\n")
    cases = [
        ("describe", str(bad)),
        ("describe", "yolor-cps"),
        ("describe", str(tmp_path / "missing.yaml")),
        ("describe", "yolor-csp-nano", "--head", "mask"),
        ("latency", "yolor-csp-nano", "--dtype", "fp16"),
        ("status", str(tmp_path / "nowhere")),
    ]
    for args in cases:
        out = run_cli(None, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and "error" in out.stderr, (args, out.stderr)
    text = run_cli(None, "describe", str(bad)).stderr
    assert "fusion" in text and "sideways" in text and "mask_ratio" in text


@pytest.mark.slow
def test_latency_json() -> None:
    out = run_cli(None, "latency", "yolor-v3-nano", "--repeats", "3", "--warmup", "1", "--json")
    info = json.loads(out.stdout)
    assert info["measured"]["median_ms"] > 0 and info["protocol"]["img_size"] == 160
    assert info["latency_ms"] == info["measured"]["median_ms"] and info["predicted"] is None
