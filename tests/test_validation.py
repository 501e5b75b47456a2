"""Issue 12, hardening: every bad input is refused up front with one message that names the key, file or value.

Through the CLI where a user meets the error (exit code 2, no traceback), through ``load_config``, the dataset
classes and the builder for the library-level rules.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from searchutil import cli_here, gpnas

from gpnas.errors import ConfigError, DataError, SpecError
from gpnas.experiments.config import MAX_CONFIG_BYTES, load_config
from gpnas.search_space.builder import MAX_PARAMS, build_detector, check_size, count_params, planned_params
from gpnas.search_space.presets import PRESETS, get_preset
from gpnas.search_space.spec import ArchSpec
from gpnas.trainers.coco_files import validate_coco_dict
from gpnas.trainers.data import CocoDetection
from gpnas.trainers.datasets import ProxyData


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``gpnas ARGS`` run in ``tmp_path`` through the command's entry point (in this process: the same parsing,
    printing and exit status without an interpreter's start-up); asserts the one-paragraph refusal (exit 2). A
    search that got as far as starting is a failure here, not a search run inside the test process."""
    from unittest import mock

    with mock.patch("gpnas.experiments.search_api.start_search",
                    side_effect=AssertionError("the search started instead of refusing its input")):
        out = cli_here(tmp_path, *args)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr and out.stderr.startswith("error:"), out.stderr[-2000:]
    return out


# ------------------------------------------------------------------------------------------ config values
@pytest.mark.parametrize(("override", "needle"), [
    ("train.seconds=-1", "train.seconds must be positive"),
    ("train.seconds=.nan", "train.seconds must be positive"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("latency.repeats=0", "latency.repeats=0"),
    ("budget.cpu=-1", "budget.cpu must be a positive number"),
    ("budget.cpu=0", "budget.cpu must be a positive number"),
    ("budget.gpu=-0.5", "budget.gpu must be 0"),
    ("train.device=banana", "train.device must be 'cpu', 'cuda' or 'cuda:N'"),
    ("train.device=cuda:x", "train.device must be"),
    ("latency.device=banana", "latency.device='banana'"),
    ("train.lr=0", "train.lr must be positive"),
    ("train.warmup_fraction=1", "train.warmup_fraction must be in [0, 1)"),
    ("train.warmup_fraction=-0.1", "train.warmup_fraction must be in [0, 1)"),
    ("train.momentum=1", "train.momentum must be in [0, 1)"),
    ("train.momentum=-0.5", "train.momentum must be in [0, 1)"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0"),
    ("train.final_lr_fraction=2", "train.final_lr_fraction must be in [0, 1]"),
    ("train.grad_clip=0", "train.grad_clip must be a positive gradient norm"),
    ("train.conf_thres=0", "train.conf_thres must be in (0, 1]"),
    ("train.conf_thres=1.5", "train.conf_thres must be in (0, 1]"),
    ("train.iou_thres=0", "train.iou_thres must be in (0, 1]"),
    ("train.iou_thres=2", "train.iou_thres must be in (0, 1]"),
    ("train.max_det=0", "train.max_det must be an integer >= 1"),
    ("train.threads=0", "train.threads must be an integer >= 1"),
    ("latency.threads=0", "latency.threads=0"),
    ("data.n_train=0", "data.n_train must be at least 1"),
    ("data.n_val=0", "data.n_val must be at least 1"),
    ("data.seed=-1", "data.seed must be 0 or more"),
    ("sampler.population_size=1", "sampler.population_size must be at least 2"),
    ("sampler.n_startup_trials=-1", "sampler.n_startup_trials must be 0 or more"),
    ("early_stopping.min_budget=0", "early_stopping.min_budget must be at least 1"),
    ("early_stopping.grace_period=3", "write early_stopping.type: asha"),
    ("early_stopping.reduction_factor=1", "early_stopping.reduction_factor must be at least 2"),
    ("early_stopping.type=hyperband", "early_stopping.type"),
    ("refine.top=-1", "refine.top must be >= 0"),
    ("refine.seeds=0", "refine.seeds must be >= 1"),
    ("refine.budget_multiplier=0.5", "refine.budget_multiplier must be >= 1"),
    ("refine.max_trials=0", "refine.max_trials must be >= 1"),
    ("storage.root=", "storage.root must name a folder"),
])
def test_bad_values_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert needle in message and message.startswith("defaults: "), message
    assert "{" not in message  # a section-wide rule does not repeat the section's dict


def test_storage_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"storage\.root .*runs' is a file, not a folder"):
        load_config(None, [f"storage.root={tmp_path / 'runs'}"])
    assert load_config(None, [f"storage.root={tmp_path / 'new'}"]).storage.root.endswith("new")


def test_good_values_stay_accepted() -> None:
    cfg = load_config(None, ["train.device=cuda:1", "budget.gpu=0.5", "budget.cpu=0.5", "train.momentum=0",
                             "train.warmup_fraction=0", "train.conf_thres=1", "train.threads=2",
                             "sampler.n_startup_trials=0", "sampler.population_size=2"])
    assert (cfg.train.device, cfg.budget.gpu, cfg.train.threads) == ("cuda:1", 0.5, 2)
    for name in ("demo", "paper-ablation", "coco-gpu"):
        load_config(name).check_devices()


# ------------------------------------------------------------------------------------------ config files
def _file_case(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.yaml"
    if kind == "empty":
        path.write_text("")
    elif kind == "comments":
        path.write_text("# nothing but a comment\n\n   # and another\n")
    elif kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    elif kind == "nul":
        path.write_bytes(b"name: x\n\x00\x00")
    elif kind == "big":
        path.write_text("name: big\n" + "#" * MAX_CONFIG_BYTES)
    else:
        path.write_text("- a list\n- not a mapping\n")
    return path


@pytest.mark.parametrize(("kind", "needle"), [
    ("empty", "is empty (or holds only comments)"),
    ("comments", "is empty (or holds only comments)"),
    ("binary", "not UTF-8 text"),
    ("nul", "a binary file"),
    ("big", "over the 1,048,576-byte (1 MiB) limit"),
    ("list", "must be a YAML mapping"),
])
def test_bad_config_files_are_refused_naming_the_file(tmp_path: Path, kind: str, needle: str) -> None:
    path = _file_case(tmp_path, kind)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and needle in str(info.value), str(info.value)


@pytest.mark.parametrize(("args", "needles"), [
    (["--config", "{empty}"], ["empty.yaml", "is empty"]),
    (["--config", "{binary}"], ["binary.yaml", "not UTF-8 text"]),
    (["--config", "{big}"], ["big.yaml", "1 MiB"]),
    (["--config", "demo", "train.device=banana"], ["train.device", "'banana'", "'cpu', 'cuda' or 'cuda:N'"]),
    (["--config", "demo", "budget.cpu=-1"], ["budget.cpu", "positive number of CPUs"]),
    (["--config", "demo", "train.warmup_fraction=1"], ["train.warmup_fraction", "[0, 1)"]),
])
def test_search_cli_refuses_bad_configs_before_creating_anything(tmp_path: Path, args: list[str],
                                                                 needles: list[str]) -> None:
    files = {kind: _file_case(tmp_path, kind) for kind in ("empty", "binary", "big")}
    args = [a.format(**files) for a in args]
    out = _cli(tmp_path, "search", *args, f"storage.root={tmp_path / 'runs'}", "--no-mlflow")
    for needle in needles:
        assert needle in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ run-time checks
def _coco_overrides(tmp_path: Path, **paths: Path) -> list[str]:
    defaults = {"train_ann": tmp_path / "train.json", "train_images": tmp_path / "train",
                "val_ann": tmp_path / "val.json", "val_images": tmp_path / "val"}
    return ["data.kind=coco", *(f"data.{k}={v}" for k, v in {**defaults, **paths}.items())]


def test_coco_paths_are_checked_when_a_search_starts_not_when_read(tmp_path: Path) -> None:
    cfg = load_config(None, _coco_overrides(tmp_path))  # a saved config on a machine without the data loads
    with pytest.raises(ConfigError) as info:
        cfg.check_for_run()
    message = str(info.value)
    for key in ("train_ann", "train_images", "val_ann", "val_images"):
        assert f"data.{key} = '{tmp_path}" in message, message
    assert "does not exist" in message
    (tmp_path / "train.json").write_text("{}")
    (tmp_path / "val.json").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "val").write_text("")
    with pytest.raises(ConfigError) as info:
        cfg.check_paths()
    message = str(info.value)
    assert "data.train_ann" not in message and "data.train_images" not in message
    assert "data.val_ann" in message and "is a folder, not a COCO annotation file" in message
    assert "data.val_images" in message and "is a file, not a folder of images" in message
    (tmp_path / "val.json").rmdir()
    (tmp_path / "val.json").write_text("{}")
    (tmp_path / "val").unlink()
    (tmp_path / "val").mkdir()
    cfg.check_for_run()
    load_config(None).check_for_run()  # digits: nothing to check


@pytest.mark.parametrize(("overrides", "needle"), [
    (["train.device=cuda"], "train.device is 'cuda' but budget.gpu is 0"),
    (["train.device=cuda:0", "latency.device=cuda"], "train.device is 'cuda:0' and latency.device is 'cuda'"),
    (["latency.device=cuda"], "latency.device is 'cuda' but budget.gpu is 0"),
    (["budget.gpu=1"], "budget.gpu is 1 but train.device is 'cpu'"),
])
def test_devices_must_agree_with_the_gpu_share(overrides: list[str], needle: str) -> None:
    cfg = load_config(None, overrides)  # fidelity runs use no Ray GPU share: the rule is a run-time one
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        cfg.check_for_run()


def test_devices_that_agree_pass() -> None:
    for overrides in (["train.device=cuda", "budget.gpu=1"], ["latency.device=cuda", "budget.gpu=0.25"],
                      ["latency.device=cuda", "latency.enabled=false", "objectives=[ap, gflops]"], []):
        load_config(None, overrides).check_for_run()


# ------------------------------------------------------------------------------------------ COCO data
def _coco() -> dict[str, Any]:
    return {
        "images": [{"id": 1, "file_name": "1.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "2.png", "width": 20, "height": 20}],
        "categories": [{"id": 3, "name": "three"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 10]},
                        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]}],
    }


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 0, 0)).save(folder / "1.png")
    Image.new("RGB", (20, 20), (0, 200, 0)).save(folder / "2.png")
    return folder


def _write(tmp_path: Path, coco: dict[str, Any], name: str) -> Path:
    (tmp_path / name).write_text(json.dumps(coco))
    return tmp_path / name


def _set(path: str, value: Any) -> Any:
    """A mutation of the COCO dict: ``images.0.width`` = value (``images`` = value for a whole list)."""
    def mutate(coco: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = coco
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return mutate


@pytest.mark.parametrize(("mutate", "needle"), [
    (_set("images.0.width", "40"), r"image id 1 \(images\[0\]\) has width '40'; give the image's width as a "
                                   r"positive whole number"),
    (_set("images.1.height", 0), r"image id 2 \(images\[1\]\) has height 0"),
    (_set("images.1.height", -20), r"image id 2 \(images\[1\]\) has height -20"),
    (_set("images.0.width", 40.5), r"image id 1 \(images\[0\]\) has width 40\.5"),
    (_set("images", []), r"'images' is empty"),
    (_set("images.1.id", 1), r"images\[1\] has a duplicate image id 1 \(also images\[0\]\)"),
    (_set("images.0.id", "1"), r"images\[0\] has id '1'; image ids must be integers"),
    (_set("annotations.1.id", 1), r"annotations\[1\] has a duplicate annotation id 1 \(also annotations\[0\]\)"),
    (_set("annotations.0.bbox", ["2", "2", "10", "10"]), r"annotation id 1 has bbox \['2', .*\(annotations\[0\]\)"
                                                         r"; expected 4 finite numbers"),
    (_set("annotations.1.bbox", [1, 1, True, 5]), r"annotation id 2 has bbox \[1, 1, True, 5\]"),
    (_set("annotations.1.area", "big"), r"annotation id 2 has area 'big' \(annotations\[1\]\)"),
    (_set("annotations.1.iscrowd", "no"), r"annotation id 2 has iscrowd 'no'"),
    (_set("annotations.0.image_id", [1]), r"annotation id 1 refers to image_id \[1\]"),
    (_set("images.0.file_name", "../images/1.png"), r"image id 1 \(images\[0\]\) has file_name '\.\./images/1\.png',"
                                                    r" which leaves the images folder"),
    (_set("images.0.file_name", "/etc/passwd"), r"has file_name '/etc/passwd', which leaves the images folder"),
    (_set("images.0.file_name", "C:\\x.png"), r"which leaves the images folder"),
    (_set("images.0.file_name", 7), r"image id 1 \(images\[0\]\) has file_name 7"),
    (_set("images.0.file_name", ""), r"has file_name ''"),
])
def test_bad_coco_records_name_file_record_and_field(tmp_path: Path, images: Path, mutate: Any,
                                                     needle: str) -> None:
    coco = copy.deepcopy(_coco())
    mutate(coco)
    ann = _write(tmp_path, coco, "bad.json")
    with pytest.raises(DataError, match=needle) as info:
        CocoDetection(images, ann, img_size=32)
    assert str(info.value).startswith(f"{ann}"), str(info.value)


def test_ground_truth_files_follow_the_same_rules() -> None:
    coco = _coco()
    coco["annotations"][1]["id"] = 1
    with pytest.raises(DataError, match=r"gt\.json: annotations\[1\] has a duplicate annotation id 1"):
        validate_coco_dict(coco, "gt.json")
    coco = _coco()
    del coco["images"][0]["width"]  # not needed to score against
    assert validate_coco_dict(coco, "gt.json")["images"][0] == {"id": 1, "file_name": "1.png", "height": 30}


def test_integral_float_sizes_are_read_as_pixels(tmp_path: Path, images: Path) -> None:
    coco = _coco()
    coco["images"][0]["width"] = 40.0
    ds = CocoDetection(images, _write(tmp_path, coco, "float.json"), img_size=32)
    assert ds[0][0].shape == (3, 32, 32)


def test_an_unreadable_image_is_named_at_first_read(tmp_path: Path, images: Path) -> None:
    (images / "2.png").write_bytes(b"this is not a PNG file")
    ann = _write(tmp_path, _coco(), "ok.json")
    ds = CocoDetection(images, ann, img_size=32)  # every file exists: construction does not decode them
    assert ds[0][0].shape == (3, 32, 32)
    with pytest.raises(DataError, match=rf"2\.png \(image id 2 in {ann}\) cannot be read as an image"):
        ds[1]
    png = io.BytesIO()
    Image.new("RGB", (20, 20), (0, 200, 0)).save(png, format="PNG")
    (images / "2.png").write_bytes(png.getvalue()[:50])  # the header says 20x20; the pixels are cut off
    ds = CocoDetection(images, ann, img_size=32)
    with pytest.raises(DataError, match=r"2\.png \(image id 2 .*\) cannot be read as an image: image file is "
                                        "truncated"):
        ds[1]


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_without_annotations_is_refused_naming_its_file(tmp_path: Path, images: Path, split: str) -> None:
    good, empty = _write(tmp_path, _coco(), "good.json"), _write(tmp_path, {**_coco(), "annotations": []},
                                                                  f"{split}-empty.json")
    anns = {"train": good, "val": good, split: empty}
    assert len(CocoDetection(images, empty, img_size=32)) == 2  # a plain dataset may hold no boxes
    with pytest.raises(DataError, match=rf"{split}-empty\.json: the {split} split has no annotations"):
        ProxyData.coco(anns["train"], images, anns["val"], images, img_size=32)


# ------------------------------------------------------------------------------------------ model size
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_planned_params_are_the_built_count(name: str) -> None:
    spec = get_preset(name)
    if spec.width_multiple >= 1.0:  # paper scale: the same topology at a CPU-friendly size
        spec = spec.replace(width_multiple=0.0625, depth_multiple=0.2)
    assert planned_params(spec) == count_params(build_detector(spec))


def test_a_huge_spec_is_refused_before_anything_is_allocated() -> None:
    spec = get_preset("yolor-v3").replace(width_multiple=4.0)
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        build_detector(spec)
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert "1,001,831,037 parameters" in message and f"{MAX_PARAMS / 1e6:,.0f} M" in message
    assert "width_multiple 4" in message and "depth_multiple 1" in message
    assert check_size(get_preset("yolor-v3")) == 62_998_749


@pytest.mark.parametrize(("changes", "needle"), [
    ({"widths": [128, 256, 512, 10**12]}, "widths must all be at most 16384"),
    ({"head_widths": [256, 512, 10**15]}, "head_widths must all be at most 16384"),
    ({"repeats": [2, 8, 8, 10**6]}, "repeats must be at most 64 in every stage"),
    ({"neck_stacks": 1000}, "neck_stacks must be at most 64"),
    ({"img_size": 32 * 10**5}, "img_size must be at most 4096"),
    ({"width_multiple": 1e9}, r"width_multiple must lie in \(0, 64\]"),
    ({"depth_multiple": 5}, r"depth_multiple must lie in \(0, 4\]"),
    ({"num_classes": 10**9}, "num_classes must be at most 100,000"),
    ({"anchors": [[[float("nan"), 1]] * 3] * 3}, "positive, finite pixels"),
])
def test_spec_bounds_keep_every_spec_buildable(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        ArchSpec.from_dict({**get_preset("yolor-csp-nano").model_dump(), **changes})


@pytest.fixture(scope="module")
def exported_nano(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """yolor-csp-nano as `gpnas describe --export-spec` writes it (once for the module)."""
    work = tmp_path_factory.mktemp("exported")
    gpnas(work, "describe", "yolor-csp-nano", "--export-spec", str(work / "nano.yaml"), "--json")
    return yaml.safe_load((work / "nano.yaml").read_text())


@pytest.mark.parametrize(("width", "needles"), [
    (4.0, ["would have 581,330,574 parameters", "width_multiple 4", "depth_multiple 0.34", "MAX_PARAMS"]),
    (64, ["would have 148,696,357,134 parameters", "width_multiple 64", "depth_multiple 0.34"]),
    (65, ["width_multiple", "= 65", "(0, 64]"]),
])
def test_describe_refuses_a_huge_width_fast(tmp_path: Path, exported_nano: dict[str, Any], width: float,
                                            needles: list[str]) -> None:
    spec = {**exported_nano, "width_multiple": width}
    edited = tmp_path / "huge.yaml"
    edited.write_text(yaml.safe_dump(spec))
    start = time.perf_counter()
    out = _cli(tmp_path, "describe", str(edited), "--json")
    assert time.perf_counter() - start < 120
    assert out.stdout == ""
    for needle in needles:
        assert needle in out.stderr, out.stderr
