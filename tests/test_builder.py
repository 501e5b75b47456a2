from __future__ import annotations

import copy

import pytest
import torch

from gpnas.objectives.complexity import fvcore_macs, measure_complexity
from gpnas.search_space.builder import build_detector, count_params
from gpnas.search_space.modules import BLOCK_EXAMPLES, NECKS, SPP_BLOCKS, STAGE_BLOCKS
from gpnas.search_space.presets import PRESETS, get_preset
from gpnas.search_space.spec import ArchSpec

# ARCH_SPEC §6.1 / §0, detection head unless noted: fused params, GFLOPs (2 × MACs) at 640.
PAPER_FIGURES = [
    ("yolor-v3", "detect", 62_971_933, 156.73),
    ("yolor-csp", "detect", 52_891_610, 120.24),
    ("yolor-csp-fusion-first", "detect", None, 119.40),
    ("yolor-csp-fusion-last", "detect", None, 116.89),
    ("yolor-csp-no-fusion", "detect", None, 116.05),
    ("yolor-elan", "detect", 36_907_898, 104.51),
    ("yolor-v3", "seg", 64_332_637, 195.46),
    ("yolor-csp", "seg", 54_252_000, 158.97),
    ("yolor-csp-fusion-first", "seg", 53_903_000, 158.13),
    ("yolor-csp-fusion-last", "seg", 52_858_000, 155.62),
    ("yolor-csp-no-fusion", "seg", 52_509_000, 154.78),
    ("yolor-elan", "seg", 38_268_602, 143.25),
]


@pytest.mark.parametrize(("name", "head", "params", "gflops"), PAPER_FIGURES)
def test_paper_sizes(name: str, head: str, params: int | None, gflops: float) -> None:
    spec = get_preset(name).replace(head=head)
    size = measure_complexity(spec, img=640)
    assert abs(size.gflops_640 - gflops) <= 0.3, size
    if params is not None:
        assert abs(size.params_fused - params) / params <= 0.001, size


def test_prn_equals_v3_exactly() -> None:
    v3 = measure_complexity(get_preset("yolor-v3"))
    prn = measure_complexity(get_preset("yolor-prn"))
    assert (v3.params, v3.params_fused, v3.gflops) == (prn.params, prn.params_fused, prn.gflops)
    assert v3.arch_id != prn.arch_id


def test_unfused_param_oracles() -> None:
    # Exact unfused counts of the reference configs (ARCH_SPEC §6.1).
    assert count_params(build_detector(get_preset("yolor-v3"))) == 62_998_749
    assert count_params(build_detector(get_preset("yolor-csp"))) == 52_923_994


def test_gflops_scale_matches_direct_count() -> None:
    spec = get_preset("yolor-elan-nano")
    model = build_detector(spec).eval().fuse()
    direct = 2 * fvcore_macs(model, 160) / 1e9
    assert measure_complexity(spec, img=160).gflops == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_forward_and_backward(name: str) -> None:
    spec = get_preset(name)
    if spec.width_multiple >= 1.0:  # paper scale: same topology at a CPU-friendly width
        spec = spec.replace(width_multiple=0.0625, depth_multiple=0.2)
    model = build_detector(spec, num_classes=3)
    out = model(torch.randn(2, 3, 64, 64))
    loss = sum(o.float().square().mean() for o in out)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    boxes = model.decode(out)
    assert boxes.shape == (2, 3 * (64 + 16 + 4), 5 + 3)


@pytest.mark.parametrize("name", BLOCK_EXAMPLES.names())
def test_every_registered_block_runs_forward_and_backward(name: str) -> None:
    module, args = BLOCK_EXAMPLES.get(name)()
    out = module(*args)
    outs = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None for p in module.parameters())
    if not isinstance(out, list):
        assert out.shape[1] == module.out_channels  # the analytic width is the real one


def test_registries_cover_the_spec_choices() -> None:
    assert set(STAGE_BLOCKS.names()) == {"residual", "csp", "elan"}
    assert set(NECKS.names()) == {"fpn", "csp-pan", "elan-pan"}
    assert set(SPP_BLOCKS.names()) == {"spp", "sppf", "sppcspc"}
    with pytest.raises(KeyError, match="valid neck"):
        NECKS.get("bifpn")


def test_fuse_preserves_outputs() -> None:
    model = build_detector(get_preset("yolor-csp-nano"))
    x = torch.randn(2, 3, 64, 64)
    model.train()
    model(x)  # move BN statistics away from the defaults
    model.eval()
    with torch.no_grad():
        ref = model(x)
        fused = copy.deepcopy(model).fuse()
        got = fused(x)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_spec_round_trip_rebuilds_identical_state_dict(tmp_path) -> None:
    spec = get_preset("yolor-elan-nano").replace(mask_ratio=0.5, neck_stacks=2)
    path = tmp_path / "a.yaml"
    path.write_text(spec.to_yaml())
    again = ArchSpec.from_dict(__import__("yaml").safe_load(path.read_text()))
    a, b = build_detector(spec).state_dict(), build_detector(again).state_dict()
    assert again.arch_id == spec.arch_id
    assert [(k, v.shape) for k, v in a.items()] == [(k, v.shape) for k, v in b.items()]


def test_masked_residual_costs_no_flops_and_no_params() -> None:
    base = get_preset("yolor-csp-nano")
    a = measure_complexity(base)
    b = measure_complexity(base.replace(mask_ratio=0.25))
    assert (a.params, a.gflops) == (b.params, b.gflops)
