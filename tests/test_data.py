"""COCO-format loader on a hand-made set, its errors, collate, augmentation, workers, and the bundled digits
generator."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gpnas.errors import DataError
from gpnas.objectives.accuracy import CocoEvaluator
from gpnas.trainers import digits as digits_module
from gpnas.trainers.augment import Augment, colour_matrix
from gpnas.trainers.data import PAD_VALUE, CocoDetection, LoaderOptions, collate, make_loader, to_model_input
from gpnas.trainers.digits import build_digits_dataset

S = 64
RED, BLUE, GREEN = (200, 10, 10), (10, 10, 200), (10, 200, 10)


def _coco() -> dict[str, Any]:
    return {
        "images": [{"id": 1, "file_name": "1.png", "width": 200, "height": 100},
                   {"id": 2, "file_name": "2.png", "width": 80, "height": 120}],
        "categories": [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}],  # sorted: 5 -> 0, 9 -> 1
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 9, "bbox": [20, 10, 40, 30], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [150, 50, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1},
        ],
    }


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """-> (images folder, annotation file) of a two-image set; image 1 is red on the left, blue on the right."""
    images = tmp_path / "images"
    images.mkdir()
    left_right = np.zeros((100, 200, 3), np.uint8)
    left_right[:, :100], left_right[:, 100:] = RED, BLUE
    Image.fromarray(left_right).save(images / "1.png")
    Image.new("RGB", (80, 120), GREEN).save(images / "2.png")
    return images, _write(tmp_path, _coco())


def _write(tmp_path: Path, coco: dict[str, Any], name: str = "instances.json") -> Path:
    (tmp_path / name).write_text(json.dumps(coco))
    return tmp_path / name


def _xyxy_pixels(labels: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = (labels[:, i] * S for i in range(1, 5))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def test_letterbox_labels_and_round_trip(tiny: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny, img_size=S)
    assert (ds.num_classes, ds.category_ids, ds.image_ids, len(ds)) == (2, [5, 9], [1, 2], 2)
    image, labels, meta = ds[0]
    assert image.shape == (3, S, S) and image.dtype == torch.uint8
    assert (meta.scale, meta.pad_x, meta.pad_y, meta.orig_w, meta.orig_h) == (0.32, 0.0, 16.0, 200, 100)
    assert torch.all(image[:, :16] == 114) and torch.all(image[:, 48:] == 114)
    assert torch.allclose(image[:, 30, 5].float(), torch.tensor(RED, dtype=torch.float32), atol=1)
    assert torch.allclose(image[:, 30, 60].float(), torch.tensor(BLUE, dtype=torch.float32), atol=1)
    assert torch.allclose(labels[0], torch.tensor([1, 0.2, 0.375, 0.2, 0.15]))
    original = meta.to_original(_xyxy_pixels(labels))
    assert torch.allclose(original, torch.tensor([[20.0, 10, 60, 40], [150, 50, 200, 100]]), atol=1e-4)
    image2, labels2, meta2 = ds[1]  # portrait: padded left and right; the crowd box is left out
    assert (meta2.pad_x, meta2.pad_y) == (10.0, 0.0) and labels2.shape == (1, 5)
    assert torch.all(image2[:, :, :10] == 114)
    assert torch.allclose(meta2.to_original(_xyxy_pixels(labels2)), torch.tensor([[10.0, 20, 40, 60]]), atol=1e-4)
    swapped = CocoDetection(*tiny, img_size=S, category_ids=[9, 5])
    assert swapped[0][1][:, 0].tolist() == [0.0, 1.0]


def test_flip(tiny: tuple[Path, Path]) -> None:
    plain = CocoDetection(*tiny, img_size=S)
    augmented = CocoDetection(*tiny, img_size=S, augment=True)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        image, labels, meta = augmented[0]
        seen.add(meta.flipped)
        if meta.flipped:
            assert torch.equal(image, plain[0][0].flip(-1))
            assert torch.allclose(labels[:, 1], 1 - plain[0][1][:, 1])
            assert torch.allclose(meta.to_original(_xyxy_pixels(labels)),
                                  torch.tensor([[20.0, 10, 60, 40], [150, 50, 200, 100]]), atol=1e-4)
    assert seen == {True, False}


def test_box_sizes_come_from_the_annotations(tiny: tuple[Path, Path]) -> None:
    from gpnas.trainers.datasets import ProxyData

    images, ann = tiny
    data = ProxyData.coco(ann, images, ann, images, img_size=S, augment=False)
    reader = CocoDetection(images, ann, img_size=S)  # a separate instance: data's image cache stays empty
    expected = np.concatenate([reader[i][1][:, 3:5].numpy() for i in range(len(reader))]) * S
    for png in images.glob("*.png"):  # box statistics must not read an image
        png.unlink()
    sizes = data.box_sizes()
    assert sizes.shape == (3, 2) and np.allclose(sizes, expected)
    assert np.allclose(sizes[0], [0.2 * S, 0.15 * S])


def test_missing_paths_and_keys(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    images, ann = tiny
    with pytest.raises(DataError, match=r"annotation file not found.*nope\.json"):
        CocoDetection(images, tmp_path / "nope.json", img_size=S)
    with pytest.raises(DataError, match=r"images folder not found.*nothere"):
        CocoDetection(tmp_path / "nothere", ann, img_size=S)
    coco = _coco()
    del coco["images"][1]["file_name"]
    with pytest.raises(DataError, match=r"nofile.json: images\[1\] has no key 'file_name'"):
        CocoDetection(images, _write(tmp_path, coco, "nofile.json"), img_size=S)
    coco = _coco()
    del coco["categories"]
    with pytest.raises(DataError, match=r"nocat\.json: missing key 'categories'"):
        CocoDetection(images, _write(tmp_path, coco, "nocat.json"), img_size=S)
    (tmp_path / "broken.json").write_text('{"images": [}')
    with pytest.raises(DataError, match=r"broken\.json is not valid JSON.*line 1, column 13"):
        CocoDetection(images, tmp_path / "broken.json", img_size=S)
    (images / "2.png").unlink()
    with pytest.raises(DataError, match=r"1 image file\(s\).*missing.*2.png"):
        CocoDetection(images, ann, img_size=S)


def test_bad_boxes(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    images, _ = tiny
    coco = _coco()
    coco["annotations"][0]["bbox"] = [180, 10, 40, 30]
    with pytest.raises(DataError, match=r"out.json: annotation id 1 has bbox \[180, 10, 40, 30\].*outside"):
        CocoDetection(images, _write(tmp_path, coco, "out.json"), img_size=S)
    coco = _coco()
    coco["annotations"][1]["bbox"] = [160.5, 50, 40, 50]  # 0.5 px past the right edge: clipped
    ds = CocoDetection(images, _write(tmp_path, coco, "edge.json"), img_size=S)
    assert ds[0][1][1, 3].item() == pytest.approx(39.5 * 0.32 / S)
    coco = _coco()
    coco["annotations"][0]["bbox"] = [20, 10, 0, 30]
    coco["annotations"][2]["bbox"] = [10, 20, 30, -1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(images, _write(tmp_path, coco, "zero.json"), img_size=S)
    assert [str(w.message) for w in caught if "zero-area" in str(w.message)] == [
        f"{tmp_path / 'zero.json'}: skipped 2 annotation(s) with zero-area boxes (w or h <= 0)"]
    assert len(ds[0][1]) == 1 and len(ds[1][1]) == 0
    coco = _coco()
    coco["images"][0]["width"] = 201
    ds = CocoDetection(images, _write(tmp_path, coco, "size.json"), img_size=S)
    with pytest.raises(DataError, match=r"1\.png is 200x100 but .*size\.json says 201x100"):
        ds[0]


def test_collate_and_loader(tiny: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny, img_size=S)
    images, targets, metas = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, S, S) and images.dtype == torch.uint8 and targets.shape == (3, 6)
    assert targets[:, 0].tolist() == [0.0, 0.0, 1.0] and [m.image_id for m in metas] == [1, 2]

    def order(seed: int) -> list[int]:
        loader = make_loader(ds, batch_size=1, shuffle=True, seed=seed)
        return [m.image_id for _ in range(3) for _, _, (m,) in loader]

    assert order(3) == order(3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_digits_deterministic_and_cached(tmp_path: Path) -> None:
    a = build_digits_dataset(tmp_path / "a", seed=0, img_size=64, n_train=6, n_val=3)
    b = build_digits_dataset(tmp_path / "b", seed=0, img_size=64, n_train=6, n_val=3)
    c = build_digits_dataset(tmp_path / "c", seed=1, img_size=64, n_train=6, n_val=3)
    assert a.root.name == "digits-v1-s0-64-6-3" and a.val_ann == a.root / "instances_val.json"
    files_a = _files(a.root)
    assert len(files_a) == 6 + 3 + 3 and files_a == _files(b.root)
    assert files_a["instances_train.json"] != _files(c.root)["instances_train.json"]
    stamp = (a.root / "manifest.json").stat().st_mtime_ns
    assert build_digits_dataset(tmp_path / "a", seed=0, img_size=64, n_train=6, n_val=3) == a
    assert (a.root / "manifest.json").stat().st_mtime_ns == stamp
    assert sorted(os.listdir(tmp_path / "a")) == [a.root.name]


def test_digits_content(tmp_path: Path) -> None:
    paths = build_digits_dataset(tmp_path, seed=0, img_size=96, n_train=60, n_val=30)
    train, val = (json.loads(p.read_text()) for p in (paths.train_ann, paths.val_ann))
    assert [c["id"] for c in train["categories"]] == list(range(1, 11))
    assert {a["source_index"] for a in train["annotations"]}.isdisjoint(
        {a["source_index"] for a in val["annotations"]})
    for coco in (train, val):
        per_image = [[a for a in coco["annotations"] if a["image_id"] == img["id"]] for img in coco["images"]]
        assert all(1 <= len(anns) <= 6 for anns in per_image)
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert min(x, y) >= 0 and x + w <= 96 and y + h <= 96 and 2 <= w <= 64 and 8 <= h <= 64
    with Image.open(paths.train_images / "000001.png") as img:
        assert (img.mode, img.size) == ("RGB", (96, 96))


def test_digits_build_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write, real_rename = digits_module._write_split, os.rename

    def dies_on_val(folder: Path, split: str, *args: Any) -> None:
        if split == "val":
            raise RuntimeError("killed")
        real_write(folder, split, *args)

    monkeypatch.setattr(digits_module, "_write_split", dies_on_val)
    with pytest.raises(RuntimeError, match=r"killed"):
        build_digits_dataset(tmp_path, seed=0, img_size=64, n_train=2, n_val=2)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(digits_module, "_write_split", real_write)

    def another_process_wins(src: Path, dst: Path) -> None:
        shutil.copytree(src, dst)
        real_rename(src, dst)  # fails: dst is now a non-empty folder

    monkeypatch.setattr(digits_module.os, "rename", another_process_wins)
    paths = build_digits_dataset(tmp_path, seed=0, img_size=64, n_train=2, n_val=2)
    assert os.listdir(tmp_path) == [paths.root.name] and paths.val_ann.is_file()


def test_digits_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPNAS_CACHE", str(tmp_path))
    paths = build_digits_dataset(seed=2, img_size=64, n_train=1, n_val=1)
    assert paths.root == tmp_path / "digits-v1-s2-64-1-1"
    with pytest.raises(DataError, match=r"n_train >= 1"):
        build_digits_dataset(tmp_path, n_train=0)


def test_digits_ground_truth_scores_ap_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GT boxes -> letterboxed labels -> back to original pixels -> COCOeval: ties loader and evaluator."""
    paths = build_digits_dataset(tmp_path, seed=0, img_size=96, n_train=1, n_val=30)
    ds = CocoDetection(paths.val_images, paths.val_ann, img_size=S)  # 96 -> 64: a real rescale
    evaluator = CocoEvaluator(ds.coco, category_ids=ds.category_ids)
    for images, targets, metas in make_loader(ds, batch_size=8, shuffle=False, seed=0):
        assert images.shape[1:] == (3, S, S)
        batch = []
        for b, meta in enumerate(metas):
            labels = targets[targets[:, 0] == b, 1:]
            boxes = meta.to_original(_xyxy_pixels(labels))
            batch.append((meta.image_id, torch.cat([boxes, torch.ones(len(boxes), 1), labels[:, :1]], 1)))
        evaluator.process(batch)
    assert evaluator.evaluate()["ap"] > 0.99
    assert capsys.readouterr().out == ""


def test_val_loader_gives_every_val_image_in_file_order(tiny: tuple[Path, Path]) -> None:
    from gpnas.trainers.datasets import ProxyData

    images, ann = tiny
    data = ProxyData.coco(ann, images, ann, images, img_size=S, augment=False)
    for _ in range(2):  # the same order on every pass
        batches = list(data.val_loader(batch_size=1))
        assert [metas[0].image_id for _, _, metas in batches] == data.val.image_ids == [1, 2]
    (imgs, _, metas), = data.val_loader()
    assert imgs.shape == (2, 3, S, S) and len(metas) == 2


def test_coco_files_fill_defaults_and_name_the_annotation() -> None:
    from gpnas.trainers.coco_files import validate_coco_dict

    coco = _coco()
    for ann in coco["annotations"]:
        del ann["area"], ann["iscrowd"]
    filled = validate_coco_dict(coco, "mem.json")
    assert [(a["area"], a["iscrowd"]) for a in filled["annotations"]] == [(1200, 0), (2500, 0), (1200, 0), (100, 0)]
    assert "area" not in coco["annotations"][0]  # the input is not modified
    coco["annotations"][2]["category_id"] = 4
    with pytest.raises(DataError, match=r"mem\.json: annotation id 3 has category_id 4"):
        validate_coco_dict(coco, "mem.json")


# ------------------------------------------------------------------ uint8 batches, augmentation, cache, workers
def test_to_model_input_is_x_over_255_in_float32(tiny: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny, img_size=S)
    images, _, _ = collate([ds[0], ds[1]])
    inputs = to_model_input(images, "cpu")
    assert inputs.dtype == torch.float32 and inputs.is_contiguous() and inputs.shape == (2, 3, S, S)
    expected = np.divide(np.stack([ds[0][0].numpy(), ds[1][0].numpy()]), 255.0, dtype=np.float32)
    assert np.array_equal(inputs.numpy(), expected)  # the bits of dividing on the host, as before uint8 batches
    assert to_model_input(inputs, "cpu") is inputs  # a float batch is not rescaled twice


def test_colour_jitter_keeps_boxes_and_is_deterministic_per_seed(tiny: tuple[Path, Path]) -> None:
    assert np.allclose(colour_matrix(0.0, 1.0, 1.0), (1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0))
    plain = CocoDetection(*tiny, img_size=S)
    jitter = CocoDetection(*tiny, img_size=S, augment=Augment(hsv_h=0.1, hsv_s=0.7, hsv_v=0.4))
    first, again, other = jitter[(0, [1])], jitter[(0, [1])], jitter[(0, [2])]
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], plain[0][0]) and first[0].dtype == torch.uint8
    assert torch.equal(first[1], plain[0][1]) and not first[2].flipped  # colour leaves boxes and geometry alone
    with pytest.raises(DataError, match=r"cache must be 'auto', True or False"):
        CocoDetection(*tiny, img_size=S, cache="sometimes")  # type: ignore[arg-type]


def test_cache_setting(tiny: tuple[Path, Path]) -> None:
    assert CocoDetection(*tiny, img_size=S).caches_images  # auto: two small images fit
    off = CocoDetection(*tiny, img_size=S, cache=False)
    assert not off.caches_images and torch.equal(off[0][0], off[0][0]) and off._cache == {}
    on = CocoDetection(*tiny, img_size=S, cache=True)
    image = on[0][0]
    image[:] = 0  # the caller's copy: the cache is untouched
    assert on[0][0].max() > 0 and len(on._cache) == 1


def test_cached_and_decoded_items_are_the_same_under_augmentation(tiny: tuple[Path, Path]) -> None:
    """Uncached, the colour jitter runs before the letterbox paste (cheaper); the pixels must not change."""
    augment = Augment(flip=0.5, hsv_h=0.1, hsv_s=0.7, hsv_v=0.4)
    on, off = (CocoDetection(*tiny, img_size=S, augment=augment, cache=c) for c in (True, False))
    for i in range(len(on)):
        for seed in range(6):
            a, b = on[(i, [seed])], off[(i, [seed])]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert any(off[(0, [seed])][0][:, 0, 0].tolist() != [PAD_VALUE] * 3 for seed in range(6))  # pad jittered too


def test_one_worker_gives_the_batches_of_none(tiny: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny, img_size=S, augment=Augment(flip=0.5, hsv_h=0.05, hsv_s=0.5, hsv_v=0.3))

    def batches(workers: int) -> list[tuple[torch.Tensor, torch.Tensor, list[bool]]]:
        loader = make_loader(ds, batch_size=1, shuffle=True, seed=4,
                             options=LoaderOptions(num_workers=workers, persistent_workers=True))
        return [(images, targets, [m.flipped for m in metas]) for _ in range(4) for images, targets, metas in loader]

    inline, worker = batches(0), batches(1)
    assert len(inline) == 8 and {f for _, _, (f,) in inline} == {True, False}  # both flips occur over 4 epochs
    for (a, ta, fa), (b, tb, fb) in zip(inline, worker, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb) and fa == fb
    assert len({str(a[0, :, 40, 40].tolist()) for a, _, _ in inline}) > 2  # the jitter differs per draw


def test_large_jpeg_is_drafted_and_keeps_its_box_mapping(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (400, 200), RED).save(images / "1.jpg", quality=90)
    coco = {"images": [{"id": 1, "file_name": "1.jpg", "width": 400, "height": 200}],
            "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [40, 20, 80, 60]}]}
    image, labels, meta = CocoDetection(images, _write(tmp_path, coco), img_size=S)[0]  # 400 px -> 64: 1/4 decode
    assert image.shape == (3, S, S) and meta.scale == S / 400
    assert torch.allclose(image[:, 32, 32].float(), torch.tensor(RED, dtype=torch.float32), atol=3)
    assert torch.allclose(meta.to_original(_xyxy_pixels(labels)), torch.tensor([[40.0, 20, 120, 80]]), atol=1e-4)
