"""COCO annotation files: reading, validating and indexing the "instances" JSON format.

Trainers read their training and val ground truth through these functions and the evaluators in
``gpnas.objectives.accuracy`` score against ground truth read the same way, so a file is checked by one set of
rules whether it is trained on or scored against. They live here, on the lower floor, because reading data is
the trainer's job; objectives import them from here (imports flow search_space -> trainers -> objectives).

Box format: ``bbox = [x, y, w, h]`` in original image pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from gpnas.search_space.errors import DataError

__all__ = ["quiet_coco", "read_coco_json", "validate_coco_dict"]

_ANN_KEYS = ("id", "image_id", "category_id", "bbox")


def read_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read a COCO annotation file; DataError if it is missing or not valid JSON (with the parse position)."""
    path = Path(ann_file)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}; pass the path of a COCO instances JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} (char {err.pos}); "
            "fix or regenerate the file"
        ) from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); pass a COCO instances JSON file") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object with images/annotations/categories")
    return data


def validate_coco_dict(
    data: dict[str, Any], source: str, *, image_keys: Sequence[str] = ("id",)
) -> dict[str, Any]:
    """Check the keys COCO tools rely on and return a copy with defaults filled in.

    Missing ``area`` becomes ``w * h`` of the bbox and missing ``iscrowd`` becomes 0 (COCOeval reads both).
    Raises DataError naming ``source`` (the file) and the missing key, list index and annotation id.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: missing key {key!r} (a list); a COCO instances file needs "
                            "'images', 'annotations' and 'categories'")
    for name, keys in (("images", tuple(image_keys)), ("categories", ("id",))):
        for i, entry in enumerate(data[name]):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise DataError(f"{source}: {name}[{i}] has no key {missing[0]!r}; each entry needs {keys}")
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    anns = []
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in _ANN_KEYS if not isinstance(ann, dict) or k not in ann]
        if missing:
            ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
            raise DataError(f"{source}: annotations[{i}] (id {ann_id}) has no key {missing[0]!r}; "
                            f"each annotation needs {_ANN_KEYS} with bbox = [x, y, w, h] in pixels")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and all(math.isfinite(v) for v in box)):
            raise DataError(f"{source}: annotation id {ann['id']} has bbox {box!r}; expected 4 finite "
                            "numbers [x, y, w, h] in pixels")
        if ann["image_id"] not in image_ids:
            raise DataError(f"{source}: annotation id {ann['id']} refers to image_id {ann['image_id']}, "
                            "which is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise DataError(f"{source}: annotation id {ann['id']} has category_id {ann['category_id']}, "
                            f"which is not in 'categories' {sorted(category_ids)}")
        if "area" not in ann or "iscrowd" not in ann:
            ann = {"area": float(box[2] * box[3]), "iscrowd": 0, **ann}
        anns.append(ann)
    return {**data, "annotations": anns}


def quiet_coco(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO index over an already-validated dict, without its stdout chatter."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
