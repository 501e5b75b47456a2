from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpnas.errors import SpecError
from gpnas.search_space.presets import PRESETS, get_preset
from gpnas.search_space.spec import ArchSpec, load_spec


def test_defaults_validate_and_have_stable_id() -> None:
    spec = ArchSpec()
    assert len(spec.arch_id) == 12
    assert spec.arch_id == ArchSpec().arch_id
    assert spec.mask_ratio == (1.0, 1.0, 1.0, 1.0)


def test_scalar_and_per_stage_lists_are_the_same_spec() -> None:
    a = ArchSpec(mask_ratio=0.5)
    b = ArchSpec(mask_ratio=[0.5, 0.5, 0.5, 0.5])
    assert a == b and a.arch_id == b.arch_id
    c = ArchSpec(mask_ratio=[1.0, 0.5, 0.5, 0.25])
    assert c.arch_id != a.arch_id
    assert ArchSpec.from_dict(c.to_dict()) == c


def test_unused_genes_and_name_do_not_change_arch_id() -> None:
    base = ArchSpec(block="residual")
    assert base.replace(fusion="first", split_ratio=0.25).arch_id == base.arch_id
    assert base.replace(name="anything").arch_id == base.arch_id
    assert ArchSpec(block="csp").arch_id != ArchSpec(block="csp", fusion="last").arch_id


@pytest.mark.parametrize("name", list(PRESETS))
def test_yaml_and_json_round_trip(name: str, tmp_path) -> None:
    spec = get_preset(name)
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    again = load_spec(path)
    assert again == spec and again.arch_id == spec.arch_id
    assert ArchSpec.from_dict(json.loads(spec.to_json())) == spec


def test_arch_id_identical_in_another_process() -> None:
    code = "from gpnas.search_space.presets import get_preset; print(get_preset('yolor-csp').arch_id)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == get_preset("yolor-csp").arch_id


@pytest.mark.parametrize(
    ("genes", "needles"),
    [
        ({"block": "csp", "fusion": "sideways"}, ["fusion", "sideways", "both", "first", "last", "none"]),
        ({"mask_ratio": 1.5}, ["mask_ratio", "1.5", "[0, 1]"]),
        ({"block": "elan", "backbone_stacks": 0}, ["backbone_stacks", "at least 1"]),
        ({"neck_stacks": 0}, ["neck_stacks", "at least 1"]),
        ({"width_multiple": 0.001}, ["width_multiple", "0 channels", "too few"]),
        ({"fusoin": "both"}, ["fusoin", "did you mean 'fusion'"]),
        ({"split_ratio": [0.5, 0.5]}, ["split_ratio", "list of 4"]),
        ({"img_size": 100}, ["img_size", "multiple of 32"]),
    ],
)
def test_bad_specs_name_field_value_and_allowed(genes: dict, needles: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict(genes, source="my.yaml")
    text = str(info.value)
    assert "my.yaml" in text
    for needle in needles:
        assert needle in text or needle.replace("'", "") in text, (needle, text)


def test_constructor_raises_value_error_subclass() -> None:
    with pytest.raises(ValueError):
        ArchSpec(mask_ratio=-0.1)


def test_non_yaml_and_missing_files(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("block: [residual\n  mask: :")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(scalar)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(SpecError):
        load_spec(binary)


def test_unknown_preset_suggests() -> None:
    with pytest.raises(SpecError, match="did you mean 'yolor-csp'"):
        get_preset("yolor-cps")


gene_values = st.fixed_dictionaries(
    {
        "block": st.sampled_from(["residual", "csp", "elan"]),
        "mask_ratio": st.lists(st.floats(0, 1), min_size=4, max_size=4),
        "split_ratio": st.floats(0.2, 0.8),
        "fusion": st.lists(st.sampled_from(["both", "first", "last", "none"]), min_size=4, max_size=4),
        "split_mode": st.sampled_from(["conv", "channel"]),
        "backbone_stacks": st.integers(1, 3),
        "elan_blocks": st.integers(1, 3),
        "neck": st.sampled_from(["fpn", "csp-pan", "elan-pan"]),
        "spp": st.sampled_from(["spp", "sppf", "sppcspc"]),
        "neck_stacks": st.integers(1, 2),
        "neck_blocks": st.integers(1, 4),
        "stem": st.sampled_from(["darknet", "yolov7", "yolov5"]),
        "downsample": st.sampled_from(["conv", "mp"]),
        "head": st.sampled_from(["detect", "seg"]),
        "implicit": st.booleans(),
        "width_multiple": st.sampled_from([0.0625, 0.125]),
        "depth_multiple": st.sampled_from([0.2, 0.34]),
        "num_classes": st.integers(1, 5),
    }
)


@settings(max_examples=25, deadline=None)
@given(genes=gene_values)
def test_random_valid_genes_build_and_run(genes: dict) -> None:
    import torch

    from gpnas.search_space.builder import build_detector

    spec = ArchSpec.from_dict({**genes, "img_size": 64})
    model = build_detector(spec).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    no = 5 + spec.num_classes + (32 if spec.head == "seg" else 0)
    assert [tuple(o.shape) for o in out[:3]] == [(1, 3, 8, 8, no), (1, 3, 4, 4, no), (1, 3, 2, 2, no)]
    assert ArchSpec.from_dict(spec.to_dict()).arch_id == spec.arch_id
